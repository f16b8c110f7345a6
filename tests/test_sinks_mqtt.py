"""MQTT sink, outbox and `rgbd-edge watch` against a REAL mosquitto broker (tests/mqtt_broker.py).

Behaviour only: order, retained status and last will, nothing lost across a broker outage or a
crash, bounded outbox, TLS and password authentication. Waits are generous upper bounds.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.results import InspectionResult, Latency
from edge.sinks import make_sinks
from edge.sinks.mqtt import MqttSink, parse_mqtt_config
from edge.sinks.outbox import Outbox
from mqtt_broker import Broker, free_port, mqtt_broker, tls_material  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
DEV = "cam1"


def result(seq: int, decision: str = "pass", device: str = DEV) -> InspectionResult:
    score = {"pass": 0.1, "reject": 0.9, "no_decision": None}[decision]
    return InspectionResult(device_id=device, seq=seq, mode="rgbd" if score is not None else None, reason="ok",
                            score=score, threshold=0.5 if score is not None else None, decision=decision,
                            wall_time=time.time(), latency=Latency(total_ms=12.5), frame_name=f"f{seq:04d}.png")


def wait_until(pred, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


class Subscriber:
    """A paho subscriber collecting (topic, payload, retain). ``persistent`` uses a persistent
    session (clean_session=False), which the broker keeps across its restarts. Messages the
    broker delivers again with the DUP flag (its own at-least-once redelivery to this subscriber,
    e.g. after a restart before our PUBACK was processed) are kept apart in ``dups``."""

    def __init__(self, port: int, topics=("rgbd-edge/#",), persistent: bool = False, client_id: str | None = None):
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.dups: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                             clean_session=not persistent)
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        assert self.subscribed.wait(10), "subscriber did not get its SUBACK"

    def _on_message(self, c, u, m):
        with self._lock:
            (self.dups if m.dup else self.msgs).append((m.topic, bytes(m.payload), bool(m.retain)))

    def of(self, suffix: str) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return [m for m in self.msgs if m[0].endswith(suffix)]

    def results(self) -> list[dict]:
        return [json.loads(p) for _, p, _ in self.of("/result")]

    def statuses(self) -> list[dict]:
        return [json.loads(p) for _, p, _ in self.of("/status")]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def mqtt_cfg(tmp_path: Path, port: int, **kw) -> dict:
    outbox = tmp_path / f"outbox-{uuid.uuid4().hex[:6]}.sqlite"
    d = {"host": "127.0.0.1", "port": port, "outbox": {"path": str(outbox)},
         "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive": 10}
    d.update(kw)
    return d


def make_mqtt(cfg: dict, device: str = DEV) -> MqttSink:
    return MqttSink(parse_mqtt_config(cfg, device), device)


# --------------------------------------------------------------------------- configuration


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"^sinks\.mqtt\.qos_level: unknown key"):
        make_sinks({"mqtt": {"host": "h", "qos_level": 1}}, DEV)
    with pytest.raises(ValueError, match=r"sinks\.mqtt\.host: required"):
        make_sinks({"mqtt": {"port": 1883}}, DEV)
    with pytest.raises(ValueError, match=r"sinks\.mqtt\.qos"):
        make_sinks({"mqtt": {"host": "h", "qos": 3}}, DEV)
    with pytest.raises(ValueError, match=r"sinks\.mqtt\.topic_prefix"):
        make_sinks({"mqtt": {"host": "h", "topic_prefix": "a/#"}}, DEV)
    with pytest.raises(ValueError, match=r"sinks\.mqtt\.password: unknown key"):
        make_sinks({"mqtt": {"host": "h", "username": "u", "password": "x"}}, DEV)
    with pytest.raises(ValueError, match=r"outbox\.max_mesages: unknown key \(did you mean 'max_messages'"):
        make_sinks({"mqtt": {"host": "h", "outbox": {"max_mesages": 3}}}, DEV)
    with pytest.raises(ValueError, match=r"sinks\.mqtt\.tls\.ca_file: file not found: .*nope\.crt"):
        make_sinks({"mqtt": {"host": "h", "tls": {"ca_file": str(tmp_path / "nope.crt")}}}, DEV)
    with pytest.raises(ValueError, match=r"^sinks\.kafka: unknown key"):
        make_sinks({"kafka": {}}, DEV)
    c = parse_mqtt_config({"host": "h"}, "line3-cam1")
    assert (c.port, c.client_id, c.topic_prefix, c.qos, c.keepalive, c.outbox_max_messages) == \
        (1883, "line3-cam1", "rgbd-edge/line3-cam1", 1, 30, 10000)
    assert c.result_topic == "rgbd-edge/line3-cam1/result" and c.heatmap_topic(7) == "rgbd-edge/line3-cam1/heatmap/7"


def test_missing_password_file_is_a_clear_value_error(tmp_path):
    missing = tmp_path / "secrets" / "mqtt.pw"
    with pytest.raises(ValueError, match=rf"sinks\.mqtt\.password_file: file not found: {missing}"):
        make_sinks({"mqtt": {"host": "127.0.0.1", "username": "dev", "password_file": str(missing)}}, DEV)


def _pw_file(path: Path, text: str = "s3cret pass\n", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_password_file_others_can_access_is_refused_naming_file_and_mode(tmp_path, mode):
    pw = _pw_file(tmp_path / "mqtt.password", mode=mode)
    with pytest.raises(ValueError, match=rf"^sinks\.mqtt\.password_file: {pw} is accessible by group or others "
                                         rf"\(mode {mode:04o}\): refused") as exc:
        make_sinks({"mqtt": {"host": "h", "username": "u", "password_file": str(pw)}}, DEV)
    assert "s3cret" not in str(exc.value)
    pw.chmod(0o400)  # owner-only is fine, read-only too
    assert parse_mqtt_config({"host": "h", "username": "u", "password_file": str(pw)}, DEV).password == "s3cret pass"


def _set_acl(path: Path, *entries: tuple[int, int, int]) -> None:
    """A POSIX ACL as the kernel stores it (what setfacl writes): version 2, then (tag, perm, id)."""
    own = [(0x01, 6, 0xFFFFFFFF)]
    tail = [(0x04, 0, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]  # group::---, mask::r--, other::---
    data = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in own + list(entries) + tail)
    try:
        os.setxattr(path, "system.posix_acl_access", data)
    except OSError as exc:
        pytest.skip(f"the file system of {path} has no POSIX ACLs: {exc}")


def test_a_systemd_credential_acl_for_this_user_only_is_accepted(tmp_path):
    """LoadCredential= gives the service user read access through an ACL: the mode then shows the
    ACL mask (0640) although nobody else can read the file."""
    pw = _pw_file(tmp_path / "mqtt.password", mode=0o600)
    _set_acl(pw, (0x02, 4, os.geteuid()))  # user:<this user>:r--
    assert oct(pw.stat().st_mode & 0o777) == "0o640"
    assert parse_mqtt_config({"host": "h", "username": "u", "password_file": str(pw)}, DEV).password == "s3cret pass"
    other = _pw_file(tmp_path / "other.password", mode=0o600)
    _set_acl(other, (0x02, 4, os.geteuid() + 4242))  # another user may read it: refused
    with pytest.raises(ValueError, match=r"accessible by group or others \(mode 0640\): refused"):
        parse_mqtt_config({"host": "h", "username": "u", "password_file": str(other)}, DEV)


def test_password_file_owned_by_another_user_is_refused(tmp_path):
    pw = _pw_file(tmp_path / "mqtt.password")
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")  # the suite runs as root in CI
    os.chown(pw, 65534, 65534)
    with pytest.raises(ValueError, match=rf"password_file: {pw} is owned by uid 65534, neither this user "
                                         rf"\(uid 0\) nor root: refused"):
        parse_mqtt_config({"host": "h", "username": "u", "password_file": str(pw)}, DEV)


@pytest.mark.parametrize("typed", ["Hunter2!", "hunter2", "correcthorsebatterystaple", "pa ss/W0rd"])
def test_a_password_typed_into_password_file_is_never_shown(tmp_path, caplog, typed):
    """The key holds the password instead of a path: the error names the key and the directory,
    never the value; also once edge.config has made it an absolute path next to the config."""
    for value in (typed, str(tmp_path / typed)):
        with pytest.raises(ValueError, match=r"^sinks\.mqtt\.password_file: file not found: .*characters not "
                                             r"shown: they look like a password") as exc:
            make_sinks({"mqtt": {"host": "h", "username": "u", "password_file": value}}, DEV)
        assert typed not in str(exc.value) and typed.split("/")[0] not in str(exc.value)
    for value in (123456, ["x"]):  # unquoted digits in YAML, a list: not echoed either
        with pytest.raises(ValueError, match=r"password_file: must be the path of a file .*the value is not shown"):
            make_sinks({"mqtt": {"host": "h", "username": "u", "password_file": value}}, DEV)
    assert typed not in caplog.text


def test_password_file_content_is_never_shown(tmp_path):
    cases = [(_pw_file(tmp_path / "two.pw", "s3cret-one\nsecond-line\n"), "has more than one line"),
             (_pw_file(tmp_path / "big.pw", "s3cret-" * 1000), "is 7000 bytes: not a password file"),
             (_pw_file(tmp_path / "bin.pw", "x"), "is not UTF-8 text"),
             (_pw_file(tmp_path / "empty.pw", "\n"), "is empty")]
    (tmp_path / "bin.pw").write_bytes(b"s3cret-\xff\xfe")
    for path, problem in cases:
        with pytest.raises(ValueError, match=rf"^sinks\.mqtt\.password_file: {path} {problem}") as exc:
            parse_mqtt_config({"host": "h", "username": "u", "password_file": str(path)}, DEV)
        assert "s3cret" not in str(exc.value) and "second-line" not in str(exc.value)
    (tmp_path / "dir.pw").mkdir()
    with pytest.raises(ValueError, match=r"password_file: not a regular file: .*dir\.pw"):
        parse_mqtt_config({"host": "h", "username": "u", "password_file": str(tmp_path / "dir.pw")}, DEV)
    with pytest.raises(ValueError, match=r"password_file: not a regular file: /dev/zero"):
        parse_mqtt_config({"host": "h", "username": "u", "password_file": "/dev/zero"}, DEV)


def test_credentials_without_tls_warn_and_report_but_run(tmp_path, caplog):
    pw = _pw_file(tmp_path / "mqtt.pw")
    with caplog.at_level(logging.WARNING, logger="edge.sinks.mqtt"):
        # 192.0.2.1 (TEST-NET-1) is off this machine: the password would cross a network
        sink = make_mqtt(mqtt_cfg(tmp_path, 1883, host="192.0.2.1", username="line3", password_file=str(pw)))
    try:
        warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("WITHOUT TLS" in m and "192.0.2.1:1883" in m and "line3" in m for m in warn), warn
        assert "s3cret" not in caplog.text
        (ev,) = [e for e in sink.drain_events() if e["event"] == "mqtt_credentials_without_tls"]
        assert ev["sink"] == "mqtt" and ev["host"] == "192.0.2.1" and ev["username"] == "line3"
        assert sink.stats()["health_problems"] == ["mqtt: username and password sent without TLS to 192.0.2.1:1883"]
        sink.publish(result(0))  # it still runs: queued for when the broker answers
        assert sink.stats()["queued"] == 1
    finally:
        sink.close(0.5)
    for host, tls in (("127.0.0.1", None), ("localhost", None), ("::1", None), ("192.0.2.1", True)):
        ok = make_mqtt(mqtt_cfg(tmp_path, 1883, host=host, username="line3", password_file=str(pw), tls=tls))
        try:  # loopback never leaves the machine; TLS encrypts
            assert ok.stats()["health_problems"] == [] and ok.drain_events() == []
        finally:
            ok.close(0.5)


@pytest.mark.parametrize("cfg, key, problem", [
    ({"port": 70000}, "port", "must be an integer from 1 to 65535"),
    ({"keepalive": 10 ** 9}, "keepalive", "must be an integer from 5 to 3600"),
    ({"inflight": 10 ** 6}, "inflight", "must be an integer from 1 to 1000"),
    ({"reconnect_max_s": 1e10}, "reconnect_max_s", r"must be a number in \(0, 3600\]"),
    ({"outbox": {"max_messages": 10 ** 12}}, "outbox.max_messages", "must be an integer from 1 to 10000000"),
    ({"outbox": {"max_bytes": 10 ** 15}}, "outbox.max_bytes", "must be an integer from 1048576 to 68719476736"),
    ({"outbox": {"max_bytes": 1000}}, "outbox.max_bytes", "must be an integer from 1048576"),
    ({"outbox": {"memory_max_messages": 10 ** 9}}, "outbox.memory_max_messages", "must be an integer from 10 to 100000"),
    ({"outbox": {"memory_max_bytes": 2 ** 40}}, "outbox.memory_max_bytes", "must be an integer from 1048576 to 1073741824"),
    ({"client_id": "x" * 300}, "client_id", "longer than 256 characters"),
    ({"topic_prefix": "a/" * 600 + "b"}, "topic_prefix", "longer than 1024 characters"),
])
def test_mqtt_numbers_are_bounded_and_errors_name_the_key(cfg, key, problem):
    with pytest.raises(ValueError, match=rf"^sinks\.mqtt\.{key}: {problem}"):
        make_sinks({"mqtt": {"host": "h", **cfg}}, DEV)


def test_outbox_defaults_bound_rows_and_bytes():
    c = parse_mqtt_config({"host": "h"}, DEV)
    assert (c.outbox_max_messages, c.outbox_max_bytes, c.memory_max_messages, c.memory_max_bytes) == \
        (10000, 256 << 20, 1000, 16 << 20)


# --------------------------------------------------------------------------- delivery


def test_outbox_order_bound_claims_and_reopen(tmp_path, caplog):
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, max_messages=10)
    for i in range(15):
        ob.append("t/result", f"r{i}")
    assert len(ob) == 10 and ob.dropped_overflow == 5
    claimed = ob.claim(0, 3)
    assert [r.payload for r in claimed] == [b"r5", b"r6", b"r7"]
    for i in range(3):
        ob.append("t/result", f"s{i}")
    rows = ob.claim(claimed[-1].id, 100)  # in-flight rows are never the ones dropped
    assert [r.payload for r in rows] == [b"r11", b"r12", b"r13", b"r14", b"s0", b"s1", b"s2"]
    assert ob.dropped_overflow == 8
    ob.delete([r.id for r in claimed])
    ob.close()
    ob = Outbox(path, max_messages=10)  # survives a restart, ids keep increasing
    assert [r.payload for r in ob.claim(0, 100)] == [b"r11", b"r12", b"r13", b"r14", b"s0", b"s1", b"s2"]
    rid, _ = ob.append("t/result", "new")
    assert rid > rows[-1].id
    ob.close()
    path.write_bytes(b"not a database" * 100)
    with caplog.at_level(logging.ERROR):
        ob = Outbox(path)
    assert len(ob) == 0 and list(tmp_path.glob("o.sqlite.corrupt-*"))
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    ob.close()


def test_results_in_order_heatmaps_and_retained_status(tmp_path, mqtt_broker):
    sub = Subscriber(mqtt_broker.port)
    sink = make_mqtt(mqtt_cfg(tmp_path, mqtt_broker.port))
    try:
        assert wait_until(lambda: sink.connected)
        for i in range(30):
            dec = "reject" if i % 7 == 3 else "pass"
            sink.publish(result(i, dec), heatmap_jpeg=b"\xff\xd8jpeg%d" % i if dec == "reject" else None)
        sink.publish_status({"device_id": DEV, "state": "running", "event": "mode_change", "mode": "rgb"})
        assert sink.wait_idle(10)
        assert wait_until(lambda: len(sub.results()) == 30)
        assert [r["seq"] for r in sub.results()] == list(range(30))  # in order, none lost, no duplicates
        r3 = sub.results()[3]
        assert r3["decision"] == "reject" and r3["schema"] == 1 and r3["device_id"] == DEV
        heat = sub.of("/heatmap/3") + sub.of("/heatmap/10")
        assert [m[1] for m in heat] == [b"\xff\xd8jpeg3", b"\xff\xd8jpeg10"]
        assert wait_until(lambda: any(s.get("mode") == "rgb" for s in sub.statuses()))
        st = sink.stats()
        assert st["published"] == 30 and st["heatmaps_published"] == 4 and st["queued"] == 0
        assert st["failed"] == 0 and st["dropped_overflow"] == 0

        late = Subscriber(mqtt_broker.port, topics=(f"rgbd-edge/{DEV}/status",))  # retained: latest status
        assert wait_until(lambda: late.of("/status"))
        topic, payload, retained = late.of("/status")[-1]
        s = json.loads(payload)
        assert retained and s["online"] is True and s["state"] == "running" and s["mode"] == "rgb"
        assert s["outbox"]["dropped_overflow"] == 0
        late.close()
        sink.publish_status({"device_id": DEV, "state": "stopped", "event": "stopped", "exit_code": 0})
    finally:
        sink.close(5)  # sends the final status before going offline
    assert wait_until(lambda: any(s.get("event") == "stopped" for s in sub.statuses()))
    # a clean close replaces the retained status with "offline" (the will is not used)
    after = Subscriber(mqtt_broker.port, topics=(f"rgbd-edge/{DEV}/status",))
    assert wait_until(lambda: after.of("/status"))
    s = json.loads(after.of("/status")[-1][1])
    assert s["online"] is False and s["state"] == "offline" and s["reason"] == "closed cleanly"
    assert s["last_state"] == "stopped"
    after.close()
    sub.close()


def test_heatmaps_false_skips_them_counted(tmp_path, mqtt_broker):
    sub = Subscriber(mqtt_broker.port)
    sink = make_mqtt(mqtt_cfg(tmp_path, mqtt_broker.port, heatmaps=False))
    try:
        sink.publish(result(0, "reject"), heatmap_jpeg=b"jpeg")
        assert sink.wait_idle(10) and wait_until(lambda: sub.results())
        assert sub.of("/heatmap/0") == [] and sink.stats()["heatmaps_skipped"] == 1
    finally:
        sink.close(2)
        sub.close()


def _spawn_publisher(tmp_path: Path, cfg: dict, n: int, wait_sent: bool, device: str) -> subprocess.Popen:
    script = tmp_path / "publisher.py"
    script.write_text(
        "import json, sys, time\n"
        "from edge.results import InspectionResult\n"
        "from edge.sinks.mqtt import MqttSink, parse_mqtt_config\n"
        "cfg, n, wait, dev = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == '1', sys.argv[4]\n"
        "s = MqttSink(parse_mqtt_config(cfg, dev), dev)\n"
        "for i in range(n):\n"
        "    s.publish(InspectionResult(dev, i, 'rgbd', 'ok', 0.9, 0.5, 'reject'))\n"
        "if wait:\n"
        "    t = time.monotonic() + 15\n"
        "    while time.monotonic() < t and not (s.connected and s.wait_idle(0.05)):\n"
        "        pass\n"
        "print('READY', s.stats()['queued'], flush=True)\n"
        "time.sleep(120)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, str(script), json.dumps(cfg), str(n), "1" if wait_sent else "0", device],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    if not line.startswith("READY"):
        p.kill()
        raise AssertionError(f"publisher did not start: {line!r} {p.stderr.read()}")
    return p


def test_last_will_offline_when_the_publisher_dies(tmp_path, mqtt_broker):
    dev = "crashy"
    sub = Subscriber(mqtt_broker.port, topics=(f"rgbd-edge/{dev}/#",))
    p = _spawn_publisher(tmp_path, mqtt_cfg(tmp_path, mqtt_broker.port), 3, wait_sent=True, device=dev)
    try:
        assert wait_until(lambda: [s for s in sub.statuses() if s["online"] is True])
        assert wait_until(lambda: len(sub.results()) == 3)
        p.send_signal(signal.SIGKILL)  # no DISCONNECT packet: the broker must publish the will
        p.wait(10)
        assert wait_until(lambda: [s for s in sub.statuses() if s["online"] is False])
        will = [s for s in sub.statuses() if s["online"] is False][-1]
        assert will == {"device_id": dev, "online": False, "state": "offline", "reason": "connection lost (last will)"}
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        sub.close()
    late = Subscriber(mqtt_broker.port, topics=(f"rgbd-edge/{dev}/status",))
    assert wait_until(lambda: late.of("/status"))
    topic, payload, retained = late.of("/status")[-1]
    assert retained and json.loads(payload)["state"] == "offline"  # the will is retained
    late.close()


def test_crash_with_broker_down_loses_nothing(tmp_path, mqtt_broker):
    """A process that queued results while the broker was unreachable is killed; the next
    process with the same outbox sends them, in order."""
    dev = "crashy2"
    outbox = tmp_path / "crash-outbox.sqlite"
    dead = mqtt_cfg(tmp_path, free_port(), outbox={"path": str(outbox)})  # nobody listens there
    p = _spawn_publisher(tmp_path, dead, 7, wait_sent=False, device=dev)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert len(Outbox(outbox)) == 7
    sub = Subscriber(mqtt_broker.port, topics=(f"rgbd-edge/{dev}/result",))
    sink = make_mqtt(mqtt_cfg(tmp_path, mqtt_broker.port, outbox={"path": str(outbox)}), device=dev)
    try:
        assert sink.wait_idle(10)
        assert wait_until(lambda: len(sub.results()) == 7)
        assert [r["seq"] for r in sub.results()] == list(range(7))
    finally:
        sink.close(2)
        sub.close()


def test_broker_outage_then_restart_delivers_everything_in_order(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, topics=(f"rgbd-edge/{DEV}/result",), persistent=True, client_id="line-mes")
    sink = make_mqtt(mqtt_cfg(tmp_path, broker.port))
    try:
        for i in range(5):
            sink.publish(result(i))
        assert sink.wait_idle(10) and wait_until(lambda: len(sub.results()) == 5)

        broker.stop()
        assert wait_until(lambda: not sink.connected)
        for i in range(5, 55):
            sink.publish(result(i, "reject" if i % 10 == 0 else "pass"))
        st = sink.stats()
        assert st["queued"] == 50 and st["published"] == 5 and st["disconnects"] == 1

        broker.start()  # same port; the subscriber's session survives (broker persistence)
        assert sink.wait_idle(15), sink.stats()
        assert wait_until(lambda: len(sub.results()) >= 55, 15)
        assert [r["seq"] for r in sub.results()] == list(range(55))  # in order, none lost
        st = sink.stats()
        assert st["queued"] == 0 and st["published"] == 55 and st["dropped_overflow"] == 0 and st["connects"] == 2
    finally:
        sink.close(2)
        sub.close()
        broker.stop()


def test_broker_restart_while_publishing_keeps_order_and_loses_nothing(tmp_path):
    """Messages in flight when the connection drops are sent again before newer ones: the first
    occurrence of every seq arrives in order (QoS 1 allows duplicates, never gaps)."""
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, topics=(f"rgbd-edge/{DEV}/result",), persistent=True, client_id="line-mes-3")
    sink = make_mqtt(mqtt_cfg(tmp_path, broker.port))
    n = 600
    try:
        assert wait_until(lambda: sink.connected)

        def produce():
            for i in range(n):
                sink.publish(result(i))
                time.sleep(0.001)

        t = threading.Thread(target=produce)
        t.start()
        assert wait_until(lambda: sink.stats()["published"] >= 100)
        broker.restart()
        t.join(30)
        assert sink.wait_idle(20), sink.stats()
        assert wait_until(lambda: len(set([r["seq"] for r in sub.results()] +
                                          [json.loads(p)["seq"] for _, p, _ in sub.dups])) == n, 15)
        seqs = [r["seq"] for r in sub.results()]
        first = list(dict.fromkeys(seqs))
        assert first == sorted(first)
        st = sink.stats()
        assert st["queued"] == 0 and st["dropped_overflow"] == 0 and st["disconnects"] == 1 and st["lost"] == 0
    finally:
        sink.close(2)
        sub.close()
        broker.stop()


def test_outbox_overflow_drops_oldest_and_counts(tmp_path, caplog):
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, topics=(f"rgbd-edge/{DEV}/#",), persistent=True, client_id="line-mes-2")
    broker.stop()
    sink = make_mqtt(mqtt_cfg(tmp_path, broker.port, outbox={"path": str(tmp_path / "ob.sqlite"), "max_messages": 10}))
    try:
        with caplog.at_level(logging.ERROR, logger="edge.sinks.mqtt"):
            for i in range(15):
                sink.publish(result(i))
        st = sink.stats()
        assert st["dropped_overflow"] == 5 and st["queued"] == 10 and st["connect_failures"] >= 1
        assert any("outbox full" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)

        broker.start()
        assert sink.wait_idle(15), sink.stats()
        assert wait_until(lambda: len(sub.results()) >= 10, 15)
        assert [r["seq"] for r in sub.results()] == list(range(5, 15))  # the 5 oldest were dropped
        online = [s for s in sub.statuses() if s.get("online")]
        assert online and online[-1]["outbox"]["dropped_overflow"] == 5  # reported in the status too
    finally:
        sink.close(2)
        sub.close()
        broker.stop()


# --------------------------------------------------------------------------- TLS and authentication


def test_tls_client_certificate_and_wrong_ca(tmp_path, tls_material, caplog):
    tm = tls_material
    broker = Broker(tmp_path / "broker", tls=tm).start()
    sub = Subscriber(broker.port, topics=("rgbd-edge/+/result",))  # plain listener, same topic space
    good = make_mqtt(mqtt_cfg(tmp_path, broker.tls_port, tls={"ca_file": str(tm.ca), "cert_file": str(tm.client_cert),
                                                              "key_file": str(tm.client_key)}), device="tls-ok")
    try:
        good.publish(result(0, device="tls-ok"))
        assert good.wait_idle(10), good.stats()
        assert wait_until(lambda: [r for r in sub.results() if r["device_id"] == "tls-ok"])
        assert good.stats()["failed"] == 0
    finally:
        good.close(2)

    with caplog.at_level(logging.ERROR, logger="edge.sinks.mqtt"):
        bad = make_mqtt(mqtt_cfg(tmp_path, broker.tls_port, tls={"ca_file": str(tm.other_ca),
                                                                 "cert_file": str(tm.client_cert),
                                                                 "key_file": str(tm.client_key)}), device="tls-bad")
        try:
            bad.publish(result(0, device="tls-bad"))  # never raises
            assert wait_until(lambda: bad.stats()["connect_failures"] >= 1)
            st = bad.stats()
            assert st["failed"] >= 1 and st["queued"] == 1 and not st["connected"]
            assert "certificate verify failed" in st["last_error"] and str(tm.other_ca) in st["last_error"]
        finally:
            bad.close(1)  # no crash, the result stays in the outbox
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("cannot connect" in m and "certificate verify failed" in m and "tls.ca_file" in m for m in msgs), msgs
    assert not [r for r in sub.results() if r["device_id"] == "tls-bad"]
    sub.close()
    broker.stop()


def test_username_and_password_file(tmp_path, caplog):
    broker = Broker(tmp_path / "broker", users={"line3": "s3cret pass"}).start()
    sub = Subscriber(broker.port, topics=("rgbd-edge/+/result",))
    pw = tmp_path / "mqtt.pw"
    pw.write_text("s3cret pass\n")  # trailing newline stripped
    pw.chmod(0o600)  # a password file others can read is refused
    ok = make_mqtt(mqtt_cfg(tmp_path, broker.auth_port, username="line3", password_file=str(pw)), device="auth-ok")
    try:
        ok.publish(result(0, device="auth-ok"))
        assert ok.wait_idle(10), ok.stats()
        assert wait_until(lambda: [r for r in sub.results() if r["device_id"] == "auth-ok"])
    finally:
        ok.close(2)

    wrong = tmp_path / "wrong.pw"
    wrong.write_text("nope")
    wrong.chmod(0o600)
    with caplog.at_level(logging.ERROR, logger="edge.sinks.mqtt"):
        bad = make_mqtt(mqtt_cfg(tmp_path, broker.auth_port, username="line3", password_file=str(wrong)),
                        device="auth-bad")
        try:
            bad.publish(result(0, device="auth-bad"))
            assert wait_until(lambda: bad.stats()["connect_failures"] >= 1)
            assert bad.stats()["queued"] == 1 and bad.stats()["failed"] >= 1
        finally:
            bad.close(1)
    assert any("refused the connection" in r.getMessage() for r in caplog.records)
    sub.close()
    broker.stop()


# --------------------------------------------------------------------------- watch


def test_watch_receives_what_the_sink_published(tmp_path, mqtt_broker, capsys):
    from edge.watch import main as watch_main
    from edge.watch import watch

    sink = make_mqtt(mqtt_cfg(tmp_path, mqtt_broker.port))
    try:
        assert wait_until(lambda: sink.connected) and sink.wait_idle(5)
        ready, box = threading.Event(), {}

        def run():
            box["msgs"] = watch("127.0.0.1", mqtt_broker.port, device=DEV, max_messages=6, timeout_s=15,
                                ready=ready, color=False)

        t = threading.Thread(target=run)
        t.start()
        assert ready.wait(10)
        for i, dec in enumerate(["pass", "reject", "no_decision", "pass", "reject"]):
            sink.publish(result(i, dec))
        t.join(20)
        msgs = box["msgs"]
        assert msgs[0]["kind"] == "status" and msgs[0]["retained"] and msgs[0]["payload"]["online"] is True
        results = [m["payload"] for m in msgs if m["kind"] == "result"]
        assert [(r["seq"], r["decision"]) for r in results] == \
            [(0, "pass"), (1, "reject"), (2, "no_decision"), (3, "pass"), (4, "reject")]
        out = capsys.readouterr().out.splitlines()
        assert any("ONLINE" in ln and DEV in ln for ln in out)
        rej = [ln for ln in out if "REJECT" in ln]
        assert len(rej) == 2 and "seq 1" in rej[0] and "score 0.900 > thr 0.500" in rej[0] and "12.5 ms" in rej[0]
        assert "\033[" not in "\n".join(out)  # not a TTY: no colour

        # the CLI entry point, JSON output: the retained status of every device
        assert watch_main(["--host", "127.0.0.1", "--port", str(mqtt_broker.port), "--json", "--count", "1",
                           "--timeout", "10"]) == 0
        line = json.loads(capsys.readouterr().out.splitlines()[0])
        assert line["kind"] == "status" and line["device"] == DEV and line["payload"]["online"] is True
    finally:
        sink.close(2)


def test_watch_cli_unreachable_broker_exits_1(capsys):
    from edge.watch import main as watch_main

    assert watch_main(["--host", "127.0.0.1", "--port", str(free_port()), "--timeout", "1.5"]) == 1
    assert "cannot connect" in capsys.readouterr().err
