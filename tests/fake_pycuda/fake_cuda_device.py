"""The fake GPU behind tests/fake_pycuda: shared by the fake `pycuda.driver`, the fake
cuda-python (`cuda.bindings.runtime`) and the fake `tensorrt`'s execute_async_v3.

Device memory is host bytearrays behind made-up, non-dereferenceable addresses; reading or
writing an address that was never allocated (or was freed) raises, so a wrong pointer in the
code under test is an error, not a crash. A CUDA context is "current" per thread: pushed by
pycuda's Context.push (a stack, as the driver API), or bound by cudaSetDevice (runtime API).

Knobs / asserts: GPU (name, compute capability) for the probes, CALLS (name, dict) in order,
allocated() for leak checks, reset().
"""
from __future__ import annotations

import threading

GPU = {"name": "Orin (fake)", "cc": (8, 7)}
CALLS: list = []

_BASE = 0x7F00_0000_0000
_lock = threading.Lock()
_mem: dict[int, bytearray] = {}
_streams: set[int] = set()
_next = [_BASE, 1]  # next device address, next stream handle
_tls = threading.local()


def reset() -> None:
    with _lock:
        CALLS.clear()
        _mem.clear()
        _streams.clear()
        _next[:] = [_BASE, 1]
    GPU.update(name="Orin (fake)", cc=(8, 7))
    _tls.__dict__.clear()


def record(name: str, **kw) -> None:
    CALLS.append((name, kw))


def calls(name: str) -> list:
    return [kw for n, kw in CALLS if n == name]


# contexts ------------------------------------------------------------------------------

def _stack() -> list:
    if not hasattr(_tls, "stack"):
        _tls.stack = []
    return _tls.stack


def push(ctx) -> None:
    _stack().append(ctx)
    record("ctx_push", thread=threading.get_ident())


def pop():
    st = _stack()
    if not st:
        raise RuntimeError("cuCtxPopCurrent failed: invalid device context (nothing pushed on this thread)")
    record("ctx_pop", thread=threading.get_ident())
    return st.pop()


def stack_depth() -> int:
    return len(_stack())


def set_device(device: int) -> None:
    _tls.runtime_device = device
    record("set_device", device=device, thread=threading.get_ident())


def context_current() -> bool:
    return bool(_stack()) or getattr(_tls, "runtime_device", None) is not None


def require_context(what: str) -> None:
    if not context_current():
        raise RuntimeError(f"{what} failed: invalid device context (no CUDA context current on this thread)")


# memory ---------------------------------------------------------------------------------

def malloc(nbytes: int) -> int:
    if nbytes <= 0:
        raise ValueError("fake cuda: allocation size must be positive")
    with _lock:
        ptr = _next[0]
        _next[0] += (nbytes + 255) // 256 * 256 + 256
        _mem[ptr] = bytearray(nbytes)
    record("malloc", ptr=ptr, nbytes=nbytes)
    return ptr


def free(ptr: int) -> None:
    with _lock:
        if int(ptr) not in _mem:
            raise RuntimeError(f"fake cuda: free of unknown device address {int(ptr):#x}")
        del _mem[int(ptr)]
    record("free", ptr=int(ptr))


def _buf(ptr: int, nbytes: int) -> bytearray:
    buf = _mem.get(int(ptr))
    if buf is None:
        raise RuntimeError(f"fake cuda: {int(ptr):#x} is not an allocated device address")
    if nbytes > len(buf):
        raise RuntimeError(f"fake cuda: {nbytes} bytes at {int(ptr):#x} overrun its {len(buf)}-byte allocation")
    return buf


def write(ptr: int, data: bytes) -> None:
    _buf(ptr, len(data))[: len(data)] = data


def read(ptr: int, nbytes: int) -> bytes:
    return bytes(_buf(ptr, nbytes)[:nbytes])


def allocated() -> dict[int, int]:
    return {p: len(b) for p, b in _mem.items()}


# streams ----------------------------------------------------------------------------------

def new_stream() -> int:
    with _lock:
        h = 0x5000 + _next[1]
        _next[1] += 1
        _streams.add(h)
    record("stream_create", handle=h)
    return h


def destroy_stream(handle: int) -> None:
    _streams.discard(int(handle))
    record("stream_destroy", handle=int(handle))


def stream_exists(handle) -> bool:
    return int(handle) in _streams
