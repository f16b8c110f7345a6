"""edge.fallback: stream health, hysteresis and mode choice on synthetic frame sequences.

Frames are small numpy images with device frame numbers and timestamps controlled here
(`Feed`), so every case is exact and fast. Default config unless stated: frozen_frames=3,
hold_bad=1, hold_good=5.

The rule every case obeys: a stream that is unhealthy in a frame (stale, not from this capture,
missing, black, ...) is never used for that frame's decision; hysteresis only delays switching back.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from edge.fallback import FallbackConfig, ModeDecision, ModeSelector, depth_valid_fraction
from edge.frames import Frame

H, W = 48, 64
CFG = FallbackConfig()


def colour(seed: int, level: float = 128.0) -> np.ndarray:
    """A mid-grey scene with sensor noise: every call with a new seed is a new image."""
    rng = np.random.default_rng(seed)
    return np.clip(level + rng.normal(0, 6, (H, W, 3)), 0, 255).astype(np.uint8)


def depth_map(seed: int, missing: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(1000 + seed)
    d = (0.5 + rng.normal(0, 0.0005, (H, W))).astype(np.float32)
    d.ravel()[rng.permutation(H * W)[: round(missing * H * W)]] = 0.0  # exactly this share missing
    return d


class Feed:
    """Makes frames with advancing device counters unless told to repeat them. A fresh depth frame
    is always the current capture's (after a re-send, the next depth frame number skips the lost
    one and its timestamp matches colour's again), as the RealSense syncer delivers them."""

    def __init__(self, selector: ModeSelector | None = None):
        self.sel = selector or ModeSelector(FallbackConfig())
        self.cfn, self.dfn = 100, 40
        self.cts, self.dts = 5000.0, 5000.0
        self.n = 0

    def frame(self, rgb="new", depth="new", depth_repeat=False, colour_repeat=False, missing=0.05,
              colour_number_stuck=False) -> Frame:
        self.n += 1
        if not colour_repeat:
            self.cts = 5000.0 + 33.3 * self.n
            if not colour_number_stuck:
                self.cfn += 1
        if not depth_repeat:
            self.dfn = 40 + self.n
            self.dts = 5000.0 + 33.3 * self.n
        if isinstance(rgb, str) and rgb == "new":
            rgb = colour(self.n)
        if isinstance(depth, str) and depth == "new":
            depth = depth_map(self.n, missing)
        return Frame(rgb=rgb, depth=depth, color_frame_number=self.cfn, depth_frame_number=self.dfn,
                     color_timestamp_ms=self.cts, depth_timestamp_ms=self.dts)

    def step(self, n: int = 1, **kw) -> list[ModeDecision]:
        return [self.sel.update(self.frame(**kw)) for _ in range(n)]

    def one(self, **kw) -> ModeDecision:
        return self.step(1, **kw)[0]


def modes(decisions):
    return [d.mode for d in decisions]


# ----------------------------------------------------------------------------- steady state


def test_steady_rgbd():
    f = Feed()
    ds = f.step(20)
    assert modes(ds) == ["rgbd"] * 20
    assert ds[0].changed and ds[0].previous is None  # the first decision is reported
    assert not any(d.changed for d in ds[1:])
    assert all(d.previous == "rgbd" for d in ds[1:])
    assert ds[-1].reason == "rgbd: both streams healthy"
    assert ds[-1].rgb.ok and ds[-1].depth.ok and ds[-1].rgb.reason == "ok"
    s = f.sel.stats()
    assert s["frames"] == 20 and s["modes"]["rgbd"] == 20 and s["changes"] == 0 and s["reasons"] == {}
    json.dumps(s)


