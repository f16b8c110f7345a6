"""The background plane under the part: fitted per frame, fitted once per site, checked per frame,
and carried through the poses training simulates.

A plane in the scene has 1/z linear in the pixel coordinates (any pinhole camera), so every
plane here is three coefficients: 1/z = a*u + b*v + c, with u, v the model grid's pixel centres
mapped to [-1, 1] (after the ROI crop and the resize to S x S).

- `fit_plane_inverse_depth`: RANSAC + least squares on one frame's border band (the per-frame
  fit, used when `PreprocessParams.plane` is None).
- `fit_site_plane`: one plane for a fixed camera over a fixed conveyor, robust over many captures;
  None when the captures do not share one (a moving camera, or generated scenes with random tilt).
- `plane_grid`: the per-pixel values a given plane needs, computed once per (plane, size) and
  cached, so a frame costs a few passes at model resolution.
- `check_plane`: does this frame's background still lie on the plane? A fixed sample of the
  border band, well under a tenth of a millisecond.
- `plane_for_pose`: the plane of a rotated / flipped capture, as training's pose augmentation
  makes them (convert/train.py rotate_capture).

numpy and OpenCV only (this runs on the Jetson).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

Plane = tuple[float, float, float]

# Border-band points per frame in a plane check: enough that the shares are within a few per
# cent, few enough that the check costs microseconds.
CHECK_SAMPLES = 1024
# Fewer measured points than this in the band and a check reports no shares (not "off").
CHECK_MIN_POINTS = 32
# A site plane is kept only when it explains each training capture's border band nearly as well
# as the capture's own fit: the median loss of inlier share over the captures must stay below this.
SITE_MAX_MEDIAN_LOSS = 0.05
# Border points per capture pooled into the site plane's least-squares polish.
SITE_POINTS_PER_CAPTURE = 3000


def _read_only(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


@lru_cache(maxsize=4)
def model_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """u, v (S x S float32, read-only): the model pixels' centres mapped to [-1, 1]."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    u, v = np.meshgrid(c, c)
    _read_only(u, v)
    return u, v


@lru_cache(maxsize=4)
def border_distance(size: int) -> np.ndarray:
    """Each model pixel's distance to the nearest image border, as a fraction of the side (read-only)."""
    u, v = model_grid(size)
    d = np.minimum(np.minimum(u + 1, 1 - u), np.minimum(v + 1, 1 - v)) / 2
    _read_only(d)
    return d


def fit_plane_inverse_depth(
    z: np.ndarray, valid: np.ndarray, border_frac: float, inlier_m: float, iters: int, seed: int
) -> np.ndarray | None:
    """Fit 1/z = a*u + b*v + c robustly; returns (a, b, c) or None.

    Points come from the border band first (the part rests inside it); when too
    few are measured there, from everywhere. RANSAC scores inliers in metres.
    """
    size = z.shape[0]
    u, v = model_grid(size)
    cand = valid & (border_distance(size) < border_frac)
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
    return _polish(A, w, zz, best, inlier_m)


def _polish(A: np.ndarray, w: np.ndarray, zz: np.ndarray, plane: np.ndarray, inlier_m: float) -> np.ndarray:
    """Least squares on the inliers of the current plane, twice (inliers scored in metres)."""
    for _ in range(2):
        with np.errstate(divide="ignore", invalid="ignore"):
            inl = np.abs(zz - 1.0 / (A @ plane)) < inlier_m
        if inl.sum() < 3:
            break
        plane = np.linalg.lstsq(A[inl], w[inl], rcond=None)[0]
    return plane.astype(np.float64)


# ----------------------------------------------------------------------------- per-pixel grid


@dataclass(frozen=True)
class PlaneGrid:
    """What a fixed plane costs once per (plane, size) instead of once per frame.

    `z_plane` is the definition's float64 plane depth (1 / (a*u + b*v + c) over the float32
    grid), so the height comes out bit for bit as the straightforward definition gives it.
    `sample` is the border-band sample of the plane check, `sample_z` the plane's depth there.
    """

    plane: Plane
    z_plane: np.ndarray  # S x S float64
    c: float  # the plane's 1/z at the image centre: height = (1 - z / z_plane) / c
    sample: np.ndarray  # flat indices into the S x S grid
    sample_z: np.ndarray  # float64 plane depth at `sample`


@lru_cache(maxsize=4)
def _check_sample(size: int, border_frac: float) -> np.ndarray:
    """The plane check's pixels: a fixed, evenly spread subset of the border band."""
    band = np.flatnonzero(border_distance(size) < border_frac)
    if band.size > CHECK_SAMPLES:
        band = band[np.linspace(0, band.size - 1, CHECK_SAMPLES).round().astype(np.int64)]
    _read_only(band)
    return band


