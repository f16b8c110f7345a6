"""RGB-D preprocessing shared by training, calibration and the runtime.

One pure, deterministic function turns a raw capture (RGB uint8, depth in
metres with 0 = missing) into model inputs. Its parameters are a dataclass that
is saved with every trained model, so the Jetson computes exactly what
training saw.

Depth path, all at the model's resolution (cheap, and resolution-independent):
validity-aware resize -> background plane (the site plane fitted once on the
training captures, or a robust fit on this frame's border when there is none)
-> height above the plane -> fill missing points by normalised convolution ->
foreground mask -> height normalised by a scale fitted on training data ->
3-channel encoding that an ImageNet encoder understands (see DEPTH_ENCODINGS).

The plane is in inverse depth: for a pinhole camera a 3-D plane has 1/z linear
in pixel coordinates, so no intrinsics are needed (edge/background_plane.py).

Speed: a 640x480 frame costs a few passes at full resolution (depth cleaning
and the area resizes) and a few dozen at model resolution
(edge/preprocess_kernels.py), and a site plane's per-pixel grid is computed once
(edge/background_plane.py). tests/preprocess_reference.py keeps the
straightforward definition these steps must equal (docs/preprocessing.md,
"What identical means").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Iterable

import cv2
import numpy as np

from edge.background_plane import check_plane, fit_plane_inverse_depth, fit_site_plane, plane_for_pose, plane_grid
from edge.preprocess_kernels import (
    channel_norm,
    encode_into,
    fill_in_place,
    foreground,
    height_from_plane,
    resize_depth_scratch,
    rgb_into,
    scratch,
)

__all__ = [
    "DEPTH_ENCODINGS", "IMAGENET_MEAN", "IMAGENET_STD", "PARAMS_VERSION", "PreprocessParams", "Preprocessed",
    "crop_roi", "depth_input", "encode_depth", "fill_missing", "fit_depth_normalisation",
    "fit_plane_inverse_depth", "height_above_plane", "params_for_pose", "params_for_sample", "POSE_KEY",
    "preprocess", "resize_depth",
    "resize_mask", "resize_rgb", "rgb_input",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# height:  grey height map replicated to 3 channels.
# normals: surface normal (nx, ny, nz) mapped to [0, 1], like a shaded render.
# normals_height: (nx, ny, height): local shape and absolute height together.
DEPTH_ENCODINGS = ("height", "normals", "normals_height")

PARAMS_VERSION = 1

# The fewest measured model pixels a frame needs for a height map: below it there is no plane
# (the per-frame fit gives up at the same count).
MIN_MEASURED = 16


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
    # The site's background plane, 1/z = a*u + b*v + c on the model grid (u, v in [-1, 1]),
    # fitted once over the training captures by fit_depth_normalisation(). None = fit a plane
    # on every frame's border band (slower; what runs saved before the site plane do).
    plane: tuple[float, float, float] | None = None

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
        if self.plane is not None:
            self.plane = tuple(float(v) for v in self.plane)
            if len(self.plane) != 3 or not np.all(np.isfinite(self.plane)):
                raise ValueError(f"plane must be three finite coefficients (a, b, c), got {self.plane}")
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
    # With a site plane: the plane check of edge.background_plane.check_plane (plane_points,
    # plane_inlier_fraction, plane_below_fraction, plane_residual_m). Empty without one.
    stats: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- resizing


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


def resize_depth(depth: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Validity-aware area resize: missing points (0, negative, NaN, inf) do not drag the mean
    to zero. Returns z (S x S float32 metres, 0 where not measured) and valid (S x S bool: more
    than half of the model pixel's footprint measured)."""
    z, valid, _ = resize_depth_scratch(depth, size)
    return z.copy(), valid


# ----------------------------------------------------------------------------- height, fill, foreground


