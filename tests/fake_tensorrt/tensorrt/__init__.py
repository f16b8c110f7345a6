"""A SMALL fake of the TensorRT 10 Python API subset that edge/engines (build and runtime) uses.

Only for tests on machines without a GPU: tests put ``tests/fake_tensorrt`` first on
sys.path and remove ``tensorrt`` from sys.modules afterwards. Nothing here runs a real network:
the fake "engine" computes one fixed function (see ``reference``).

Mimicked (names and signatures as documented for TensorRT 10):
  Logger(min_severity) with Logger.Severity and Logger.WARNING/VERBOSE/...; Builder(logger) with
  create_network(flags), create_builder_config(), create_optimization_profile(),
  build_serialized_network(network, config) -> IHostMemory | None, platform_has_fast_fp16/int8;
  INetworkDefinition.num_inputs / get_input(i) (tensor .name/.shape/.dtype);
  OnnxParser(network, logger).parse(model, path=None) / num_errors / get_error(i) -> ParserError
  (code(), desc(), node(), node_name(), node_operator(), str());
  IBuilderConfig.set_memory_pool_limit / get_memory_pool_limit, set_flag / clear_flag / get_flag,
  create_timing_cache(buffer) / set_timing_cache(cache, ignore_mismatch) / get_timing_cache(),
  add_optimization_profile; ITimingCache.serialize(); MemoryPoolType; BuilderFlag.
Runtime (TensorRT 10 name-based API only; there is deliberately no bindings API, no execute_v2):
  Runtime(logger).deserialize_cuda_engine(bytes) -> ICudaEngine | None (None for a plan from
  another TensorRT version, as the real one); ICudaEngine.num_io_tensors / get_tensor_name(i) /
  get_tensor_mode(name) -> TensorIOMode / get_tensor_shape(name) / get_tensor_dtype(name) /
  create_execution_context(); IExecutionContext.set_tensor_address(name, ptr) /
  get_tensor_address / set_input_shape / get_tensor_shape / execute_async_v3(stream_handle) -> bool;
  nptype(DataType).
  execute_async_v3 works on the fake CUDA device of tests/fake_pycuda (module
  ``fake_cuda_device``): it returns False, like the real one, when no CUDA context is current on
  the calling thread, the stream is unknown or an IO tensor has no address; otherwise it reads
  the inputs from the fake device memory, computes ``reference`` and writes the outputs there.

Knobs for tests (module attributes, reset by reset()):
  PARSE_ERRORS  list of (node, op, message): parse() fails with these errors
  BUILD_FAILS   build_serialized_network returns None
  INPUTS        list of (name, shape) the parsed "network" gets when the model bytes are not a
                real ONNX graph (a real one, read with `onnx` if installed, gives its own IO)
  OUTPUTS       list of (name, shape) likewise for outputs
  CALLS         list of (name, dict) recorded calls, for asserts (deserialize_cuda_engine records
                the sha256 of the bytes it received)
The "engine" is ENGINE_MAGIC + JSON {onnx_sha256, flags, workspace, version, io}.
"""
from __future__ import annotations

import enum
import hashlib
import json

import numpy as np

FAKE = True
__version__ = "10.3.0"

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"
TIMING_MAGIC = b"FAKE-TRT-TIMING\n"

PARSE_ERRORS: list = []
BUILD_FAILS = False
INPUTS: list = [("input", (1, 4, 64, 64))]
OUTPUTS: list = [("output", (1, 1, 64, 64))]
CALLS: list = []


def reset() -> None:
    global BUILD_FAILS
    PARSE_ERRORS.clear()
    CALLS.clear()
    INPUTS[:] = [("input", (1, 4, 64, 64))]
    OUTPUTS[:] = [("output", (1, 1, 64, 64))]
    BUILD_FAILS = False


def reference(inputs: dict) -> dict:
    """What every fake engine computes (batch-first float32 arrays):
    anomaly_map = sum over the non-'foreground' inputs of their channel mean, times 'foreground'
    when present; score = max of anomaly_map per batch item. Other outputs are left untouched."""
    maps = [v.mean(axis=1, keepdims=True, dtype=np.float32) for k, v in inputs.items() if k != "foreground"]
    amap = np.sum(maps, axis=0, dtype=np.float32) if maps else np.zeros_like(inputs["foreground"])
    if "foreground" in inputs:
        amap = amap * inputs["foreground"]
    return {"anomaly_map": amap.astype(np.float32),
            "score": amap.reshape(amap.shape[0], -1).max(axis=1).astype(np.float32)}


def calls(name: str) -> list:
    return [kw for n, kw in CALLS if n == name]


class IHostMemory(bytes):
    """Buffer returned by serialize()/build_serialized_network (bytes(...) works as on the real one)."""

    @property
    def nbytes(self) -> int:
        return len(self)


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def log(self, severity, msg):  # pragma: no cover - interface
        pass


