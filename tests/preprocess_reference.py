"""The reference definition of preprocessing: the straightforward code edge.preprocess was
before it was made fast, with one addition, the site plane (`params.plane`), used as given
instead of fitted when it is set.

edge.preprocess.preprocess must equal `reference_preprocess` to 1e-4 (absolute) on the rgb and
depth model inputs and the normalised height, with an identical foreground mask
(tests/test_preprocess.py, docs/preprocessing.md "What identical means"). Keep this file
simple and slow: it is the definition, not an implementation to optimise.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.background_plane import fit_plane_inverse_depth
from edge.preprocess import Preprocessed, PreprocessParams, crop_roi, resize_rgb

MIN_MEASURED = 16  # fewer measured model pixels: no plane, like the per-frame fit


def _resize_depth(depth: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    valid = (d > 0).astype(np.float32)
    num = cv2.resize(d * valid, (size, size), interpolation=cv2.INTER_AREA)
    den = cv2.resize(valid, (size, size), interpolation=cv2.INTER_AREA)
    ok = den > 0.5
    z = np.where(ok, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)
    return z, ok


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c)


def fill_missing(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.where(valid, values, 0).astype(np.float32)
    todo = ~valid
    w = valid.astype(np.float32)
    k = 3
    while todo.any() and k <= 2 * max(values.shape):
        num = cv2.boxFilter(out * w, -1, (k, k), normalize=False, borderType=cv2.BORDER_REFLECT)
        den = cv2.boxFilter(w, -1, (k, k), normalize=False, borderType=cv2.BORDER_REFLECT)
        hit = todo & (den > 0)
        out[hit] = num[hit] / den[hit]
        w = np.where(hit, 1.0, w).astype(np.float32)
        todo &= ~hit
        k = 2 * k + 1
    return out


def _foreground(height_m: np.ndarray, min_height_m: float) -> np.ndarray:
    fg = (height_m > min_height_m).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, kernel)
    return fg.astype(bool)


def height_above_plane(depth: np.ndarray, params: PreprocessParams):
    z, valid = _resize_depth(crop_roi(depth, params.roi), params.image_size)
    size = params.image_size
    if params.plane is not None:
        plane = np.asarray(params.plane, np.float64) if valid.sum() >= MIN_MEASURED else None
    else:
        plane = fit_plane_inverse_depth(
            z, valid, params.plane_border_frac, params.plane_inlier_m, params.ransac_iters, params.ransac_seed
        )
    if plane is None:
        return np.zeros((size, size), np.float32), np.zeros((size, size), bool), valid, False
    u, v = _grid(size)
    with np.errstate(divide="ignore"):
        z_plane = 1.0 / (plane[0] * u + plane[1] * v + plane[2])
    height = np.where(valid, (1.0 - z / z_plane) / plane[2], 0).astype(np.float32)
    height = fill_missing(height, valid)
    return height, _foreground(height, params.fg_min_height_m), valid, True


def _normals(hn: np.ndarray, gain: float) -> np.ndarray:
    gx = cv2.Sobel(hn, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    gy = cv2.Sobel(hn, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    n = np.stack([-gain * gx, -gain * gy, np.ones_like(hn)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return (n + 1) * 0.5


def _gradient_magnitude(hn: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(hn, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(hn, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.hypot(gx, gy)


def encode_depth(height_m: np.ndarray, fg: np.ndarray, params: PreprocessParams):
    scale = params.height_scale_m
    if scale is None:
        scale = float(np.percentile(height_m[fg], 99)) if fg.any() else 1.0
    hn = np.clip(height_m / max(scale, 1e-6), -0.25, 1.25).astype(np.float32)
    if params.depth_encoding == "height":
        enc = np.repeat(np.clip(hn, 0, 1)[..., None], 3, -1)
    else:
        gain = params.normal_gain
        if gain is None:
            gm = _gradient_magnitude(hn)
            gain = 1.0 / max(float(np.percentile(gm[fg], 90)), 1e-3) if fg.any() else 1.0
        enc = _normals(hn, gain)
        if params.depth_encoding == "normals_height":
            enc[..., 2] = np.clip(hn, 0, 1)
    return hn, enc.astype(np.float32)


def _to_chw(img01: np.ndarray, mean, std) -> np.ndarray:
    x = (img01 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def reference_preprocess(rgb: np.ndarray, depth: np.ndarray, params: PreprocessParams) -> Preprocessed:
    height_m, fg, valid, plane_ok = height_above_plane(depth, params)
    hn, enc = encode_depth(height_m, fg, params)
    rgb_s = resize_rgb(rgb, params.image_size, params.roi)
    return Preprocessed(
        rgb=_to_chw(rgb_s.astype(np.float32) / 255.0, params.rgb_mean, params.rgb_std),
        depth=_to_chw(enc, params.rgb_mean, params.rgb_std),
        foreground=fg,
        height=hn,
        valid_fraction=float(valid.mean()),
        plane_ok=plane_ok,
    )


def max_differences(fast: Preprocessed, ref: Preprocessed) -> dict[str, float]:
    """Largest absolute difference per model input, and the count of differing mask pixels."""
    out = {k: float(np.max(np.abs(getattr(fast, k) - getattr(ref, k)))) for k in ("rgb", "depth", "height")}
    out["foreground_pixels"] = int(np.count_nonzero(fast.foreground != ref.foreground))
    out["valid_fraction"] = abs(fast.valid_fraction - ref.valid_fraction)
    return out
