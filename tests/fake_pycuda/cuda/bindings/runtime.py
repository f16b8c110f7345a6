"""A SMALL fake of the cuda-python CUDA runtime bindings the TensorRT backend uses.

Every function returns a tuple whose first item is a cudaError_t, as in cuda-python:
cudaSetDevice, cudaGetDeviceProperties, cudaMalloc, cudaFree, cudaMallocHost, cudaFreeHost,
cudaStreamCreate, cudaStreamDestroy, cudaStreamSynchronize, cudaMemcpyAsync, cudaGetErrorString.
Device memory lives in fake_cuda_device; host memory from cudaMallocHost is REAL host memory
(the runtime wraps it in numpy through its address), so host addresses are dereferenced here.
"""
from __future__ import annotations

import ctypes
import enum

import fake_cuda_device as _dev

FAKE = True


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStream_t:
    def __init__(self, handle: int = 0):
        self._handle = int(handle)

    def __int__(self) -> int:
        return self._handle

    def getPtr(self) -> int:
        return self._handle


class cudaDeviceProp:
    def __init__(self, name: str, cc):
        self.name = name.encode()
        self.major, self.minor = cc


_host: dict[int, ctypes.Array] = {}


def cudaGetErrorString(error):
    return cudaError_t.cudaSuccess, f"fake error {cudaError_t(error).name}".encode()


def cudaSetDevice(device: int):
    if device != 0:
        return (cudaError_t.cudaErrorInvalidDevice,)
    _dev.set_device(device)
    return (cudaError_t.cudaSuccess,)


def cudaGetDeviceProperties(device: int):
    if device != 0:
        return cudaError_t.cudaErrorInvalidDevice, None
    return cudaError_t.cudaSuccess, cudaDeviceProp(_dev.GPU["name"], _dev.GPU["cc"])


def cudaMalloc(size: int):
    if not _dev.context_current() or size <= 0:
        return cudaError_t.cudaErrorInvalidValue, 0
    return cudaError_t.cudaSuccess, _dev.malloc(int(size))


def cudaFree(devPtr):
    try:
        _dev.free(int(devPtr))
    except RuntimeError:
        return (cudaError_t.cudaErrorInvalidValue,)
    return (cudaError_t.cudaSuccess,)


def cudaMallocHost(size: int):
    if size <= 0:
        return cudaError_t.cudaErrorInvalidValue, 0
    buf = (ctypes.c_uint8 * int(size))()
    ptr = ctypes.addressof(buf)
    _host[ptr] = buf
    _dev.record("cudaMallocHost", ptr=ptr, nbytes=int(size))
    return cudaError_t.cudaSuccess, ptr


def cudaFreeHost(ptr):
    if _host.pop(int(ptr), None) is None:
        return (cudaError_t.cudaErrorInvalidValue,)
    _dev.record("cudaFreeHost", ptr=int(ptr))
    return (cudaError_t.cudaSuccess,)


def cudaStreamCreate():
    if not _dev.context_current():
        return cudaError_t.cudaErrorInvalidResourceHandle, None
    return cudaError_t.cudaSuccess, cudaStream_t(_dev.new_stream())


def cudaStreamDestroy(stream):
    if not _dev.stream_exists(int(stream)):
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    _dev.destroy_stream(int(stream))
    return (cudaError_t.cudaSuccess,)


def cudaStreamSynchronize(stream):
    if not _dev.stream_exists(int(stream)):
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    _dev.record("stream_synchronize", handle=int(stream))
    return (cudaError_t.cudaSuccess,)


def _host_range_ok(ptr: int, count: int) -> bool:
    for base, buf in _host.items():
        if base <= ptr and ptr + count <= base + ctypes.sizeof(buf):
            return True
    return False


def cudaMemcpyAsync(dst, src, count: int, kind, stream):
    if not _dev.context_current() or not _dev.stream_exists(int(stream)):
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    count = int(count)
    if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
        if not _host_range_ok(int(src), count):  # only pinned buffers from cudaMallocHost are read here
            return (cudaError_t.cudaErrorInvalidValue,)
        _dev.write(int(dst), ctypes.string_at(int(src), count))
        _dev.record("memcpy_htod", ptr=int(dst), nbytes=count, stream=int(stream))
    elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
        if not _host_range_ok(int(dst), count):
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), _dev.read(int(src), count), count)
        _dev.record("memcpy_dtoh", ptr=int(src), nbytes=count, stream=int(stream))
    else:
        return (cudaError_t.cudaErrorInvalidValue,)
    return (cudaError_t.cudaSuccess,)