class Logger(ILogger):
    def __init__(self, min_severity=ILogger.Severity.WARNING):
        self.min_severity = min_severity
        CALLS.append(("Logger", {"min_severity": min_severity}))


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4
    TACTIC_SHARED_MEMORY = 5


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 5
    TF32 = 7
    SPARSE_WEIGHTS = 8


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0  # deprecated and ignored in TensorRT 10
    STRONGLY_TYPED = 1


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3


_NPTYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
            DataType.INT32: np.int32}


def nptype(trt_type):
    """numpy type for a DataType, like tensorrt.nptype."""
    return _NPTYPES[DataType(trt_type)]


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class ErrorCode(enum.IntEnum):
    SUCCESS = 0
    INTERNAL_ERROR = 1
    MEM_ALLOC_FAILED = 2
    MODEL_DESERIALIZE_FAILED = 3
    INVALID_VALUE = 4
    INVALID_GRAPH = 5
    INVALID_NODE = 6
    UNSUPPORTED_GRAPH = 7
    UNSUPPORTED_NODE = 8


class ITensor:
    def __init__(self, name, shape, dtype=DataType.FLOAT):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class INetworkDefinition:
    def __init__(self, flags):
        self.flags = flags
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self.onnx_sha256 = None

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


NetworkDefinition = INetworkDefinition


class ParserError:
    def __init__(self, node, op, message, code=ErrorCode.UNSUPPORTED_NODE):
        self._node, self._op, self._msg, self._code = node, op, message, code

    def code(self):
        return self._code

    def desc(self):
        return self._msg

    def node(self):
        return self._node

    def node_name(self):
        return f"node_{self._node}"

    def node_operator(self):
        return self._op

    def __str__(self):
        return (f"In node {self._node} with name: {self.node_name()} and operator: {self._op} "
                f"(parse): {self._code.name}: {self._msg}")


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger):
        if not isinstance(network, INetworkDefinition):
            raise TypeError("OnnxParser(network, logger): network must be an INetworkDefinition")
        self._network, self._errors = network, []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors = []

    def parse(self, model, path: str | None = None) -> bool:
        data = bytes(model)
        CALLS.append(("parse", {"path": path, "nbytes": len(data)}))
        if not data:
            self._errors.append(ParserError(-1, "", "empty model", ErrorCode.MODEL_DESERIALIZE_FAILED))
            return False
        if PARSE_ERRORS:
            self._errors.extend(ParserError(*e) for e in PARSE_ERRORS)
            return False
        self._network.onnx_sha256 = hashlib.sha256(data).hexdigest()
        io = _onnx_io(data)
        if io is None:
            io = ([ITensor(n, s) for n, s in INPUTS], [ITensor(n, s) for n, s in OUTPUTS])
        self._network._inputs, self._network._outputs = io
        return True


