"""The sinks on a REAL full disk (a 4 MiB tmpfs filled to the last byte, tests/small_disk.py) with
a REAL mosquitto broker (tests/mqtt_broker.py): results still reach the broker while it is up,
losses are counted only when the broker is down too, the outbox comes back when space does, the
outbox gives its space back after an outage, and the JSONL log keeps going.

Waits are generous upper bounds; nothing asserts on timing.
"""
from __future__ import annotations

import json
import logging
import os
import time

import pytest

from edge.results import InspectionResult, Latency
from edge.sinks.files import JsonlConfig, JsonlSink
from edge.sinks.mqtt import MqttSink, parse_mqtt_config
from edge.sinks.outbox import Outbox, OutboxError
from mqtt_broker import Broker, mqtt_broker  # noqa: F401
from small_disk import small_disk  # noqa: F401
from test_sinks_mqtt import Subscriber, wait_until

DEV = "disk1"


def result(seq: int, decision: str = "pass") -> InspectionResult:
    score = {"pass": 0.1, "reject": 0.9}[decision]
    return InspectionResult(device_id=DEV, seq=seq, mode="rgbd", reason="ok", score=score, threshold=0.5,
                            decision=decision, wall_time=time.time(), latency=Latency(total_ms=12.5),
                            frame_name=f"f{seq:04d}.png")


def make_sink(port: int, outbox: os.PathLike, **outbox_kw) -> MqttSink:
    cfg = {"host": "127.0.0.1", "port": port, "outbox": {"path": str(outbox), **outbox_kw},
           "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive": 10}
    return MqttSink(parse_mqtt_config(cfg, DEV), DEV)


def events_of(sinks, collected: list) -> list[dict]:
    for s in sinks:
        collected.extend(s.drain_events())
    return collected


def seqs(sub: Subscriber) -> list[int]:
    return [r["seq"] for r in sub.results()]


# --------------------------------------------------------------------------- broker up, disk full


def test_disk_full_with_the_broker_up_every_result_arrives(tmp_path, small_disk, mqtt_broker, caplog):
    sub = Subscriber(mqtt_broker.port, topics=(f"rgbd-edge/{DEV}/#",))
    mqtt = make_sink(mqtt_broker.port, small_disk.path / "outbox.sqlite")
    jsonl = JsonlSink(JsonlConfig(path=str(small_disk.path / "results.jsonl")))
    events: list[dict] = []
    try:
        assert wait_until(lambda: mqtt.connected)
        for i in range(10):
            mqtt.publish(result(i))
            jsonl.publish(result(i))
        assert wait_until(lambda: seqs(sub) == list(range(10)))
        assert mqtt.wait_idle(10)

        small_disk.fill()
        with caplog.at_level(logging.INFO, logger="edge.sinks"):
            for i in range(10, 50):  # every 7th a reject with its heatmap
                dec = "reject" if i % 7 == 0 else "pass"
                jpeg = b"\xff\xd8heat%d" % i if dec == "reject" else None
                mqtt.publish(result(i, dec), heatmap_jpeg=jpeg)
                jsonl.publish(result(i, dec), heatmap_jpeg=jpeg)
            assert wait_until(lambda: len(sub.results()) >= 50, 20), mqtt.stats()
        assert seqs(sub) == list(range(50))  # every result, in order, none twice
        assert mqtt.wait_idle(10), mqtt.stats()  # every PUBACK counted
        heat = [t for t, _, _ in sub.msgs if "/heatmap/" in t]
        assert heat == [f"rgbd-edge/{DEV}/heatmap/{i}" for i in (14, 21, 28, 35, 42, 49)]

        st = mqtt.stats()
        assert st["outbox_write_errors"] >= 1 and st["direct_publishes"] >= 1
        assert st["results_lost"] == 0 and st["lost"] == 0 and not st["outbox_writable"]
        problem, = st["health_problems"]
        assert problem.startswith("outbox: disk full (ENOSPC)") and "0 result(s) lost" in problem
        failed = [e for e in events_of([mqtt], events) if e["event"] == "outbox_write_failed"]
        assert len(failed) == 1 and failed[0]["sink"] == "mqtt" and failed[0]["broker_connected"] is True
        assert "database or disk is full" in failed[0]["error"] and "ENOSPC" in failed[0]["error"]
        logs = "\n".join(r.getMessage() for r in caplog.records)
        assert "cannot rollback" not in logs + json.dumps(events) + str(st["last_error"])

        js = jsonl.stats()  # the JSONL sink on the same disk: counted, reported, never raised
        assert js["write_errors"] >= 1 and js["failed"] == js["write_errors"]
        assert js["health_problems"] and js["health_problems"][0].startswith("jsonl: disk full (ENOSPC)")
        disk_errors = [e for e in jsonl.drain_events() if e["event"] == "disk_error"]
        assert len(disk_errors) == 1 and "No space left on device" in disk_errors[0]["error"]

        small_disk.free()  # space is back: the outbox is used again, the log too
        for i in range(50, 60):
            mqtt.publish(result(i))
            jsonl.publish(result(i))
        assert wait_until(lambda: len(sub.results()) >= 60, 20)
        assert seqs(sub) == list(range(60))
        assert mqtt.wait_idle(10), mqtt.stats()
        st = mqtt.stats()
        assert st["outbox_writable"] and st["health_problems"] == [] and st["queued"] == 0
        assert [e["event"] for e in events_of([mqtt], [])] == ["outbox_ok"]
        assert jsonl.stats()["health_problems"] == []
        assert [e["event"] for e in jsonl.drain_events()] == ["disk_ok"]
    finally:
        mqtt.close(2)
        jsonl.close()
        sub.close()
    lines = (small_disk.path / "results.jsonl").read_text().splitlines()
    written = [json.loads(ln)["seq"] for ln in lines]  # every line whole: a short write was cut off
    assert written[:10] == list(range(10)) and written[-10:] == list(range(50, 60))
    assert written == sorted(written) and len(written) == 60 - jsonl.stats()["write_errors"]


