"""edge.preprocess on synthetic pinhole scenes built here with numpy.

Scenes: a pinhole camera (principal point at the image centre) looks at a plane n.X = d; a pixel's
ray is r = K^-1 [u, v, 1] = ((u - cx) / f, (v - cy) / f, 1), so z = d / (n . r), and 1/z is linear
in the pixel coordinates. The "box" is a pixel rectangle whose top lies on the parallel plane
n.X = d - h (walls along the rays, so no wall is visible); at the model resolution it is exactly
``resize_mask(box_mask, size, roi)``.
"""
from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import yaml

from edge.data.synthetic import SyntheticConfig, make_sample
from edge.preprocess import (
    DEPTH_ENCODINGS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PARAMS_VERSION,
    PreprocessParams,
    fill_missing,
    fit_depth_normalisation,
    fit_plane_inverse_depth,
    height_above_plane,
    preprocess,
    resize_mask,
)

BOX_H = 0.02  # metres


# ---------------------------------------------------------------- scene helpers


def scene(h, w, tilt_deg, azim_deg=30.0, dist=0.5, fov_deg=50.0, box=None, box_h=BOX_H):
    """Depth (float64, metres), box mask and n.r for a tilted plane with an optional box.

    ``box`` = (y0, y1, x0, x1) in pixels. The plane passes through (0, 0, dist).
    """
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    t, a = math.radians(tilt_deg), math.radians(azim_deg)
    n = np.array([math.sin(t) * math.cos(a), math.sin(t) * math.sin(a), math.cos(t)])
    d = dist * n[2]
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    ndotr = n[0] * (u - cx) / f + n[1] * (v - cy) / f + n[2]
    z = d / ndotr
    m = np.zeros((h, w), bool)
    if box is not None:
        y0, y1, x0, x1 = box
        m[y0:y1, x0:x1] = True
        z = np.where(m, (d - box_h) / ndotr, z)
    return z, m, ndotr


def grow(mask, px):
    k = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), k) > 0


def shrink(mask, px):
    k = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def holes_30pct(shape, seed=3):
    """30 % missing: five large discs on the border plus smooth random blobs."""
    h, w = shape
    rng = np.random.default_rng(seed)
    hole = np.zeros(shape, np.uint8)
    for cy, cx, r in [(0, 0, 90), (h - 1, 200, 80), (250, 0, 70), (100, w - 1, 60), (400, w - 30, 50)]:
        cv2.circle(hole, (cx, cy), r, 1, -1)
    hole = hole.astype(bool)
    field = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 6)
    rest = (0.30 - hole.mean()) / (1 - hole.mean())
    hole |= field > np.quantile(field[~hole], 1 - rest)
    return hole


