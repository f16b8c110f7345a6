"""JSONL and console sinks, and make_sinks' configuration handling."""
from __future__ import annotations

import io
import json
import os

import pytest

from edge.results import InspectionResult, Latency, ModelInfo
from edge.sinks import Sink, make_sinks, parse_sinks_config
from edge.sinks.files import ConsoleConfig, ConsoleSink, JsonlConfig, JsonlSink, format_result


def result(seq: int, decision: str = "pass", **kw) -> InspectionResult:
    score = {"pass": 0.1, "reject": 0.9, "no_decision": None}[decision]
    return InspectionResult(device_id="cam1", seq=seq, mode="rgbd" if score is not None else None,
                            reason="ok" if score is not None else "none: no usable stream", score=score,
                            threshold=0.5 if score is not None else None, decision=decision, wall_time=1.7e9 + seq,
                            latency=Latency(1.0, 2.0, 3.0, 7.5), frame_name=f"f{seq}.png", **kw)


def test_jsonl_one_flushed_json_object_per_line(tmp_path):
    path = tmp_path / "logs" / "results.jsonl"
    sink, = make_sinks({"jsonl": {"path": str(path)}}, "cam1")
    assert isinstance(sink, Sink) and sink.name == "jsonl"
    info = ModelInfo("rd", "1", "ab" * 32, "int8", "tensorrt")
    sink.publish(result(0, model=info))
    assert json.loads(path.read_text()) == result(0, model=info).to_dict()  # flushed, before close
    sink.publish(result(1, "reject"), heatmap_jpeg=b"jpeg")
    sink.publish(result(2, "no_decision"))
    sink.publish_status({"state": "running"})  # results only in the file
    sink.close()
    sink.close()  # idempotent
    lines = path.read_text().splitlines()
    assert [json.loads(ln)["seq"] for ln in lines] == [0, 1, 2]
    assert json.loads(lines[2])["score"] is None and json.loads(lines[0])["schema"] == 1
    assert sink.stats()["published"] == 3 and sink.stats()["failed"] == 0
    sink.publish(result(3))  # after close: counted, never raises
    assert sink.stats()["failed"] == 1


def test_jsonl_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"seq": -1}\n')
    s = JsonlSink(JsonlConfig(path=str(path)))
    s.publish(result(0))
    s.close()
    assert [json.loads(ln)["seq"] for ln in path.read_text().splitlines()] == [-1, 0]


def test_jsonl_rotation_by_size_keeps_backups(tmp_path):
    path = tmp_path / "r.jsonl"
    line_len = len(result(10).to_json()) + 1
    s = JsonlSink(JsonlConfig(path=str(path), max_bytes=max(1024, 3 * line_len), backups=2))
    per_file = s.cfg.max_bytes // line_len
    n = per_file * 4 + 1
    for i in range(10, 10 + n):
        s.publish(result(i))
    s.close()
    files = [path, path.with_name("r.jsonl.1"), path.with_name("r.jsonl.2")]
    assert all(f.exists() for f in files) and not path.with_name("r.jsonl.3").exists()
    assert all(f.stat().st_size <= s.cfg.max_bytes for f in files)
    seqs = [json.loads(ln)["seq"] for f in reversed(files) for ln in f.read_text().splitlines()]
    assert seqs == list(range(10 + n - len(seqs), 10 + n))  # newest data kept, in order across files
    assert s.stats()["rotations"] == 4