def test_live_static_scene_is_not_frozen():
    """Same scene, new sensor noise each frame: the strided sample keeps the noise, so no false 'frozen'."""
    f = Feed()
    base = np.full((H, W, 3), 120, np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(20):
        rgb = np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
        d = f.one(rgb=rgb)
        assert d.mode == "rgbd" and d.rgb.ok


# ----------------------------------------------------------------------------- stale depth


def test_depth_stale_from_the_first_repeat():
    f = Feed()
    f.step(5)
    d = f.one(depth_repeat=True)  # playback re-sent one dropped depth frame: the previous capture's depth
    assert d.mode == "rgb" and d.changed
    assert not d.depth.ok and d.depth.kind == "stale" and "not advancing for 1 frame" in d.depth.reason
    assert f.one().mode == "rgb"  # dropped: back only after hold_good healthy frames
    assert f.sel.stats()["changes"] == 1


def test_depth_stale_for_one_frame_with_hold_bad_2_costs_only_that_frame():
    f = Feed(ModeSelector(FallbackConfig(hold_bad=2)))
    f.step(5)
    d = f.one(depth_repeat=True)
    assert d.mode == "rgb" and d.depth.kind == "stale"
    assert d.reason.startswith("rgb: depth skipped in this frame, stale: depth frame number")
    assert d.reason.endswith("(1/2 before dropped)")
    assert f.one().mode == "rgbd"  # not dropped: used again from its next healthy frame
    s = f.sel.stats()
    assert s["skipped"]["depth"] == 1 and s["dropped"]["depth"] == 0 and s["changes"] == 2


def test_depth_stale_switches_to_rgb_then_recovers_after_hold_good():
    f = Feed()
    f.step(5)
    stuck_number = f.dfn + 1
    # repeat 1: not yet stale; repeat 2: stale (unhealthy 1/2, tolerated); repeat 3: dropped
    first = f.one()  # a fresh frame with the number that will then repeat
    assert first.mode == "rgbd" and f.dfn == stuck_number
    switch = f.one(depth_repeat=True)  # the first repeat is stale and not used
    assert switch.mode == "rgb" and switch.changed and switch.previous == "rgbd"
    assert not switch.depth.ok and switch.depth.kind == "stale"
    assert switch.depth.reason == (f"stale: depth frame number {stuck_number} (timestamp {f.dts:.1f} ms) "
                                   f"not advancing for 1 frame")
    assert switch.reason.startswith("rgb: depth unusable, stale: depth frame number")
    ds = f.step(2, depth_repeat=True)
    assert modes(ds) == ["rgb", "rgb"] and not any(d.changed for d in ds)
    assert ds[-1].depth.reason == (f"stale: depth frame number {stuck_number} (timestamp {f.dts:.1f} ms) "
                                   f"not advancing for 3 frames")

    # recovery: only after hold_good consecutive fresh frames
    rec = f.step(CFG.hold_good - 1)
    assert modes(rec) == ["rgb"] * (CFG.hold_good - 1)
    assert all(d.depth.ok for d in rec)
    assert "recovering (4/5 healthy frames; last problem: stale" in rec[-1].reason
    back = f.one()
    assert back.mode == "rgbd" and back.changed and back.previous == "rgb"
    assert back.reason == "rgbd: both streams healthy"
    s = f.sel.stats()
    assert s["changes"] == 2 and s["dropped"]["depth"] == 1 and s["restored"]["depth"] == 1
    assert s["reasons"] == {"depth.stale": 3} and s["skipped"]["depth"] == 0


def test_stale_by_timestamp_alone_when_frame_numbers_are_unknown():
    sel = ModeSelector(FallbackConfig(hold_bad=1))
    rgb_ts = 0.0
    out = []
    for i, dts in enumerate([32.0, 65.3, 65.3, 65.3]):  # each fresh depth frame within 2 ms of its colour frame
        rgb_ts += 33.3
        out.append(sel.update(Frame(colour(i), depth_map(i), color_timestamp_ms=rgb_ts, depth_timestamp_ms=dts)))
    assert modes(out) == ["rgbd", "rgbd", "rgb", "rgb"]
    assert out[2].depth.reason == "stale: depth timestamp 65.3 ms not advancing for 1 frame"
    assert out[-1].depth.reason == "stale: depth timestamp 65.3 ms not advancing for 2 frames"


def test_stale_needs_both_counters_stuck():
    """Frame number repeated but timestamp advancing: not stale (the rule is number AND timestamp)."""
    sel = ModeSelector(FallbackConfig(hold_bad=1))
    for i in range(6):
        d = sel.update(Frame(colour(i), depth_map(i), color_frame_number=i, depth_frame_number=7,
                             color_timestamp_ms=33.3 * i, depth_timestamp_ms=33.3 * i))
        assert d.mode == "rgbd" and d.depth.ok


def test_counters_going_backwards_is_a_restart_not_stale():
    sel = ModeSelector(FallbackConfig(hold_bad=1))
    for i, n in enumerate([10, 11, 12, 0, 1, 2]):  # e.g. a replay looping
        d = sel.update(Frame(colour(i), depth_map(i), color_frame_number=n, depth_frame_number=n,
                             color_timestamp_ms=33.3 * n, depth_timestamp_ms=33.3 * n))
        assert d.mode == "rgbd"
    assert sel.stats()["restarts"] == {"rgb": 1, "depth": 1}


def test_unknown_counters_never_count_as_stale():
    sel = ModeSelector(FallbackConfig(hold_bad=1))
    for i in range(5):
        assert sel.update(Frame(colour(i), depth_map(i))).mode == "rgbd"  # -1 and NaN: unknown


def test_demo_stale_depth_burst_is_rgb_from_the_first_re_sent_frame():
    """As in scripts/demo's recording: frames 20-25 carry depth frame 19 again (the previous part's
    depth, re-sent stale by playback). Every one of them is rgb, from the first re-send on, and
    no_decision when colour is unusable too."""
    sel = ModeSelector(FallbackConfig())
    out = []
    for i in range(32):
        dn = 19 if 20 <= i <= 25 else i
        out.append(sel.update(Frame(colour(i), depth_map(dn), color_frame_number=i, depth_frame_number=dn,
                                    color_timestamp_ms=i * 1000 / 30, depth_timestamp_ms=dn * 1000 / 30)))
    assert modes(out[:20]) == ["rgbd"] * 20
    assert modes(out[20:26]) == ["rgb"] * 6 and all(d.depth.kind == "stale" for d in out[20:26])
    assert out[20].reason.startswith("rgb: depth unusable, stale: depth frame number 19")
    assert modes(out[26:31]) == ["rgb"] * 4 + ["rgbd"]  # back after hold_good (5) healthy frames
    # the same burst while colour is black too: no stream to score, no decision
    sel = ModeSelector(FallbackConfig())
    for i in range(22):
        dn = 19 if i >= 20 else i
        rgb = colour(i) if i < 20 else np.zeros((H, W, 3), np.uint8)
        d = sel.update(Frame(rgb, depth_map(dn), color_frame_number=i, depth_frame_number=dn,
                             color_timestamp_ms=i * 1000 / 30, depth_timestamp_ms=dn * 1000 / 30))
        assert d.mode == ("rgbd" if i < 20 else None)


def test_depth_from_another_capture_by_timestamp():
    """A new depth frame number whose timestamp is a frame period behind colour's: it was taken
    for the previous capture (e.g. the camera's syncer paired it late). Not used."""
    sel = ModeSelector(FallbackConfig())
    out = []
    for i in range(6):
        lag = 33.3 if i == 4 else 0.5  # within half a period except frame 4
        out.append(sel.update(Frame(colour(i), depth_map(i), color_frame_number=i, depth_frame_number=i,
                                    color_timestamp_ms=1000 + 33.3 * i, depth_timestamp_ms=1000 + 33.3 * i - lag)))
    assert modes(out) == ["rgbd"] * 4 + ["rgb", "rgb"]
    assert out[4].depth.kind == "unpaired"
    assert out[4].depth.reason == ("not from this capture: depth timestamp 1099.9 ms is 33.3 ms from colour's "
                                   "1133.2 ms (limit 16.6 ms, half a frame period)")
    assert sel.stats()["reasons"] == {"depth.unpaired": 1}


def test_declared_frame_period_checks_the_first_frame_too():
    sel = ModeSelector(FallbackConfig())
    d = sel.update(Frame(colour(0), depth_map(0), color_frame_number=5, depth_frame_number=5,
                         color_timestamp_ms=200.0, depth_timestamp_ms=180.0, frame_period_ms=1000 / 30))
    assert d.mode == "rgb" and d.depth.kind == "unpaired" and "limit 16.7 ms" in d.depth.reason
    sel = ModeSelector(FallbackConfig())  # without a period the first frame cannot be judged
    d = sel.update(Frame(colour(0), depth_map(0), color_timestamp_ms=200.0, depth_timestamp_ms=180.0))
    assert d.mode == "rgbd"


def test_repeated_colour_is_stale_and_depth_is_judged_on_its_own():
    """The real D435 file: depth 169, 170 with colour 162 twice. The second frame's colour is the
    re-send; its depth is a new capture and is scored alone."""
    sel = ModeSelector(FallbackConfig())
    a = sel.update(Frame(colour(0), depth_map(0), color_frame_number=162, depth_frame_number=169,
                         color_timestamp_ms=5400.0, depth_timestamp_ms=5401.0))
    b = sel.update(Frame(colour(0), depth_map(1), color_frame_number=162, depth_frame_number=170,
                         color_timestamp_ms=5400.0, depth_timestamp_ms=5434.3))
    assert (a.mode, b.mode) == ("rgbd", "depth")
    assert b.rgb.kind == "stale" and b.depth.ok


@pytest.mark.parametrize("fill", [np.nan, 0.0, np.inf, -np.inf])
def test_depth_without_a_single_valid_point_is_never_scored(fill):
    sel = ModeSelector(FallbackConfig(max_missing_depth=1.0))  # even when any share of missing points is allowed
    d = sel.update(Frame(colour(0), np.full((H, W), fill, np.float32)))
    assert d.mode == "rgb" and d.depth.kind == "missing"
    assert d.depth.reason == "missing 100% of depth points (no valid point)"
    f = Feed(ModeSelector(FallbackConfig(max_missing_depth=1.0, hold_bad=5)))
    f.step(3)
    assert f.one(depth=np.full((H, W), fill, np.float32)).mode == "rgb"  # hysteresis never keeps it in use


def test_integer_depth_needs_a_declared_scale():
    counts = (depth_map(0) * 1000).astype(np.uint16)  # millimetres
    sel = ModeSelector(FallbackConfig())
    d = sel.update(Frame(colour(0), counts, color_frame_number=1, depth_frame_number=1))
    assert d.mode == "rgb" and d.depth.kind == "malformed"
    assert "depth dtype uint16: expected float metres" in d.depth.reason
    assert sel.stats()["reasons"] == {"depth.malformed": 1}
    sel = ModeSelector(FallbackConfig())
    d = sel.update(Frame(colour(0), counts, color_frame_number=1, depth_frame_number=1, depth_scale=0.001))
    assert d.mode == "rgbd" and d.depth.ok
    for bad in (0.0, -0.001, float("nan"), "0.001"):
        d = ModeSelector(FallbackConfig()).update(Frame(colour(0), counts, depth_scale=bad))
        assert d.mode == "rgb" and "depth scale" in d.depth.reason


@pytest.mark.parametrize("field, value", [
    ("depth_frame_number", None), ("depth_frame_number", float("nan")), ("depth_frame_number", -7),
    ("depth_frame_number", "12"), ("depth_frame_number", 3.0), ("depth_timestamp_ms", None),
    ("depth_timestamp_ms", float("inf")), ("depth_timestamp_ms", -5.0), ("depth_timestamp_ms", "now"),
])
def test_corrupt_depth_counters_make_depth_unusable_for_that_frame(field, value):
    f = Feed()
    f.step(3)
    frame = f.frame()
    setattr(frame, field, value)
    d = f.sel.update(frame)
    assert d.mode == "rgb" and d.depth.kind == "malformed" and d.depth.reason.startswith("malformed: depth ")
    assert d.rgb.ok


def test_corrupt_counters_on_both_streams_give_no_decision():
    sel = ModeSelector(FallbackConfig())
    d = sel.update(Frame(colour(0), depth_map(0), color_frame_number=None, depth_frame_number=float("nan")))
    assert d.mode is None
    assert "colour unusable, malformed: colour frame number None" in d.reason
    assert "depth unusable, malformed: depth frame number nan" in d.reason


def test_counters_lost_after_known_ones_are_unverified():
    f = Feed()
    f.step(3)
    frame = f.frame()
    frame.depth_frame_number, frame.depth_timestamp_ms = -1, float("nan")
    d = f.sel.update(frame)
    assert d.mode == "rgb" and d.depth.kind == "unverified"


# ----------------------------------------------------------------------------- flapping


def test_alternating_good_bad_depth_does_not_flap():
    f = Feed()
    ds = [f.one(missing=0.8 if i % 2 else 0.05) for i in range(30)]
    assert modes(ds) == ["rgbd"] + ["rgb"] * 29  # dropped at the first bad frame, never hold_good good ones
    assert f.sel.stats()["changes"] == 1
    assert f.sel.stats()["skipped"]["depth"] == 0
    assert "missing" in ds[1].reason and "depth unusable" in ds[1].reason


def test_alternating_depth_with_hold_bad_2_is_used_only_in_its_good_frames():
    f = Feed(ModeSelector(FallbackConfig(hold_bad=2)))
    ds = [f.one(missing=0.8 if i % 2 else 0.05) for i in range(30)]
    assert modes(ds) == ["rgbd", "rgb"] * 15  # never dropped, never used in a bad frame
    assert f.sel.stats()["skipped"]["depth"] == 15 and f.sel.stats()["dropped"]["depth"] == 0


def test_alternating_input_after_a_drop_stays_dropped():
    f = Feed()
    f.step(3)
    f.step(2, missing=0.8)
    assert f.sel.mode == "rgb"
    ds = [f.one(missing=0.8 if i % 2 else 0.05) for i in range(30)]
    assert modes(ds) == ["rgb"] * 30 and f.sel.stats()["changes"] == 1


def test_stale_flapping_does_not_switch():
    f = Feed()
    ds = [f.one(depth_repeat=bool(i % 2)) for i in range(20)]
    assert modes(ds) == ["rgbd"] + ["rgb"] * 19 and f.sel.stats()["changes"] == 1
    assert [d.depth.ok for d in ds] == [i % 2 == 0 for i in range(20)]  # every re-send is stale


# ----------------------------------------------------------------------------- colour faults


def test_black_first_frame_starts_in_depth_mode():
    f = Feed()
    d = f.one(rgb=np.full((H, W, 3), 2, np.uint8))
    assert d.mode == "depth" and d.changed and d.previous is None
    assert d.rgb.kind == "black" and d.rgb.reason == "black (mean 2.0, limit 8)"
    assert d.reason == "depth: colour unusable, black (mean 2.0, limit 8)"


def test_black_mid_stream_switches_at_once():
    f = Feed()
    f.step(3)
    ds = f.step(3, rgb=np.zeros((H, W, 3), np.uint8))
    assert modes(ds) == ["depth", "depth", "depth"]
    assert "black (mean 0.0" in ds[1].reason


@pytest.mark.parametrize("img, needle", [
    (np.full((H, W, 3), 252, np.uint8), "saturated (mean 252.0, limit 247)"),
    (np.broadcast_to(np.where(np.arange(W)[None, :, None] < 0.7 * W, 255, 60), (H, W, 3)).astype(np.uint8),
     "saturated (70% of pixels at 255, limit 60%)"),
])
def test_saturated_colour_gives_depth_mode(img, needle):
    f = Feed()
    f.step(2)
    ds = f.step(2, rgb=img)
    assert modes(ds) == ["depth", "depth"]
    assert needle in ds[-1].rgb.reason and ds[-1].rgb.kind == "saturated"


def test_bright_colours_are_not_saturated():
    """A strongly coloured part clips one channel, not all three: not 'saturated'."""
    f = Feed()
    for i in range(4):
        im = colour(i)
        im[..., 0] = 255
        d = f.one(rgb=im)
        assert d.mode == "rgbd" and d.rgb.ok


def test_frozen_colour_identical_images_with_advancing_numbers():
    f = Feed()
    f.step(3)
    img = colour(99)
    # image 1 new; repeats 1..2 ok; repeat 3 frozen (not used); repeat 4 still frozen
    ds = f.step(1 + CFG.frozen_frames + 1, rgb=img.copy())
    assert modes(ds) == ["rgbd"] * CFG.frozen_frames + ["depth", "depth"]
    assert ds[CFG.frozen_frames].rgb.kind == "frozen" and ds[CFG.frozen_frames].mode == "depth"
    assert ds[-1].rgb.reason == "frozen: colour image identical to the previous one for 4 frames"
    assert ds[-1].reason.startswith("depth: colour unusable, frozen")


def test_frozen_colour_by_frame_number_with_advancing_timestamp():
    f = Feed()
    f.step(3)
    ds = f.step(CFG.frozen_frames + 1, colour_number_stuck=True)
    assert modes(ds) == ["rgbd"] * (CFG.frozen_frames - 1) + ["depth", "depth"]
    assert ds[-1].rgb.reason == f"frozen: colour frame number {f.cfn} not advancing for 4 frames (timestamp advancing)"


# ----------------------------------------------------------------------------- depth faults


def test_depth_mostly_missing_gives_rgb():
    f = Feed()
    f.step(3)
    ds = f.step(2, missing=0.8)
    assert modes(ds) == ["rgb", "rgb"]
    assert ds[-1].depth.kind == "missing"
    assert ds[-1].depth.reason == "missing 80% of depth points (limit 60%)"
    assert ds[-1].reason == "rgb: depth unusable, missing 80% of depth points (limit 60%)"


def test_depth_valid_fraction_from_preprocessing_is_used():
    sel = ModeSelector(FallbackConfig())
    d = sel.update(Frame(colour(0), depth_map(0, missing=0.0)), depth_valid_fraction=0.25)
    assert d.mode == "rgb" and d.depth.reason == "missing 75% of depth points (limit 60%)"
    with pytest.raises(ValueError, match="depth_valid_fraction"):
        sel.update(Frame(colour(1), depth_map(1)), depth_valid_fraction=float("nan"))
    with pytest.raises(ValueError, match="depth_valid_fraction"):
        sel.update(Frame(colour(1), depth_map(1)), depth_valid_fraction=1.5)


def test_nan_inf_negative_depth_count_as_missing():
    d = np.full((10, 10), 0.5, np.float32)
    d[0, :] = np.nan
    d[1, :] = np.inf
    d[2, :] = -1
    d[3, :] = 0
    assert depth_valid_fraction(d) == pytest.approx(0.6)


def test_percent_near_the_limit_is_not_rounded_onto_it():
    sel = ModeSelector(FallbackConfig())
    d = sel.update(Frame(colour(0), depth_map(0)), depth_valid_fraction=0.398)
    assert d.depth.reason == "missing 60.2% of depth points (limit 60%)"


def test_depth_size_mismatch_is_malformed_and_immediate():
    f = Feed()
    f.step(3)
    d = f.one(depth=np.full((H // 2, W // 2), 0.5, np.float32))
    assert d.mode == "rgb" and d.depth.kind == "malformed"
    assert "depth size 24x32 differs from colour 48x64" in d.depth.reason


# ----------------------------------------------------------------------------- both bad, absent


def test_both_bad_gives_none_with_reason():
    f = Feed()
    d = f.one(rgb=np.zeros((H, W, 3), np.uint8), missing=0.9)
    assert d.mode is None and d.changed and d.previous is None
    assert d.reason.startswith("none: no usable stream; ")
    assert "colour unusable, black" in d.reason and "depth unusable, missing 90%" in d.reason
    assert f.sel.stats()["modes"]["none"] == 1


def test_both_absent():
    sel = ModeSelector(FallbackConfig())
    d = sel.update(Frame(None, None))
    assert d.mode is None and d.rgb.reason == "absent" and d.depth.reason == "absent"
    assert d.reason == "none: no usable stream; colour unusable, absent; depth unusable, absent"


def test_absent_stream_is_unusable_immediately_and_returns_after_hold_good():
    f = Feed()
    f.step(5)
    d = f.one(depth=None)
    assert d.mode == "rgb" and d.changed and d.previous == "rgbd"
    assert d.depth.kind == "absent" and d.reason == "rgb: depth unusable, absent"
    ds = f.step(CFG.hold_good)
    assert modes(ds) == ["rgb"] * (CFG.hold_good - 1) + ["rgbd"]
    d = f.one(rgb=None)
    assert d.mode == "depth" and d.previous == "rgbd"


def test_absent_on_first_frame():
    f = Feed()
    assert f.one(rgb=None).mode == "depth"
    assert modes(f.step(CFG.hold_good)) == ["depth"] * (CFG.hold_good - 1) + ["rgbd"]


# ----------------------------------------------------------------------------- available modes


def test_bundle_without_depth_graph():
    f = Feed(ModeSelector(FallbackConfig(available_modes=("rgbd", "rgb"))))
    d = f.one(rgb=np.zeros((H, W, 3), np.uint8))
    assert d.mode is None
    assert d.reason == ("none: depth not in bundle (available: rgbd, rgb); "
                        "colour unusable, black (mean 0.0, limit 8)")


def test_bundle_with_rgb_only():
    f = Feed(ModeSelector(FallbackConfig(available_modes=["rgb"])))
    d = f.one()
    assert d.mode == "rgb" and d.reason == "rgb: rgbd not in bundle (available: rgb); both streams healthy"
    assert f.one(depth=None).mode == "rgb"
    assert f.one(rgb=None).mode is None


def test_bundle_with_rgbd_only_and_depth_absent():
    f = Feed(ModeSelector(FallbackConfig(available_modes=("rgbd",))))
    assert f.one().mode == "rgbd"
    d = f.one(depth=None)
    assert d.mode is None and d.changed and d.previous == "rgbd"
    assert d.reason == "none: rgb not in bundle (available: rgbd); depth unusable, absent"


# ----------------------------------------------------------------------------- changes, stats


def test_changed_and_previous_sequence():
    f = Feed()
    seq = []
    seq += f.step(2)                       # rgbd
    seq += f.step(1, depth=None)           # rgb (absent: immediate)
    seq += f.step(1, rgb=None, depth=None)  # none
    seq += f.step(5)                       # recovering ... rgbd on the 5th
    got = [(d.mode, d.changed, d.previous) for d in seq]
    assert got == [
        ("rgbd", True, None), ("rgbd", False, "rgbd"),
        ("rgb", True, "rgbd"), (None, True, "rgb"),
        (None, False, None), (None, False, None), (None, False, None), (None, False, None),
        ("rgbd", True, None),
    ]
    s = f.sel.stats()
    assert s["changes"] == 3 and s["current"] == "rgbd"
    assert s["modes"] == {"rgbd": 3, "rgb": 1, "depth": 0, "none": 5}
    assert s["reasons"] == {"depth.absent": 2, "rgb.absent": 1}
    assert s["dropped"] == {"rgb": 1, "depth": 1} and s["restored"] == {"rgb": 1, "depth": 1}


def test_stats_counts_and_reset():
    f = Feed()
    f.step(4)
    f.step(3, missing=0.9)   # dropped at once, still missing
    f.step(2, rgb=np.full((H, W, 3), 255, np.uint8))  # colour saturated (and identical) -> none
    s = f.sel.stats()
    assert s["frames"] == 9
    assert s["modes"] == {"rgbd": 4, "rgb": 3, "depth": 0, "none": 2}
    assert s["reasons"] == {"depth.missing": 3, "rgb.saturated": 2}
    assert s["skipped"] == {"rgb": 0, "depth": 0}
    assert s["changes"] == 2
    f.sel.reset()  # e.g. the camera was reopened: next frame decides afresh, stats kept
    d = f.one()
    assert d.mode == "rgbd" and d.changed and d.previous is None
    assert f.sel.stats()["frames"] == 10 and f.sel.stats()["changes"] == 3


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_round_trip():
    assert FallbackConfig.from_dict(None) == FallbackConfig()
    assert FallbackConfig.from_dict({}) == FallbackConfig()
    cfg = FallbackConfig.from_dict({"hold_good": 3, "available_modes": ["rgbd", "rgb"]})
    assert cfg.hold_good == 3 and cfg.available_modes == ("rgbd", "rgb")
    assert FallbackConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("d, key", [
    ({"hold_bda": 2}, "fallback.hold_bda"),
    ({"hold_good": 1001}, "fallback.hold_good"),
    ({"hold_bad": 10**9}, "fallback.hold_bad"),
    ({"frozen_frames": 5000}, "fallback.frozen_frames"),
    ({"stale_frames": 2}, "fallback.stale_frames"),
    ({"hold_bad": 0}, "fallback.hold_bad"),
    ({"hold_good": 2.5}, "fallback.hold_good"),
    ({"stale_frames": True}, "fallback.stale_frames"),
    ({"frozen_frames": -1}, "fallback.frozen_frames"),
    ({"max_missing_depth": 1.5}, "fallback.max_missing_depth"),
    ({"saturated_fraction": 0}, "fallback.saturated_fraction"),
    ({"black_level": "dark"}, "fallback.black_level"),
    ({"black_level": 250}, "fallback.black_level"),
    ({"available_modes": ["rgbd", "thermal"]}, "fallback.available_modes"),
    ({"available_modes": []}, "fallback.available_modes"),
    ({"available_modes": "rgb"}, "fallback.available_modes"),
])
def test_config_errors_name_the_key(d, key):
    with pytest.raises(ValueError) as e:
        FallbackConfig.from_dict(d)
    assert str(e.value).startswith(key + ":")


def test_config_upper_bounds_are_named():
    with pytest.raises(ValueError, match=r"^fallback.hold_good: must be at most 1000, got 1001"):
        FallbackConfig.from_dict({"hold_good": 1001})
    with pytest.raises(ValueError, match=r"^fallback.stale_frames: no longer a setting"):
        FallbackConfig.from_dict({"stale_frames": 1})


def test_config_not_a_mapping():
    with pytest.raises(ValueError, match="^fallback: must be a mapping"):
        FallbackConfig.from_dict([1, 2])
