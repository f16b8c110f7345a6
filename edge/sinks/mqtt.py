"""MQTT sink: every result to ``<prefix>/result`` (QoS 1) through an on-disk outbox, reject
heatmaps to ``<prefix>/heatmap/<seq>``, and a retained ``<prefix>/status`` with a last will.

Topics, payloads and delivery semantics are documented in docs/results.md.

Threads:
* the daemon's sink thread calls :meth:`MqttSink.publish`: it only appends to the SQLite outbox
  (sub-millisecond with the default ``synchronous: normal``) and wakes the sender;
* paho's network thread (``loop_start``): connect (``connect_async``), automatic reconnect with
  exponential backoff (``reconnect_delay_set``), keepalive, PUBACKs. Its callbacks only set
  flags and append to a deque (``on_publish`` runs under paho's message lock, so it must not
  wait for anything of ours);
* the sender thread (ours): while connected, claims up to ``inflight`` rows from the outbox in
  order, publishes them with QoS 1 and deletes each row when its PUBACK arrives. After a
  reconnect, paho re-sends the messages that were in flight when the connection dropped (in
  order); new rows wait until those are acknowledged, so the broker sees results in order.

paho-mqtt (>= 2.0) is imported when a sink is created, not by ``import edge.sinks``.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import Checker, Section, join
from ..results import InspectionResult
from .base import Counters, RateLimitedLog
from .outbox import Outbox, OutboxError

log = logging.getLogger("edge.sinks.mqtt")

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
TOPIC_ROOT = "rgbd-edge"
MQTT_KEYS = ("enabled", "host", "port", "client_id", "topic_prefix", "qos", "keepalive", "tls", "username",
             "password_file", "heatmaps", "outbox", "inflight", "reconnect_min_s", "reconnect_max_s")
TLS_KEYS = ("ca_file", "cert_file", "key_file", "insecure")
OUTBOX_KEYS = ("path", "max_messages", "synchronous")
COUNTERS = ("published", "heatmaps_published", "failed", "dropped_overflow", "connect_failures", "connects",
            "disconnects", "status_published", "outbox_errors", "lost", "rejected", "results_in", "heatmaps_in",
            "heatmaps_skipped", "republished")


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str | None = None    # None: the system CA store
    cert_file: str | None = None  # client certificate (mutual TLS)
    key_file: str | None = None
    insecure: bool = False        # skip the host name check (the chain is still verified)


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int = DEFAULT_PORT
    client_id: str = ""
    topic_prefix: str = ""
    qos: int = 1
    keepalive: int = 30
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: str | None = None
    password: str | None = field(default=None, repr=False)  # read from password_file, never from the config
    heatmaps: bool = True
    outbox_path: str = "outbox.sqlite"
    outbox_max_messages: int = 10000
    outbox_synchronous: str = "normal"
    inflight: int = 20
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0

    @property
    def result_topic(self) -> str:
        return f"{self.topic_prefix}/result"

    @property
    def status_topic(self) -> str:
        return f"{self.topic_prefix}/status"

    def heatmap_topic(self, seq: int) -> str:
        return f"{self.topic_prefix}/heatmap/{seq}"


def _check_file(s: Section, name: str) -> str:
    p = Path(os.path.expanduser(s.str(name)))
    if not p.is_file():
        raise s.fail(name, f"file not found: {p}")
    if not os.access(p, os.R_OK):
        raise s.fail(name, f"file not readable: {p}")
    return str(p)


def _check_topic(s: Section, name: str, default: str) -> str:
    prefix = s.str(name, default)
    if any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise s.fail(name, f"not a valid topic prefix (no wildcards + #, no leading/trailing or double '/'): "
                           f"{prefix!r}")
    return prefix


def _read_password(s: Section, username: str | None) -> tuple[str | None, str | None]:
    """(password_file, password) from ``password_file``; (None, None) without one."""
    if not s.has("password_file"):
        return None, None
    if username is None:
        raise s.fail("password_file", "given without username")
    password_file = _check_file(s, "password_file")
    try:
        password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise s.fail("password_file", f"cannot read {password_file}: {exc}") from exc
    if not password:
        raise s.fail("password_file", f"{password_file} is empty")
    return password_file, password


def parse_mqtt_config(d: Any, device_id: str, key: str = "sinks.mqtt") -> MqttConfig:
    """Check ``sinks.mqtt`` and read the password file. A CheckError (a ValueError) names the key (and file)."""
    if isinstance(d, dict) and "password" in d:
        raise Checker().fail(join(key, "password"), "unknown key: the password is never read from the configuration; "
                                                    "put it in a file readable only by the service and name it "
                                                    "in password_file")
    s = Section(d, key, MQTT_KEYS)
    host = s.str("host", required=True)
    tls = None
    if s.d.get("tls") not in (None, False):
        t = Section({} if s.d["tls"] is True else s.d["tls"], f"{key}.tls", TLS_KEYS)
        files = {k: _check_file(t, k) if t.has(k) else None for k in ("ca_file", "cert_file", "key_file")}
        if files["key_file"] and not files["cert_file"]:
            raise t.fail("key_file", "given without cert_file")
        tls = TlsConfig(insecure=t.bool("insecure", False), **files)
    port = s.int("port", 1, 65535, default=DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
    username = s.str("username")
    password_file, password = _read_password(s, username)
    outbox = s.d.get("outbox")
    o = Section({"path": outbox} if isinstance(outbox, str) else outbox, f"{key}.outbox", OUTBOX_KEYS)
    rmin = s.number("reconnect_min_s", 0.0, 3600.0, default=1.0, lo_open=True)
    rmax = s.number("reconnect_max_s", 0.0, 3600.0, default=60.0, lo_open=True)
    if rmax < rmin:
        raise s.fail("reconnect_max_s", f"must be >= reconnect_min_s ({rmin:g}), got {rmax:g}")
    return MqttConfig(
        host=host, port=port,
        client_id=s.str("client_id", device_id),
        topic_prefix=_check_topic(s, "topic_prefix", f"{TOPIC_ROOT}/{device_id}"),
        qos=s.choice("qos", (0, 1, 2), 1),
        keepalive=s.int("keepalive", 5, 3600, default=30),
        tls=tls, username=username, password_file=password_file, password=password,
        heatmaps=s.bool("heatmaps", True),
        outbox_path=o.str("path", "outbox.sqlite"),
        outbox_max_messages=o.int("max_messages", 1, 10_000_000, default=10000),
        outbox_synchronous=o.choice("synchronous", ("normal", "full"), "normal"),
        inflight=s.int("inflight", 1, 1000, default=20),
        reconnect_min_s=rmin, reconnect_max_s=rmax,
    )


def _import_paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise ImportError(f"the MQTT sink needs paho-mqtt>=2.0 (pip install 'rgbd-edge[mqtt]'): {exc}") from exc
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise ImportError("the MQTT sink needs paho-mqtt>=2.0 (found 1.x)")
    return mqtt


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


@dataclass
class _SendState:
    """The sender thread's bookkeeping (only that thread touches it)."""

    pending: dict[int, tuple[int, int, str]] = field(default_factory=dict)  # mid -> (row id, connection generation, kind)
    cursor: int = 0  # highest row id handed to paho
    gen_seen: int = 0  # the connection generation last announced with an online status
    status_seen: int = 0  # the status generation last published
    stale_deadline: float | None = None  # until then, rows from before a reconnect wait for paho's re-send


