"""The per-pixel steps of edge.preprocess, written for speed.

Each step computes what tests/preprocess_reference.py defines (bit for bit, except the
normals' last float32 roundings), in fewer passes: OpenCV where one call is one pass, numpy
in place, float32 except the height's float64 quotient, no masked gathers at full resolution.

Intermediates live in per-thread scratch buffers reused from frame to frame: a fresh array of
a megabyte costs its page faults on every frame, more than the arithmetic on it. A function
here that returns a scratch buffer says so; the caller must copy what it keeps, and only the
thread that asked may use it (the next call overwrites it). What preprocess() returns is
always freshly allocated.
"""
from __future__ import annotations

import threading
from functools import lru_cache

import cv2
import numpy as np

from edge.background_plane import PlaneGrid

_FLT_MAX = float(np.finfo(np.float32).max)
_KERNEL5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


class _Scratch(threading.local):
    """Named buffers of this thread, kept while the frame size stays (a new size starts afresh
    once the set grows past a few sizes' worth)."""

    def __init__(self) -> None:
        self.arrays: dict = {}

    def __call__(self, name: str, shape: tuple, dtype=np.float32) -> np.ndarray:
        key = (name, tuple(shape), np.dtype(dtype).str)
        a = self.arrays.get(key)
        if a is None:
            if len(self.arrays) >= 64:
                self.arrays.clear()
            a = self.arrays[key] = np.empty(shape, dtype)
        return a


scratch = _Scratch()


# ----------------------------------------------------------------------------- depth resize


def _clean_depth(depth: np.ndarray) -> np.ndarray:
    """Depth as float32 with every missing point (0, negative, NaN, +-inf) set to 0. Scratch."""
    clean = scratch("clean", depth.shape[:2])
    if depth.dtype != np.float32:
        np.copyto(clean, depth, casting="unsafe")
        src = clean
    else:
        src = depth
    if np.issubdtype(depth.dtype, np.floating):
        cv2.threshold(src, _FLT_MAX, 0, cv2.THRESH_TOZERO_INV, dst=clean)  # +inf -> 0; NaN passes
        cv2.patchNaNs(clean, 0)
        src = clean
    cv2.threshold(src, 0, 0, cv2.THRESH_TOZERO, dst=clean)  # <= 0 and -inf -> 0
    return clean