# --------------------------------------------------------------------------- broker down, disk full


def broker_gone_and_disk_full(tmp_path, small_disk) -> tuple[Broker, Subscriber, MqttSink]:
    """A sink that was connected, then lost its broker (stopped), then its disk (filled); a
    persistent subscriber that gets what the broker receives once it is back."""
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, topics=(f"rgbd-edge/{DEV}/result",), persistent=True,
                     client_id=f"mes-{tmp_path.name[-12:]}")
    mqtt = make_sink(broker.port, small_disk.path / "outbox.sqlite", memory_max_messages=10)
    assert wait_until(lambda: mqtt.connected)
    broker.stop()
    assert wait_until(lambda: not mqtt.connected)
    small_disk.fill()
    return broker, sub, mqtt


def test_disk_full_with_the_broker_down_counts_losses_and_recovers(tmp_path, small_disk, caplog):
    broker, sub, mqtt = broker_gone_and_disk_full(tmp_path, small_disk)
    try:
        with caplog.at_level(logging.ERROR, logger="edge.sinks.mqtt"):
            for i in range(25):
                mqtt.publish(result(i))  # never raises
        st = mqtt.stats()
        assert st["results_lost"] == 15 and st["memory_queued"] == 10 and st["results_in"] == 25
        assert any("LOST" in r.getMessage() for r in caplog.records)
        events = mqtt.drain_events()
        lost, = [e for e in events if e["event"] == "results_lost"]  # the first at once, then one per 10 s
        assert lost["count"] == 1 and lost["total"] == 1 and "memory queue is full" in lost["reason"]
        assert [e["event"] for e in events].count("outbox_write_failed") == 1
        assert "15 result(s) lost" in mqtt.stats()["health_problems"][0]

        small_disk.free()  # the disk first: what waits in memory moves to the outbox, in order
        for i in range(25, 30):
            mqtt.publish(result(i))
        st = mqtt.stats()
        assert st["memory_queued"] == 0 and st["queued"] == 15 and st["outbox_writable"]
        assert [e["event"] for e in mqtt.drain_events()] == ["outbox_ok"]

        broker.start()  # then the broker
        assert wait_until(lambda: len(sub.results()) >= 15, 20), mqtt.stats()
        assert seqs(sub) == list(range(15, 30))  # the 15 oldest were lost, the rest arrive in order
        assert mqtt.wait_idle(10)
    finally:
        mqtt.close(2)
        sub.close()
        broker.stop()