def test_jsonl_write_errors_are_counted_and_recovered(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    s = JsonlSink(JsonlConfig(path=str(path)))

    class Broken(io.StringIO):
        def write(self, _):
            raise OSError(28, "No space left on device")

    s._f.close()
    s._f = Broken()
    s.publish(result(0))  # never raises
    assert s.stats()["failed"] == 1 and any("No space left" in r.getMessage() for r in caplog.records)
    problem, = s.stats()["health_problems"]
    assert problem.startswith("jsonl: disk full (ENOSPC): writing") and str(path) in problem
    s.publish(result(1))  # reopened on the next result
    s.close()
    assert [json.loads(ln)["seq"] for ln in path.read_text().splitlines()] == [1]
    assert [e["event"] for e in s.drain_events()] == ["disk_error", "disk_ok"] and s.stats()["health_problems"] == []


def test_jsonl_rotates_by_default_and_its_numbers_are_bounded():
    c = parse_sinks_config({"jsonl": {"path": "r.jsonl"}}, "cam1")["jsonl"]
    assert (c.max_bytes, c.backups) == (100 << 20, 5)  # at most ~600 MiB on disk at 30 fps, forever
    with pytest.raises(ValueError, match=r"^sinks\.jsonl\.max_bytes: must be an integer from 1024 to 1099511627776"):
        make_sinks({"jsonl": {"path": "r.jsonl", "max_bytes": 2 ** 50}}, "cam1")
    with pytest.raises(ValueError, match=r"^sinks\.jsonl\.backups: must be an integer from 0 to 100"):
        make_sinks({"jsonl": {"path": "r.jsonl", "backups": 1000}}, "cam1")


def test_jsonl_a_line_cut_by_a_crash_does_not_swallow_the_next(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"seq": -2}\n{"seq": -1, "dec')  # a previous process died mid-line
    s = JsonlSink(JsonlConfig(path=str(path)))
    s.publish(result(0))
    s.close()
    lines = path.read_text().splitlines()
    assert lines[1] == '{"seq": -1, "dec' and json.loads(lines[2])["seq"] == 0


def test_jsonl_only_rejects_and_bad_path(tmp_path):
    path = tmp_path / "r.jsonl"
    s = JsonlSink(JsonlConfig(path=str(path), only_rejects=True))
    for i, d in enumerate(["pass", "reject", "no_decision", "pass"]):
        s.publish(result(i, d))
    s.close()
    assert [json.loads(ln)["decision"] for ln in path.read_text().splitlines()] == ["reject", "no_decision"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"sinks\.jsonl\.path: cannot open"):
        make_sinks({"jsonl": {"path": str(blocker / "r.jsonl")}}, "cam1")


def test_console_one_line_per_result():
    out = io.StringIO()
    s = ConsoleSink(ConsoleConfig(), stream=out)
    s.publish(result(0))
    s.publish(result(1, "reject"))
    s.publish(result(2, "no_decision"))
    s.publish_status({"state": "running", "event": "mode_change", "mode": "rgb", "reason": "depth stale"})
    s.publish_status({"state": "running", "event": "status"})  # periodic counters: not printed
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0] == "seq 0 PASS score 0.100 <= thr 0.500 rgbd 7.5 ms f0.png"
    assert lines[1] == "seq 1 REJECT score 0.900 > thr 0.500 rgbd 7.5 ms f1.png"
    assert lines[2].startswith("seq 2 NO_DECISION score - <= thr - none") and "no usable stream" in lines[2]
    assert lines[3] == "status running mode_change mode=rgb reason=depth stale"
    assert "\033[" not in out.getvalue()  # not a TTY
    assert s.stats()["published"] == 3


def test_console_only_rejects_and_colour():
    out = io.StringIO()
    s = ConsoleSink(ConsoleConfig(only_rejects=True, color="always"), stream=out)
    s.publish(result(0))
    s.publish(result(1, "reject"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\033[1;31mREJECT\033[0m" in lines[0]
    assert s.stats() == {"published": 1, "skipped": 1, "failed": 0}
    assert format_result(result(1, "reject").to_dict(), device=True).startswith("cam1 seq 1 REJECT")


def test_console_broken_stdout_never_raises():
    out = io.StringIO()
    s = ConsoleSink(ConsoleConfig(), stream=out)
    out.close()
    s.publish(result(0))
    assert s.stats()["failed"] == 1


def test_make_sinks_sections_and_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = {"console": {"enabled": True, "only_rejects": False}, "jsonl": {"path": "r.jsonl"},
           "gpio": {"backend": "simulated", "pulse_ms": 5}, "mqtt": None}
    sinks = make_sinks(cfg, "cam1")
    try:
        assert [s.name for s in sinks] == ["gpio", "jsonl", "console"]  # time-critical first
        assert all(isinstance(s, Sink) for s in sinks)
    finally:
        for s in sinks:
            s.close(1)
    assert make_sinks({"console": False, "jsonl": {"enabled": False, "path": "x"}}, "cam1") == []
    assert [s.name for s in make_sinks({"console": True}, "cam1")] == ["console"]
    assert set(parse_sinks_config({"console": {}, "jsonl": {"path": "x"}}, "cam1")) == {"jsonl", "console"}
    with pytest.raises(ValueError, match=r"^sinks\.console\.only_reject: unknown key \(did you mean 'only_rejects'"):
        make_sinks({"console": {"only_reject": True}}, "cam1")
    with pytest.raises(ValueError, match=r"^sinks\.jsonl\.path: required"):
        make_sinks({"jsonl": {}}, "cam1")
    with pytest.raises(ValueError, match=r"^sinks\.console\.enabled: must be true or false"):
        make_sinks({"console": {"enabled": "yes"}}, "cam1")
    with pytest.raises(ValueError, match=r"^sinks\.jsonl: must be a mapping"):
        make_sinks({"jsonl": "r.jsonl"}, "cam1")
    assert not os.path.exists(tmp_path / "x")  # nothing opened for disabled or failed configs


def test_a_failing_sink_closes_the_ones_already_started(tmp_path, monkeypatch):
    from edge.sinks.gpio import GpioSink

    closed = []
    orig = GpioSink.close
    monkeypatch.setattr(GpioSink, "close", lambda self, timeout_s=5.0: (closed.append(self), orig(self, timeout_s)))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # gpio is created first, then jsonl fails: the gpio sink must not be left running
    with pytest.raises(ValueError, match=r"sinks\.jsonl\.path"):
        make_sinks({"gpio": {"backend": "simulated"}, "jsonl": {"path": str(blocker / "r.jsonl")}}, "cam1")
    assert len(closed) == 1 and not closed[0].backend.is_open