def _build_grid(plane: Plane, size: int, border_frac: float) -> PlaneGrid:
    a, b, c = (np.float64(x) for x in plane)  # float64 coefficients: the grid sums in float64
    u, v = model_grid(size)
    with np.errstate(divide="ignore"):
        z_plane = 1.0 / (a * u + b * v + c)
    sample = _check_sample(size, border_frac)
    sample_z = z_plane.ravel()[sample]
    _read_only(z_plane, sample_z)
    return PlaneGrid(plane=plane, z_plane=z_plane, c=float(c), sample=sample, sample_z=sample_z)


_cached_grid = lru_cache(maxsize=8)(_build_grid)


def plane_grid(plane: Sequence[float], size: int, border_frac: float, cache: bool = True) -> PlaneGrid:
    """The PlaneGrid of `plane` at model size `size` (read-only arrays). A fixed plane's grid is
    cached; a plane fitted on one frame is not (cache=False), so it never evicts the site's."""
    key = (tuple(float(x) for x in plane), int(size), float(border_frac))
    return _cached_grid(*key) if cache else _build_grid(*key)


# ----------------------------------------------------------------------------- per-frame check


def check_plane(z: np.ndarray, valid: np.ndarray, grid: PlaneGrid, inlier_m: float) -> dict:
    """How well this frame's border band still lies on the plane (a fixed sample of its pixels).

    Residual r = z - z_plane in metres along the ray (as RANSAC scores it); r > 0 is farther
    from the camera than the plane, where nothing on a conveyor can be.

    - plane_points: measured sample points;
    - plane_inlier_fraction: share with |r| < inlier_m;
    - plane_below_fraction: share with r > inlier_m (behind the background: the camera moved
      away or tilted; a part on the belt only ever adds points in front of it);
    - plane_residual_m: the median r (a part covering less than half the band does not move it).

    The shares and the residual are None when fewer than CHECK_MIN_POINTS points are measured.
    """
    ok = valid.ravel()[grid.sample]
    n = int(np.count_nonzero(ok))
    out = {"plane_points": n, "plane_inlier_fraction": None, "plane_below_fraction": None,
           "plane_residual_m": None}
    if n < CHECK_MIN_POINTS:
        return out
    r = z.ravel()[grid.sample][ok] - grid.sample_z[ok]
    out["plane_inlier_fraction"] = float(np.count_nonzero(np.abs(r) < inlier_m)) / n
    out["plane_below_fraction"] = float(np.count_nonzero(r > inlier_m)) / n
    out["plane_residual_m"] = _median(r)
    return out


def _median(x: np.ndarray) -> float:
    """np.median of a 1-D array by one partition (np.median's own checks cost more than the work)."""
    k = x.size // 2
    if x.size % 2:
        return float(np.partition(x, k)[k])
    p = np.partition(x, (k - 1, k))
    return 0.5 * (float(p[k - 1]) + float(p[k]))


# ----------------------------------------------------------------------------- site plane


def _band_points(z: np.ndarray, valid: np.ndarray, border_frac: float, rng: np.random.Generator):
    """Up to SITE_POINTS_PER_CAPTURE measured border-band points: (design rows [u, v, 1], z)."""
    size = z.shape[0]
    idx = np.flatnonzero(valid & (border_distance(size) < border_frac))
    if idx.size > SITE_POINTS_PER_CAPTURE:
        idx = np.sort(rng.choice(idx, SITE_POINTS_PER_CAPTURE, replace=False))
    u, v = model_grid(size)
    A = np.stack([u.ravel()[idx], v.ravel()[idx], np.ones(idx.size, np.float32)], 1).astype(np.float64)
    return A, z.ravel()[idx].astype(np.float64)


def _inlier_share(A: np.ndarray, zz: np.ndarray, plane, inlier_m: float) -> float:
    if zz.size == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(np.abs(zz - 1.0 / (A @ np.asarray(plane, np.float64))) < inlier_m))


@dataclass
class SitePlaneFit:
    """The outcome of `fit_site_plane`, with the numbers that decided it."""

    plane: Plane | None  # None: the captures share no plane (keep fitting one per frame)
    captures: int  # captures with a per-capture plane
    median_loss: float | None  # median over captures of (own-fit inlier share - site inlier share)
    worst_loss: float | None


