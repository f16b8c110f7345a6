"""RGB-D preprocessing shared by training, calibration and the runtime.

One pure, deterministic function turns a raw capture (RGB uint8, depth in
metres with 0 = missing) into model inputs. Its parameters are a dataclass that
is saved with every trained model, so the Jetson computes exactly what
training saw.

Depth path, all at the model's resolution (cheap, and resolution-independent):
validity-aware resize -> robust background-plane fit on the image border
(RANSAC, then least squares on the inliers) -> height above the plane ->
fill missing points by normalised convolution -> foreground mask -> height
normalised by a scale fitted on training data -> 3-channel encoding that an
ImageNet encoder understands (see DEPTH_ENCODINGS).

The plane is fitted in inverse depth: for a pinhole camera a 3-D plane has
1/z linear in pixel coordinates, so no intrinsics are needed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Iterable

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# height:  grey height map replicated to 3 channels.
# normals: surface normal (nx, ny, nz) mapped to [0, 1], like a shaded render.
# normals_height: (nx, ny, height): local shape and absolute height together.
DEPTH_ENCODINGS = ("height", "normals", "normals_height")

PARAMS_VERSION = 1


@dataclass
class PreprocessParams:
    image_size: int = 256
    # Region of interest as fractions of the frame (x0, y0, x1, y1): a camera
    # setting for the line, not a model parameter. None = the whole frame.
    roi: tuple[float, float, float, float] | None = None
    rgb_mean: tuple[float, float, float] = IMAGENET_MEAN
    rgb_std: tuple[float, float, float] = IMAGENET_STD
    depth_encoding: str = "normals_height"
    plane_border_frac: float = 0.15
    plane_inlier_m: float = 0.002
    ransac_iters: int = 128
    ransac_seed: int = 0
    fg_min_height_m: float = 0.002
    # Fitted on normal training data by fit_depth_normalisation(); None means
    # "per image", which works but hides a globally too-tall or too-flat part.
    height_scale_m: float | None = None
    normal_gain: float | None = None
    version: int = PARAMS_VERSION

    def __post_init__(self) -> None:
        if self.depth_encoding not in DEPTH_ENCODINGS:
            raise ValueError(f"depth_encoding must be one of {DEPTH_ENCODINGS}, got {self.depth_encoding!r}")
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.roi is not None:
            self.roi = tuple(float(v) for v in self.roi)
            x0, y0, x1, y1 = self.roi
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(f"roi must be fractions x0<x1, y0<y1 in [0, 1], got {self.roi}")
        self.rgb_mean = tuple(float(v) for v in self.rgb_mean)
        self.rgb_std = tuple(float(v) for v in self.rgb_std)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing parameter(s): {unknown}")
        if d.get("version", PARAMS_VERSION) != PARAMS_VERSION:
            raise ValueError(f"preprocessing version {d.get('version')} not supported (expected {PARAMS_VERSION})")
        return cls(**d)


@dataclass
class Preprocessed:
    rgb: np.ndarray  # 3 x S x S float32, normalised
    depth: np.ndarray  # 3 x S x S float32, normalised like RGB
    foreground: np.ndarray  # S x S bool
    height: np.ndarray  # S x S float32, normalised height above the plane
    valid_fraction: float  # share of depth pixels that were measured
    plane_ok: bool  # False when no background plane could be fitted
    stats: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def crop_roi(img: np.ndarray, roi: tuple[float, float, float, float] | None) -> np.ndarray:
    if roi is None:
        return img
    h, w = img.shape[:2]
    x0, y0, x1, y1 = roi
    return img[int(round(y0 * h)) : int(round(y1 * h)), int(round(x0 * w)) : int(round(x1 * w))]


def resize_mask(mask: np.ndarray, size: int, roi=None) -> np.ndarray:
    """Ground-truth masks go through the same ROI and resize as the inputs."""
    m = crop_roi(mask.astype(np.uint8), roi)
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)


def resize_rgb(rgb: np.ndarray, size: int, roi=None) -> np.ndarray:
    return cv2.resize(crop_roi(rgb, roi), (size, size), interpolation=cv2.INTER_AREA)


def _resize_depth(depth: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Validity-aware area resize: missing points do not drag the mean to zero."""
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


