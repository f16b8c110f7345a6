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


def _clean_depth(depth: np.ndarray, finite: bool) -> np.ndarray:
    """Depth as float32 in a scratch buffer with 0, negative values and -inf set to 0; with
    `finite`, NaN and +inf too (two more passes, needed only when the frame has them)."""
    clean = scratch("clean", depth.shape[:2])
    src = depth
    if depth.dtype != np.float32:
        np.copyto(clean, depth, casting="unsafe")
        src = clean
    if finite:
        cv2.threshold(src, _FLT_MAX, 0, cv2.THRESH_TOZERO_INV, dst=clean)  # +inf -> 0; NaN passes
        cv2.patchNaNs(clean, 0)
        src = clean
    cv2.threshold(src, 0, 0, cv2.THRESH_TOZERO, dst=clean)  # <= 0 and -inf -> 0
    return clean


def _area_resize(depth: np.ndarray, size: int, finite: bool) -> tuple[np.ndarray, np.ndarray]:
    """(sum of measured depth, share measured) per model pixel, both area-resized (scratch)."""
    clean = _clean_depth(depth, finite)
    ones = scratch("ones", clean.shape)
    cv2.threshold(clean, 0, 1, cv2.THRESH_BINARY, dst=ones)
    z, den = scratch("z", (size, size)), scratch("den", (size, size))
    cv2.resize(clean, (size, size), dst=z, interpolation=cv2.INTER_AREA)
    cv2.resize(ones, (size, size), dst=den, interpolation=cv2.INTER_AREA)
    return z, den


def resize_depth_scratch(depth: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validity-aware area resize: (z, valid, valid_f). z (float32 metres, 0 where not measured)
    and valid_f (float32 0/1) are scratch; valid (bool) is fresh.

    A model pixel is measured when more than half of its footprint is; z is the mean of the
    measured points in it. Depth and validity are resized separately, as the definition does:
    one two-channel resize is faster, but OpenCV's integer-factor area path sums two channels in
    another order than one, so it would not give the same bits on every frame size. A NaN or
    +inf anywhere in the frame reaches the resized sum (every source pixel has a weight in it,
    and NaN * 0 is NaN), so frames without them skip the passes that clear them.
    """
    z, den = _area_resize(depth, size, finite=False)
    if np.issubdtype(depth.dtype, np.floating) and not cv2.checkRange(z)[0]:
        z, den = _area_resize(depth, size, finite=True)
    valid_f = scratch("valid_f", (size, size))
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
    weight is), the weights' box sums are pixel counts (exact from the 0/1 mask as uint8), and a
    pixel filled takes num / den (den >= 1) added to its 0: the definition's values, without its
    masked gathers.
    """
    shape = out.shape
    todo = np.logical_not(valid, out=scratch("todo", shape, bool))
    if not todo.any():
        return out
    done = scratch("done", shape, bool)
    np.copyto(done, valid)
    num, den, hit = scratch("num", shape), scratch("den_box", shape), scratch("hit", shape, bool)
    k, limit = 3, 2 * max(shape)
    while k <= limit:
        cv2.boxFilter(out, -1, (k, k), dst=num, normalize=False, borderType=cv2.BORDER_REFLECT)
        cv2.boxFilter(done.view(np.uint8), cv2.CV_32F, (k, k), dst=den, normalize=False,
                      borderType=cv2.BORDER_REFLECT)
        np.greater(den, 0, out=hit)
        hit &= todo
        np.maximum(den, 1.0, out=den)
        np.divide(num, den, out=num)
        num *= hit
        out += num
        todo ^= hit
        if not todo.any():
            break
        done |= hit
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


def slopes_scratch(hn: np.ndarray, gain: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sx, sy, nz), scratch: the height map's slopes -g*gx and -g*gy (3 x 3 Sobel / 8, reflected
    borders) and nz = 1 / sqrt(1 + sx^2 + sy^2). The surface normal is (sx*nz, sy*nz, nz)."""
    sx, sy, nz = (scratch(n, hn.shape) for n in ("sx", "sy", "nz"))
    cv2.Sobel(hn, cv2.CV_32F, 1, 0, dst=sx, ksize=3, scale=-gain / 8.0, borderType=cv2.BORDER_REFLECT)
    cv2.Sobel(hn, cv2.CV_32F, 0, 1, dst=sy, ksize=3, scale=-gain / 8.0, borderType=cv2.BORDER_REFLECT)
    np.multiply(sx, sx, out=nz)
    cv2.accumulateSquare(sy, nz)
    nz += np.float32(1.0)
    cv2.sqrt(nz, dst=nz)
    np.reciprocal(nz, out=nz)
    return sx, sy, nz


def encode_into(out: np.ndarray, hn: np.ndarray, encoding: str, gain: float | None, norm) -> None:
    """The 3-channel [0, 1] depth encoding of the normalised height `hn` into `out`
    (3 x S x S float32), each channel then normalised (x - mean) / std with `norm`'s float32
    (mean, std) pairs. `gain` is the normal gain (unused by "height").

    A normal component n in [-1, 1] maps to (n + 1) / 2, so its channel is
    n * (0.5 / std) + (0.5 - mean) / std: one scaled product and one sum per channel."""
    if encoding != "height":
        sx, sy, nz = slopes_scratch(hn, gain)
        for ch, slope in enumerate((sx, sy)):
            m, s = norm[ch]
            cv2.multiply(slope, nz, dst=out[ch], scale=float(0.5 / s))
            out[ch] += np.float32((0.5 - m) / s)
        if encoding == "normals":
            m, s = norm[2]
            np.multiply(nz, np.float32(0.5 / s), out=out[2])
            out[2] += np.float32((0.5 - m) / s)
            return
    clip01 = np.clip(hn, 0.0, 1.0, out=scratch("clip01", hn.shape))
    for ch in range(0 if encoding == "height" else 2, 3):
        m, s = norm[ch]  # exactly the definition's two roundings
        np.subtract(clip01, m, out=out[ch])
        np.divide(out[ch], s, out=out[ch])


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
    if rgb_s.dtype != np.uint8:  # not a camera image: the definition's arithmetic as it stands
        x = rgb_s.astype(np.float32) / 255.0
        for ch, (m, s) in enumerate(channel_norm(mean, std)):
            out[ch] = (x[..., ch] - m) / s
        return
    tables = _rgb_tables(mean, std)
    planes = [scratch(f"rgb{c}", rgb_s.shape[:2], np.uint8) for c in range(3)]
    cv2.split(rgb_s, planes)
    for ch in range(3):
        cv2.LUT(planes[ch], tables[ch], dst=out[ch])
