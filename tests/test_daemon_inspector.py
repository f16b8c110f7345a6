"""edge.daemon.Inspector on its own: one frame -> one result, no threads, no queues, no sinks.

The engines are stand-ins whose score the test sets per call, so each branch (pass, reject with
an overlay, engine error, non-finite score, no usable stream) is certain; the fallback's
ModeSelector and preprocessing are the real ones.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edge.config import HeatmapConfig
from edge.daemon import Counters, Inspector
from edge.fallback import FallbackConfig, ModeSelector
from edge.frames import Frame
from edge.modes import MODE_INPUTS
from edge.preprocess import PreprocessParams
from edge.results import ModelInfo

SIZE = 64
THRESHOLD = 0.5


class StandIn:
    """An Engine whose next score is ``self.score`` (an exception instance is raised instead)."""

    def __init__(self, mode: str):
        self.mode, self.inputs = mode, MODE_INPUTS[mode]
        self.info = ModelInfo(name="stand-in", version="1", sha256="0" * 64, precision="fp32", engine="test")
        self.score: object = 0.1
        self.feeds: list[dict] = []

    def run(self, feed):
        self.feeds.append(feed)
        if isinstance(self.score, Exception):
            raise self.score
        return np.full((SIZE, SIZE), 0.7, np.float32), self.score

    def close(self):
        pass


def _bundle(modes=("rgbd", "rgb", "depth")):
    spec = SimpleNamespace(threshold=SimpleNamespace(score=THRESHOLD, pixel=0.4),
                           heatmap=SimpleNamespace(low=0.0, high=1.0))
    return SimpleNamespace(preprocess=PreprocessParams(image_size=SIZE), modes={m: spec for m in modes},
                           image_size=SIZE)


def _inspector(**kw):
    engines = {m: StandIn(m) for m in ("rgbd", "rgb", "depth")}
    selector = ModeSelector(FallbackConfig(hold_bad=1, hold_good=1))
    return Inspector(_bundle(), engines, selector, device_id="bench", counters=Counters(), **kw), engines


def _frame(i: int, rgb: bool = True, depth: bool = True) -> Frame:
    rng = np.random.default_rng(i)
    colour = rng.integers(60, 200, (SIZE, SIZE, 3), np.uint8) if rgb else None
    d = (0.5 + 0.001 * rng.standard_normal((SIZE, SIZE))).astype(np.float32) if depth else None
    return Frame(rgb=colour, depth=d, color_frame_number=i, depth_frame_number=i,
                 color_timestamp_ms=33.0 * i, depth_timestamp_ms=33.0 * i, name=f"f{i}")


def test_pass_and_reject_with_gap_free_seq_and_one_mode_change():
    insp, engines = _inspector()
    scores = [0.1, 0.9, 0.2]
    out = []
    for i, s in enumerate(scores):
        engines["rgbd"].score = s
        out.append(insp.inspect(_frame(i)))
    assert [o.result.seq for o in out] == [0, 1, 2]
    assert [o.result.decision for o in out] == ["pass", "reject", "pass"]
    assert [o.result.score for o in out] == scores and all(o.result.threshold == THRESHOLD for o in out)
    assert all(o.result.mode == "rgbd" and o.result.device_id == "bench" for o in out)
    assert out[1].jpeg[:2] == b"\xff\xd8" and out[0].jpeg is None and out[2].jpeg is None
    assert out[0].mode_change["event"] == "mode_change" and out[0].mode_change["mode"] == "rgbd"
    assert out[1].mode_change is None and out[2].mode_change is None
    assert set(engines["rgbd"].feeds[0]) == set(MODE_INPUTS["rgbd"])
    assert engines["rgbd"].feeds[0]["rgb"].shape == (1, 3, SIZE, SIZE)
    c = insp.counters.snapshot()
    assert c["frames_inspected"] == 3 and c["pass"] == 2 and c["reject"] == 1 and c["modes"] == {"rgbd": 3}
    assert insp.mode == "rgbd"


def test_engine_failures_become_counted_no_decision_results():
    insp, engines = _inspector()
    engines["rgbd"].score = RuntimeError("device lost")
    failed = insp.inspect(_frame(0)).result
    engines["rgbd"].score = float("nan")
    nan = insp.inspect(_frame(1)).result
    for r in (failed, nan):
        assert r.decision == "no_decision" and r.score is None and r.threshold is None
        assert r.mode == "rgbd" and r.model == engines["rgbd"].info
    assert "engine error (rgbd): RuntimeError: device lost" in failed.reason
    assert "non-finite score" in nan.reason
    assert insp.counters["engine_errors"] == 2 and insp.counters["no_decision"] == 2


def test_missing_depth_falls_back_to_rgb_and_no_stream_gives_no_decision():
    insp, engines = _inspector()
    insp.inspect(_frame(0))
    rgb_only = insp.inspect(_frame(1, depth=False))
    assert rgb_only.result.mode == "rgb" and rgb_only.mode_change["previous"] == "rgbd"
    assert set(engines["rgb"].feeds[-1]) == {"rgb"}
    nothing = insp.inspect(_frame(2, rgb=False, depth=False))
    assert nothing.result.mode is None and nothing.result.decision == "no_decision"
    assert nothing.result.model is None and nothing.result.reason.startswith("none:")
    assert [r.result.seq for r in (rgb_only, nothing)] == [1, 2]
    assert insp.counters["mode_changes"] == 2


def test_heatmaps_off_sends_rejects_without_overlay():
    insp, engines = _inspector(heatmaps=HeatmapConfig(on_reject=False))
    engines["rgbd"].score = 0.9
    out = insp.inspect(_frame(0))
    assert out.result.decision == "reject" and out.jpeg is None


def test_importing_the_daemon_loads_no_optional_runtime():
    """ONNX Runtime, TensorRT, librealsense and paho load when a configuration asks for them, not
    when edge.daemon is imported (a fresh interpreter, so other tests' imports do not count)."""
    code = ("import sys, edge.daemon; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'onnxruntime', 'tensorrt', 'pyrealsense2', 'paho', 'pycuda', 'gpiod', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout


def test_integer_depth_without_a_scale_is_not_scored_as_metres():
    """uint16 millimetres taken as metres would look like a wall a kilometre away and be scored as
    healthy depth; without a declared scale the frame is scored by colour alone, with the reason."""
    insp, engines = _inspector()
    f = _frame(0)
    f.depth = np.round(f.depth * 1000).astype(np.uint16)
    out = insp.inspect(f).result
    assert out.mode == "rgb" and "depth dtype uint16: expected float metres" in out.reason
    assert insp.selector.stats()["reasons"] == {"depth.malformed": 1}


def test_integer_depth_with_its_declared_scale_is_converted_to_metres():
    metres, counts = _inspector(), _inspector()
    fm, fc = _frame(0), _frame(0)
    fc.depth, fc.depth_scale = np.round(fm.depth * 10000).astype(np.uint16), 1e-4
    fm.depth = fc.depth.astype(np.float32) * np.float32(1e-4)  # the same metres the counts stand for
    a, b = metres[0].inspect(fm).result, counts[0].inspect(fc).result
    assert a.mode == b.mode == "rgbd"
    np.testing.assert_array_equal(metres[1]["rgbd"].feeds[0]["depth"], counts[1]["rgbd"].feeds[0]["depth"])


def test_an_unexpected_error_is_a_counted_no_decision_and_the_next_frame_is_inspected():
    insp, engines = _inspector()
    real = insp.selector.update
    calls = []

    def update(frame, depth_valid_fraction=None):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a bug nobody foresaw")
        return real(frame, depth_valid_fraction=depth_valid_fraction)

    insp.selector.update = update
    out = [insp.inspect(_frame(i)).result for i in range(3)]
    assert [r.seq for r in out] == [0, 1, 2]
    assert [r.decision for r in out] == ["pass", "no_decision", "pass"]
    assert out[1].mode is None and out[1].model is None
    assert out[1].reason == "none: inspection failed: RuntimeError: a bug nobody foresaw"
    c = insp.counters.snapshot()
    assert c["inspect_errors"] == 1 and c["no_decision"] == 1 and c["frames_inspected"] == 3


def test_results_name_the_bundle_digest_and_swap_model_changes_it_between_frames():
    insp, engines = _inspector()
    insp.bundle.digest = "a" * 64
    first = insp.inspect(_frame(0)).result
    new_bundle = _bundle(("rgbd", "rgb"))
    new_bundle.digest = "b" * 64
    new_engines = {m: StandIn(m) for m in ("rgbd", "rgb")}
    insp.swap_model(new_bundle, new_engines, ("rgbd", "rgb"))
    second = insp.inspect(_frame(1)).result
    assert first.model.bundle_digest == "a" * 64 and second.model.bundle_digest == "b" * 64
    assert len(new_engines["rgbd"].feeds) == 1 and len(engines["rgbd"].feeds) == 1
    assert insp.selector.cfg.available_modes == ("rgbd", "rgb") and insp.seq == 2
    assert insp.selector.stats()["frames"] == 2  # the stream history is kept across the swap