def test_broker_down_then_up_with_the_disk_still_full_sends_what_memory_holds(tmp_path, small_disk):
    broker, sub, mqtt = broker_gone_and_disk_full(tmp_path, small_disk)
    try:
        for i in range(8):
            mqtt.publish(result(i))
        assert mqtt.stats()["memory_queued"] == 8 and mqtt.stats()["results_lost"] == 0  # a short hiccup: kept
        broker.start()
        assert wait_until(lambda: mqtt.connected, 20)
        for i in range(8, 12):
            mqtt.publish(result(i))
        assert wait_until(lambda: len(sub.results()) >= 12, 20), mqtt.stats()
        assert seqs(sub) == list(range(12))
        assert wait_until(lambda: mqtt.stats()["direct_publishes"] == 12)  # counted at the PUBACK
        st = mqtt.stats()
        assert st["results_lost"] == 0 and st["published"] == 12 and not st["outbox_writable"]
    finally:
        mqtt.close(2)
        sub.close()
        broker.stop()


def test_outbox_on_a_disk_already_full_at_start(tmp_path, small_disk, mqtt_broker):
    """SQLite cannot even open its WAL index on a full disk: the sink starts anyway, sends directly,
    and opens the outbox once there is space."""
    path = small_disk.path / "outbox.sqlite"
    Outbox(path).close()  # left by an earlier run
    small_disk.fill()
    sub = Subscriber(mqtt_broker.port, topics=(f"rgbd-edge/{DEV}/result",))
    mqtt = make_sink(mqtt_broker.port, path)
    try:
        st = mqtt.stats()
        assert not st["outbox_writable"] and st["health_problems"][0].startswith("outbox: disk full (ENOSPC)")
        for i in range(5):
            mqtt.publish(result(i))
        assert wait_until(lambda: len(sub.results()) >= 5, 20)
        small_disk.free()
        n = publish_until_writable(mqtt, 5)
        assert wait_until(lambda: len(sub.results()) >= n, 20)
        assert seqs(sub) == list(range(n)) and mqtt.stats()["results_lost"] == 0
        assert "outbox_ok" in [e["event"] for e in mqtt.drain_events()]
    finally:
        mqtt.close(2)
        sub.close()


def publish_until_writable(mqtt: MqttSink, seq: int, timeout_s: float = 20.0) -> int:
    """Publish results from ``seq`` on until the outbox takes them again (its open is retried at
    most every second); returns the next seq."""
    deadline = time.monotonic() + timeout_s
    while not mqtt.stats()["outbox_writable"] and time.monotonic() < deadline:
        mqtt.publish(result(seq))
        seq += 1
        time.sleep(0.1)
    assert mqtt.stats()["outbox_writable"], mqtt.stats()
    return seq


def test_outbox_on_a_read_only_file_system(tmp_path, small_disk, mqtt_broker):
    path = small_disk.path / "outbox.sqlite"
    Outbox(path).close()
    small_disk.remount(read_only=True)  # like an eMMC after errors=remount-ro
    sub = Subscriber(mqtt_broker.port, topics=(f"rgbd-edge/{DEV}/result",))
    mqtt = make_sink(mqtt_broker.port, path)
    try:
        problem, = mqtt.stats()["health_problems"]
        assert problem.startswith("outbox: read-only file system (EROFS)")
        (ev,) = mqtt.drain_events()
        assert ev["event"] == "outbox_write_failed" and ev["condition"] == "read-only file system (EROFS)"
        for i in range(5):
            mqtt.publish(result(i))
        assert wait_until(lambda: len(sub.results()) >= 5, 20)
        small_disk.remount(read_only=False)
        n = publish_until_writable(mqtt, 5)
        assert wait_until(lambda: len(sub.results()) >= n, 20)
        assert seqs(sub) == list(range(n)) and mqtt.stats()["results_lost"] == 0
    finally:
        mqtt.close(2)
        sub.close()


def test_outbox_write_error_names_the_disk_not_cannot_rollback(small_disk):
    ob = Outbox(small_disk.path / "o.sqlite")
    try:
        for i in range(50):
            ob.append("t/result", os.urandom(4000))
        rows = ob.claim(0, 50)
        small_disk.fill()
        with pytest.raises(OutboxError) as exc:  # SQLite needs space to delete, too
            ob.delete([r.id for r in rows])
        assert exc.value.disk and exc.value.condition == "disk full (ENOSPC)"
        assert "database or disk is full (SQLITE_FULL)" in str(exc.value) and "cannot rollback" not in str(exc.value)
        with pytest.raises(OutboxError, match=r"append failed: disk full \(ENOSPC\): database or disk is full"):
            ob.append("t/result", b"x" * 4000)
        assert len(ob) == 50
        small_disk.free()
        assert ob.delete([r.id for r in rows]) == 50 and len(ob) == 0
    finally:
        ob.close()


