"""edge.plane_watch: a moved camera is detected within N frames and reported, the plane is refitted
for the frames after it, and a stable line (every real cable_gland test part, in order) never
triggers it."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge.plane_watch import OFF, ON, UNKNOWN, PlaneEvent, PlaneWatch, PlaneWatchConfig, frame_verdict
from edge.preprocess import PreprocessParams, fit_depth_normalisation, preprocess

N = 5  # frames before camera_moved in these tests (the default is 30)


def on_stats(inl=0.98, below=0.0, points=700):
    return {"plane_points": points, "plane_inlier_fraction": inl, "plane_below_fraction": below,
            "plane_residual_m": 0.0001}


OFF_STATS = on_stats(inl=0.0, below=1.0)
NO_DEPTH = {"plane_points": 0, "plane_inlier_fraction": None, "plane_below_fraction": None, "plane_residual_m": None}
SITE = PreprocessParams(plane=(0.0, 0.0, 2.0))


def plane_frame(a: float, c: float, size: int) -> np.ndarray:
    """Depth of the plane 1/z = a*u + c (u: pixel centres mapped to [-1, 1])."""
    u = (np.arange(size) + 0.5) / size * 2 - 1
    return np.repeat(1.0 / (a * u[None, :] + c), size, 0).astype(np.float32)


# ---------------------------------------------------------------- the state machine on given stats


def test_frame_verdicts():
    cfg = PlaneWatchConfig()
    assert frame_verdict(on_stats(), cfg) == ON
    assert frame_verdict(on_stats(inl=0.1), cfg) == ON  # a part covering 90 % of the band: in front of it
    assert frame_verdict(on_stats(inl=0.02), cfg) == OFF  # nothing on the plane: moved closer
    assert frame_verdict(on_stats(inl=0.6, below=0.4), cfg) == OFF  # behind it: moved away or tilted
    assert frame_verdict(NO_DEPTH, cfg) == UNKNOWN and frame_verdict({}, cfg) == UNKNOWN


def test_transient_off_frames_and_frames_without_depth_do_not_trigger():
    w = PlaneWatch(SITE, PlaneWatchConfig(frames=N))
    for _ in range(3):
        for _ in range(N - 1):
            assert w.update(OFF_STATS) is None
        assert w.update(on_stats()) is None  # back on the plane: the count restarts
    for _ in range(10 * N):
        assert w.update(NO_DEPTH) is None  # rgb-only frames: neither on nor off
    assert w.status()["transient_off_episodes"] == 3 and w.status()["state"] == "on_plane"
    assert w.params is SITE and w.events == 0


def test_without_a_site_plane_the_watch_is_inactive():
    w = PlaneWatch(PreprocessParams(), PlaneWatchConfig(frames=1))
    assert all(w.update(OFF_STATS) is None for _ in range(5))
    assert w.status()["state"] == "inactive"


def test_refit_waits_for_depth_then_reports_once():
    """camera_moved is reported at the N-th off frame even without a usable refit; the plane in
    use stays, a refit is retried every N off frames, and plane_refitted reports its success."""
    w = PlaneWatch(SITE, PlaneWatchConfig(frames=N))
    events = [w.update(OFF_STATS) for _ in range(N)]
    assert events[:-1] == [None] * (N - 1)
    moved = events[-1]
    assert moved.kind == "camera_moved" and moved.frame == N and moved.frames_off == N and not moved.refit_ok
    assert moved.plane == SITE.plane and w.params is SITE
    assert all(w.update(OFF_STATS) is None for _ in range(3 * N))  # already reported, no depth to refit
    tilted = plane_frame(0.05, 2.2, 200)
    events = [w.update(OFF_STATS, tilted) for _ in range(N)]
    refit = [e for e in events if e is not None]
    assert len(refit) == 1 and refit[0].kind == "plane_refitted" and refit[0].refit_ok
    np.testing.assert_allclose(w.params.plane, (0.05, 0.0, 2.2), atol=1e-5)
    assert w.status()["plane"] == "refitted"
    json.dumps(refit[0].to_dict())


def test_back_on_plane_after_a_move_whose_refit_failed():
    w = PlaneWatch(SITE, PlaneWatchConfig(frames=N))
    for _ in range(N):
        w.update(OFF_STATS)
    ev = w.update(on_stats())
    assert ev.kind == "back_on_plane" and ev.plane == SITE.plane and w.params is SITE
    assert w.status()["state"] == "on_plane"


def test_config_is_checked():
    for bad in ({"frames": 0}, {"frames": 2.5}, {"min_inlier_fraction": 1.5}, {"max_below_fraction": -0.1}):
        with pytest.raises(ValueError):
            PlaneWatchConfig(**bad)


# ---------------------------------------------------------------- real captures


_LINES: dict = {}


@pytest.fixture
def line(real_data):
    """The site parameters (fitted on cable_gland's train split) and the test parts in order,
    loaded once per session."""
    from edge.data import open_dataset

    if real_data not in _LINES:
        train = [r.load().depth for r in open_dataset(real_data, "train")]
        _LINES[real_data] = (fit_depth_normalisation(train, PreprocessParams()),
                             [r.load() for r in open_dataset(real_data, "test")])
    return _LINES[real_data]


def run(watch: PlaneWatch, frames) -> list[tuple[int, PlaneEvent]]:
    """Preprocess each frame with the watch's current parameters and feed it its stats, as the
    daemon does; returns (index, event) for each event."""
    events = []
    for i, (rgb, depth) in enumerate(frames):
        params_before = watch.params
        out = preprocess(rgb, depth, params_before)
        ev = watch.update(out.stats, depth)
        if ev is not None:
            events.append((i, ev))
    return events


def moved(parts, how: str):
    """The parts as a moved camera sees them (depth in metres; holes stay holes)."""
    for s in parts:
        d = s.depth.copy()
        ok = d > 0
        h, w = d.shape
        if how == "away":  # 3 cm further from the belt
            d[ok] += 0.03
        elif how == "closer":  # 2.5 cm closer
            d[ok] -= 0.025
        elif how == "tilted":  # turned about the image's vertical axis: 1/z gains a slope across the image
            u = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
            d[ok] = 1.0 / (1.0 / d[ok] + 0.02 * np.broadcast_to(u, d.shape)[ok])
        elif how == "rolled":  # turned 30 degrees about its optical axis (the belt is not square to it)
            m = cv2.getRotationMatrix2D((w / 2, h / 2), 30.0, 1.0)
            d = cv2.warpAffine(d, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
        yield s.rgb, d


@pytest.mark.realdata("mvtec3d/cable_gland")
def test_a_stable_line_never_triggers(line, real_data):
    params, parts = line
    assert {s.defect for s in parts} == {"good", "bent", "cut", "hole", "thread"}
    watch = PlaneWatch(params)  # the default configuration
    assert run(watch, [(s.rgb, s.depth) for s in parts]) == []
    st = watch.status()
    assert st["state"] == "on_plane" and st["transient_off_episodes"] == 0 and st["plane"] == "site"


@pytest.mark.realdata("mvtec3d/cable_gland")
def test_a_part_covering_most_of_the_border_band_does_not_trigger(line, real_data):
    params, parts = line
    frames = []
    for s in parts[:12]:
        d = s.depth.copy()
        d[: int(0.8 * d.shape[0])][d[: int(0.8 * d.shape[0])] > 0] -= 0.015  # a 1.5 cm slab over 80 % of the frame
        frames.append((s.rgb, d))
    watch = PlaneWatch(params, PlaneWatchConfig(frames=N))
    assert run(watch, frames) == []
    assert 0.05 < watch.status()["inlier_fraction"] < 0.5  # most of the band covered, none of it behind


@pytest.mark.realdata("mvtec3d/cable_gland")
@pytest.mark.parametrize("how", ["away", "closer", "tilted", "rolled"])
def test_a_moved_camera_is_detected_within_n_frames_and_the_plane_refitted(line, real_data, how):
    params, parts = line
    watch = PlaneWatch(params, PlaneWatchConfig(frames=N))
    before = [(s.rgb, s.depth) for s in parts[:8]]
    after = list(moved(parts[8:30], how))
    events = run(watch, before + after)
    assert len(events) == 1, [e.kind for _, e in events]
    i, ev = events[0]
    assert ev.kind == "camera_moved" and ev.refit_ok and i == len(before) + N - 1  # the N-th moved frame
    assert ev.frames_off == N and ev.previous_plane == params.plane and ev.plane == watch.params.plane
    assert ev.inlier_fraction < 0.05 or ev.below_fraction > 0.25
    if how == "away":
        assert ev.residual_m == pytest.approx(0.03, abs=0.003)
    # the frames after the move are measured from the refitted plane: the belt reads flat again
    rgb, depth = after[-1]
    out = preprocess(rgb, depth, watch.params)
    assert out.stats["plane_inlier_fraction"] > 0.7 and abs(out.stats["plane_residual_m"]) < 1e-3
    json.dumps(ev.to_dict())


@pytest.mark.realdata("mvtec3d/cable_gland")
def test_camera_put_back_returns_to_the_site_plane(line, real_data):
    params, parts = line
    watch = PlaneWatch(params, PlaneWatchConfig(frames=N))
    frames = [(s.rgb, s.depth) for s in parts[:4]] + list(moved(parts[4:14], "away")) + \
        [(s.rgb, s.depth) for s in parts[14:24]]
    events = run(watch, frames)
    assert [e.kind for _, e in events] == ["camera_moved", "back_on_plane"]
    i, back = events[1]
    assert i == 14 + N - 1 and back.plane == params.plane and watch.params is params
    assert watch.status()["plane"] == "site"


def test_the_current_frames_inputs_are_never_changed():
    """update() sees a frame after its inputs were computed; it changes only `params`, for the
    frames after it, and never the stats or depth it was given."""
    w = PlaneWatch(SITE, PlaneWatchConfig(frames=1))
    depth = plane_frame(0.05, 2.2, 64)
    stats, d0 = dict(OFF_STATS), depth.copy()
    ev = w.update(stats, depth)
    assert ev.kind == "camera_moved" and ev.refit_ok
    assert stats == OFF_STATS
    np.testing.assert_array_equal(depth, d0)
    assert SITE.plane == (0.0, 0.0, 2.0) and w.site is SITE
