"""TensorRT backend (TensorRT 10 Python API only), with device memory from pycuda or cuda-python.

Per mode: the engine comes from the engine cache (:mod:`edge.engines.trt_cache`), keyed by the
bundle's ONNX sha256, the TensorRT version, the GPU and the precision flags; when no cached
engine matches it is built (minutes on a Jetson) and stored. A mismatched engine is never
deserialized: TensorRT gets exactly the bytes the cache hashed and checked against the engine's
sidecar (or the bytes just built), never a second read of the file.

Execution uses only the name-based TensorRT 10 API: ``num_io_tensors``, ``get_tensor_name(i)``,
``get_tensor_mode(name)``, ``get_tensor_shape``, ``get_tensor_dtype``,
``context.set_tensor_address(name, ptr)`` for every IO tensor, ``context.execute_async_v3(stream)``
(no bindings, no execute_v2).

CUDA: ``cuda="pycuda"`` uses ``pycuda.driver`` (``mem_alloc``, ``pagelocked_empty``,
``memcpy_htod_async`` / ``memcpy_dtoh_async``, ``Stream``). There is no ``pycuda.autoinit``:
each engine retains the device's PRIMARY context once (the context the CUDA runtime, and so
TensorRT, uses) and pushes / pops it around every call, so an engine created on one thread runs
from the daemon's inference thread. ``cuda="cuda-python"`` uses the CUDA runtime API
(``cudaMalloc``, ``cudaMallocHost``, ``cudaMemcpyAsync``, ``cudaStreamCreate``; it selects the
device with ``cudaSetDevice`` per call, which binds the same primary context). ``cuda="auto"``:
pycuda if it imports, else cuda-python.

Buffers (page-locked host + device, one pair per IO tensor) and the stream are allocated once
per engine; tensor addresses are set once, before the first execute_async_v3, and never change.
`tensorrt`, `pycuda` and `cuda` are imported inside functions only.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import threading
from pathlib import Path

import numpy as np

from . import trt_cache
from .base import (
    OUTPUT_MAP,
    OUTPUT_SCORE,
    EngineError,
    check_io_names,
    finish_outputs,
    graph_rel,
    graph_sha256,
    model_info,
    resolve_input_shape,
    validate_feed,
)

log = logging.getLogger(__name__)

BACKEND = "tensorrt"
CUDA_CHOICES = ("auto", "pycuda", "cuda-python")

_TRT_LOGGER: tuple | None = None  # (tensorrt module, its Logger)
_TRT_LOGGER_LOCK = threading.Lock()


def _trt_logger(trt):
    """One TensorRT logger per process (TensorRT expects a single logger), kept alive here."""
    global _TRT_LOGGER
    with _TRT_LOGGER_LOCK:
        if _TRT_LOGGER is None or _TRT_LOGGER[0] is not trt:
            _TRT_LOGGER = (trt, trt.Logger(trt.Logger.WARNING))
        return _TRT_LOGGER[1]


# --------------------------------------------------------------------------- CUDA APIs


class PyCudaApi:
    """Device memory and streams through pycuda.driver, on the device's retained primary context."""

    name = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as cuda  # ImportError: let the selector try the next API

        self._cuda = cuda
        cuda.init()
        self._ctx = cuda.Device(device).retain_primary_context()  # not pushed: push() around each use
        self.device = device

    @contextlib.contextmanager
    def activate(self):
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def alloc(self, nbytes: int):
        a = self._cuda.mem_alloc(nbytes)
        return a, int(a)

    def free(self, handle) -> None:
        handle.free()

    def host_empty(self, shape: tuple, dtype):
        return self._cuda.pagelocked_empty(shape, dtype), None

    def free_host(self, token) -> None:
        pass  # pycuda frees page-locked memory with the array

    def create_stream(self):
        s = self._cuda.Stream()
        return s, int(s.handle)

    def destroy_stream(self, stream) -> None:
        pass  # freed with the object

    def htod(self, dev, host: np.ndarray, stream) -> None:
        self._cuda.memcpy_htod_async(dev, host, stream)

    def dtoh(self, host: np.ndarray, dev, stream) -> None:
        self._cuda.memcpy_dtoh_async(host, dev, stream)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def close(self) -> None:
        self._ctx.detach()  # releases this retain of the primary context


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.8
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