# --------------------------------------------------------------------------- space comes back


def test_outbox_file_shrinks_after_the_queue_is_delivered(tmp_path):
    broker = Broker(tmp_path / "broker")  # down while results pile up
    path = tmp_path / "outbox.sqlite"
    mqtt = make_sink(broker.port, path)
    try:
        for i in range(100):  # 5 MB of heatmaps wait on disk
            mqtt.publish(result(i, "reject"), heatmap_jpeg=os.urandom(50_000))
        st = mqtt.stats()
        assert st["queued"] == 200 and st["queued_bytes"] > 5_000_000 and st["outbox_file_bytes"] > 5_000_000
        broker.start()
        assert mqtt.wait_idle(30), mqtt.stats()
        st = mqtt.stats()
        assert st["queued"] == 0 and st["queued_bytes"] == 0 and st["heatmaps_published"] == 100
        assert st["outbox_file_bytes"] < 256 * 1024  # the space came back
    finally:
        mqtt.close(2)
        broker.stop()
    assert os.path.getsize(path) < 256 * 1024


def test_outbox_bounded_in_bytes_and_space_reclaimed(tmp_path):
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, max_messages=1000, max_bytes=1 << 20)
    for i in range(60):  # 3 MB into a 1 MiB bound
        ob.append("t/result", bytes([i]) * 50_000)
    assert ob.bytes <= 1 << 20 and len(ob) == 20 and ob.dropped_overflow == 40
    assert [r.payload[0] for r in ob.claim(0, 100)] == list(range(40, 60))  # the oldest went
    ob.release()
    for i in range(0, 20, 5):
        ob.delete([r.id for r in ob.claim(0, 5)])
    assert len(ob) == 0 and ob.bytes == 0 and ob.file_bytes() < 256 * 1024
    ob.close()
    ob = Outbox(path, max_messages=1000, max_bytes=1 << 20)  # the byte count is rebuilt on open
    ob.append("t/result", b"abc")
    assert ob.bytes == 3
    ob.close()


def test_outbox_made_without_auto_vacuum_is_converted_when_empty(tmp_path):
    import sqlite3

    from edge.sinks import outbox as outbox_mod

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path, isolation_level=None)  # an outbox from before auto_vacuum
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(outbox_mod._SCHEMA)
    db.execute("INSERT INTO meta(key, value) VALUES('schema', '1')")
    for _ in range(200):
        db.execute("INSERT INTO outbox(topic, payload, kind, created) VALUES('t', ?, 'result', 0)",
                   (os.urandom(10_000),))
    db.close()
    ob = Outbox(path)
    assert len(ob) == 200 and ob.file_bytes() > 2_000_000
    ob.delete([r.id for r in ob.claim(0, 200)])
    assert ob.file_bytes() < 256 * 1024
    ob.close()


# --------------------------------------------------------------------------- JSONL alone


def test_jsonl_on_a_full_disk_keeps_going_and_rotates_by_default(small_disk, caplog):
    path = small_disk.path / "r.jsonl"
    sink = JsonlSink(JsonlConfig(path=str(path)))
    assert sink.cfg.max_bytes == 100 << 20 and sink.cfg.backups == 5  # rotation is on by default
    for i in range(5):
        sink.publish(result(i))
    small_disk.fill()
    with caplog.at_level(logging.ERROR, logger="edge.sinks.files"):
        for i in range(5, 40):
            sink.publish(result(i))  # never raises
    st = sink.stats()
    assert st["write_errors"] >= 1 and st["published"] + st["write_errors"] == 40
    errors = [r.getMessage() for r in caplog.records if "jsonl" in r.getMessage()]
    assert errors and "disk full (ENOSPC)" in errors[0]
    assert len(errors) <= 2  # the first failure, then at most one line per 30 s
    small_disk.free()
    for i in range(40, 45):
        sink.publish(result(i))
    sink.close()
    evs = [e["event"] for e in sink.drain_events()]
    assert evs == ["disk_error", "disk_ok"]
    got = [json.loads(ln)["seq"] for ln in path.read_text().splitlines()]  # no half line anywhere
    assert got[:5] == list(range(5)) and got[-5:] == list(range(40, 45)) and got == sorted(got)
