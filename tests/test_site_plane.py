"""The site plane: fitted once over training captures (edge.background_plane.fit_site_plane via
fit_depth_normalisation), stored in PreprocessParams, checked per frame, and moved with the
poses training simulates (params_for_pose)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from edge.background_plane import fit_plane_inverse_depth, model_grid, plane_for_pose
from edge.data.synthetic import SyntheticConfig, make_sample
from edge.preprocess import (
    PreprocessParams,
    crop_roi,
    fit_depth_normalisation,
    height_above_plane,
    params_for_pose,
    params_for_sample,
    preprocess,
    resize_depth,
)
from edge.frames import RGBDSample
from test_preprocess import BOX_H, grey, scene

S = 256
ROI = (0.1, 0.2, 0.9, 0.95)


def plane_depth(plane, size=S):
    u, v = model_grid(size)
    return 1.0 / (plane[0] * u + plane[1] * v + plane[2])


def true_plane(h, w, tilt, roi=None, size=S):
    """The exact plane of scene(h, w, tilt) on the model grid (fitted on the noise-free map)."""
    z, _, _ = scene(h, w, tilt)
    zz, ok = resize_depth(crop_roi(z.astype(np.float32), roi), size)
    return fit_plane_inverse_depth(zz, ok, 0.15, 0.002, 128, 0)


def captures_of_one_site(n, h=400, w=400, tilt=9.0, sigma=0.001, seed=0):
    """n captures from one fixed camera: the same tilted plane, a 2 cm box at a different place
    each time, sensor noise and holes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y0, x0 = int(rng.integers(60, h - 200)), int(rng.integers(60, w - 200))
        z, _, _ = scene(h, w, tilt, box=(y0, y0 + 120, x0, x0 + 140))
        z = z + rng.normal(0, sigma, z.shape)
        z[rng.random(z.shape) < 0.1] = 0
        out.append(z.astype(np.float32))
    return out


# ---------------------------------------------------------------- fitting the site plane


def test_site_plane_of_a_fixed_camera_is_found_and_more_accurate_than_one_capture():
    depths = captures_of_one_site(12)
    params = fit_depth_normalisation(depths, PreprocessParams())
    assert params.plane is not None
    truth = plane_depth(true_plane(400, 400, 9.0))
    site_err = np.abs(plane_depth(params.plane) - truth).max()
    single = []
    for d in depths:
        z, ok = resize_depth(d, S)
        single.append(np.abs(plane_depth(fit_plane_inverse_depth(z, ok, 0.15, 0.002, 128, 0)) - truth).max())
    # 1 mm noise: one capture's fit is off by a few hundredths of a millimetre at the corners,
    # the pooled fit by less than half that
    assert site_err < 0.1e-3
    assert site_err < 0.5 * float(np.median(single))
    # the scale is measured above that plane: the box tops read 2 cm (x 1/cos(tilt))
    assert params.height_scale_m == pytest.approx(BOX_H / math.cos(math.radians(9.0)), rel=0.1)


def test_captures_without_a_common_plane_keep_the_per_frame_fit():
    # generated scenes tilt every capture differently: no site plane, as before the site plane
    cfg = SyntheticConfig(size=128)
    depths = [make_sample(i, cfg).depth for i in range(8)]
    fitted = fit_depth_normalisation(depths, PreprocessParams(image_size=128))
    assert fitted.plane is None and fitted.height_scale_m is not None


def test_a_given_plane_is_kept_and_the_site_fit_can_be_skipped():
    depths = captures_of_one_site(4)
    given = PreprocessParams(plane=(0.01, 0.02, 2.0))
    assert fit_depth_normalisation(depths, given).plane == given.plane
    assert fit_depth_normalisation(depths, PreprocessParams(), site_plane=False).plane is None


def test_site_plane_round_trips_and_old_parameter_dicts_load():
    params = fit_depth_normalisation(captures_of_one_site(4), PreprocessParams())
    d = params.to_dict()
    assert isinstance(d["plane"], list) and len(d["plane"]) == 3
    assert PreprocessParams.from_dict(yaml.safe_load(yaml.safe_dump(d))) == params
    old = {k: v for k, v in d.items() if k != "plane"}  # a run or bundle saved before the site plane
    assert PreprocessParams.from_dict(old).plane is None
    for bad in ([1.0, 2.0], [1.0, float("nan"), 2.0]):
        with pytest.raises(ValueError, match="plane"):
            PreprocessParams(plane=bad)


def test_bundle_checks_take_the_site_plane():
    """edge.bundle checks preprocess.yaml's values against PreprocessParams' annotations."""
    import typing

    from edge.checks import type_ok

    hint = typing.get_type_hints(PreprocessParams)["plane"]
    assert type_ok([0.01, -0.02, 2.0], hint) and type_ok(None, hint) and type_ok([0, 0, 2], hint)
    assert not type_ok([0.01, 2.0], hint) and not type_ok([0.01, "x", 2.0], hint)
    assert not type_ok([0.01, float("inf"), 2.0], hint)


@pytest.mark.realdata("mvtec3d/cable_gland")
def test_site_plane_of_real_cable_gland_captures(real_data):
    from edge.data import open_dataset

    train = [r.load().depth for r in open_dataset(real_data, "train")]
    params = fit_depth_normalisation(train, PreprocessParams())
    assert params.plane is not None
    # every test capture's border band lies on it (parts, good or defective, sit inside the band)
    for ref in open_dataset(real_data, "test")[::4]:
        stats = preprocess(*(lambda s: (s.rgb, s.depth))(ref.load()), params).stats
        assert stats["plane_inlier_fraction"] > 0.7 and stats["plane_below_fraction"] < 0.05, ref.name
        assert abs(stats["plane_residual_m"]) < 0.5e-3, ref.name