def resize_depth_scratch(depth: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validity-aware area resize: (z, valid, valid_f). z (float32 metres, 0 where not measured)
    and valid_f (float32 0/1) are scratch; valid (bool) is fresh.

    A model pixel is measured when more than half of its footprint is; z is the mean of the
    measured points in it. Depth and validity are resized separately, as the definition does:
    one two-channel resize is faster, but OpenCV's integer-factor area path sums two channels in
    another order than one, so it would not give the same bits on every frame size.
    """
    clean = _clean_depth(depth)
    ones = scratch("ones", clean.shape)
    cv2.threshold(clean, 0, 1, cv2.THRESH_BINARY, dst=ones)
    z, den, valid_f = (scratch(n, (size, size)) for n in ("z", "den", "valid_f"))
    cv2.resize(clean, (size, size), dst=z, interpolation=cv2.INTER_AREA)
    cv2.resize(ones, (size, size), dst=den, interpolation=cv2.INTER_AREA)
    valid = den > 0.5
    cv2.threshold(den, 0.5, 1, cv2.THRESH_BINARY, dst=valid_f)
    np.maximum(den, 1e-6, out=den)
    np.divide(z, den, out=z)
    z *= valid_f
    return z, valid, valid_f


# ----------------------------------------------------------------------------- height, fill, foreground


def height_from_plane(z: np.ndarray, valid_f: np.ndarray, grid: PlaneGrid) -> np.ndarray:
    """Height above the plane in metres (fresh float32), 0 where valid_f is 0.

    ``(1 - z / z_plane) / c`` in float64, rounded once: the definition bit for bit. Every z is
    finite (0 where not measured), so multiplying by valid_f zeroes exactly those.
    """
    t = scratch("t64", z.shape, np.float64)
    np.divide(z, grid.z_plane, out=t)
    np.subtract(1.0, t, out=t)
    np.divide(t, grid.c, out=t)
    h = t.astype(np.float32)
    h *= valid_f
    return h


def fill_in_place(out: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill unmeasured pixels of `out` (float32, 0 wherever not valid) by normalised convolution
    at growing scales (box filters 3, 7, 15, ...), in place.

    Box sums of `out` are the definition's box sums of out * weight (out is 0 wherever the
    weight is), and a pixel filled takes num / den (den a pixel count >= 1) added to its 0: the
    definition's values, without its masked gathers.
    """
    shape = out.shape
    todo = np.logical_not(valid, out=scratch("todo", shape, bool))
    if not todo.any():
        return out
    w = scratch("w", shape)
    np.copyto(w, valid)
    num, den, hit = scratch("num", shape), scratch("den_box", shape), scratch("hit", shape, bool)
    k, limit = 3, 2 * max(shape)
    while k <= limit:
        cv2.boxFilter(out, -1, (k, k), dst=num, normalize=False, borderType=cv2.BORDER_REFLECT)
        cv2.boxFilter(w, -1, (k, k), dst=den, normalize=False, borderType=cv2.BORDER_REFLECT)
        np.greater(den, 0, out=hit)
        hit &= todo
        np.maximum(den, 1.0, out=den)
        np.divide(num, den, out=num)
        num *= hit
        out += num
        todo ^= hit
        if not todo.any():
            break
        w += hit
        k = 2 * k + 1
    return out


def foreground(height_m: np.ndarray, min_height_m: float) -> np.ndarray:
    """height > min_height_m, then a 5 x 5 elliptic open and close (fresh bool)."""
    fg = np.greater(height_m, min_height_m)
    u8 = fg.view(np.uint8)
    opened = scratch("opened", u8.shape, np.uint8)
    cv2.morphologyEx(u8, cv2.MORPH_OPEN, _KERNEL5, dst=opened)
    cv2.morphologyEx(opened, cv2.MORPH_CLOSE, _KERNEL5, dst=u8)
    return fg


# ----------------------------------------------------------------------------- encodings


def normals_scratch(hn: np.ndarray, gain: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The surface normal of the height map (nx, ny, nz in [-1, 1], scratch): the slopes -g*gx
    and -g*gy (3 x 3 Sobel / 8, reflected borders) and 1, over sqrt(1 + (g*gx)^2 + (g*gy)^2)."""
    sx, sy, nz = (scratch(n, hn.shape) for n in ("nx", "ny", "nz"))
    cv2.Sobel(hn, cv2.CV_32F, 1, 0, dst=sx, ksize=3, scale=-gain / 8.0, borderType=cv2.BORDER_REFLECT)
    cv2.Sobel(hn, cv2.CV_32F, 0, 1, dst=sy, ksize=3, scale=-gain / 8.0, borderType=cv2.BORDER_REFLECT)
    np.multiply(sx, sx, out=nz)
    cv2.accumulateSquare(sy, nz)
    nz += np.float32(1.0)
    cv2.sqrt(nz, dst=nz)
    np.reciprocal(nz, out=nz)
    sx *= nz
    sy *= nz
    return sx, sy, nz


def encode_into(out: np.ndarray, hn: np.ndarray, encoding: str, gain: float | None, norm) -> None:
    """The 3-channel [0, 1] depth encoding of the normalised height `hn` into `out`
    (3 x S x S float32), each channel then normalised (x - mean) / std with `norm`'s float32
    (mean, std) pairs. `gain` is the normal gain (unused by "height")."""
    channels: list = [None, None, None]  # None: the clipped height
    if encoding != "height":
        nx, ny, nz = normals_scratch(hn, gain)
        channels[:2] = nx, ny
        if encoding == "normals":
            channels[2] = nz
    clip01 = None
    if any(c is None for c in channels):
        clip01 = np.clip(hn, 0.0, 1.0, out=scratch("clip01", hn.shape))
    for ch, n in enumerate(channels):
        m, s = norm[ch]
        if n is None:  # exactly the definition's two roundings
            np.subtract(clip01, m, out=out[ch])
            np.divide(out[ch], s, out=out[ch])
        else:  # ((n + 1) / 2 - m) / s = n * (0.5 / s) + (0.5 - m) / s
            np.multiply(n, np.float32(0.5 / s), out=out[ch])
            out[ch] += np.float32((0.5 - m) / s)


@lru_cache(maxsize=8)
def channel_norm(mean: tuple, std: tuple) -> tuple[tuple[np.float32, np.float32], ...]:
    """Per channel (mean, std) as float32, as the definition subtracts and divides them."""
    return tuple((np.float32(m), np.float32(s)) for m, s in zip(mean, std))


@lru_cache(maxsize=8)
def _rgb_tables(mean: tuple, std: tuple) -> tuple[np.ndarray, ...]:
    """Per channel, uint8 -> model input, each of the 256 values computed as the definition
    computes it: (x / 255 - mean) / std in float32."""
    x = np.arange(256, dtype=np.float32) / 255.0
    tables = tuple(((x - m) / s).reshape(1, 256) for m, s in channel_norm(mean, std))
    for t in tables:
        t.setflags(write=False)
    return tables


def rgb_into(out: np.ndarray, rgb_s: np.ndarray, mean: tuple, std: tuple) -> None:
    """RGB uint8 at model resolution -> the normalised 3 x S x S model input in `out`: one table
    look-up per value."""
    tables = _rgb_tables(mean, std)
    planes = [scratch(f"rgb{c}", rgb_s.shape[:2], np.uint8) for c in range(3)]
    cv2.split(rgb_s, planes)
    for ch in range(3):
        cv2.LUT(planes[ch], tables[ch], dst=out[ch])
