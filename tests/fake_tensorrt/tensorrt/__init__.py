"""A SMALL fake of the TensorRT 10 Python API subset that convert/trt_build.py uses.

Only for tests on machines without a GPU: tests put ``tests/fake_tensorrt`` first on
sys.path and remove ``tensorrt`` from sys.modules afterwards. Nothing here runs a network.

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

Knobs for tests (module attributes, reset by reset()):
  PARSE_ERRORS  list of (node, op, message): parse() fails with these errors
  BUILD_FAILS   build_serialized_network returns None
  INPUTS        list of (name, shape) the parsed "network" gets
  CALLS         list of (name, dict) recorded calls, for asserts
The "engine" is ENGINE_MAGIC + JSON {onnx_sha256, flags, workspace, version}.
"""
from __future__ import annotations

import enum
import hashlib
import json

FAKE = True
__version__ = "10.3.0"

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"
TIMING_MAGIC = b"FAKE-TRT-TIMING\n"

PARSE_ERRORS: list = []
BUILD_FAILS = False
INPUTS: list = [("input", (1, 4, 64, 64))]
CALLS: list = []


def reset() -> None:
    global BUILD_FAILS
    PARSE_ERRORS.clear()
    CALLS.clear()
    INPUTS[:] = [("input", (1, 4, 64, 64))]
    BUILD_FAILS = False


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
        self.onnx_sha256 = None

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]


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
        self._network._inputs = [ITensor(n, s) for n, s in INPUTS]
        return True


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
        return IHostMemory(ENGINE_MAGIC + json.dumps(record, sort_keys=True).encode())
