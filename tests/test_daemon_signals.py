"""SIGTERM, SIGINT and SIGHUP sent for real to a real `python -m edge.cli run` subprocess.

A stop request is honoured in every start-up phase with exit 0, and what was opened is closed;
a second signal never cuts the sinks' flush short; a second instance of the same device is
refused before it touches the broker; SIGHUP swaps in a newly installed bundle between two
frames, and a broken one leaves the running model in place.

To catch the daemon inside a start-up step, the subprocess gets tests/daemon_hooks first on its
PYTHONPATH (its sitecustomize holds the chosen step until the test releases it, and records
every real close); the TensorRT build wait is real: the test holds the engine cache's build
lock, as a manual `rgbd-convert build` would.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.bundle import load_bundle
from edge.daemon import EXIT_LOCKED
from mqtt_broker import Broker
from test_daemon import REPO, THRESHOLDS, make_bundle, read_results, write_config
from test_daemon import bundle_dir, replay  # noqa: F401  (fixtures)

HOOKS = Path(__file__).parent / "daemon_hooks"
FAKE_GPU = [Path(__file__).parent / "fake_tensorrt", Path(__file__).parent / "fake_pycuda"]
ALL_CLOSED = {"sink jsonl", "engine rgbd", "engine rgb", "engine depth", "source"}


class Run:
    """`python -m edge.cli run --config CONFIG` with the test hooks; stderr collected as it comes."""

    def __init__(self, config: Path, env_extra: dict, extra_paths=()):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in env_extra.items()}}
        paths = [str(HOOKS), *map(str, extra_paths), str(REPO), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def wait_for(self, needle: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log:
            assert self.proc.poll() is None or needle in self.log, f"exited {self.proc.returncode}:\n{self.log}"
            assert time.monotonic() < deadline, f"{needle!r} not logged within {timeout} s:\n{self.log}"
            time.sleep(0.02)

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return code


def wait_file(path: Path, run: Run, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert run.proc.poll() is None, f"exited {run.proc.returncode}:\n{run.log}"
        assert time.monotonic() < deadline, f"{path} not created within {timeout} s:\n{run.log}"
        time.sleep(0.02)


def closed(path: Path) -> set[str]:
    return set(path.read_text().split("\n")) - {""} if path.exists() else set()


# --------------------------------------------------------------------------- start-up phases


@pytest.mark.parametrize("phase, step, sig, expect_closed", [
    ("sinks", "creating sinks", signal.SIGTERM, {"sink jsonl"}),
    ("bundle", "loading the bundle", signal.SIGTERM, {"sink jsonl"}),
    ("engines", "loading engines", signal.SIGINT, ALL_CLOSED - {"source"}),
    ("warmup", "warming up engines", signal.SIGTERM, ALL_CLOSED - {"source"}),
    ("source", "opening the source", signal.SIGTERM, ALL_CLOSED),
])
def test_stop_signal_in_each_start_up_phase_exits_0_and_closes_what_was_opened(
        tmp_path, bundle_dir, replay, phase, step, sig, expect_closed):
    gate, record = tmp_path / "gate", tmp_path / "closed.txt"
    cfg = write_config(tmp_path, bundle_dir, replay, log_level="INFO")
    run = Run(cfg, {"RGBD_TEST_HOLD": phase, "RGBD_TEST_GATE": gate, "RGBD_TEST_CLOSED": record,
                    "RUNTIME_DIRECTORY": tmp_path})
    wait_file(Path(f"{gate}.entered"), run)
    run.send(sig)
    run.wait_for(f"signal {signal.Signals(sig).name} during start-up ({step}): stopping after this step")
    Path(f"{gate}.release").touch()  # the step completes; the next step is never started
    assert run.finish() == 0, run.log
    assert "exit 0 (clean stop)" in run.log and "ready:" not in run.log
    assert closed(record) == expect_closed
    assert read_results(tmp_path / "results.jsonl") == []


def test_second_signal_during_start_up_does_not_wait_for_the_step(tmp_path, bundle_dir, replay):
    """A step that does not return (here: held forever) is abandoned at the second signal; the
    sinks that were up are closed and the exit code is still 0."""
    gate, record = tmp_path / "gate", tmp_path / "closed.txt"
    cfg = write_config(tmp_path, bundle_dir, replay, log_level="INFO")
    run = Run(cfg, {"RGBD_TEST_HOLD": "engines", "RGBD_TEST_GATE": gate, "RGBD_TEST_CLOSED": record,
                    "RUNTIME_DIRECTORY": tmp_path})
    wait_file(Path(f"{gate}.entered"), run)
    run.send(signal.SIGTERM)
    run.wait_for("stopping after this step")
    run.send(signal.SIGTERM)
    assert run.finish() == 0, run.log
    assert "start-up step 'loading engines' still running after the stop request: not waiting for it" in run.log
    assert closed(record) == {"sink jsonl"}


def test_sighup_during_start_up_is_kept_for_after_ready(tmp_path, bundle_dir, replay):
    """SIGHUP's default action would end the process; during start-up it is noted, and the bundle
    is reloaded once the daemon runs."""
    gate = tmp_path / "gate"
    cfg = write_config(tmp_path, bundle_dir, replay, log_level="INFO", source={"fps": 20, "loop": True})
    run = Run(cfg, {"RGBD_TEST_HOLD": "engines", "RGBD_TEST_GATE": gate, "RUNTIME_DIRECTORY": tmp_path})
    wait_file(Path(f"{gate}.entered"), run)
    run.send(signal.SIGHUP)
    Path(f"{gate}.release").touch()
    run.wait_for("ready:")
    run.wait_for("bundle reloaded from seq")
    run.send(signal.SIGTERM)
    assert run.finish() == 0, run.log
    results = read_results(tmp_path / "results.jsonl")
    assert [r["seq"] for r in results] == list(range(len(results)))


def test_sigterm_while_waiting_for_another_tensorrt_build_exits_0(tmp_path, bundle_dir, replay):
    """The engine cache's build lock is held (another build is running); the daemon waits for it
    inside the engine load. SIGTERM; the other build ends; the daemon exits 0 without serving."""
    cache = tmp_path / "cache"
    cache.mkdir()
    cfg = write_config(tmp_path, bundle_dir, replay, log_level="INFO",
                       engine={"backend": "tensorrt", "precision": "fp32", "cache_dir": str(cache), "cuda": "pycuda"})
    with open(cache / ".build.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        run = Run(cfg, {"RUNTIME_DIRECTORY": tmp_path}, extra_paths=FAKE_GPU)
        run.wait_for("waiting for another build holding")
        run.send(signal.SIGTERM)
        run.wait_for("signal SIGTERM during start-up (loading engines): stopping after this step")
        fcntl.flock(held, fcntl.LOCK_UN)
    assert run.finish() == 0, run.log
    assert "exit 0 (clean stop)" in run.log and "ready:" not in run.log


# --------------------------------------------------------------------------- a second signal while closing


def _subscribe(broker: Broker, topic: str):
    import paho.mqtt.client as mqtt

    got: list = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{os.getpid()}-{time.monotonic_ns()}")
    c.on_message = lambda _c, _u, m: got.append(m)
    c.connect(broker.host, broker.port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    return c, got


def test_second_signal_does_not_cut_the_mqtt_flush_short(tmp_path, bundle_dir, replay):
    """The broker stops acknowledging (SIGSTOP): at SIGTERM the MQTT sink's outbox still holds
    results and close() waits for them. Two more signals during that wait are ignored; the broker
    resumes, the flush completes, every result arrives, exit 0."""
    import json

    broker = Broker(tmp_path / "broker").start()
    sub = None
    try:
        sub, got = _subscribe(broker, "rgbd-edge/test-cam/result")
        cfg = write_config(tmp_path, bundle_dir, replay, log_level="INFO", source={"fps": 20, "loop": True},
                           sinks={"jsonl": {"path": "results.jsonl"},
                                  "mqtt": {"host": broker.host, "port": broker.port, "heatmaps": False,
                                           "outbox": str(tmp_path / "outbox.sqlite")}})
        run = Run(cfg, {"RUNTIME_DIRECTORY": tmp_path})
        out = tmp_path / "results.jsonl"
        deadline = time.monotonic() + 60
        while len(got) < 3:
            assert time.monotonic() < deadline and run.proc.poll() is None, run.log
            time.sleep(0.05)
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(0.3)  # a few more results go to the outbox, unacknowledged
            run.send(signal.SIGTERM)
            run.wait_for("closing the sinks")
            run.send(signal.SIGTERM)
            run.send(signal.SIGINT)
            time.sleep(0.3)
            assert run.proc.poll() is None, run.log  # still flushing
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        assert run.finish() == 0, run.log
        ignored = next(ln for ln in run.log.splitlines() if "while the sinks were closing: ignored" in ln)
        assert "SIGTERM" in ignored and "SIGINT" in ignored
        expected = read_results(out)
        deadline = time.monotonic() + 30
        while len({json.loads(m.payload)["seq"] for m in got}) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        seqs = sorted({json.loads(m.payload)["seq"] for m in got})
        assert seqs == [r["seq"] for r in expected] == list(range(len(expected)))
    finally:
        if sub is not None:
            sub.loop_stop()
            sub.disconnect()
        broker.stop()


# --------------------------------------------------------------------------- single instance


def test_second_instance_of_a_device_is_refused_before_the_broker(tmp_path, bundle_dir, replay):
    broker = Broker(tmp_path / "broker").start()
    first = None
    try:
        sinks = {"jsonl": {"path": "results.jsonl"},
                 "mqtt": {"host": broker.host, "port": broker.port, "outbox": str(tmp_path / "outbox.sqlite")}}
        cfg1 = write_config(tmp_path, bundle_dir, replay, log_level="INFO", source={"fps": 20, "loop": True},
                            sinks=sinks)
        first = Run(cfg1, {"RUNTIME_DIRECTORY": tmp_path})
        first.wait_for("ready:")
        other = tmp_path / "second"
        other.mkdir()
        cfg2 = write_config(other, bundle_dir, replay, log_level="INFO", sinks=sinks)
        second = Run(cfg2, {"RUNTIME_DIRECTORY": tmp_path})
        assert second.finish() == EXIT_LOCKED
        assert "another rgbd-edge run holds the lock for device 'test-cam'" in second.log
        assert f"pid {first.proc.pid}" in second.log
        assert "exit 7 (another instance is running for this device)" in second.log
        assert not (other / "results.jsonl").exists()  # no sink was created
        assert first.proc.poll() is None
        first.send(signal.SIGTERM)
        assert first.finish() == 0, first.log
        connects = [ln for ln in broker.log().splitlines() if "New client connected" in ln and " as test-cam " in ln]
        assert len(connects) == 1, broker.log()  # the second instance never connected ...
        assert "already connected, closing old connection" not in broker.log()  # ... nor kicked the first off
    finally:
        if first is not None and first.proc.poll() is None:
            first.proc.kill()
        broker.stop()


# --------------------------------------------------------------------------- SIGHUP reload


def _switch(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (as `rgbd-edge install` switches `current`)."""
    tmp = link.with_name(link.name + ".new")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def test_sighup_swaps_in_the_new_bundle_between_two_frames(tmp_path, replay):
    """`current` -> A (every rgbd frame a reject); SIGHUP after `current` -> B (another graph, all
    passes): results switch from A to B at one seq, none missing, none scored by a half-loaded
    model; then `current` -> a broken bundle: SIGHUP leaves B running and says why."""
    a = make_bundle(tmp_path / "bundles" / "a", tag="a")
    b = make_bundle(tmp_path / "bundles" / "b", tag="b", thresholds={"rgbd": 100.0})
    broken = make_bundle(tmp_path / "bundles" / "broken", tag="c")
    (broken / "rgbd.onnx").write_bytes(b"tampered")
    current = tmp_path / "bundles" / "current"
    _switch(current, a)
    cfg = write_config(tmp_path, current, replay, log_level="INFO", source={"fps": 20, "loop": True},
                       queues={"capture": 4, "on_full": "block"})
    out = tmp_path / "results.jsonl"
    run = Run(cfg, {"RUNTIME_DIRECTORY": tmp_path})
    try:
        _wait_results(out, run, lambda rs: len(rs) >= 3)
        _switch(current, b)
        run.send(signal.SIGHUP)
        run.wait_for("bundle reloaded from seq")
        _wait_results(out, run, lambda rs: sum(r["model"]["sha256"] == _sha(b) for r in rs) >= 3)
        _switch(current, broken)
        run.send(signal.SIGHUP)
        run.wait_for("bundle reload failed, still running the previous model")
        n = len(read_results(out))
        _wait_results(out, run, lambda rs: len(rs) >= n + 3)
        run.send(signal.SIGTERM)
        assert run.finish() == 0, run.log
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    results = read_results(out)
    assert [r["seq"] for r in results] == list(range(len(results)))
    assert [r["color_frame_number"] for r in results] == list(range(len(results)))  # no frame dropped
    shas = [r["model"]["sha256"] for r in results]
    k = shas.index(_sha(b))
    assert k >= 3 and set(shas[:k]) == {_sha(a)} and set(shas[k:]) == {_sha(b)}
    assert all(r["model"]["bundle_digest"] == getattr(load_bundle(a), "digest", "") for r in results[:k])
    assert all(r["model"]["bundle_digest"] == getattr(load_bundle(b), "digest", "") for r in results[k:])
    assert {r["decision"] for r in results[:k]} == {"reject"} and {r["decision"] for r in results[k:]} == {"pass"}
    assert all(r["threshold"] == THRESHOLDS["rgbd"] for r in results[:k])
    assert all(r["threshold"] == 100.0 for r in results[k:])
    assert f"bundle reloaded from seq {k} on" in run.log
    assert "sha256 mismatch" in run.log or "rgbd.onnx" in run.log


def _sha(bundle: Path) -> str:
    return load_bundle(bundle).files["rgbd.onnx"]


def _wait_results(out: Path, run: Run, cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rs = read_results(out) if out.exists() else []
        if cond(rs):
            return
        assert run.proc.poll() is None, run.log
        assert time.monotonic() < deadline, f"results did not arrive within {timeout} s:\n{run.log}"
        time.sleep(0.05)
