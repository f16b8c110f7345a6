"""The daemon end to end, as it runs on the line: a RealSense recording (.db3) made by the
project's recorder from generated parts, with bursts of stale depth, played through the real
`python -m edge.cli run` into a real mosquitto broker and a JSONL file. The broker goes away and
comes back while results flow.

What must hold: a subscriber gets every result (seq gap-free, first arrivals in order; QoS 1 may
add duplicates), each with exactly the content of its JSONL line; the frames whose depth is a
re-send are scored rgb; nothing is lost; the exit code is 0.

Pacing. A recording plays as fast as the daemon reads it (real-time playback of a recording made
by the software device drops the re-sent frames), so the run is made long (the recording looped,
``--max-frames``) and the test pauses the daemon with SIGSTOP/SIGCONT around each broker change:
the broker stops while results are being produced, and starts again before the run ends. The
broker is stopped with SIGTERM and started again on the same port, like a broker restart on the
plant network: it saves its persistence, so the subscriber's session (clean_session=False)
survives. Results produced while it is down wait in the daemon's outbox.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from edge.bundle import load_bundle
from edge.data import SyntheticConfig, make_synthetic_dataset, open_dataset
from edge.sources.recorder import write_recording
from mqtt_broker import Broker
from test_daemon import REPO, SIZE, make_bundle, read_results
from test_sinks_mqtt import Subscriber, wait_until

FPS = 10  # frame timestamps 100 ms apart, as a camera at 10 fps would stamp them
STALE = {8, 9, 10, 21, 22}  # depth re-sent from the frame before each burst
PASSES = 8  # the recording looped: results keep flowing while the test restarts the broker


def parts(root: Path) -> list:
    """Generated parts: 20 good and 12 defective ones (crack, cut, hole), 64 x 64."""
    data = make_synthetic_dataset(root, SyntheticConfig(size=SIZE, seed=11, n_train=1, n_validation=1,
                                                        n_test_good=20, n_test_per_defect=4))
    return [r.load() for r in open_dataset(data, "test")]


def test_recording_through_the_daemon_into_mqtt_and_jsonl_with_a_broker_restart(tmp_path):
    samples = parts(tmp_path / "data")
    rec = tmp_path / "line.db3"
    n = write_recording(rec, ((s.rgb, s.depth) for s in samples), fps=FPS, stale_depth_at=STALE)
    assert n == len(samples) == 32
    bundle = make_bundle(tmp_path / "bundle")
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, topics=("rgbd-edge/line3-cam1/result", "rgbd-edge/line3-cam1/status"),
                     persistent=True, client_id="line-mes")
    cfg = tmp_path / "rgbd-edge.yaml"
    cfg.write_text(yaml.safe_dump({
        "device_id": "line3-cam1",
        "bundle": str(bundle),
        "engine": {"backend": "onnxruntime", "precision": "fp32", "threads": 1},
        "source": {"type": "recording", "path": str(rec), "loop": True},
        "sinks": {"mqtt": {"host": broker.host, "port": broker.port, "outbox": str(tmp_path / "outbox.sqlite"),
                           "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive": 10},
                  "jsonl": {"path": str(tmp_path / "results.jsonl")}},
        "status": {"interval_s": 1.0},
    }))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RUNTIME_DIRECTORY": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    total = PASSES * n
    log = tmp_path / "daemon.log"  # a file, not a pipe: a long run must never block on a full pipe
    with open(log, "w") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg), "--max-frames",
                                 str(total)], stdout=subprocess.DEVNULL, stderr=logf, env=env)
    jsonl = tmp_path / "results.jsonl"

    def produced() -> int:
        return len(read_results(jsonl)) if jsonl.exists() else 0

    try:
        assert wait_until(lambda: len(sub.results()) >= 5 or proc.poll() is not None, 60)
        paused(proc, broker.stop)  # the broker goes away mid-run ...
        down_at = produced()
        assert down_at < total, "the run ended before the broker went away: make it longer"
        assert wait_until(lambda: produced() >= down_at + 10 or proc.poll() is not None, 60)
        paused(proc, broker.start)  # ... and comes back before the run ends
        assert produced() < total, "the run ended before the broker came back: make it longer"
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    try:
        assert proc.returncode == 0, err
        lines = read_results(jsonl)
        assert [r["seq"] for r in lines] == list(range(total))
        assert wait_until(lambda: len({r["seq"] for r in sub.results()}) >= total, 30), len(sub.results())
    finally:
        sub.close()
        broker.stop()

    got = sub.results()
    first = {}
    for r in got:
        first.setdefault(r["seq"], r)
    assert list(first) == list(range(total))  # every result, first arrivals in order
    for r in got:  # duplicates (QoS 1) are copies, never other content
        assert r == lines[r["seq"]]
    assert [r["color_frame_number"] for r in lines] == list(range(n)) * PASSES  # no frame dropped
    for r in lines:
        i = r["color_frame_number"]
        if i in STALE:  # depth re-sent from another capture: never rgbd
            assert r["mode"] == "rgb" and "stale: depth frame number" in r["reason"], (r["seq"], r["reason"])
        elif i < 8:
            assert r["mode"] == "rgbd", (r["seq"], r["reason"])
    assert [r["depth_frame_number"] for r in lines][8:11] == [7, 7, 7]
    digest = getattr(load_bundle(bundle), "digest", "")
    assert all(r["model"]["bundle_digest"] == digest for r in lines)
    assert "mode_change" in [s.get("event") for s in sub.statuses()]
    assert f"stopped (--max-frames {total} reached)" in err and "exit 0 (clean stop)" in err


def paused(proc: subprocess.Popen, action) -> None:
    """Run ``action`` while the daemon is stopped (SIGSTOP ... SIGCONT): the test decides where in
    the run it happens, however fast the machine plays the recording."""
    assert proc.poll() is None, f"the daemon exited with {proc.returncode}"
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        action()
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def test_the_end_to_end_recording_has_its_stale_bursts(tmp_path):
    """The recording itself, read back: the bursts are re-sends of the frame before them."""
    from edge.sources import EndOfStream, open_source

    samples = parts(tmp_path / "data")[:12]
    rec = tmp_path / "short.db3"
    write_recording(rec, ((s.rgb, s.depth) for s in samples), fps=FPS, stale_depth_at={8, 9, 10})
    src = open_source({"type": "recording", "path": str(rec)})
    pairs = []
    with src:
        while True:
            try:
                f = src.read(2.0)
            except EndOfStream:
                break
            pairs.append((f.color_frame_number, f.depth_frame_number))
    assert pairs == [(i, 7 if i in (8, 9, 10) else i) for i in range(12)]
