"""edge.daemon end to end, with the real modules: a synthetic RGB-D dataset replayed by the folder
source, a tiny but valid bundle (one small ONNX graph per mode, docs/bundle.md), the ONNX Runtime
engine, the real fallback and the JSONL sink.

The graphs compute a real anomaly map from the preprocessed tensors (mean |x| over channels, the
depth part masked by the foreground) so the map, score and overlay paths are all exercised.
Thresholds are chosen so the outcome is certain: every rgbd frame is a reject (score >= 0.5 is
certain for normalised inputs), every rgb frame a pass (threshold 100).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime  # noqa: F401  (the engine the daemon runs here)
import pytest
import yaml
from onnx import TensorProto, helper

from edge.config import load_config  # noqa: E402
from edge.daemon import (  # noqa: E402
    EXIT_BUNDLE,
    EXIT_CONFIG,
    EXIT_ENGINE,
    EXIT_OK,
    EXIT_SOURCE,
    Daemon,
    run,
)
from edge.data import SyntheticConfig, make_synthetic_dataset, open_dataset  # noqa: E402
from edge.notify import Notifier  # noqa: E402
from edge.preprocess import PreprocessParams  # noqa: E402

SIZE = 64
REPO = Path(__file__).resolve().parents[1]
MODE_INPUTS = {"rgbd": ["rgb", "depth", "foreground"], "rgb": ["rgb"], "depth": ["depth", "foreground"]}
THRESHOLDS = {"rgbd": 0.5, "rgb": 100.0, "depth": 0.5}
N_TEST = 4 + 3 * 2  # test split: 4 good + 2 per defect


# --------------------------------------------------------------------------- a tiny valid bundle


def mode_graph(mode: str, size: int, tag: str = "") -> "onnx.ModelProto":
    """anomaly_map = mean_c |rgb| (+ mean_c |depth| * foreground); score = max(anomaly_map), shape [1].
    ``tag`` goes into the graph's name: the same function in other bytes (another sha256)."""
    shapes = {"rgb": [1, 3, size, size], "depth": [1, 3, size, size], "foreground": [1, 1, size, size]}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in MODE_INPUTS[mode]]
    nodes, parts = [], []
    if "rgb" in MODE_INPUTS[mode]:
        nodes += [helper.make_node("Abs", ["rgb"], ["rgb_abs"]),
                  helper.make_node("ReduceMean", ["rgb_abs"], ["rgb_map"], axes=[1], keepdims=1)]
        parts.append("rgb_map")
    if "depth" in MODE_INPUTS[mode]:
        nodes += [helper.make_node("Abs", ["depth"], ["depth_abs"]),
                  helper.make_node("ReduceMean", ["depth_abs"], ["depth_mean"], axes=[1], keepdims=1),
                  helper.make_node("Mul", ["depth_mean", "foreground"], ["depth_map"])]
        parts.append("depth_map")
    nodes.append(helper.make_node("Add" if len(parts) == 2 else "Identity", parts, ["anomaly_map"]))
    nodes += [helper.make_node("ReduceMax", ["anomaly_map"], ["score_scalar"], keepdims=0),
              helper.make_node("Reshape", ["score_scalar", "shape_1"], ["score"])]
    outputs = [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, size, size]),
               helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])]
    graph = helper.make_graph(nodes, f"tiny_{mode}{'_' + tag if tag else ''}", inputs, outputs,
                              initializer=[helper.make_tensor("shape_1", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_bundle(root: Path, size: int = SIZE, modes=("rgbd", "rgb", "depth"), tag: str = "",
                thresholds: dict | None = None) -> Path:
    """A bundle load_bundle accepts: bundle.yaml (schema 1) + one fp32 ONNX graph per mode, hashed.
    ``tag`` makes the graphs' bytes (and sha256) differ from another bundle's; ``thresholds``
    overrides THRESHOLDS per mode."""
    root.mkdir(parents=True, exist_ok=True)
    files, table = {}, {}
    for m in modes:
        path = root / f"{m}.onnx"
        onnx.save(mode_graph(m, size, tag), str(path))
        files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        t = {**THRESHOLDS, **(thresholds or {})}[m]
        table[m] = {"onnx": path.name, "inputs": MODE_INPUTS[m], "outputs": ["anomaly_map", "score"],
                    "threshold": {"score": t, "pixel": 0.8 * t, "target_frr": 0.01, "expected_frr": 0.01,
                                  "n_validation": 3, "precision": "fp32"},
                    "heatmap": {"low": 0.0, "high": 1.5 * t}}
    doc = {
        "schema_version": 1,
        "model": {"name": "tiny", "version": "test-1", "family": "test"},
        "input": {"image_size": size, "layout": "NCHW", "dtype": "float32"},
        "preprocess": PreprocessParams(image_size=size, height_scale_m=0.02, normal_gain=3.0).to_dict(),
        "modes": table,
        "provenance": {"created": "2026-01-01T00:00:00Z", "code_version": "test",
                       "training_data_fingerprint": "ab" * 32},
        "files": files,
    }
    (root / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _dataset(root: Path) -> Path:
    return make_synthetic_dataset(root, SyntheticConfig(size=SIZE, seed=3, n_train=1, n_validation=1,
                                                        n_test_good=4, n_test_per_defect=2))


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Path:
    """Read-only synthetic rgbd-folder dataset; its test split is replayed."""
    return _dataset(tmp_path_factory.mktemp("replay") / "data")


@pytest.fixture(scope="module")
def broken_replay(tmp_path_factory) -> tuple[Path, str, str]:
    """The same kind of dataset with the depth of one test frame removed (all points missing) and,
    for another frame, both streams unusable (black colour, no depth)."""
    root = _dataset(tmp_path_factory.mktemp("broken") / "data")
    refs = open_dataset(root, "test")
    no_depth, nothing = refs[2], refs[6]
    for ref in (no_depth, nothing):
        d = cv2.imread(str(ref.depth), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(ref.depth), np.zeros_like(d))
    c = cv2.imread(str(nothing.rgb))
    cv2.imwrite(str(nothing.rgb), np.zeros_like(c))
    return root, no_depth.name, nothing.name


def write_config(tmp_path: Path, bundle: Path, data: Path, **over) -> Path:
    doc = {
        "device_id": "test-cam",
        "bundle": str(bundle),
        "engine": {"backend": "onnxruntime", "precision": "fp32", "threads": 1},
        "source": {"type": "folder", "path": str(data), "split": "test"},
        "sinks": {"jsonl": {"path": "results.jsonl"}},
        "status": {"interval_s": 0.2},
        "log_level": "DEBUG",
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(doc.get(k), dict):
            doc[k] = {**doc[k], **v}
        else:
            doc[k] = v
    path = tmp_path / "rgbd-edge.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_names(data: Path) -> list[str]:
    return [r.name for r in open_dataset(data, "test")]


test_names.__test__ = False  # a helper, not a test


class Listener:
    """systemd's notification socket, for real: an AF_UNIX datagram socket in tmp_path."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except (socket.timeout, BlockingIOError):
                return self.messages

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- replay end to end


def test_replay_gives_one_result_per_frame_with_gap_free_seq(tmp_path, bundle_dir, replay, caplog):
    cfg = load_config(write_config(tmp_path, bundle_dir, replay))
    assert cfg.exit_at_end and cfg.queues.on_full == "block"  # replay defaults
    d = Daemon(cfg)
    assert d.run() == EXIT_OK

    results = read_results(tmp_path / "results.jsonl")
    assert len(results) == N_TEST
    assert [r["seq"] for r in results] == list(range(N_TEST))
    assert [r["frame_name"] for r in results] == test_names(replay)  # every frame, in order
    assert [r["color_frame_number"] for r in results] == list(range(N_TEST))
    for r in results:
        assert r["device_id"] == "test-cam" and r["schema"] == 1
        assert r["mode"] == "rgbd" and r["reason"].startswith("rgbd:")
        assert r["decision"] == "reject" and r["score"] > r["threshold"] == THRESHOLDS["rgbd"]
        assert r["model"]["engine"] == "onnxruntime" and r["model"]["precision"] == "fp32"
        assert r["model"]["sha256"] == d.bundle.files["rgbd.onnx"]
        lat = r["latency"]
        assert set(lat) == {"capture_ms", "preprocess_ms", "inference_ms", "total_ms"}
        assert all(v >= 0 for v in lat.values())
        assert lat["total_ms"] >= lat["preprocess_ms"] + lat["inference_ms"]
    c = d.counters.snapshot()
    assert c["frames_captured"] == c["frames_inspected"] == c["reject"] == N_TEST
    assert c["frames_dropped"] == c["results_dropped"] == c["engine_errors"] == 0
    assert c["results_published"] == N_TEST
    assert "stopping (end of stream)" in caplog.text and "exit 0 (clean stop)" in caplog.text


def test_rejects_carry_a_heatmap_overlay(tmp_path, bundle_dir, replay):
    cfg = load_config(write_config(tmp_path, bundle_dir, replay))

    class Catch:
        name = "catch"

        def __init__(self):
            self.jpegs, self.status = [], []

        def publish(self, result, heatmap_jpeg=None):
            self.jpegs.append((result.decision, heatmap_jpeg))

        def publish_status(self, status):
            self.status.append(status)

        def close(self, timeout_s=5.0):
            pass

        def stats(self):
            return {}

    from edge.sinks import make_sinks

    catch = Catch()
    d = Daemon(cfg, sinks=make_sinks(cfg.sinks, cfg.device_id) + [catch])
    assert d.run() == EXIT_OK
    assert len(catch.jpegs) == N_TEST
    for decision, jpeg in catch.jpegs:
        assert decision == "reject" and jpeg[:2] == b"\xff\xd8"  # a JPEG
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[2] == 3 and img.shape[1] >= SIZE
    events = [s["event"] for s in catch.status]
    assert events[0] == "status" and events[1] == "mode_change" and events[-1] == "stopped"
    assert catch.status[-1]["counters"]["frames_inspected"] == N_TEST
    assert catch.status[-1]["exit_code"] == 0


def test_missing_depth_switches_to_rgb_and_no_stream_gives_no_decision(tmp_path, bundle_dir, broken_replay, caplog):
    data, no_depth, nothing = broken_replay
    cfg = load_config(write_config(tmp_path, bundle_dir, data, fallback={"hold_bad": 1, "hold_good": 1}))
    d = Daemon(cfg)
    assert d.run() == EXIT_OK
    results = {r["frame_name"]: r for r in read_results(tmp_path / "results.jsonl")}
    assert len(results) == N_TEST
    assert [r["seq"] for r in results.values()] == list(range(N_TEST))

    r = results[no_depth]
    assert r["mode"] == "rgb" and r["decision"] == "pass"  # the rgb graph and the rgb threshold
    assert r["threshold"] == THRESHOLDS["rgb"]
    assert "depth" in r["reason"] and "missing 100% of depth points" in r["reason"]
    assert r["model"]["sha256"] == d.bundle.files["rgb.onnx"]

    r = results[nothing]
    assert r["mode"] is None and r["decision"] == "no_decision"
    assert r["score"] is None and r["threshold"] is None and r["model"] is None
    assert r["reason"].startswith("none: no usable stream") and "black" in r["reason"]

    others = [r for n, r in results.items() if n not in (no_depth, nothing)]
    assert all(r["mode"] == "rgbd" and r["decision"] == "reject" for r in others)
    c = d.counters.snapshot()
    assert c["no_decision"] == 1 and c["pass"] == 1 and c["reject"] == N_TEST - 2
    assert c["modes"] == {"rgbd": N_TEST - 2, "rgb": 1, "none": 1}
    assert c["mode_changes"] == 4  # rgbd -> rgb -> rgbd -> none -> rgbd
    assert "mode change rgbd -> rgb at seq 2" in caplog.text and "missing 100%" in caplog.text
    assert "mode change rgbd -> none at seq 6" in caplog.text


def test_engine_exceptions_give_counted_no_decision_results(tmp_path, bundle_dir, replay):
    from edge.engines import EngineError

    cfg = load_config(write_config(tmp_path, bundle_dir, replay))
    d = Daemon(cfg)
    d.start()
    real = d.engines["rgbd"]
    calls = []

    class Flaky:  # every other call fails, as a TensorRT context error would
        inputs, info, mode = real.inputs, real.info, real.mode

        def run(self, feed):
            calls.append(1)
            if len(calls) % 2 == 0:
                raise EngineError("rgbd engine: CUDA error 700 (simulated)", mode="rgbd")
            return real.run(feed)

        def close(self):
            real.close()

    d.engines["rgbd"] = Flaky()
    assert d.serve() == EXIT_OK
    results = read_results(tmp_path / "results.jsonl")
    assert [r["seq"] for r in results] == list(range(N_TEST))
    failed = [r for r in results if r["decision"] == "no_decision"]
    assert len(failed) == N_TEST // 2
    for r in failed:
        assert r["mode"] == "rgbd" and r["score"] is None
        assert "engine error (rgbd): EngineError: rgbd engine: CUDA error 700 (simulated)" in r["reason"]
    assert all(r["decision"] == "reject" for r in results if r not in failed)
    assert d.counters["engine_errors"] == N_TEST // 2 and d.counters["no_decision"] == N_TEST // 2


def test_full_capture_queue_counts_drops(tmp_path, bundle_dir, replay, caplog):
    """Capture queue of 1 with drop_oldest; inference is held on the first frame until capture has
    read the whole replay, so frames must be dropped: counted, logged and reported, never a result."""
    cfg = load_config(write_config(tmp_path, bundle_dir, replay, queues={"capture": 1, "on_full": "drop_oldest"}))
    d = Daemon(cfg)
    d.start()
    real = d.engines["rgbd"]

    class Held:
        inputs, info, mode = real.inputs, real.info, real.mode

        def run(self, feed):
            # capture stops at the end of the replay; until then the first inference is held
            assert d._stop.wait(30), "capture did not reach the end of the replay"
            return real.run(feed)

        def close(self):
            real.close()

    d.engines["rgbd"] = Held()
    assert d.serve() == EXIT_OK
    results = read_results(tmp_path / "results.jsonl")
    c = d.counters.snapshot()
    assert c["frames_captured"] == N_TEST
    assert c["frames_dropped"] >= 1
    assert c["frames_inspected"] + c["frames_dropped"] == N_TEST  # every frame is one or the other
    assert len(results) == c["frames_inspected"]
    assert [r["seq"] for r in results] == list(range(len(results)))  # seq counts inspections
    assert results[-1]["frame_name"] == test_names(replay)[-1]  # drop_oldest keeps the newest
    assert "capture queue full (1): dropped frame" in caplog.text
    assert f"dropped={c['frames_dropped']}" in caplog.text  # the final status line
    assert d.stats()["counters"]["frames_dropped"] == c["frames_dropped"]


def test_stuck_sinks_fill_the_results_queue_and_drops_are_counted(tmp_path, bundle_dir, replay, caplog):
    """Results queue of 1, a sink stuck until capture has finished: results that find no room within
    queues.results_timeout_s are counted and logged, never silently lost."""
    from edge.sinks import make_sinks

    cfg = load_config(write_config(tmp_path, bundle_dir, replay, queues={"results": 1, "results_timeout_s": 0.05}))
    d = Daemon(cfg)

    class Stuck:
        name = "stuck"

        def __init__(self):
            self.seqs = []

        def publish(self, result, heatmap_jpeg=None):
            assert d._stop.wait(30)  # stuck until capture reached the end of the replay
            self.seqs.append(result.seq)

        def publish_status(self, status):
            pass

        def close(self, timeout_s=5.0):
            pass

        def stats(self):
            return {"published": len(self.seqs)}

    stuck = Stuck()
    d.sinks = make_sinks(cfg.sinks, cfg.device_id) + [stuck]
    assert d.run() == EXIT_OK
    c = d.counters.snapshot()
    assert c["frames_inspected"] == N_TEST and c["results_dropped"] >= 1
    assert c["results_published"] + c["results_dropped"] == N_TEST
    published = [r["seq"] for r in read_results(tmp_path / "results.jsonl")]
    assert published == stuck.seqs and len(published) == c["results_published"]
    assert "NOT published" in caplog.text and f"results_dropped={c['results_dropped']}" in caplog.text


# --------------------------------------------------------------------------- systemd integration


def test_notify_ready_watchdog_status_stopping_and_hung_inference_stops_pinging(tmp_path, bundle_dir, replay):
    """READY after start-up, WATCHDOG=1 only while the inference loop makes progress, STOPPING at the end."""
    listener = Listener(tmp_path / "notify.sock")
    try:
        notifier = Notifier(listener.path, watchdog_usec=100_000)  # ping every 0.05 s
        cfg = load_config(write_config(tmp_path, bundle_dir, replay))
        d = Daemon(cfg, notifier=notifier)
        d.start()
        starting = list(listener.drain())  # before READY: only start-timeout extensions while engines load
        assert starting and all(m.startswith("EXTEND_TIMEOUT_USEC=") for m in starting)
        real = d.engines["rgbd"]
        entered, release = threading.Event(), threading.Event()

        class Hang:
            inputs, info, mode = real.inputs, real.info, real.mode

            def run(self, feed):
                if not entered.is_set():
                    entered.set()
                    assert release.wait(30)
                return real.run(feed)

            def close(self):
                real.close()

        d.engines["rgbd"] = Hang()
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("code", d.serve()))
        t.start()
        assert entered.wait(30)
        before = list(listener.drain())
        assert before[len(starting)].startswith("READY=1\nSTATUS=running: ")
        time.sleep(0.5)  # ten watchdog intervals with the inference loop stuck in the engine
        during = listener.drain()[len(before):]
        assert "WATCHDOG=1" not in during  # a hung pipeline is not kept alive
        release.set()
        t.join(30)
        assert box["code"] == EXIT_OK
        after = listener.drain()[len(before) + len(during):]
        assert "WATCHDOG=1" in after  # pings resume as soon as frames are processed again
        assert any(m.startswith("STOPPING=1") for m in after)
        assert any(m.startswith("STATUS=") for m in listener.messages)
    finally:
        listener.close()


def _spawn(config: Path, env_extra: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def test_sigterm_drains_and_exits_0(tmp_path, bundle_dir, replay):
    """The real command in a subprocess, as systemd runs it: an endless paced replay, SIGTERM after
    a few results; the queued frames are still published and the exit code is 0."""
    listener = Listener(tmp_path / "notify.sock")
    cfg = write_config(tmp_path, bundle_dir, replay, log_level="INFO",
                       source={"fps": 20, "loop": True}, queues={"capture": 4})
    proc = _spawn(cfg, {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "2000000"})
    out = tmp_path / "results.jsonl"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(read_results(out)) >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        assert any(m.startswith("READY=1") for m in listener.drain())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        listener.drain()
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    assert proc.returncode == 0, err
    assert "stopping (signal SIGTERM): draining" in err and "exit 0 (clean stop)" in err
    results = read_results(out)
    assert len(results) >= 5
    assert [r["seq"] for r in results] == list(range(len(results)))
    assert any(m.startswith("STOPPING=1") for m in listener.messages)
    assert "WATCHDOG=1" in listener.messages
    # the final status line reports as many inspections as there are results: nothing queued was lost
    assert f"stopped (signal SIGTERM): mode=rgbd inspected={len(results)} " in err


def test_sigint_in_process_drains_and_returns_0(tmp_path, bundle_dir, replay):
    """run() installs SIGTERM/SIGINT handlers; a signal to this process stops it cleanly."""
    cfg = write_config(tmp_path, bundle_dir, replay, source={"fps": 20, "loop": True})
    out = tmp_path / "results.jsonl"

    def kill_later():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and len(read_results(out)) >= 3:
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=kill_later, daemon=True)
    t.start()
    assert run(cfg) == EXIT_OK
    t.join(5)
    results = read_results(out)
    assert len(results) >= 3 and [r["seq"] for r in results] == list(range(len(results)))


def test_source_error_is_retried_by_reopening(tmp_path, bundle_dir, replay, caplog):
    from edge.sources import SourceError

    cfg = load_config(write_config(tmp_path, bundle_dir, replay))
    d = Daemon(cfg)
    d.start()
    real_read, calls = d.source.read, []

    def read(timeout_s):
        calls.append(1)
        if len(calls) == 3:
            raise SourceError("folder: USB hiccup (simulated)")
        return real_read(timeout_s)

    d.source.read = read
    assert d.serve() == EXIT_OK
    c = d.counters.snapshot()
    assert c["source_errors"] == 1 and c["source_reopens"] == 1
    results = read_results(tmp_path / "results.jsonl")
    assert len(results) == 2 + N_TEST  # two frames, then the reopened replay from its start
    assert [r["seq"] for r in results] == list(range(len(results)))
    assert "USB hiccup" in caplog.text and "reopened" in caplog.text


def test_source_that_keeps_failing_exits_5(tmp_path, bundle_dir, replay, caplog):
    from edge.sources import SourceError

    cfg = load_config(write_config(tmp_path, bundle_dir, replay, source={"reopen_attempts": 1}))
    d = Daemon(cfg)
    d.start()

    def read(timeout_s):
        raise SourceError("camera gone (simulated)")

    d.source.read = read
    assert d.serve() == EXIT_SOURCE
    assert d.counters["source_errors"] == 2 and d.counters["frames_inspected"] == 0
    assert "giving up" in caplog.text and "exit 5" in caplog.text


def test_max_frames(tmp_path, bundle_dir, replay):
    cfg = load_config(write_config(tmp_path, bundle_dir, replay, source={"loop": True}))
    assert not cfg.exit_at_end  # a looping replay never ends; max_frames stops it
    d = Daemon(cfg, max_frames=3)
    assert d.run() == EXIT_OK
    assert [r["seq"] for r in read_results(tmp_path / "results.jsonl")] == [0, 1, 2]
    assert d.end_reason == "--max-frames 3 reached"


# --------------------------------------------------------------------------- exit codes


def test_exit_code_config_error(tmp_path, bundle_dir, replay, caplog):
    cfg = write_config(tmp_path, bundle_dir, replay, queue={"capture": 2})
    assert run(cfg) == EXIT_CONFIG
    assert "queue: unknown key; did you mean 'queues'?" in caplog.text
    assert run(tmp_path / "missing.yaml") == EXIT_CONFIG


def test_exit_code_bundle_error(tmp_path, replay, caplog):
    cfg = write_config(tmp_path, tmp_path / "no-such-bundle", replay)
    assert run(cfg) == EXIT_BUNDLE
    assert "bundle directory not found" in caplog.text and "exit 3 (bundle error)" in caplog.text


def test_exit_code_engine_error(tmp_path, bundle_dir, replay, caplog):
    # TensorRT is not installed here; on a device the empty cache with build_missing: false fails too.
    cfg = write_config(tmp_path, bundle_dir, replay,
                       engine={"backend": "tensorrt", "build_missing": False, "cache_dir": str(tmp_path / "c")})
    assert run(cfg) == EXIT_ENGINE
    assert "engines:" in caplog.text and "exit 4 (engine load error)" in caplog.text


def test_exit_code_source_error(tmp_path, bundle_dir, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = write_config(tmp_path, bundle_dir, empty)
    assert run(cfg) == EXIT_SOURCE
    assert "could not be opened" in caplog.text and "exit 5" in caplog.text


def test_sink_config_error_is_exit_2(tmp_path, bundle_dir, replay, caplog):
    cfg = write_config(tmp_path, bundle_dir, replay, sinks={"jsonl": {"path": "r.jsonl", "max_bytez": 10}})
    assert run(cfg) == EXIT_CONFIG
    assert "sinks.jsonl.max_bytez: unknown key" in caplog.text


# --------------------------------------------------------------------------- CLI


def test_cli_run_help_and_wiring(capsys):
    from edge.cli import build_parser

    p = build_parser()
    a = p.parse_args(["run", "--config", "x.yaml", "--max-frames", "5", "--log-level", "debug"])
    assert a.config == "x.yaml" and a.max_frames == 5 and a.log_level == "DEBUG"
    with pytest.raises(SystemExit):
        p.parse_args(["run", "--config", "x.yaml", "--max-frames", "0"])
    names = set(p._subparsers._group_actions[0].choices)
    assert {"run", "check-bundle", "capture", "watch"} <= names


def test_cli_missing_optional_module_gives_a_clear_error(monkeypatch, capsys):
    import edge.cli as cli

    monkeypatch.setitem(cli._OPTIONAL, "watch", ("edge.no_such_module", "watch a device"))
    assert cli.main(["watch", "--host", "x"]) == 2
    err = capsys.readouterr().err
    assert "rgbd-edge watch: error: this command is not available" in err and "edge.no_such_module" in err
    assert cli.main(["check-bundle", "/no/such/bundle"]) == 2  # the other commands are unaffected


# --------------------------------------------------------------------------- the systemd unit


UNIT = REPO / "systemd" / "rgbd-edge.service"


def _unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_unit_matches_the_daemon_contract():
    u = _unit_settings()
    assert u["Type"] == ["notify"] and u["NotifyAccess"] == ["main"]
    assert u["WatchdogSec"] == ["30"] and u["Restart"] == ["on-failure"] and u["RestartSec"] == ["5"]
    assert u["RestartPreventExitStatus"] == [f"{EXIT_CONFIG} {EXIT_BUNDLE}"]
    assert u["User"] == ["rgbd-edge"] and u["SupplementaryGroups"] == ["video realsense gpio"]
    assert u["StateDirectory"] == ["rgbd-edge"] and u["ConfigurationDirectory"] == ["rgbd-edge"]
    for k in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "ProtectKernelTunables"):
        assert u[k] == ["strict" if k == "ProtectSystem" else "yes"], k
    assert "PrivateDevices" not in u and "MemoryDenyWriteExecute" not in u
    allow = u["DeviceAllow"]
    assert "char-usb_device rw" in allow and "/dev/gpiochip0 rw" in allow and "/dev/nvmap rw" in allow
    assert u["ExecStart"] == ["/opt/rgbd-edge/venv/bin/rgbd-edge run --config /etc/rgbd-edge/config.yaml"]
    # the drain and the sinks' flush must fit in the stop timeout
    from edge.daemon import DRAIN_TIMEOUT_S, SINK_CLOSE_TIMEOUT_S

    assert DRAIN_TIMEOUT_S + SINK_CLOSE_TIMEOUT_S <= int(u["TimeoutStopSec"][0])


def test_unit_passes_systemd_analyze_verify(tmp_path):
    import shutil

    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # ExecStart must point at an existing executable for verify; everything else is checked as shipped
    text = UNIT.read_text().replace("/opt/rgbd-edge/venv/bin/rgbd-edge", "/bin/true")
    unit = tmp_path / "rgbd-edge.service"
    unit.write_text(text)
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if "rgbd-edge.service" in line and "/bin/true" not in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
