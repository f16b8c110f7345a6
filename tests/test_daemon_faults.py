"""The daemon in-process against faults in its input and its sinks, with the real modules (folder
and recording sources, the tiny ONNX bundle of test_daemon.py, ONNX Runtime, the fallback, the
JSONL sink) and small stand-in sinks where a sink's side of an interface is needed:

* a recording made by edge/sources/recorder.py with a burst of stale depth (a depth frame re-sent
  by playback) is scored rgb from the first re-sent frame (the demo's frames 20 and 21 passed);
* frames whose counters are None, NaN, infinite, negative or not numbers: every frame still gets a
  result, the inference thread lives on;
* sink events (``drain_events``) are published as status messages to every sink and counted, and
  sinks' ``health_problems`` and a failed bundle reload show in every status's ``health``.
"""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge.config import load_config
from edge.daemon import EXIT_OK, Daemon
from edge.daemon.signals import SignalRouter
from edge.data import open_dataset
from edge.sinks import make_sinks
from edge.sources import open_source
from edge.sources.recorder import write_recording
from test_daemon import N_TEST, make_bundle, read_results, write_config
from test_daemon import bundle_dir, replay  # noqa: F401  (fixtures)


class Catch:
    """A sink that keeps everything, in order; optionally reports events and health problems the
    way a real sink does (``drain_events()``, ``stats()["health_problems"]``)."""

    def __init__(self, name="catch", events_at: dict | None = None, problem_from: int | None = None):
        self.name = name
        self.timeline: list = []
        self.events_at = dict(events_at or {})  # result seq -> event dict to report after it
        self.pending: list = []
        self.problem_from = problem_from
        self.seen = -1

    def publish(self, result, heatmap_jpeg=None):
        self.timeline.append(("result", result))
        self.seen = result.seq
        if result.seq in self.events_at:
            self.pending.append(self.events_at.pop(result.seq))

    def publish_status(self, status):
        self.timeline.append(("status", dict(status)))

    def drain_events(self):
        out, self.pending = self.pending, []
        return out

    def close(self, timeout_s=5.0):
        pass

    def stats(self):
        late = self.problem_from is not None and self.seen >= self.problem_from
        return {"published": self.seen + 1, "health_problems": ["alarm output raised: late pulse"] if late else []}

    @property
    def statuses(self) -> list[dict]:
        return [p for k, p in self.timeline if k == "status"]

    @property
    def results(self) -> list:
        return [p for k, p in self.timeline if k == "result"]


# --------------------------------------------------------------------------- stale depth from a recording


def recording_config(tmp_path: Path, bundle: Path, rec: Path, **over) -> Path:
    """write_config with a recording source instead of the folder replay."""
    path = write_config(tmp_path, bundle, tmp_path, **over)
    doc = yaml.safe_load(path.read_text())
    doc["source"] = {"type": "recording", "path": str(rec), **over.get("source", {})}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path



def test_recording_with_a_stale_depth_burst_is_scored_rgb_from_the_first_re_sent_frame(tmp_path, replay, bundle_dir):
    """Generated parts recorded as a RealSense .db3 by the project's recorder, depth of frames 4-6
    re-sent stale (playback repeats depth frame 3 with colour 4, 5 and 6)."""
    samples = [r.load() for r in open_dataset(replay, "test")]
    rec = tmp_path / "burst.db3"
    write_recording(rec, ((s.rgb, s.depth) for s in samples), fps=30, stale_depth_at={4, 5, 6})
    cfg = load_config(recording_config(tmp_path, bundle_dir, rec))
    d = Daemon(cfg)
    assert d.run() == EXIT_OK
    results = read_results(tmp_path / "results.jsonl")
    assert [r["seq"] for r in results] == list(range(N_TEST))
    assert [(r["color_frame_number"], r["depth_frame_number"]) for r in results][3:8] == \
        [(3, 3), (4, 3), (5, 3), (6, 3), (7, 7)]
    assert [r["mode"] for r in results[:4]] == ["rgbd"] * 4
    for r in results[4:7]:  # the stale ones: never rgbd, scored by the rgb graph
        assert r["mode"] == "rgb" and r["decision"] == "pass" and r["model"]["sha256"] == d.bundle.files["rgb.onnx"]
        assert "stale: depth frame number 3" in r["reason"]
    assert results[4]["reason"].startswith("rgb: depth unusable, stale: depth frame number 3 (timestamp 100.0 ms) "
                                           "not advancing for 1 frame")
    assert all(r["mode"] == "rgb" and "recovering" in r["reason"] for r in results[7:])  # hold_good 5
    assert d.selector.stats()["reasons"] == {"depth.stale": 3}