def fit_plane_inverse_depth(
    z: np.ndarray, valid: np.ndarray, border_frac: float, inlier_m: float, iters: int, seed: int
) -> np.ndarray | None:
    """Fit 1/z = a*u + b*v + c robustly; returns (a, b, c) or None.

    Points come from the border band first (the part rests inside it); when too
    few are measured there, from everywhere. RANSAC scores inliers in metres.
    """
    size = z.shape[0]
    u, v = _grid(size)
    edge = np.minimum(np.minimum(u + 1, 1 - u), np.minimum(v + 1, 1 - v)) / 2
    cand = valid & (edge < border_frac)
    if cand.sum() < 64:
        cand = valid
    if cand.sum() < 16:
        return None
    idx = np.flatnonzero(cand)
    rng = np.random.default_rng(seed)
    if idx.size > 3000:  # residuals over a fixed subset: fast and deterministic
        idx = np.sort(rng.choice(idx, 3000, replace=False))
    A = np.stack([u.ravel()[idx], v.ravel()[idx], np.ones(idx.size, np.float32)], 1).astype(np.float64)
    w = 1.0 / z.ravel()[idx].astype(np.float64)
    zz = z.ravel()[idx].astype(np.float64)
    tri = rng.integers(0, idx.size, size=(iters, 3))
    M, y = A[tri], w[tri]
    det = np.linalg.det(M)
    good = np.abs(det) > 1e-9
    if not good.any():
        return None
    coef = np.linalg.solve(M[good], y[good][..., None])[..., 0]  # K x 3
    pred = A @ coef.T  # N x K
    with np.errstate(divide="ignore", invalid="ignore"):
        resid = np.abs(zz[:, None] - 1.0 / pred)
    score = np.where(np.isfinite(resid), resid < inlier_m, False).sum(0)
    best = coef[int(np.argmax(score))]
    for _ in range(2):  # least-squares refinement on the inliers of the current fit
        with np.errstate(divide="ignore", invalid="ignore"):
            inl = np.abs(zz - 1.0 / (A @ best)) < inlier_m
        if inl.sum() < 3:
            break
        best = np.linalg.lstsq(A[inl], w[inl], rcond=None)[0]
    return best.astype(np.float64)


def fill_missing(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill unmeasured pixels by normalised convolution at growing scales."""
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
    """Height in metres above the fitted plane (filled), foreground, validity."""
    z, valid = _resize_depth(crop_roi(depth, params.roi), params.image_size)
    plane = fit_plane_inverse_depth(
        z, valid, params.plane_border_frac, params.plane_inlier_m, params.ransac_iters, params.ransac_seed
    )
    if plane is None:
        size = params.image_size
        return np.zeros((size, size), np.float32), np.zeros((size, size), bool), valid, False
    u, v = _grid(params.image_size)
    with np.errstate(divide="ignore"):
        z_plane = 1.0 / (plane[0] * u + plane[1] * v + plane[2])
    # d * (1 - z / z_plane) is the distance to the plane along its normal (d = the
    # plane's distance from the camera); 1 / plane[2] stands in for d / cos(tilt),
    # so a flat top reads flat whatever the tilt and image position.
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


def encode_depth(height_m: np.ndarray, fg: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
    """Normalised height and the 3-channel [0, 1] image fed to the encoder."""
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


def rgb_input(rgb_s: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """RGB uint8 at model resolution -> the normalised 3 x S x S model input."""
    return _to_chw(rgb_s.astype(np.float32) / 255.0, params.rgb_mean, params.rgb_std)


def depth_input(height_m: np.ndarray, fg: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
    """Height above the plane (metres) at model resolution -> (depth 3 x S x S model input,
    normalised height S x S)."""
    hn, enc = encode_depth(height_m, fg, params)
    return _to_chw(enc, params.rgb_mean, params.rgb_std), hn


# rgb_input and depth_input are the last step of preprocess(), public so training can edit a
# view (pseudo-anomalies) and encode it exactly as the runtime encodes a capture.


def preprocess(rgb: np.ndarray, depth: np.ndarray, params: PreprocessParams) -> Preprocessed:
    """Raw capture -> model inputs. Pure and deterministic."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be HxWx3 uint8, got shape {rgb.shape}")
    if depth.shape != rgb.shape[:2]:
        raise ValueError(f"depth {depth.shape} and rgb {rgb.shape[:2]} differ: align depth to colour first")
    height_m, fg, valid, plane_ok = height_above_plane(depth, params)
    depth_in, hn = depth_input(height_m, fg, params)
    rgb_in = rgb_input(resize_rgb(rgb, params.image_size, params.roi), params)
    return Preprocessed(
        rgb=rgb_in,
        depth=depth_in,
        foreground=fg,
        height=hn,
        valid_fraction=float(valid.mean()),
        plane_ok=plane_ok,
    )


def fit_depth_normalisation(depths: Iterable[np.ndarray], params: PreprocessParams) -> PreprocessParams:
    """Fit height scale and normal gain on normal training depth maps.

    Medians over images, so one odd capture does not set the scale.
    """
    scales, heights = [], []
    for d in depths:
        h, fg, _, ok = height_above_plane(d, params)
        if ok and fg.sum() > 16:
            scales.append(float(np.percentile(h[fg], 99)))
            heights.append((h, fg))
    if not scales:
        raise ValueError("no training depth map had a fittable plane and a foreground: check the depth data")
    scale = float(np.median(scales))
    grads = []
    for h, fg in heights:
        gm = _gradient_magnitude(np.clip(h / scale, -0.25, 1.25).astype(np.float32))
        grads.append(float(np.percentile(gm[fg], 90)))
    gain = 1.0 / max(float(np.median(grads)), 1e-3)
    out = PreprocessParams.from_dict({**params.to_dict(), "height_scale_m": scale, "normal_gain": gain})
    return out