def fill_missing(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill unmeasured pixels by normalised convolution at growing scales."""
    valid = np.asarray(valid, bool)
    return fill_in_place(np.where(valid, values, 0).astype(np.float32), valid)


@dataclass
class DepthResult:
    """The depth path up to the height map (what height_above_plane returns, plus the check)."""

    height: np.ndarray  # S x S float32 metres above the plane, filled
    foreground: np.ndarray  # S x S bool
    valid: np.ndarray  # S x S bool, measured model pixels
    plane_ok: bool
    stats: dict


def _height(z: np.ndarray, valid: np.ndarray, valid_f: np.ndarray, params: PreprocessParams):
    """(height, foreground, plane found) from a resized depth map; (None, None, False) when fewer
    than MIN_MEASURED pixels are measured or no plane can be fitted to them."""
    if np.count_nonzero(valid) < MIN_MEASURED:
        return None, None, False
    if params.plane is not None:
        grid = plane_grid(params.plane, params.image_size, params.plane_border_frac)
    else:
        fitted = fit_plane_inverse_depth(z, valid, params.plane_border_frac, params.plane_inlier_m,
                                         params.ransac_iters, params.ransac_seed)
        if fitted is None:
            return None, None, False
        grid = plane_grid(fitted, params.image_size, params.plane_border_frac, cache=False)
    height = fill_in_place(height_from_plane(z, valid_f, grid), valid)
    return height, foreground(height, params.fg_min_height_m), True


def depth_path(depth: np.ndarray, params: PreprocessParams) -> DepthResult:
    """Resize, plane (the site plane, or this frame's fit), height, fill, foreground; with a site
    plane also the plane check."""
    size = params.image_size
    z, valid, valid_f = resize_depth_scratch(crop_roi(depth, params.roi), size)
    stats = {}
    if params.plane is not None:
        grid = plane_grid(params.plane, size, params.plane_border_frac)
        stats = check_plane(z, valid, grid, params.plane_inlier_m)
    height, fg, ok = _height(z, valid, valid_f, params)
    if not ok:
        height, fg = np.zeros((size, size), np.float32), np.zeros((size, size), bool)
    return DepthResult(height, fg, valid, ok, stats)


def height_above_plane(depth: np.ndarray, params: PreprocessParams):
    """Height in metres above the plane (filled), foreground, validity, plane found."""
    r = depth_path(depth, params)
    return r.height, r.foreground, r.valid, r.plane_ok


# ----------------------------------------------------------------------------- encodings


def _gradient_magnitude(hn: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(hn, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(hn, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.hypot(gx, gy)


def _normalised_height(height_m: np.ndarray, fg: np.ndarray, params: PreprocessParams) -> np.ndarray:
    scale = params.height_scale_m
    if scale is None:
        scale = float(np.percentile(height_m[fg], 99)) if fg.any() else 1.0
    hn = np.divide(height_m, max(scale, 1e-6)).astype(np.float32, copy=False)
    return np.clip(hn, -0.25, 1.25, out=hn)


def _normal_gain(hn: np.ndarray, fg: np.ndarray, params: PreprocessParams) -> float:
    if params.normal_gain is not None:
        return params.normal_gain
    gm = _gradient_magnitude(hn)
    return 1.0 / max(float(np.percentile(gm[fg], 90)), 1e-3) if fg.any() else 1.0


def encode_depth(height_m: np.ndarray, fg: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
    """Normalised height and the 3-channel [0, 1] image fed to the encoder (H x W x 3)."""
    hn = _normalised_height(height_m, fg, params)
    out = np.empty((3,) + hn.shape, np.float32)
    encode_into(out, hn, params.depth_encoding, _normal_gain(hn, fg, params), channel_norm((0.0,) * 3, (1.0,) * 3))
    return hn, np.ascontiguousarray(out.transpose(1, 2, 0))


def depth_input(height_m: np.ndarray, fg: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
    """Height above the plane (metres) at model resolution -> (depth 3 x S x S model input,
    normalised height S x S)."""
    hn = _normalised_height(height_m, fg, params)
    out = np.empty((3,) + hn.shape, np.float32)
    encode_into(out, hn, params.depth_encoding, _normal_gain(hn, fg, params),
                channel_norm(params.rgb_mean, params.rgb_std))
    return out, hn


def rgb_input(rgb_s: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """RGB uint8 at model resolution -> the normalised 3 x S x S model input."""
    out = np.empty((3,) + rgb_s.shape[:2], np.float32)
    rgb_into(out, rgb_s, params.rgb_mean, params.rgb_std)
    return out


# rgb_input and depth_input are the last step of preprocess(), public so training can edit a
# view (pseudo-anomalies) and encode it exactly as the runtime encodes a capture.


def preprocess(rgb: np.ndarray, depth: np.ndarray, params: PreprocessParams) -> Preprocessed:
    """Raw capture -> model inputs. Pure and deterministic."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be HxWx3 uint8, got shape {rgb.shape}")
    if depth.shape != rgb.shape[:2]:
        raise ValueError(f"depth {depth.shape} and rgb {rgb.shape[:2]} differ: align depth to colour first")
    d = depth_path(depth, params)
    depth_in, hn = depth_input(d.height, d.foreground, params)
    size = params.image_size
    # into a reused buffer when uint8 (OpenCV returns a new array for any other type)
    rgb_s = cv2.resize(crop_roi(rgb, params.roi), (size, size), dst=scratch("rgb_s", (size, size, 3), np.uint8),
                       interpolation=cv2.INTER_AREA)
    rgb_in = rgb_input(rgb_s, params)
    return Preprocessed(
        rgb=rgb_in,
        depth=depth_in,
        foreground=d.foreground,
        height=hn,
        valid_fraction=np.count_nonzero(d.valid) / d.valid.size,
        plane_ok=d.plane_ok,
        stats=d.stats,
    )


# ----------------------------------------------------------------------------- fitted parameters


# RGBDSample.meta key of a posed training capture: (source shape (h, w), angle, flip), as
# convert/train.py's pose augmentation made it from the source capture.
POSE_KEY = "pose"


def params_for_pose(params: PreprocessParams, shape_hw: tuple[int, int], angle: float, flip: bool) -> PreprocessParams:
    """The parameters for a capture of shape `shape_hw` posed as convert/train.py rotate_capture
    poses it (flip first, then `angle` degrees): its site plane moved with the pixels. Without a
    site plane (per-frame fit) the parameters hold for every pose as they are."""
    if params.plane is None:
        return params
    return replace(params, plane=plane_for_pose(params.plane, tuple(shape_hw[:2]), params.roi, angle, flip))


def params_for_sample(params: PreprocessParams, sample) -> PreprocessParams:
    """`params` for an RGBDSample: moved to its pose when its meta has one (POSE_KEY)."""
    pose = sample.meta.get(POSE_KEY) if sample.meta else None
    return params if pose is None else params_for_pose(params, *pose)


def fit_depth_normalisation(depths: Iterable[np.ndarray], params: PreprocessParams,
                            site_plane: bool = True) -> PreprocessParams:
    """Fit the site plane, height scale and normal gain on normal training depth maps.

    The site plane (when `params` has none and `site_plane` is set) comes first, over all the
    captures (edge.background_plane.fit_site_plane); it stays None when they share no plane.
    The scale and gain are then measured on heights above the plane the runtime will use.
    Medians over images, so one odd capture does not set the scale.
    """
    size = params.image_size
    resized = [resize_depth(crop_roi(d, params.roi), size) for d in depths]
    if site_plane and params.plane is None and resized:
        fit = fit_site_plane(resized, params.plane_border_frac, params.plane_inlier_m, params.ransac_iters,
                             params.ransac_seed)
        params = replace(params, plane=fit.plane)
    scales, heights = [], []
    for z, valid in resized:
        h, fg, ok = _height(z, valid, valid.astype(np.float32), params)
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
    return PreprocessParams.from_dict({**params.to_dict(), "height_scale_m": scale, "normal_gain": gain})
