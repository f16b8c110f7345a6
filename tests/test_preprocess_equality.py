"""edge.preprocess (the fast implementation) equals the reference definition
(tests/preprocess_reference.py) on generated and real frames.

"Equal" is the contract of docs/preprocessing.md: the rgb and depth model inputs and the
normalised height within 1e-4 (absolute), the foreground mask, valid_fraction and plane_ok
identical. Frames: generated scenes (edge.data.synthetic) at 640x480 and 400x400 with holes,
NaN, +-inf, negative values and zeros; real cable_gland captures (400x400 and scaled to
640x480); the real D435 recording's frames. Every depth encoding, ROI on and off, the site
plane and the per-frame fit, fitted and per-image normalisation, model sizes 256 and 128.
"""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from edge.background_plane import CHECK_MIN_POINTS, fit_plane_inverse_depth, fit_site_plane
from edge.data.synthetic import SyntheticConfig, make_sample
from edge.preprocess import (
    DEPTH_ENCODINGS,
    PreprocessParams,
    crop_roi,
    fit_depth_normalisation,
    preprocess,
    resize_depth,
)
from preprocess_reference import max_differences, reference_preprocess

TOL = 1e-4
ROI = (0.1, 0.05, 0.9, 0.95)


def assert_equal_to_reference(rgb, depth, params, where=""):
    fast, ref = preprocess(rgb, depth, params), reference_preprocess(rgb, depth, params)
    diff = max_differences(fast, ref)
    label = f"{where} {params.depth_encoding} roi={params.roi} plane={params.plane is not None}: {diff}"
    assert diff["rgb"] <= TOL and diff["depth"] <= TOL and diff["height"] <= TOL, label
    assert diff["foreground_pixels"] == 0, label
    assert fast.valid_fraction == ref.valid_fraction and fast.plane_ok == ref.plane_ok, label
    for k in ("rgb", "depth", "height"):
        assert getattr(fast, k).dtype == np.float32 and getattr(fast, k).shape == getattr(ref, k).shape
    assert fast.foreground.dtype == bool
    return fast


def site_plane_of(depths, params):
    """A plane given to preprocess: the site plane fitted on these frames (any plane will do for
    equality; a fitted one makes the heights realistic)."""
    resized = [resize_depth(crop_roi(d, params.roi), params.image_size) for d in depths]
    fit = fit_site_plane(resized, params.plane_border_frac, params.plane_inlier_m, params.ransac_iters,
                         params.ransac_seed)
    if fit.plane is not None:
        return fit.plane
    return tuple(fit_plane_inverse_depth(*resized[0], params.plane_border_frac, params.plane_inlier_m,
                                         params.ransac_iters, params.ransac_seed))


def variants(depths, size=256, fitted=True):
    """PreprocessParams over encodings x ROI x (site plane, per-frame fit)."""
    for roi in (None, ROI):
        base = PreprocessParams(image_size=size, roi=roi)
        plane = site_plane_of(depths, base)
        norm = {}
        if fitted:
            fit = fit_depth_normalisation(depths, PreprocessParams(image_size=size, roi=roi, plane=plane))
            norm = {"height_scale_m": fit.height_scale_m, "normal_gain": fit.normal_gain}
        for enc in DEPTH_ENCODINGS:
            for p in (plane, None):
                yield PreprocessParams(image_size=size, roi=roi, depth_encoding=enc, plane=p, **norm)


# ---------------------------------------------------------------- generated frames


def corrupt(depth: np.ndarray, seed: int) -> np.ndarray:
    """Missing depth in every form a source can deliver: 0, NaN, +inf, -inf, negative, in
    blobs and single pixels (about 15 % of the frame on top of the scene's own holes)."""
    d = depth.astype(np.float32, copy=True)
    rng = np.random.default_rng(seed)
    h, w = d.shape
    for value in (0.0, np.nan, np.inf, -np.inf, -0.3):
        for _ in range(3):
            y, x, r = int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(4, 30))
            blob = np.zeros((h, w), np.uint8)
            cv2.circle(blob, (x, y), r, 1, -1)
            d[blob.astype(bool)] = value
        d[rng.random((h, w)) < 0.01] = value
    return d


@pytest.fixture(scope="module")
def generated():
    """Three frames of 640x480 and two of 400x400, each with its depth corrupted."""
    big = SyntheticConfig(size=640, hole_fraction=0.08, tilt_deg=(5.0, 12.0))
    small = SyntheticConfig(size=400, object_shape="box", texture="checker")
    frames = []
    for i, kind in enumerate(("good", "both", "depth_only")):
        s = make_sample(10 + i, big, kind)
        frames.append((s.rgb[80:560], corrupt(s.depth[80:560], i)))
    for i, kind in enumerate(("good", "rgb_only")):
        s = make_sample(20 + i, small, kind)
        frames.append((s.rgb, corrupt(s.depth, 10 + i)))
    return frames


def test_generated_frames_have_every_kind_of_missing_depth(generated):
    for _, d in generated:
        assert np.isnan(d).any() and np.isposinf(d).any() and np.isneginf(d).any()
        assert (d == 0).any() and (d < 0).any()


@pytest.mark.parametrize("shape", [(480, 640), (400, 400)])
def test_equal_to_reference_on_generated_frames(generated, shape):
    frames = [f for f in generated if f[1].shape == shape]
    depths = [d for _, d in frames]
    for params in variants(depths):
        for rgb, depth in frames:
            assert_equal_to_reference(rgb, depth, params, f"generated {shape}")


