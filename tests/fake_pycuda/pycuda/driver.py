"""A SMALL fake of the `pycuda.driver` subset the TensorRT backend uses (names and signatures
as documented for pycuda): init(); Device(ordinal) with count(), name(), compute_capability(),
retain_primary_context(), make_context(); Context.push() / Context.pop() (static) /
Context.get_current() / detach(); mem_alloc(bytes) -> DeviceAllocation (int(), free());
pagelocked_empty(shape, dtype); memcpy_htod_async(dest, src, stream=None);
memcpy_dtoh_async(dest, src, stream=None); Stream() with .handle and synchronize().

Memory and contexts live in fake_cuda_device (the shared fake GPU). As in pycuda, memory
calls need a context current on the calling thread (LogicError otherwise).
"""
from __future__ import annotations

import numpy as np

import fake_cuda_device as _dev

FAKE = True
_initialised = [False]


class Error(Exception):
    pass


class LogicError(Error):
    pass


def _require_context(what: str) -> None:
    if not _dev.context_current():
        raise LogicError(f"{what} failed: invalid device context")


def init(flags: int = 0) -> None:
    _initialised[0] = True
    _dev.record("init")


class Device:
    def __init__(self, ordinal: int):
        if not _initialised[0]:
            raise LogicError("cuDeviceGet failed: initialization error (call pycuda.driver.init() first)")
        if ordinal != 0:
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")
        self.ordinal = ordinal

    @staticmethod
    def count() -> int:
        return 1

    def name(self) -> str:
        return _dev.GPU["name"]

    def compute_capability(self) -> tuple[int, int]:
        return tuple(_dev.GPU["cc"])

    def retain_primary_context(self) -> "Context":
        _dev.record("retain_primary_context", ordinal=self.ordinal)
        return Context(self, primary=True)

    def make_context(self, flags: int = 0) -> "Context":
        ctx = Context(self, primary=False)
        ctx.push()
        return ctx


class Context:
    def __init__(self, device: Device, primary: bool):
        self.device, self.primary, self.detached = device, primary, False

    def push(self) -> None:
        if self.detached:
            raise LogicError("cuCtxPushCurrent failed: context was detached")
        _dev.push(self)

    @staticmethod
    def pop() -> None:
        try:
            _dev.pop()
        except RuntimeError as exc:
            raise LogicError(str(exc)) from None

    @staticmethod
    def get_current():
        st = _dev._stack()
        return st[-1] if st else None

    @staticmethod
    def synchronize() -> None:
        _require_context("cuCtxSynchronize")

    def detach(self) -> None:
        self.detached = True
        _dev.record("detach", primary=self.primary)


class DeviceAllocation:
    def __init__(self, ptr: int, nbytes: int):
        self.ptr, self.nbytes, self.freed = ptr, nbytes, False

    def __int__(self) -> int:
        return self.ptr

    __index__ = __int__

    def free(self) -> None:
        if not self.freed:
            _dev.free(self.ptr)
            self.freed = True


def mem_alloc(bytes: int) -> DeviceAllocation:  # noqa: A002 - pycuda's parameter name
    _require_context("cuMemAlloc")
    return DeviceAllocation(_dev.malloc(int(bytes)), int(bytes))


def pagelocked_empty(shape, dtype, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    _require_context("cuMemHostAlloc")
    _dev.record("pagelocked_empty", shape=tuple(np.atleast_1d(shape)), dtype=np.dtype(dtype).name)
    return np.empty(shape, dtype, order=order)


class Stream:
    def __init__(self, flags: int = 0):
        _require_context("cuStreamCreate")
        self.handle = _dev.new_stream()

    def synchronize(self) -> None:
        _require_context("cuStreamSynchronize")
        _dev.record("stream_synchronize", handle=self.handle)

    def __del__(self):
        _dev.destroy_stream(self.handle)


def _stream_handle(stream) -> int:
    return 0 if stream is None else int(stream.handle)


def memcpy_htod_async(dest, src, stream=None) -> None:
    _require_context("cuMemcpyHtoDAsync")
    data = np.ascontiguousarray(src).tobytes()
    _dev.write(int(dest), data)
    _dev.record("memcpy_htod", ptr=int(dest), nbytes=len(data), stream=_stream_handle(stream))


def memcpy_dtoh_async(dest, src, stream=None) -> None:
    _require_context("cuMemcpyDtoHAsync")
    if not (isinstance(dest, np.ndarray) and dest.flags.c_contiguous and dest.flags.writeable):
        raise TypeError("memcpy_dtoh_async: dest must be a writable C-contiguous numpy array")
    data = _dev.read(int(src), dest.nbytes)
    dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
    _dev.record("memcpy_dtoh", ptr=int(src), nbytes=dest.nbytes, stream=_stream_handle(stream))