# ---------------------------------------------------------------- the per-frame check


def test_plane_check_reads_on_shifted_and_tilted_frames():
    depth = captures_of_one_site(1, sigma=0.0005)[0]
    params = fit_depth_normalisation(captures_of_one_site(4, sigma=0.0005), PreprocessParams())
    rgb = grey(*depth.shape)
    on = preprocess(rgb, depth, params).stats
    assert on["plane_points"] > 500 and on["plane_inlier_fraction"] > 0.95 and on["plane_below_fraction"] < 0.02
    away = preprocess(rgb, np.where(depth > 0, depth + 0.02, 0), params).stats
    assert away["plane_below_fraction"] > 0.95 and away["plane_residual_m"] == pytest.approx(0.02, abs=1e-3)
    closer = preprocess(rgb, np.where(depth > 0, depth - 0.02, 0), params).stats
    assert closer["plane_inlier_fraction"] < 0.02 and closer["plane_below_fraction"] < 0.02
    assert preprocess(rgb, np.zeros_like(depth), params).stats["plane_inlier_fraction"] is None
    assert preprocess(rgb, depth, PreprocessParams()).stats == {}  # no site plane, no check


# ---------------------------------------------------------------- poses


def rotate_capture(rgb, depth, angle, flip):
    from convert.train import rotate_capture as training_pose

    return training_pose(rgb, depth, angle, flip)


POSES = [(a, f) for a in (0.0, 90.0, 180.0, 270.0, 45.0) for f in (False, True)]


@pytest.mark.parametrize("shape", [(256, 256), (480, 640)])
@pytest.mark.parametrize("roi", [None, ROI])
def test_posed_site_plane_matches_a_fit_on_the_posed_capture(shape, roi):
    """Posing a tilted-plane capture and using the moved site plane gives the height map a
    plane fitted on the posed capture gives.

    Tolerances: a multiple of 90 degrees is an exact pixel permutation, so the moved plane is the
    exact plane and the two height maps differ by the fit's float error only (< 1e-5 m; ROI
    crops of the 256 frame are upsampled, which bends 1/z very slightly). Other angles resample
    by nearest neighbour, within half a pixel of the exact point: the heights then carry that
    jitter (a few tenths of a mm at 12 degrees tilt) against either plane, and the fitted plane
    averages it out: the two differ by < 2e-5 m, 1 % of the 2 mm foreground threshold.
    """
    h, w = shape
    z, _, _ = scene(h, w, 12.0)
    z = z.astype(np.float32)
    site = PreprocessParams(roi=roi, plane=tuple(true_plane(h, w, 12.0, roi)))
    per_frame = PreprocessParams(roi=roi)
    rgb = np.zeros((h, w, 3), np.uint8)
    for angle, flip in POSES:
        _, posed = rotate_capture(rgb, z, angle, flip)
        moved = params_for_pose(site, (h, w), angle, flip)
        h_moved, _, valid, ok = height_above_plane(posed, moved)
        h_fit, _, _, ok_fit = height_above_plane(posed, per_frame)
        assert ok and ok_fit
        tol = 1e-5 if angle % 90 == 0 else 2e-5
        assert np.abs(h_moved - h_fit)[valid].max() < tol, (angle, flip)
        if (angle, flip) != (0.0, False):  # the unmoved plane is clearly wrong: the test can tell
            h_unmoved, _, _, _ = height_above_plane(posed, site)
            assert np.abs(h_unmoved - h_fit)[valid].max() > 1e-3, (angle, flip)


def test_pose_of_identity_and_without_site_plane():
    site = PreprocessParams(plane=(0.01, -0.02, 2.0))
    same = params_for_pose(site, (480, 640), 0.0, False)
    np.testing.assert_allclose(same.plane, site.plane, rtol=1e-12, atol=1e-15)
    assert params_for_pose(PreprocessParams(), (480, 640), 90.0, True) == PreprocessParams()
    # a full turn and a double flip come back (to float precision)
    once = plane_for_pose(site.plane, (480, 640), None, 90.0, False)
    back = plane_for_pose(plane_for_pose(plane_for_pose(once, (640, 480), None, 90.0, False), (480, 640), None, 90.0,
                                         False), (640, 480), None, 90.0, False)
    np.testing.assert_allclose(back, site.plane, rtol=1e-12, atol=1e-15)


def test_training_preprocesses_each_pose_with_its_moved_plane():
    """augment_samples records each pose in the sample's meta; prepare() (calibrate.dataset)
    preprocesses it with params_for_sample: a posed flat background reads flat."""
    from calibrate.dataset import prepare
    from convert.train import augment_samples

    h, w = 480, 640
    z, _, _ = scene(h, w, 12.0)
    capture = RGBDSample(rgb=grey(h, w), depth=z.astype(np.float32), label=0, defect="good", name="c")
    site = PreprocessParams(image_size=64, plane=tuple(true_plane(h, w, 12.0, size=64)), height_scale_m=0.02,
                            normal_gain=10.0)
    poses = augment_samples([capture], rotations=4, flip=True)
    assert poses[0].meta.get("pose") is None and poses[1].meta["pose"] == ((h, w), 90.0, False)
    assert params_for_sample(site, poses[0]) is site
    split = prepare(poses, site, progress=False)
    assert np.abs(split.height).max() < 1e-3  # normalised: 20 um on a 2 cm scale
    assert not split.fg.any()