def _onnx_io(data: bytes):
    """(inputs, outputs) of a real ONNX graph, or None when `onnx` is missing or the bytes are not one."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        model = onnx.load_from_string(data)
    except Exception:
        return None
    inits = {i.name for i in model.graph.initializer}

    def tensors(values):
        out = []
        for v in values:
            if v.name in inits:
                continue
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
            dtype = DataType.HALF if v.type.tensor_type.elem_type == 10 else DataType.FLOAT
            out.append(ITensor(v.name, dims, dtype))
        return out

    ins, outs = tensors(model.graph.input), tensors(model.graph.output)
    return (ins, outs) if ins and outs else None


class ITimingCache:
    def __init__(self, version: str, entries: list):
        self.version, self.entries = version, list(entries)

    def serialize(self) -> IHostMemory:
        return IHostMemory(TIMING_MAGIC + json.dumps({"version": self.version, "entries": self.entries}).encode())

    def reset(self) -> bool:
        self.entries = []
        return True


class IOptimizationProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, input, min, opt, max):  # noqa: A002 - documented parameter names
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))


class IBuilderConfig:
    def __init__(self):
        self.pool_limits: dict = {}
        self._flags: set = set()
        self._timing_cache: ITimingCache | None = None
        self.profiles: list = []

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pool_limits[MemoryPoolType(pool)] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self.pool_limits.get(MemoryPoolType(pool), 0)

    def set_flag(self, flag: BuilderFlag) -> None:
        self._flags.add(BuilderFlag(flag))

    def clear_flag(self, flag: BuilderFlag) -> None:
        self._flags.discard(BuilderFlag(flag))

    def get_flag(self, flag: BuilderFlag) -> bool:
        return BuilderFlag(flag) in self._flags

    def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
        data = bytes(serialized_timing_cache)
        CALLS.append(("create_timing_cache", {"nbytes": len(data)}))
        if not data:
            return ITimingCache(__version__, [])
        if not data.startswith(TIMING_MAGIC):
            raise RuntimeError("fake tensorrt: not a timing cache")
        doc = json.loads(data[len(TIMING_MAGIC):])
        return ITimingCache(doc["version"], doc["entries"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        CALLS.append(("set_timing_cache", {"entries": list(cache.entries), "ignore_mismatch": ignore_mismatch}))
        if cache.version != __version__ and not ignore_mismatch:
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing_cache

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


BuilderConfig = IBuilderConfig


class Builder:
    platform_has_fast_fp16 = True
    platform_has_fast_int8 = True

    def __init__(self, logger: ILogger):
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        CALLS.append(("create_network", {"flags": flags}))
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
        flags = sorted(f.name for f in config._flags)
        record = {
            "onnx_sha256": network.onnx_sha256,
            "flags": flags,
            "workspace": config.get_memory_pool_limit(MemoryPoolType.WORKSPACE),
            "version": __version__,
            "profiles": [p.shapes for p in config.profiles],
        }
        CALLS.append(("build_serialized_network", dict(record, timing_cache=config._timing_cache)))
        if BUILD_FAILS or network.onnx_sha256 is None:
            return None
        if config._timing_cache is not None:
            config._timing_cache.entries.append(network.onnx_sha256)
        record.pop("profiles")
        record["io"] = ([[t.name, "INPUT", list(t.shape), int(t.dtype)] for t in network._inputs]
                        + [[t.name, "OUTPUT", list(t.shape), int(t.dtype)] for t in network._outputs])
        return IHostMemory(ENGINE_MAGIC + json.dumps(record, sort_keys=True).encode())


# --------------------------------------------------------------------------- runtime

class Runtime:
    def __init__(self, logger: ILogger):
        if not isinstance(logger, ILogger):
            raise TypeError("Runtime(logger): logger must be an ILogger")
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine):
        data = bytes(serialized_engine)
        ok = data.startswith(ENGINE_MAGIC)
        record = json.loads(data[len(ENGINE_MAGIC):]) if ok else {}
        CALLS.append(("deserialize_cuda_engine", {"onnx_sha256": record.get("onnx_sha256"),
                                                   "version": record.get("version"), "flags": record.get("flags"),
                                                   "sha256": hashlib.sha256(data).hexdigest()}))
        # the real runtime refuses plans from another TensorRT version (and garbage): None + a log line
        if not ok or record.get("version") != __version__ or "io" not in record:
            return None
        return ICudaEngine(record)


class ICudaEngine:
    def __init__(self, record: dict):
        self.record = record
        self._io = [(name, TensorIOMode[mode], tuple(shape), DataType(dt)) for name, mode, shape, dt in record["io"]]

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def _find(self, name: str):
        for t in self._io:
            if t[0] == name:
                return t
        return None

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        t = self._find(name)
        return t[1] if t else TensorIOMode.NONE

    def get_tensor_shape(self, name: str) -> tuple:
        t = self._find(name)
        return t[2] if t else ()

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._find(name)[3]

    def create_execution_context(self):
        CALLS.append(("create_execution_context", {}))
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine = engine
        self._addresses: dict = {}
        self._shapes = {n: s for n, m, s, _ in engine._io if m == TensorIOMode.INPUT}

    def set_tensor_address(self, name: str, memory: int) -> bool:
        CALLS.append(("set_tensor_address", {"name": name, "ptr": int(memory)}))
        if self.engine._find(name) is None:
            return False
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def set_input_shape(self, name: str, shape) -> bool:
        t = self.engine._find(name)
        if t is None or t[1] != TensorIOMode.INPUT or len(shape) != len(t[2]):
            return False
        if any(e >= 0 and e != int(d) for e, d in zip(t[2], shape)):
            return False
        self._shapes[name] = tuple(int(d) for d in shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        t = self.engine._find(name)
        if t is None:
            return ()
        if t[1] == TensorIOMode.INPUT:
            return self._shapes[name]
        batch = next((s[0] for s in self._shapes.values() if s and s[0] >= 0), 1)
        return tuple(batch if d < 0 and i == 0 else d for i, d in enumerate(t[2]))

    def execute_async_v3(self, stream_handle: int) -> bool:
        import fake_cuda_device as dev  # the fake GPU of tests/fake_pycuda

        names = [t[0] for t in self.engine._io]
        CALLS.append(("execute_async_v3", {"stream": stream_handle, "addresses": dict(self._addresses)}))
        dev.record("execute_async_v3", stream=int(stream_handle), addresses=dict(self._addresses))
        if not dev.context_current() or not dev.stream_exists(stream_handle):
            return False
        if any(n not in self._addresses for n in names):
            return False
        inputs = {}
        for name, mode, _, dtype in self.engine._io:
            if mode == TensorIOMode.INPUT:
                shape = self.get_tensor_shape(name)
                n = int(np.prod(shape)) * np.dtype(nptype(dtype)).itemsize
                inputs[name] = np.frombuffer(dev.read(self._addresses[name], n), nptype(dtype)).reshape(shape)
        results = reference({k: v.astype(np.float32) for k, v in inputs.items()})
        for name, mode, _, dtype in self.engine._io:
            if mode == TensorIOMode.OUTPUT and name in results:
                out = results[name].astype(nptype(dtype)).reshape(self.get_tensor_shape(name))
                dev.write(self._addresses[name], out.tobytes())
        return True