def fit_site_plane(resized: Sequence[tuple[np.ndarray, np.ndarray]], border_frac: float, inlier_m: float,
                   iters: int, seed: int) -> SitePlaneFit:
    """One background plane for all captures of a fixed camera: (z, valid) pairs at model size.

    Each capture's own RANSAC plane, the coefficient-wise median of those (robust to a few odd
    captures), then least squares over the pooled border-band points of all captures that lie
    within `inlier_m` of it, twice. Pooling thousands of points per capture averages the
    per-capture fit noise away. The plane is kept only when each capture's border band fits it
    nearly as well as the capture's own plane (median loss of inlier share <=
    SITE_MAX_MEDIAN_LOSS); otherwise the captures do not share a plane and `plane` is None.
    """
    rng = np.random.default_rng(seed)
    own, pts = [], []
    for z, valid in resized:
        p = fit_plane_inverse_depth(z, valid, border_frac, inlier_m, iters, seed)
        if p is not None:
            own.append(p)
            pts.append(_band_points(z, valid, border_frac, rng))
    if not own:
        return SitePlaneFit(plane=None, captures=0, median_loss=None, worst_loss=None)
    start = np.median(np.stack(own), 0)
    A = np.concatenate([a for a, _ in pts])
    zz = np.concatenate([z for _, z in pts])
    site = _polish(A, 1.0 / zz, zz, start, inlier_m)
    losses = [_inlier_share(a, z, p, inlier_m) - _inlier_share(a, z, site, inlier_m) for (a, z), p in zip(pts, own)]
    median_loss, worst = float(np.median(losses)), float(np.max(losses))
    shared = median_loss <= SITE_MAX_MEDIAN_LOSS and bool(np.all(np.isfinite(site)))
    return SitePlaneFit(plane=tuple(float(x) for x in site) if shared else None, captures=len(own),
                        median_loss=median_loss, worst_loss=worst)


# ----------------------------------------------------------------------------- poses


def _crop_box(shape_hw: tuple[int, int], roi) -> tuple[int, int, int, int]:
    """(x0, y0, width, height) in pixels of the ROI crop, rounded as crop_roi rounds it."""
    h, w = shape_hw
    if roi is None:
        return 0, 0, w, h
    x0, y0, x1, y1 = roi
    cx0, cx1 = int(round(x0 * w)), int(round(x1 * w))
    cy0, cy1 = int(round(y0 * h)), int(round(y1 * h))
    return cx0, cy0, cx1 - cx0, cy1 - cy0


def _grid_to_pixels(shape_hw, roi) -> np.ndarray:
    """3 x 3: model-grid (u, v, 1) -> frame pixel coordinates (x, y, 1), pixel i's centre at i + 0.5."""
    x0, y0, cw, ch = _crop_box(shape_hw, roi)
    return np.array([[cw / 2, 0, x0 + cw / 2], [0, ch / 2, y0 + ch / 2], [0, 0, 1]], np.float64)


def _shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], np.float64)


def pose_pixel_map(shape_hw: tuple[int, int], angle: float, flip: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """(3 x 3 map from the posed frame's pixel coordinates to the source frame's, posed shape).

    Mirrors convert/train.py rotate_capture: a horizontal flip first, then a rotation by `angle`
    degrees counter-clockwise: np.rot90 for multiples of 90 (the shape swaps for odd ones),
    otherwise cv2.warpAffine about (w/2, h/2) in OpenCV's pixel coordinates (pixel centres on
    integers, hence the half-pixel shifts around it).
    """
    h, w = shape_hw
    to_src = np.eye(3)
    if flip:
        to_src = to_src @ np.array([[-1, 0, w], [0, 1, 0], [0, 0, 1]], np.float64)
    k = angle / 90.0
    if abs(k - round(k)) < 1e-9:
        for _ in range(int(round(k)) % 4):  # np.rot90 once: out[r, c] = in[c, w - 1 - r]
            to_src = to_src @ np.array([[0, -1, w], [1, 0, 0], [0, 0, 1]], np.float64)
            h, w = w, h
        return to_src, (h, w)
    m = np.vstack([cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), [0, 0, 1]])
    forward = _shift(0.5, 0.5) @ m @ _shift(-0.5, -0.5)
    return to_src @ np.linalg.inv(forward), (h, w)


def plane_for_pose(plane: Sequence[float], shape_hw: tuple[int, int], roi, angle: float, flip: bool) -> Plane:
    """The plane coefficients of a posed capture's model grid, given the source capture's.

    1/z is affine in the source pixel coordinates and a pose moves pixels by an affine map
    without changing their depth, so the posed plane is the source plane composed with the
    maps grid -> posed pixels -> source pixels -> source grid; the ROI crop and the non-square
    shape enter through the grid maps. Exact for multiples of 90 degrees; for other angles the
    nearest-neighbour warp samples the source within half a pixel of the exact point.
    """
    to_src, posed_hw = pose_pixel_map(shape_hw, angle, flip)
    src_from_grid = _grid_to_pixels(shape_hw, roi)
    posed_grid = np.linalg.inv(src_from_grid) @ to_src @ _grid_to_pixels(posed_hw, roi)
    out = np.asarray(plane, np.float64) @ posed_grid
    if not np.all(np.isfinite(out)):
        raise ValueError(f"plane {tuple(plane)} has no image under the pose (angle {angle}, flip {flip})")
    return (float(out[0]), float(out[1]), float(out[2]))