# --------------------------------------------------------------------------- corrupt counters


CORRUPT = {
    1: {"depth_frame_number": None},
    3: {"color_frame_number": float("nan"), "depth_frame_number": float("nan")},
    5: {"depth_timestamp_ms": float("inf")},
    6: {"color_timestamp_ms": -12.5},
    8: {"depth_frame_number": "8"},
}


def test_corrupt_frame_counters_never_kill_the_inference_thread(tmp_path, replay, bundle_dir):
    cfg = load_config(write_config(tmp_path, bundle_dir, replay, fallback={"hold_good": 1}))
    src = open_source(dict(cfg.source))
    real_read, n = src.read, [0]

    def read(timeout_s=1.0):
        frame = real_read(timeout_s)
        for field, value in CORRUPT.get(n[0], {}).items():
            setattr(frame, field, value)
        n[0] += 1
        return frame

    src.read = read
    d = Daemon(cfg, source=src)
    assert d.run() == EXIT_OK
    results = read_results(tmp_path / "results.jsonl")
    assert [r["seq"] for r in results] == list(range(N_TEST))  # every frame, in order
    modes = [r["mode"] for r in results]
    assert modes == ["rgbd", "rgb", "rgbd", None, "rgbd", "rgb", "depth", "rgbd", "rgb", "rgbd"]
    assert "malformed: depth frame number None" in results[1]["reason"]
    assert results[3]["decision"] == "no_decision" and results[3]["score"] is None
    assert (results[3]["color_frame_number"], results[3]["depth_frame_number"]) == (-1, -1)
    assert "malformed: depth timestamp inf" in results[5]["reason"] and results[5]["depth_timestamp_ms"] is None
    assert "malformed: colour timestamp -12.5" in results[6]["reason"]
    assert "malformed: depth frame number '8'" in results[8]["reason"] and results[8]["depth_frame_number"] == -1
    c = d.counters.snapshot()
    assert c["no_decision"] == 1 and c["inspect_errors"] == 0 and c["frames_inspected"] == N_TEST
    assert d.selector.stats()["reasons"] == {"depth.malformed": 4, "rgb.malformed": 2}


# --------------------------------------------------------------------------- sink events and health


def test_sink_events_are_published_as_status_and_health_aggregates_problems(tmp_path, replay, bundle_dir):
    cfg = load_config(write_config(tmp_path, bundle_dir, replay))
    event = {"event": "gpio_pulse_skipped_late", "sink": "gpio", "seq": 2, "late_ms": 1500.0}
    gpio = Catch("gpio", events_at={2: event}, problem_from=2)
    other = Catch("other")
    d = Daemon(cfg, sinks=make_sinks(cfg.sinks, cfg.device_id) + [gpio, other])
    assert d.run() == EXIT_OK
    for sink in (gpio, other):  # every sink hears it, right after the result that caused it
        kinds = [(k, p.seq if k == "result" else p.get("event")) for k, p in sink.timeline]
        at = kinds.index(("result", 2))
        assert kinds[at + 1] == ("status", "gpio_pulse_skipped_late")
        assert sink.timeline[at + 1][1] == {"state": "running", "device_id": "test-cam", **event}
    assert d.counters["sink_events"] == 1
    first, last = gpio.statuses[0], gpio.statuses[-1]
    assert first["event"] == "status" and first["health"] == {"ok": True, "problems": []}
    assert last["event"] == "stopped"
    assert last["health"] == {"ok": False, "problems": ["gpio: alarm output raised: late pulse"]}
    assert last["counters"]["sink_events"] == 1


def test_a_sink_without_drain_events_or_health_is_fine(tmp_path, replay, bundle_dir):
    class Plain:
        name = "plain"

        def __init__(self):
            self.n = 0

        def publish(self, result, heatmap_jpeg=None):
            self.n += 1

        def publish_status(self, status):
            pass

        def close(self, timeout_s=5.0):
            pass

        def stats(self):
            return {"published": self.n}

    cfg = load_config(write_config(tmp_path, bundle_dir, replay))
    plain = Plain()
    d = Daemon(cfg, sinks=[plain])
    assert d.run() == EXIT_OK and plain.n == N_TEST
    assert d.stats()["health"] == {"ok": True, "problems": []} and d.counters["sink_events"] == 0