def grey(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


P = PreprocessParams()  # image_size 256
S = P.image_size
# 512 x 512 input: a box 2 cm tall over the centre, touching the right border.
BOX = (180, 332, 154, 512)


# ---------------------------------------------------------------- plane fit


@pytest.mark.parametrize("tilt", [5.0, 15.0])
def test_plane_fit_noise_free_exact(tilt):
    z, _, _ = scene(512, 512, tilt)
    hgt, fg, valid, ok = height_above_plane(z.astype(np.float32), P)
    assert ok and valid.all() and not fg.any()
    assert np.abs(hgt).max() < 0.0002


@pytest.mark.parametrize("tilt", [5.0, 15.0])
def test_plane_fit_coefficients_directly(tilt):
    # At model resolution; u, v are pixel centres mapped to [-1, 1] (the function's convention).
    z, _, _ = scene(S, S, tilt)
    coef = fit_plane_inverse_depth(z.astype(np.float32), z > 0, 0.15, 0.002, 128, 0)
    assert coef is not None and coef.shape == (3,)
    c = (np.arange(S) + 0.5) / S * 2 - 1
    u, v = np.meshgrid(c, c)
    z_fit = 1.0 / (coef[0] * u + coef[1] * v + coef[2])
    assert np.abs(z_fit - z).max() < 0.0002


@pytest.mark.parametrize("tilt", [5.0, 15.0])
@pytest.mark.parametrize("sigma", [0.0005, 0.001])
def test_plane_fit_with_gaussian_noise_and_box(tilt, sigma):
    z, m, _ = scene(512, 512, tilt, box=BOX)
    zn = z + np.random.default_rng(1).normal(0, sigma, z.shape)
    hgt, fg, valid, ok = height_above_plane(zn.astype(np.float32), P)
    assert ok
    box = resize_mask(m, S)
    plane = ~grow(box, 1)
    # 2x2 area averaging halves the noise; the fit itself must add almost nothing
    assert np.abs(hgt[plane]).max() < 3 * sigma
    assert abs(float(np.mean(hgt[plane]))) < 0.1 * sigma
    assert not (fg & plane).any()
    assert iou(fg, box) > 0.9


@pytest.mark.parametrize("tilt", [5.0, 15.0])
@pytest.mark.parametrize("sigma", [0.0, 0.0005])
def test_plane_fit_robust_to_30pct_holes_and_box_on_border(tilt, sigma):
    z, m, _ = scene(512, 512, tilt, box=BOX)
    hole = holes_30pct(z.shape)
    assert abs(hole.mean() - 0.30) < 0.005
    # the border band (15 %) is more than half missing or covered by the box on two sides
    zn = z + np.random.default_rng(2).normal(0, sigma, z.shape) if sigma else z.copy()
    zn[hole] = 0
    hgt, fg, valid, ok = height_above_plane(zn.astype(np.float32), P)
    assert ok
    box = resize_mask(m, S)
    plane = ~grow(box, 1) & valid
    tol = 3 * sigma if sigma else 0.0002
    assert np.abs(hgt[plane]).max() < tol
    assert iou(fg, box) > 0.9
    # no measured plane pixel is foreground; holes touching the box get filled from the box
    # top (the fill cannot know better), so a few missing pixels next to it may be foreground
    leak = fg & ~grow(box, 1)
    assert not (leak & valid).any()
    assert leak.sum() < 0.01 * box.sum()


def test_plane_fit_gives_up_without_data():
    z = np.zeros((S, S), np.float32)
    assert fit_plane_inverse_depth(z, z > 0, 0.15, 0.002, 128, 0) is None
    z[:3, :5] = 0.5  # 15 points < 16
    assert fit_plane_inverse_depth(z, z > 0, 0.15, 0.002, 128, 0) is None


def test_plane_fit_falls_back_to_all_points_when_border_is_empty():
    z, _, _ = scene(S, S, 10.0)
    valid = np.zeros_like(z, bool)
    valid[100:156, 100:156] = True  # nothing measured in the border band
    coef = fit_plane_inverse_depth(np.where(valid, z, 0).astype(np.float32), valid, 0.15, 0.002, 128, 0)
    assert coef is not None
    c = (np.arange(S) + 0.5) / S * 2 - 1
    u, v = np.meshgrid(c, c)
    assert np.abs(1.0 / (coef[0] * u + coef[1] * v + coef[2]) - z)[valid].max() < 0.0002


# ---------------------------------------------------------------- height, foreground, filling


def test_height_of_box_and_foreground():
    z, m, _ = scene(512, 512, 5.0, box=BOX)
    hgt, fg, valid, ok = height_above_plane(z.astype(np.float32), P)
    assert ok and valid.all()
    box = resize_mask(m, S)
    top = shrink(box, 1)
    assert np.abs(hgt[top] - BOX_H).max() < 0.001
    assert iou(fg, box) > 0.9
    assert not (fg & ~grow(box, 1)).any()


def test_height_of_box_top_is_uniform_at_15_degrees():
    """Distance to the plane along its normal, up to the constant 1/cos(tilt): a flat top reads flat."""
    z, m, _ = scene(512, 512, 15.0, box=BOX)
    hgt, _, _, _ = height_above_plane(z.astype(np.float32), P)
    top = shrink(resize_mask(m, S), 1)
    assert np.abs(hgt[top] - BOX_H).max() < 0.001
    assert np.ptp(hgt[top]) < 0.0003


def test_missing_points_inside_object_are_filled():
    z, m, _ = scene(512, 512, 5.0, box=BOX)
    zz = z.copy()
    inner = shrink(m, 24)  # holes well inside the top (>= 12 model pixels from its edge)
    rng = np.random.default_rng(4)
    hole = np.zeros(z.shape, np.uint8)
    for cy, cx in [(230, 250), (280, 330), (256, 420)]:
        cv2.circle(hole, (cx, cy), 18, 1, -1)
    hole = (hole.astype(bool) | (rng.random(z.shape) < 0.3)) & inner
    zz[hole] = 0
    hgt, fg, valid, ok = height_above_plane(zz.astype(np.float32), P)
    assert ok
    inner_s = resize_mask(inner, S)
    filled = inner_s & ~valid
    assert filled.sum() > 300  # the blobs really are missing at model resolution
    assert (hgt[inner_s] != 0).all()
    assert np.abs(hgt[filled] - BOX_H).max() < 0.001
    assert fg[resize_mask(m, S) & ~grow(~resize_mask(m, S), 1)].all()


def test_fill_missing_normalised_convolution():
    vals = np.full((64, 64), 7.0, np.float32)
    valid = np.ones((64, 64), bool)
    valid[10:40, 5:50] = False
    vals[~valid] = -100.0  # garbage under missing points is ignored
    out = fill_missing(vals, valid)
    np.testing.assert_array_equal(out, np.full((64, 64), 7.0, np.float32))
    # a linear ramp stays between its neighbours' values
    ramp = np.tile(np.arange(64, dtype=np.float32), (64, 1))
    out = fill_missing(ramp, valid)
    np.testing.assert_array_equal(out[valid], ramp[valid])
    assert out[~valid].min() >= 0 and out[~valid].max() <= 63
    # nothing valid: zeros, no exception
    np.testing.assert_array_equal(fill_missing(ramp, np.zeros_like(valid)), 0)


# ---------------------------------------------------------------- preprocess


def _box_capture(h=512, w=512, tilt=8.0, box=BOX, seed=0):
    z, m, _ = scene(h, w, tilt, box=box)
    return grey(h, w, seed), z.astype(np.float32), m


def test_preprocess_shapes_dtypes_and_determinism():
    rgb, depth, _ = _box_capture()
    depth[np.random.default_rng(5).random(depth.shape) < 0.2] = 0
    rgb0, depth0 = rgb.copy(), depth.copy()
    a = preprocess(rgb, depth, P)
    b = preprocess(rgb, depth, PreprocessParams())
    np.testing.assert_array_equal(rgb, rgb0)  # inputs untouched
    np.testing.assert_array_equal(depth, depth0)
    assert a.rgb.shape == a.depth.shape == (3, S, S)
    assert a.rgb.dtype == a.depth.dtype == np.float32
    assert a.foreground.shape == (S, S) and a.foreground.dtype == bool
    assert a.height.shape == (S, S) and a.height.dtype == np.float32
    assert a.plane_ok is True and isinstance(a.valid_fraction, float)
    for k in ("rgb", "depth", "foreground", "height"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.tobytes() == y.tobytes(), k
        assert np.isfinite(x).all() if x.dtype != bool else True
    assert a.valid_fraction == b.valid_fraction and a.plane_ok == b.plane_ok


def test_preprocess_rgb_normalisation():
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    out = preprocess(rgb, np.full((64, 96), 0.5, np.float32), PreprocessParams(image_size=64))
    for ch, val in enumerate((255, 128, 0)):
        expect = (val / 255 - IMAGENET_MEAN[ch]) / IMAGENET_STD[ch]
        np.testing.assert_allclose(out.rgb[ch], expect, atol=1e-5)


@pytest.mark.parametrize("roi", [None, (0.1, 0.2, 0.9, 0.95)])
def test_preprocess_non_square_and_roi(roi):
    rgb, depth, m = _box_capture(480, 640, 12.0, box=(150, 330, 200, 440))
    p = PreprocessParams(roi=roi, height_scale_m=BOX_H, depth_encoding="height")
    out = preprocess(rgb, depth, p)
    assert out.rgb.shape == out.depth.shape == (3, S, S) and out.foreground.shape == (S, S)
    assert out.plane_ok
    box = resize_mask(m, S, roi)
    assert iou(out.foreground, box) > 0.9
    # height normalised by the 2 cm scale: plane ~0, box top ~1 (line-of-sight height, see above)
    assert np.abs(out.height[~grow(box, 1)]).max() < 0.01
    assert np.abs(out.height[shrink(box, 1)] - 1).max() < 0.08


def test_preprocess_roi_matches_cropping_by_hand():
    rgb, depth, _ = _box_capture(480, 640, 12.0, box=(150, 330, 200, 440))
    roi = (0.1, 0.2, 0.9, 0.95)
    x0, y0, x1, y1 = (int(round(f * n)) for f, n in zip(roi, (640, 480, 640, 480)))
    a = preprocess(rgb, depth, PreprocessParams(roi=roi))
    b = preprocess(rgb[y0:y1, x0:x1], depth[y0:y1, x0:x1], PreprocessParams())
    for k in ("rgb", "depth", "foreground", "height"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_valid_fraction_is_measured_share():
    rgb, depth, _ = _box_capture()
    # holes aligned with the 2x2 blocks that become one model pixel: the share is exact
    rng = np.random.default_rng(6)
    blocks = rng.random((S, S)) < 0.3
    hole = np.kron(blocks, np.ones((2, 2), bool))
    d = np.where(hole, 0, depth).astype(np.float32)
    out = preprocess(rgb, d, P)
    assert out.valid_fraction == pytest.approx(float((d > 0).mean()), abs=1e-9)
    # NaN, inf and negative values count as missing too
    d2 = d.copy()
    d2[~hole & np.kron(rng.random((S, S)) < 0.1, np.ones((2, 2), bool))] = np.nan
    d2[:2, :] = -1.0
    d2[2:4, :] = np.inf
    out2 = preprocess(rgb, d2, P)
    assert out2.valid_fraction == pytest.approx(float((np.nan_to_num(d2, posinf=0) > 0).mean()), abs=1e-9)
    assert out2.plane_ok and np.isfinite(out2.depth).all()
    # with an ROI it is the share inside the ROI
    out3 = preprocess(rgb, d, PreprocessParams(roi=(0.0, 0.5, 1.0, 1.0)))
    assert out3.valid_fraction == pytest.approx(float((d[256:] > 0).mean()), abs=1e-9)


def test_valid_fraction_with_speckle_is_a_model_resolution_share():
    """Observed: valid_fraction counts model pixels with > 50 % of their footprint measured.

    For scattered single-pixel dropouts this differs from the raw share by a few per cent.
    """
    rgb, depth, _ = _box_capture()
    d = np.where(np.random.default_rng(7).random(depth.shape) < 0.3, 0, depth).astype(np.float32)
    out = preprocess(rgb, d, P)
    raw = float((d > 0).mean())
    assert abs(out.valid_fraction - raw) < 0.06


def test_all_missing_depth_does_not_raise():
    rgb = grey(120, 160)
    for depth in (np.zeros((120, 160), np.float32), np.full((120, 160), np.nan, np.float32)):
        for enc in DEPTH_ENCODINGS:
            out = preprocess(rgb, depth, PreprocessParams(depth_encoding=enc))
            assert out.plane_ok is False
            assert out.valid_fraction == 0.0
            assert not out.foreground.any()
            assert out.depth.shape == (3, S, S) and np.isfinite(out.depth).all()
            assert np.isfinite(out.rgb).all()


def test_mismatched_sizes_raise_naming_both_shapes():
    rgb = grey(480, 640)
    depth = np.ones((480, 639), np.float32)
    with pytest.raises(ValueError) as e:
        preprocess(rgb, depth, P)
    assert "(480, 639)" in str(e.value) and "(480, 640)" in str(e.value)
    with pytest.raises(ValueError, match=r"\(480, 640\)"):
        preprocess(rgb[..., 0], np.ones((480, 640), np.float32), P)


@pytest.mark.parametrize("enc", DEPTH_ENCODINGS)
def test_each_depth_encoding(enc):
    rgb, depth, m = _box_capture()
    out = preprocess(rgb, depth, PreprocessParams(depth_encoding=enc))
    assert out.depth.shape == (3, S, S) and out.depth.dtype == np.float32
    # undo the ImageNet normalisation: the encoder input lies in [0, 1]
    img = out.depth * np.asarray(IMAGENET_STD, np.float32)[:, None, None] + np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    assert img.min() >= -1e-5 and img.max() <= 1 + 1e-5
    box = resize_mask(m, S)
    plane, top = ~grow(box, 3), shrink(box, 3)
    if enc == "height":
        np.testing.assert_allclose(img[0], img[1], atol=1e-5)
        np.testing.assert_allclose(img[0], img[2], atol=1e-5)
        assert np.abs(img[0][plane]).max() < 0.02 and img[0][top].min() > 0.9
    else:  # flat regions face the camera: normal (0, 0, 1) -> (0.5, 0.5, 1)
        np.testing.assert_allclose(img[0][plane], 0.5, atol=0.01)
        np.testing.assert_allclose(img[1][plane], 0.5, atol=0.01)
        if enc == "normals":
            assert img[2][plane].min() > 0.99
        else:  # third channel is the height
            assert img[2][plane].max() < 0.02 and img[2][top].min() > 0.9
        edge = box & ~shrink(box, 2)
        assert np.abs(img[:2][:, edge] - 0.5).max() > 0.2  # the box walls tilt the normals


def test_encodings_differ():
    rgb, depth, _ = _box_capture()
    outs = [preprocess(rgb, depth, PreprocessParams(depth_encoding=e)).depth for e in DEPTH_ENCODINGS]
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])


def test_invalid_params_raise():
    with pytest.raises(ValueError, match="depth_encoding"):
        PreprocessParams(depth_encoding="disparity")
    for size in (100, 250, 257):
        with pytest.raises(ValueError, match="multiple of 32"):
            PreprocessParams(image_size=size)
    PreprocessParams(image_size=224)
    for roi in [(0.5, 0, 0.4, 1), (0, 0, 1.1, 1), (-0.1, 0, 1, 1), (0, 0.5, 1, 0.5)]:
        with pytest.raises(ValueError, match="roi"):
            PreprocessParams(roi=roi)


# ---------------------------------------------------------------- parameters


def test_params_round_trip_through_yaml():
    cases = [
        PreprocessParams(),
        PreprocessParams(image_size=320, roi=[0.1, 0.05, 0.9, 1], depth_encoding="height",
                         height_scale_m=0.0213456789, normal_gain=51.74225505909384, ransac_seed=7,
                         rgb_mean=(0.5, 0.5, 0.5), rgb_std=[0.25, 0.25, 0.25]),
    ]
    for p in cases:
        d = p.to_dict()
        assert isinstance(d["rgb_mean"], list) and (d["roi"] is None or isinstance(d["roi"], list))
        text = yaml.safe_dump(d, sort_keys=False)
        q = PreprocessParams.from_dict(yaml.safe_load(text))
        assert q == p
        assert q.to_dict() == d
        assert isinstance(q.rgb_mean, tuple) and (q.roi is None or isinstance(q.roi, tuple))
    assert cases[1].roi == (0.1, 0.05, 0.9, 1.0)


def test_from_dict_rejects_unknown_keys_and_versions():
    d = PreprocessParams().to_dict()
    with pytest.raises(ValueError, match="plane_inlier_mm"):
        PreprocessParams.from_dict({**d, "plane_inlier_mm": 2})
    with pytest.raises(ValueError, match="version"):
        PreprocessParams.from_dict({**d, "version": PARAMS_VERSION + 1})
    assert PreprocessParams.from_dict({}) == PreprocessParams()


# ---------------------------------------------------------------- fitted normalisation


def test_fit_depth_normalisation_on_synthetic_samples():
    cfg = SyntheticConfig(size=128)
    depths = [make_sample(i, cfg).depth for i in range(6)]
    base = PreprocessParams(image_size=128)
    fitted = fit_depth_normalisation(depths, base)
    assert base.height_scale_m is None and base.normal_gain is None  # input not modified
    assert abs(fitted.height_scale_m - cfg.object_height) < 0.2 * cfg.object_height
    assert fitted.normal_gain > 0
    assert isinstance(fitted.height_scale_m, float) and isinstance(fitted.normal_gain, float)
    assert replace(fitted, height_scale_m=None, normal_gain=None) == base
    # deterministic, accepts a generator, and the result serialises
    assert fit_depth_normalisation((d for d in depths), base) == fitted
    assert PreprocessParams.from_dict(yaml.safe_load(yaml.safe_dump(fitted.to_dict()))) == fitted
    # the fitted scale puts the synthetic object top near 1
    out = preprocess(make_sample(99, cfg).rgb, make_sample(99, cfg).depth, fitted)
    assert 0.8 < float(np.median(out.height[out.foreground])) < 1.1


def test_fit_depth_normalisation_without_usable_depth_raises():
    base = PreprocessParams(image_size=64)
    with pytest.raises(ValueError, match="depth"):
        fit_depth_normalisation([np.zeros((64, 64), np.float32)] * 3, base)
    with pytest.raises(ValueError):
        fit_depth_normalisation([], base)
    flat, _, _ = scene(64, 64, 10.0)  # a plane but no foreground
    with pytest.raises(ValueError):
        fit_depth_normalisation([flat.astype(np.float32)], base)


# ---------------------------------------------------------------- ground-truth masks


def test_resize_mask_small_defects():
    """resize_mask uses nearest neighbour (OpenCV samples source pixel floor(i * 400 / 256)).

    Observed at 400 -> 256 (a sample every 1.5625 source pixels): a 3x3 or 6x6 defect survives
    at every position (3x3 -> 1 or 4 pixels, 6x6 -> 9 or 16), a single pixel vanishes at a third of
    the positions.
    """
    def kept(n, off, src=400, dst=256):
        mk = np.zeros((src, src), bool)
        mk[200 + off : 200 + off + n, 100 + off : 100 + off + n] = True
        return int(resize_mask(mk, dst).sum())

    offs = range(25)
    assert {kept(3, o) for o in offs} <= {1, 4} and min(kept(3, o) for o in offs) >= 1
    assert {kept(6, o) for o in offs} <= {9, 16}
    single = [kept(1, o) for o in offs]
    assert 0 in single and 1 in single
    # at a stronger downscale (1024 -> 128, one sample per 8 pixels) a 3x3 defect can vanish
    assert 0 in [kept(3, o, 1024, 128) for o in range(8)]
    # the ROI is applied first, like for the inputs
    mk = np.zeros((400, 400), bool)
    mk[:200] = True
    assert resize_mask(mk, 64, roi=(0, 0, 1, 0.5)).all()
    assert resize_mask(mk, 64).shape == (64, 64) and resize_mask(mk, 64).dtype == bool