def test_equal_to_reference_per_image_normalisation_and_size_128(generated):
    frames = generated[:2] + generated[3:4]
    for rgb, depth in frames:
        for params in variants([depth], size=128, fitted=False):
            assert_equal_to_reference(rgb, depth, params, "per-image, 128")


def test_equal_to_reference_for_other_depth_dtypes_and_a_2x_resize(generated):
    rgb, depth = generated[0]
    params = next(variants([depth]))
    assert_equal_to_reference(rgb, depth.astype(np.float64), params, "float64")
    # 512 -> 256 is an integer area resize (another OpenCV code path)
    s = make_sample(7, SyntheticConfig(size=512))
    for p in variants([s.depth]):
        assert_equal_to_reference(s.rgb, corrupt(s.depth, 3), p, "512x512")


def test_equal_to_reference_without_depth_and_with_a_site_plane(generated):
    rgb, depth = generated[0]
    plane = site_plane_of([depth], PreprocessParams())
    few = np.zeros_like(depth)
    few[:2, :20] = depth[:2, :20]  # a corner: too few points for a height map (and for a check)
    for d in (np.zeros_like(depth), np.full_like(depth, np.nan), few):
        for enc in DEPTH_ENCODINGS:
            out = assert_equal_to_reference(rgb, d, PreprocessParams(depth_encoding=enc, plane=plane), "no depth")
            assert out.plane_ok is False and not out.foreground.any() and np.isfinite(out.depth).all()
            assert out.stats["plane_points"] < CHECK_MIN_POINTS and out.stats["plane_inlier_fraction"] is None


# ---------------------------------------------------------------- scratch buffers: outputs stay the caller's


def test_results_are_not_overwritten_by_later_calls(generated):
    (rgb_a, d_a), (rgb_b, d_b) = generated[0], generated[1]
    params = PreprocessParams(plane=site_plane_of([d_a], PreprocessParams()), height_scale_m=0.02, normal_gain=20.0)
    a = preprocess(rgb_a, d_a, params)
    kept = {k: getattr(a, k).copy() for k in ("rgb", "depth", "foreground", "height")}
    preprocess(rgb_b, d_b, params)
    preprocess(rgb_b[:, :400], d_b[:, :400], params)  # another frame size
    for k, v in kept.items():
        np.testing.assert_array_equal(getattr(a, k), v, err_msg=k)


def test_threads_compute_what_one_thread_computes(generated):
    params = PreprocessParams(plane=site_plane_of([generated[0][1]], PreprocessParams()), height_scale_m=0.02,
                              normal_gain=20.0)
    frames = generated[:3]
    expected = [preprocess(rgb, d, params) for rgb, d in frames]
    results: dict = {}

    def work(t: int) -> None:
        results[t] = [preprocess(rgb, d, params) for _ in range(3) for rgb, d in frames]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for outs in results.values():
        for i, out in enumerate(outs):
            exp = expected[i % len(frames)]
            for k in ("rgb", "depth", "foreground", "height"):
                np.testing.assert_array_equal(getattr(out, k), getattr(exp, k))


def test_inputs_are_not_modified(generated):
    rgb, depth = generated[1]
    rgb0, depth0 = rgb.copy(), depth.copy()
    preprocess(rgb, depth, PreprocessParams(plane=site_plane_of([depth], PreprocessParams())))
    np.testing.assert_array_equal(rgb, rgb0)
    np.testing.assert_array_equal(depth, depth0)  # NaN compare equal here (same positions)


# ---------------------------------------------------------------- real frames


def scaled_640x480(sample):
    """A 400x400 capture as a 640x480 frame: colour by area/linear interpolation, depth by nearest
    neighbour (no invented depths; holes stay holes)."""
    rgb = cv2.resize(sample.rgb, (640, 480), interpolation=cv2.INTER_LINEAR)
    depth = cv2.resize(sample.depth, (640, 480), interpolation=cv2.INTER_NEAREST)
    return rgb, depth


@pytest.mark.realdata("mvtec3d/cable_gland")
def test_equal_to_reference_on_real_cable_gland_captures(real_data):
    from edge.data import open_dataset

    train = [r.load() for r in open_dataset(real_data, "train")[::8]]
    test = [r.load() for r in open_dataset(real_data, "test")[::9]]
    assert {s.defect for s in test} >= {"good", "bent", "cut", "hole", "thread"}
    for shape, convert in (("400x400", lambda s: (s.rgb, s.depth)), ("640x480", scaled_640x480)):
        train_frames = [convert(s) for s in train]
        frames = [convert(s) for s in test[:6]]
        for params in variants([d for _, d in train_frames]):
            for rgb, depth in frames:
                assert_equal_to_reference(rgb, depth, params, f"cable_gland {shape}")


@pytest.mark.realdata("realsense/single_depth_color_640x480.bag")
def test_equal_to_reference_on_the_real_d435_recording(real_data):
    from edge.sources import open_source
    from test_sources import read_all

    frames = [(f.rgb, f.depth) for f in read_all(open_source({"type": "recording", "path": str(real_data)}))]
    assert len(frames) == 2 and frames[0][1].shape == (480, 640)
    depths = [d for _, d in frames]
    for params in variants(depths, fitted=False):
        for rgb, depth in frames:
            assert_equal_to_reference(rgb, depth, params, "D435")


def test_equal_to_reference_for_a_colour_image_that_is_not_uint8(generated):
    rgb, depth = generated[3]
    params = PreprocessParams(plane=site_plane_of([depth], PreprocessParams()))
    assert_equal_to_reference(rgb.astype(np.float32), depth, params, "float32 colour")