def test_failed_bundle_reload_keeps_the_running_model_and_is_published(tmp_path, replay, bundle_dir):
    """SIGHUP (the router's flag, as its handler sets it) with `current` pointing at a tampered
    bundle: the load fails, the running model stays, a bundle_reload_failed status names the
    reason, the health says so, and every frame is still scored."""
    broken = make_bundle(tmp_path / "broken", tag="broken")
    (broken / "rgb.onnx").write_bytes(b"not the graph bundle.yaml names")
    current = tmp_path / "current"
    current.symlink_to(bundle_dir)
    cfg = load_config(write_config(tmp_path, current, replay, source={"fps": 20, "loop": True},
                                   status={"interval_s": 0.1}))
    router = SignalRouter()
    catch = Catch()
    d = Daemon(cfg, sinks=[catch], signals=router)

    def drive():
        assert _wait(lambda: len(catch.results) >= 3)
        current.unlink()
        current.symlink_to(broken)
        router.reload.set()
        assert _wait(lambda: d.counters["bundle_reloads_failed"] == 1)
        n = len(catch.results)
        assert _wait(lambda: len(catch.results) >= n + 3 and catch.statuses[-1].get("event") == "status")
        d.request_stop("test done")

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    assert d.run() == EXIT_OK
    t.join(10)
    failed = [s for s in catch.statuses if s.get("event") == "bundle_reload_failed"]
    assert len(failed) == 1 and failed[0]["state"] == "running" and failed[0]["device_id"] == "test-cam"
    assert failed[0]["bundle"] == str(current) and "rgb.onnx" in failed[0]["reason"]
    assert "sha256" in failed[0]["reason"]
    assert [r.seq for r in catch.results] == list(range(len(catch.results)))
    assert {r.model.sha256 for r in catch.results} == {d.bundle.files["rgbd.onnx"]}
    assert d.bundle.root == bundle_dir.resolve() and d.counters["bundle_reloads"] == 0
    problems = catch.statuses[-1]["health"]["problems"]
    assert len(problems) == 1 and problems[0].startswith("bundle reload failed: bundle: ")


def _wait(cond, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_counter_values_in_results_are_json_safe():
    """A corrupt counter never reaches a result as NaN or a string (results carry -1 / null)."""
    from edge.frames import counter_problem, frame_number_or_unknown

    for v in (None, float("nan"), -2, "3", 2.0, True, float("inf")):
        assert frame_number_or_unknown(v) == -1
        assert counter_problem(v, float("nan")) is not None
    assert frame_number_or_unknown(np.int64(7)) == 7 and counter_problem(np.int64(7), 12.5) is None
    assert counter_problem(-1, float("nan")) is None  # unknown is fine
    assert counter_problem(3, math.inf) is not None and counter_problem(3, -1.0) is not None


# --------------------------------------------------------------------------- single-instance lock


def test_instance_lock_per_device_id(tmp_path):
    import os

    from edge.daemon import lock

    env = {"RUNTIME_DIRECTORY": str(tmp_path)}
    held = lock.acquire("line3-cam1", env)
    try:
        assert held.path == tmp_path / "device-line3-cam1.lock"
        with pytest.raises(lock.InstanceLocked, match=rf"device 'line3-cam1' .*pid {os.getpid()}\)"):
            lock.acquire("line3-cam1", env)
        with lock.acquire("line3-cam2", env):  # another device on the same host
            pass
    finally:
        held.release()
    lock.acquire("line3-cam1", env).release()  # free again once released
    assert lock.lock_name("a/b c") != lock.lock_name("a_b_c")  # unsafe characters cannot merge two ids
    assert lock.lock_name("a/b c").startswith("device-a_b_c-")


def test_runtime_directory_order(tmp_path):
    from edge.daemon import lock

    dirs = lock.runtime_dirs({"RUNTIME_DIRECTORY": "/run/rgbd-edge:/run/other", "XDG_RUNTIME_DIR": "/run/user/7"})
    assert dirs[:3] == [Path("/run/rgbd-edge"), lock.SYSTEM_DIR, Path("/run/user/7/rgbd-edge")]
    assert lock.runtime_dirs({})[0] == lock.SYSTEM_DIR and len(lock.runtime_dirs({})) == 2


def test_run_refuses_a_second_instance_before_any_sink(tmp_path, replay, bundle_dir, caplog):
    from edge.daemon import EXIT_LOCKED, lock, run

    cfg = write_config(tmp_path, bundle_dir, replay)
    with lock.acquire("test-cam"):
        assert run(cfg) == EXIT_LOCKED
    assert "another rgbd-edge run holds the lock for device 'test-cam'" in caplog.text
    assert "exit 7 (another instance is running for this device)" in caplog.text
    assert not (tmp_path / "results.jsonl").exists()
    assert run(cfg) == EXIT_OK  # the lock is free again