class CudaPythonApi:
    """Device memory and streams through cuda-python's CUDA runtime bindings."""

    name = "cuda-python"

    def __init__(self, device: int = 0):
        self._rt = _import_cudart()  # ImportError: let the selector try the next API
        self.device = device
        self._call("cudaSetDevice", device)

    def _call(self, fn: str, *args):
        result = getattr(self._rt, fn)(*args)
        err, rest = result[0], tuple(result[1:])
        if err != self._rt.cudaError_t.cudaSuccess:
            detail = ""
            with contextlib.suppress(Exception):
                msg = self._rt.cudaGetErrorString(err)[1]
                detail = ": " + (msg.decode() if isinstance(msg, (bytes, bytearray)) else str(msg))
            raise EngineError(f"cuda-python: {fn} failed with {err}{detail}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    @contextlib.contextmanager
    def activate(self):
        self._call("cudaSetDevice", self.device)  # per thread; binds the primary context
        yield

    def alloc(self, nbytes: int):
        ptr = self._call("cudaMalloc", nbytes)
        return ptr, int(ptr)

    def free(self, handle) -> None:
        self._call("cudaFree", handle)

    def host_empty(self, shape: tuple, dtype):
        dtype = np.dtype(dtype)
        nbytes = int(math.prod(shape)) * dtype.itemsize
        ptr = self._call("cudaMallocHost", nbytes)
        raw = (ctypes.c_uint8 * nbytes).from_address(int(ptr))
        return np.ctypeslib.as_array(raw).view(dtype).reshape(shape), ptr

    def free_host(self, token) -> None:
        if token is not None:
            self._call("cudaFreeHost", token)

    def create_stream(self):
        s = self._call("cudaStreamCreate")
        return s, int(s)

    def destroy_stream(self, stream) -> None:
        self._call("cudaStreamDestroy", stream)

    def htod(self, dev, host: np.ndarray, stream) -> None:
        self._call("cudaMemcpyAsync", dev, host.ctypes.data, host.nbytes,
                   self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def dtoh(self, host: np.ndarray, dev, stream) -> None:
        self._call("cudaMemcpyAsync", host.ctypes.data, dev, host.nbytes,
                   self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def synchronize(self, stream) -> None:
        self._call("cudaStreamSynchronize", stream)

    def close(self) -> None:
        pass


_CUDA_APIS = {"pycuda": PyCudaApi, "cuda-python": CudaPythonApi}


def open_cuda(choice: str = "auto", device: int = 0):
    """A CUDA API object for ``choice`` (auto: pycuda, else cuda-python). EngineError when none imports."""
    if choice not in CUDA_CHOICES:
        raise EngineError(f"unknown cuda API {choice!r}: use one of {', '.join(CUDA_CHOICES)}")
    order = ("pycuda", "cuda-python") if choice == "auto" else (choice,)
    tried = []
    for name in order:
        try:
            api = _CUDA_APIS[name](device)
        except ImportError as exc:
            tried.append(f"{name}: {exc}")
            continue
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"{name}: cannot initialise CUDA device {device}: {exc.__class__.__name__}: {exc}") \
                from exc
        if choice == "auto":
            log.info("TensorRT backend: device buffers through %s", name)
        return api
    raise EngineError("the TensorRT backend needs pycuda or cuda-python for device buffers and streams, and "
                      f"{'neither imports' if choice == 'auto' else choice + ' does not import'} ("
                      + "; ".join(tried) + "). On JetPack 6: pip install pycuda (needs the CUDA toolkit) or "
                      "pip install 'cuda-python>=12.6,<13'; or set backend: onnxruntime")


# --------------------------------------------------------------------------- engine


class TensorRTEngine:
    """One mode's deserialized engine, its execution context, buffers and stream."""

    def __init__(self, *, mode: str, inputs: tuple[str, ...], info, trt, cuda, engine_file: Path,
                 engine_bytes: bytes, image_size: int, spec=None, built: bool = False,
                 cache_rejected: str | None = None):
        self.mode = mode
        self.inputs = inputs
        self.info = info
        self.engine_file = Path(engine_file)
        self.spec = spec
        self.built = built                  # True when this start built the engine
        self.cache_rejected = cache_rejected  # a cached engine file was refused (swapped, corrupt): why
        self._engine_bytes: bytes | None = engine_bytes  # verified bytes; dropped once deserialized
        self.cuda_api = cuda.name
        self.input_shapes: dict[str, tuple] = {}
        self.output_shapes: dict[str, tuple] = {}
        self._trt = trt
        self._cuda = cuda
        self._image_size = image_size
        self._lock = threading.Lock()
        self._runtime = self._engine = self._context = None
        self._stream = None
        self._stream_handle = 0
        self._host: dict[str, np.ndarray] = {}
        self._host_tokens: list = []
        self._dev: dict[str, object] = {}
        self._io_inputs: list[str] = []
        self._io_outputs: list[str] = []
        self._closed = False
        try:
            with cuda.activate():
                self._setup()
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str, **kw) -> EngineError:
        return EngineError(f"{self.mode} engine ({self.engine_file.name}): {what}", mode=self.mode, **kw)

    def _setup(self) -> None:
        trt = self._trt
        self._runtime = trt.Runtime(_trt_logger(trt))
        blob, self._engine_bytes = self._engine_bytes, None
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        del blob
        if self._engine is None:
            raise self._fail("TensorRT could not deserialize the engine (see TensorRT's log above); delete it "
                             "from the cache to have it rebuilt")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise self._fail("create_execution_context() failed (out of GPU memory?)")

        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        for n in names:
            io = self._engine.get_tensor_mode(n)
            if io == trt.TensorIOMode.INPUT:
                self._io_inputs.append(n)
            elif io == trt.TensorIOMode.OUTPUT:
                self._io_outputs.append(n)
        where = f"engine {self.engine_file}"
        check_io_names(self._io_inputs, self._io_outputs, self.inputs, mode=self.mode, where=where)

        for n in self._io_inputs:
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(n))
            fixed = resolve_input_shape(n, shape, self._image_size, mode=self.mode, where=where)
            if shape != fixed and not self._context.set_input_shape(n, fixed):
                raise self._fail(f"set_input_shape('{n}', {fixed}) was rejected", input=n)
            self.input_shapes[n] = fixed
        for n in self._io_outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise self._fail(f"output '{n}' has an unresolved shape {shape}")
            self.output_shapes[n] = shape

        for n in self._io_inputs + self._io_outputs:
            shape = self.input_shapes.get(n) or self.output_shapes[n]
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(n)))
            host, token = self._cuda.host_empty(shape, dtype)
            if token is not None:
                self._host_tokens.append(token)
            self._host[n] = host
            handle, ptr = self._cuda.alloc(max(host.nbytes, 1))
            self._dev[n] = handle
            if self._context.set_tensor_address(n, ptr) is False:
                raise self._fail(f"set_tensor_address('{n}') was rejected")
        self._stream, self._stream_handle = self._cuda.create_stream()

    def run(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        arrays = validate_feed(feed, self.input_shapes, self.mode)
        with self._lock:
            if self._closed:
                raise self._fail("run() after close()")
            try:
                with self._cuda.activate():
                    for n in self._io_inputs:
                        np.copyto(self._host[n], arrays[n], casting="same_kind")
                        self._cuda.htod(self._dev[n], self._host[n], self._stream)
                    if not self._context.execute_async_v3(self._stream_handle):
                        raise self._fail("execute_async_v3 failed (see TensorRT's log)")
                    for n in self._io_outputs:
                        self._cuda.dtoh(self._host[n], self._dev[n], self._stream)
                    self._cuda.synchronize(self._stream)
            except EngineError:
                raise
            except Exception as exc:
                raise self._fail(f"{exc.__class__.__name__}: {exc}") from exc
            return finish_outputs(self._host[OUTPUT_MAP], self._host[OUTPUT_SCORE], self._image_size, self.mode)

    def close(self) -> None:
        """Free buffers, stream, context and engine (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                with self._cuda.activate():
                    if self._stream is not None:
                        with contextlib.suppress(Exception):
                            self._cuda.synchronize(self._stream)
                    for handle in self._dev.values():
                        with contextlib.suppress(Exception):
                            self._cuda.free(handle)
                    self._dev.clear()
                    self._host.clear()
                    for token in self._host_tokens:
                        with contextlib.suppress(Exception):
                            self._cuda.free_host(token)
                    self._host_tokens.clear()
                    if self._stream is not None:
                        with contextlib.suppress(Exception):
                            self._cuda.destroy_stream(self._stream)
                        self._stream = None
                    # destroy in reverse order of creation, with the context current
                    self._context = None
                    self._engine = None
                    self._runtime = None
            finally:
                with contextlib.suppress(Exception):
                    self._cuda.close()

    def __repr__(self) -> str:
        return (f"TensorRTEngine(mode={self.mode!r}, precision={self.info.precision!r}, "
                f"engine={self.engine_file.name!r}, cuda={self.cuda_api!r})")


def load(bundle, mode_spec, choice, *, cache_dir=None, build_missing: bool = True, cuda: str = "auto",
         workspace_mib: int = trt_cache.DEFAULT_WORKSPACE_MIB, device: int = 0) -> TensorRTEngine:
    """The TensorRTEngine for ``mode_spec``: cached engine, or build it (``build_missing``) first."""
    trt = trt_cache.import_tensorrt()
    mode = mode_spec.name
    onnx = mode_spec.graph(choice.graph)
    rel = graph_rel(bundle, onnx)
    sha = graph_sha256(bundle, onnx)
    if not bundle.hashes_verified:  # load_bundle(verify_hashes=False): check the one graph we key by
        have = trt_cache.sha256_file(onnx)
        if have != sha:
            raise EngineError(f"{bundle.manifest}: files.{rel}: sha256 mismatch: bundle.yaml lists {sha[:12]}..., "
                              f"the file has {have[:12]}...; not building or loading an engine for it", mode=mode)
    cache = Path(cache_dir) if cache_dir is not None else trt_cache.default_cache_dir(bundle)
    api = open_cuda(cuda, device)  # fail early (and cheaply) when no CUDA API imports
    try:
        gpu = trt_cache.gpu_identity()
        spec = trt_cache.EngineSpec(mode=mode, precision=choice.engine, onnx_sha256=sha,
                                    tensorrt_version=str(trt.__version__), gpu_name=gpu.name,
                                    compute_capability=gpu.compute_capability)
        cached = trt_cache.ensure_engine(onnx, spec, cache, workspace_mib=workspace_mib, build_missing=build_missing,
                                         int8_variant=choice.graph == "int8", tag=f"mode '{mode}'",
                                         built_by="rgbd-edge runtime", build_log_level=logging.WARNING,
                                         keep_bytes=True)
    except BaseException:
        api.close()
        raise
    info = model_info(bundle, onnx, choice.engine, BACKEND)
    engine = TensorRTEngine(mode=mode, inputs=tuple(mode_spec.inputs), info=info, trt=trt, cuda=api,
                            engine_file=cached.engine, engine_bytes=cached.data, image_size=bundle.image_size,
                            spec=spec, built=cached.built, cache_rejected=cached.rejected)
    log.info("mode '%s': TensorRT %s, %s engine %s (%s) from %s graph %s, %s", mode, spec.tensorrt_version,
             choice.engine, cached.engine.name, "built now" if cached.built else "cached", choice.graph, rel, api.name)
    return engine