class MqttSink:
    """See the module docstring and docs/results.md."""

    name = "mqtt"

    def __init__(self, cfg: MqttConfig, device_id: str):
        mqtt = _import_paho()
        self._mqtt = mqtt
        self.cfg = cfg
        self.device_id = device_id
        self._c = Counters(*COUNTERS)
        self._rl = RateLimitedLog(log, 30.0)
        self._outbox = Outbox(cfg.outbox_path, cfg.outbox_max_messages, cfg.outbox_synchronous)
        self._window = max(1, min(cfg.inflight, cfg.outbox_max_messages // 2 or 1))
        self._wake = threading.Event()
        self._acks: collections.deque = collections.deque()
        self._connected = False
        self._conn_gen = 0  # incremented by every successful CONNACK
        self._last_error: str | None = None
        self._last_status: dict | None = None
        self._status_gen = 0
        self._status_sent = 0  # the _status_gen the sender last published
        self._closing = False
        self._stop = False
        self._closed = False
        self._inflight_n = 0
        self._busy = False  # rows claimed and not yet acknowledged (for flush waits)

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id, clean_session=True,
                        protocol=mqtt.MQTTv311)
        self._paho_error: str | None = None
        plog = logging.getLogger(f"edge.sinks.mqtt.paho.{cfg.client_id or 'anon'}")
        plog.addFilter(self._paho_log_filter)
        self._plog = plog
        c.enable_logger(plog)
        c.max_inflight_messages_set(self._window + 4)  # + the status messages
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        c.will_set(cfg.status_topic, self._offline_payload("connection lost (last will)"), qos=1, retain=True)
        if cfg.tls is not None:
            t = cfg.tls
            try:
                # keyfile_password "": an encrypted key fails clearly instead of prompting on a terminal
                c.tls_set(ca_certs=t.ca_file, certfile=t.cert_file, keyfile=t.key_file,
                          keyfile_password="" if t.cert_file else None,
                          cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (ssl.SSLError, OSError, ValueError) as exc:
                self._outbox.close()
                raise ValueError(f"sinks.mqtt.tls: cannot load the certificates (ca_file={t.ca_file}, "
                                 f"cert_file={t.cert_file}, key_file={t.key_file}): {_short(exc)}") from exc
            if t.insecure:
                c.tls_insecure_set(True)
        if cfg.username is not None:
            c.username_pw_set(cfg.username, cfg.password)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self._client = c
        self._sender = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        try:
            c.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
            c.loop_start()
        except Exception as exc:
            self._outbox.close()
            raise RuntimeError(f"MQTT client could not start: {_short(exc)}") from exc
        self._sender.start()
        log.info("mqtt: %s:%d%s as %r, topics %s/{result,status,heatmap/<seq>}, outbox %s (max %d, %d queued)",
                 cfg.host, cfg.port, " (TLS)" if cfg.tls else "", cfg.client_id, cfg.topic_prefix, cfg.outbox_path,
                 cfg.outbox_max_messages, len(self._outbox))

    # ------------------------------------------------------------------ Sink API

    def publish(self, result: InspectionResult, heatmap_jpeg: bytes | None = None) -> None:
        """Append the result (and its heatmap) to the outbox; the sender thread does the rest."""
        self._c.inc("results_in")
        if self._closed:
            self._c.inc("lost")
            self._c.inc("failed")
            log.error("mqtt: result seq %s arrived after close: NOT published", getattr(result, "seq", "?"))
            return
        try:
            payload = result.to_json()
        except Exception as exc:  # a bug upstream (e.g. a non-JSON value): count, never raise
            self._c.inc("lost")
            self._c.inc("failed")
            log.error("mqtt: result seq %s could not be serialised: %s", getattr(result, "seq", "?"), _short(exc))
            return
        self._append(self.cfg.result_topic, payload, "result", result.seq)
        if heatmap_jpeg is not None:
            self._c.inc("heatmaps_in")
            if self.cfg.heatmaps:
                self._append(self.cfg.heatmap_topic(result.seq), bytes(heatmap_jpeg), "heatmap", result.seq)
            else:
                self._c.inc("heatmaps_skipped")
        self._wake.set()

    def _append(self, topic: str, payload, kind: str, seq: int) -> None:
        try:
            _, dropped = self._outbox.append(topic, payload, kind)
        except OutboxError as exc:
            self._c.inc("outbox_errors")
            self._c.inc("failed")
            self._c.inc("lost")
            self._last_error = str(exc)
            self._rl("outbox", logging.ERROR, "mqtt: %s %s NOT queued (outbox write failed): %s", kind, seq, exc)
            return
        if dropped:
            self._c.inc("dropped_overflow", dropped)
            self._rl("overflow", logging.ERROR,
                     "mqtt: outbox full (max_messages %d, broker %s): dropped the %d oldest message(s); "
                     "%d dropped in total", self.cfg.outbox_max_messages,
                     "connected" if self._connected else "unreachable", dropped, self._outbox.dropped_overflow)

    def publish_status(self, status: dict) -> None:
        """Retained on ``<prefix>/status`` (latest wins); re-sent on every (re)connect."""
        self._last_status = dict(status)
        self._status_gen += 1
        self._wake.set()

    def stats(self) -> dict:
        c = self._c.snapshot()
        c["dropped_overflow"] = self._outbox.dropped_overflow
        c["dropped_overflow_heatmaps"] = self._outbox.dropped_by_kind.get("heatmap", 0)
        c["queued"] = len(self._outbox)
        c["inflight"] = self._inflight_n
        c["connected"] = self._connected
        c["last_error"] = self._last_error
        age = self._outbox.oldest_age_s() if c["queued"] else None
        c["oldest_queued_s"] = None if age is None else round(age, 1)
        return c

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until the outbox is empty and nothing is in flight (True) or the timeout (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self._outbox) == 0 and not self._busy:
                return True
            time.sleep(0.02)
        return len(self._outbox) == 0 and not self._busy

    @property
    def connected(self) -> bool:
        return self._connected

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what can be sent within ``timeout_s`` (while connected), publish the retained
        ``offline`` status (a clean disconnect does not fire the last will), disconnect. Rows
        not acknowledged stay in the outbox for the next start."""
        if self._closed:
            return
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._closing = True
        self._wake.set()
        while (self._connected and (len(self._outbox) or self._busy or self._status_sent != self._status_gen)
               and time.monotonic() < deadline):  # results, then the daemon's final status
            time.sleep(0.02)
        self._stop = True
        self._wake.set()
        self._sender.join(timeout=max(0.5, deadline - time.monotonic()))
        if self._connected:
            try:
                info = self._client.publish(self.cfg.status_topic, self._offline_payload("closed cleanly"),
                                            qos=1, retain=True)
                info.wait_for_publish(timeout=max(0.5, min(2.0, deadline - time.monotonic())))
            except Exception as exc:  # NO_CONN, timeout: the will covers it
                log.debug("mqtt: offline status not confirmed: %s", _short(exc))
        if self._connected:
            try:
                self._client.disconnect()  # clean: the broker does not publish the last will
            except Exception:
                pass
        self._client.loop_stop()  # also ends a pending reconnect (backoff sleeps in <= 1 s steps)
        self._plog.removeFilter(self._paho_log_filter)
        self._closed = True
        left = len(self._outbox)
        self._outbox.close()
        st = self._c.snapshot()
        (log.warning if left else log.info)(
            "mqtt: closed: %d result(s) published, %d message(s) left in the outbox %s (sent on the next start), "
            "%d dropped by overflow", st["published"], left, self.cfg.outbox_path, self._outbox.dropped_overflow)

    # ------------------------------------------------------------------ payloads

    def _outbox_info(self) -> dict:
        return {"queued": len(self._outbox), "dropped_overflow": self._outbox.dropped_overflow,
                "max_messages": self.cfg.outbox_max_messages}

    def _online_payload(self) -> bytes:
        base = dict(self._last_status or {})
        base.update({"device_id": base.get("device_id", self.device_id), "online": True,
                     "state": base.get("state", "online"), "ts": time.time(), "outbox": self._outbox_info()})
        return json.dumps(base, separators=(",", ":"), default=str).encode()

    def _offline_payload(self, reason: str) -> bytes:
        d = {"device_id": self.device_id, "online": False, "state": "offline", "reason": reason}
        if reason != "connection lost (last will)":
            d["ts"] = time.time()
            if self._last_status:
                d["last_state"] = self._last_status.get("state")
            d["outbox"] = self._outbox_info()
        return json.dumps(d, separators=(",", ":"), default=str).encode()

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _paho_log_filter(self, record: logging.LogRecord) -> bool:
        """Keep paho's last error for our own messages; drop its reconnect-loop noise."""
        if record.levelno >= logging.ERROR:
            msg = record.getMessage()
            if msg.startswith("Client is not connected"):
                return False  # paho's loop while reconnecting: our connect-failure log says why
            self._paho_error = msg
            if msg.startswith("failed to receive on socket"):
                return False  # repeated in our "connection lost (...)" warning
        return True

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if getattr(reason_code, "is_failure", False):
            self._c.inc("connect_failures")
            self._c.inc("failed")
            self._last_error = f"broker refused the connection: {reason_code}"
            self._rl("connect", logging.ERROR, "mqtt: %s:%d refused the connection: %s (check username/"
                     "password_file and the broker's ACL)", self.cfg.host, self.cfg.port, reason_code)
            return
        self._c.inc("connects")
        self._rl.reset("connect")
        self._connected = True
        self._conn_gen += 1
        log.info("mqtt: connected to %s:%d (%d message(s) queued)", self.cfg.host, self.cfg.port, len(self._outbox))
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this inside its ``except OSError`` block: the exception is the current one.
        exc = sys.exc_info()[1]
        why = _short(exc) if exc is not None else "connection failed"
        if isinstance(exc, ssl.SSLCertVerificationError):
            why += (f" (the broker's certificate does not verify against tls.ca_file="
                    f"{self.cfg.tls.ca_file if self.cfg.tls else None})")
        elif isinstance(exc, ssl.SSLError):
            why += " (TLS handshake failed: check the broker's TLS listener, tls.cert_file/key_file)"
        self._c.inc("connect_failures")
        self._c.inc("failed")
        self._last_error = why
        self._rl("connect", logging.ERROR, "mqtt: cannot connect to %s:%d: %s; retrying with backoff, results "
                 "wait in the outbox (%d queued)", self.cfg.host, self.cfg.port, why, len(self._outbox))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected
        self._connected = False
        if self._closing and self._stop:
            return
        if was:
            self._c.inc("disconnects")
            why = str(reason_code)
            if self._paho_error:
                why = f"{why}: {self._paho_error}"
                self._paho_error = None
            self._last_error = f"disconnected: {why}"
            log.warning("mqtt: connection to %s:%d lost (%s); reconnecting, results wait in the outbox",
                        self.cfg.host, self.cfg.port, why)
        self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # Called with paho's message lock held: no locks of ours here.
        self._acks.append((mid, bool(getattr(reason_code, "is_failure", False)), str(reason_code)))
        self._wake.set()

    # ------------------------------------------------------------------ sender thread

    def _run(self) -> None:
        try:
            self._sender_loop()
        except Exception as exc:  # must never die silently
            self._last_error = f"sender thread crashed: {_short(exc)}"
            log.exception("mqtt: sender thread crashed; results stay in the outbox %s", self.cfg.outbox_path)

    def _sender_loop(self) -> None:
        """Woken by acks, connections, new rows and status changes (or every 0.5 s): delete what the
        broker acknowledged, announce a new connection, then fill the in-flight window in order."""
        st = _SendState()
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            self._take_acks(st.pending)
            self._note_inflight(st.pending)
            if self._stop:
                return
            if not self._connected:
                continue
            gen = self._conn_gen
            self._send_status_if_due(st, gen)
            if self._awaiting_resend(st, gen):
                continue
            self._fill_window(st, gen)

    def _note_inflight(self, pending: dict) -> None:
        self._inflight_n = len(pending)
        self._busy = bool(pending)

    def _take_acks(self, pending: dict[int, tuple[int, int, str]]) -> None:
        """Acknowledged rows leave the outbox; a message the broker refused is counted, not retried."""
        done, kinds = [], []
        while self._acks:
            mid, failed, why = self._acks.popleft()
            entry = pending.pop(mid, None)
            if entry is None:
                continue  # a status message, or a row already given up on
            if failed:  # MQTT 5 brokers may refuse a message (e.g. not authorised): retrying cannot help
                self._c.inc("rejected")
                self._c.inc("failed")
                self._rl("rejected", logging.ERROR, "mqtt: broker refused a %s message: %s", entry[2], why)
            done.append(entry[0])
            kinds.append((entry[2], failed))
        if not done:
            return
        try:
            self._outbox.delete(done)
        except OutboxError as exc:  # the rows will be sent again (duplicates, not losses)
            self._c.inc("outbox_errors")
            self._rl("outbox-del", logging.ERROR, "mqtt: %s", exc)
        for kind, failed in kinds:
            if not failed:
                self._c.inc("heatmaps_published" if kind == "heatmap" else "published")

    def _send_status_if_due(self, st: "_SendState", gen: int) -> None:
        """The retained online status on a new connection or a status change. On a new connection,
        rows in flight from before wait (for a while) for paho's own re-send."""
        if gen != st.gen_seen:
            st.gen_seen = gen
            st.status_seen = self._status_gen
            self._send_status(self._online_payload())
            self._status_sent = st.status_seen
            st.stale_deadline = time.monotonic() + max(10.0, 2.0 * self.cfg.keepalive) if st.pending else None
        elif self._status_gen != st.status_seen:
            st.status_seen = self._status_gen
            self._send_status(self._online_payload())
            self._status_sent = st.status_seen

    def _awaiting_resend(self, st: "_SendState", gen: int) -> bool:
        """True while rows from before the reconnect may still be re-sent by paho; past the deadline
        they are released to be sent again from the start of the outbox."""
        if st.stale_deadline is None:
            return False
        if not any(g < gen for _, g, _ in st.pending.values()):
            st.stale_deadline = None
            return False
        if time.monotonic() <= st.stale_deadline:
            return True
        log.warning("mqtt: %d message(s) from before the reconnect were not acknowledged; sending "
                    "them again", len(st.pending))
        self._c.inc("republished", len(st.pending))
        st.pending.clear()
        self._outbox.release()
        st.cursor = 0
        st.stale_deadline = None
        return False

    def _fill_window(self, st: "_SendState", gen: int) -> None:
        """Hand the next outbox rows to paho, in order, up to the in-flight window."""
        room = self._window - len(st.pending)
        if room <= 0:
            return
        try:
            rows = self._outbox.claim(st.cursor, room)
        except OutboxError as exc:
            self._c.inc("outbox_errors")
            self._rl("outbox-claim", logging.ERROR, "mqtt: %s", exc)
            return
        for i, row in enumerate(rows):
            if not self._publish_row(row, st, gen):  # paho's window is full: later
                self._outbox.release(r.id for r in rows[i:])
                break
        self._note_inflight(st.pending)
        if len(rows) == room and rows:
            self._wake.set()  # more may be waiting once acks come back

    def _publish_row(self, row, st: "_SendState", gen: int) -> bool:
        """Publish one outbox row; False when paho's queue is full (the row waits). A row that can
        never be sent (too large, bad topic) is dropped, loudly."""
        mqtt = self._mqtt
        try:
            info = self._client.publish(row.topic, row.payload, qos=self.cfg.qos, retain=False)
            rc = info.rc
        except Exception as exc:  # e.g. ValueError for a payload over the MQTT size limit
            info, rc = None, exc
        # NO_CONN: paho keeps the message and sends it on connect
        if info is not None and rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            st.pending[info.mid] = (row.id, gen, row.kind)
            st.cursor = row.id
            return True
        if info is not None and rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            return False
        self._c.inc("rejected")
        self._c.inc("failed")
        self._c.inc("lost")
        log.error("mqtt: %s message on %s (%d bytes) cannot be published (%s): dropped", row.kind,
                  row.topic, len(row.payload), rc)
        try:
            self._outbox.delete([row.id])
        except OutboxError:
            pass
        st.cursor = row.id
        return True

    def _send_status(self, payload: bytes) -> None:
        try:
            info = self._client.publish(self.cfg.status_topic, payload, qos=1, retain=True)
            if info.rc == self._mqtt.MQTT_ERR_SUCCESS:
                self._c.inc("status_published")
        except Exception as exc:
            self._rl("status", logging.WARNING, "mqtt: status not published: %s", _short(exc))
