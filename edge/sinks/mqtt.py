"""MQTT sink: every result to ``<prefix>/result`` (QoS 1) through an on-disk outbox, reject
heatmaps to ``<prefix>/heatmap/<seq>``, and a retained ``<prefix>/status`` with a last will.

Topics, payloads and delivery semantics are documented in docs/results.md; the configuration and
the credential checks are in edge/sinks/mqtt_config.py.

Threads:
* the daemon's sink thread calls :meth:`MqttSink.publish`: it only appends to the SQLite outbox
  (sub-millisecond with the default ``synchronous: normal``) and wakes the sender. When the
  outbox cannot be written (a full disk), the message waits in memory instead (edge/sinks/spool.py);
* paho's network thread (``loop_start``): connect (``connect_async``), automatic reconnect with
  exponential backoff (``reconnect_delay_set``), keepalive, PUBACKs. Its callbacks only set
  flags and append to a deque (``on_publish`` runs under paho's message lock, so it must not
  wait for anything of ours);
* the sender thread (ours): while connected, claims up to ``inflight`` rows from the outbox in
  order, publishes them with QoS 1 and deletes each row when its PUBACK arrives; once no outbox
  row waits, it publishes the messages waiting in memory (counted ``direct_publishes``). After a
  reconnect, paho re-sends the messages that were in flight when the connection dropped (in
  order); new rows wait until those are acknowledged, so the broker sees results in order. If
  paho has not re-sent them within max(10 s, 2 x keepalive), the sender publishes them again
  itself, in their original order (``republished``).

Health (``stats()["health_problems"]``) and events (``drain_events()``): the outbox cannot be
written (``outbox_write_failed`` / ``outbox_ok``), results lost (``results_lost``), a username
sent without TLS (``mqtt_credentials_without_tls``).

paho-mqtt (>= 2.0) is imported when a sink is created, not by ``import edge.sinks``.
"""
from __future__ import annotations

import collections
import json
import logging
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field

from ..results import InspectionResult
from .base import Counters, EventQueue, RateLimitedLog
from .mqtt_config import (DEFAULT_PORT, DEFAULT_TLS_PORT, MQTT_KEYS, OUTBOX_KEYS, TLS_KEYS,  # noqa: F401 (re-exported)
                          TOPIC_ROOT, MqttConfig, TlsConfig, credentials_in_clear, parse_mqtt_config)
from .outbox import OutboxError, Row
from .spool import Message, Spool

log = logging.getLogger("edge.sinks.mqtt")

COUNTERS = ("published", "heatmaps_published", "failed", "dropped_overflow", "connect_failures", "connects",
            "disconnects", "status_published", "outbox_errors", "lost", "rejected", "results_in", "heatmaps_in",
            "heatmaps_skipped", "republished", "outbox_write_errors", "direct_publishes", "results_lost",
            "heatmaps_lost")


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
class _Pending:
    """One message handed to paho and not yet acknowledged."""

    row_id: int | None      # its outbox row; None for a message from memory
    gen: int                # the connection generation it was sent on
    kind: str               # result | heatmap
    msg: Message | None = None  # the message itself when it came from memory


@dataclass
class _SendState:
    """The sender thread's bookkeeping (only that thread touches it)."""

    pending: dict[int, _Pending] = field(default_factory=dict)  # mid -> message, in the order sent
    cursor: int = 0  # highest row id handed to paho
    gen_seen: int = 0  # the connection generation last announced with an online status
    status_seen: int = 0  # the status generation last published
    stale_deadline: float | None = None  # until then, rows from before a reconnect wait for paho's re-send
    undeleted: list[int] = field(default_factory=list)  # acknowledged rows the outbox could not delete yet
    next_delete_try: float = 0.0


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
        self._events = EventQueue("mqtt")
        self._connected = False
        self._spool = Spool(cfg, self._c, self._events, lambda: self._connected)
        self._outbox = self._spool.outbox
        self._window = max(1, min(cfg.inflight, cfg.outbox_max_messages // 2 or 1))
        self._wake = threading.Event()
        self._acks: collections.deque = collections.deque()
        self._conn_gen = 0  # incremented by every successful CONNACK
        self._last_error: str | None = None
        self._last_status: dict | None = None
        self._status_gen = 0
        self._status_sent = 0  # the _status_gen the sender last published
        self._closing = False
        self._stop = False
        self._closed = False
        self._inflight_n = 0
        self._busy = False  # messages handed over and not yet acknowledged (for flush waits)
        self._st = _SendState()
        self._clear_credentials = credentials_in_clear(cfg)
        try:
            self._client = self._make_client()
            self._sender = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
            self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
            self._client.loop_start()
        except ValueError:
            self._outbox.close()
            raise
        except Exception as exc:
            self._outbox.close()
            raise RuntimeError(f"MQTT client could not start: {_short(exc)}") from exc
        self._sender.start()
        self._warn_clear_credentials()
        log.info("mqtt: %s:%d%s as %r, topics %s/{result,status,heatmap/<seq>}, outbox %s (max %d messages, %d "
                 "bytes; %d queued)", cfg.host, cfg.port, " (TLS)" if cfg.tls else "", cfg.client_id, cfg.topic_prefix,
                 cfg.outbox_path, cfg.outbox_max_messages, cfg.outbox_max_bytes, len(self._outbox))

    def _make_client(self):
        mqtt, cfg = self._mqtt, self.cfg
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
        return c

    def _warn_clear_credentials(self) -> None:
        if not self._clear_credentials:
            return
        log.warning("mqtt: username %r and its password are sent WITHOUT TLS to %s:%d: anyone on that network can "
                    "read them. Configure sinks.mqtt.tls (the broker needs a TLS listener); running anyway",
                    self.cfg.username, self.cfg.host, self.cfg.port)
        self._events.emit("mqtt_credentials_without_tls", host=self.cfg.host, port=self.cfg.port,
                          username=self.cfg.username)

    # ------------------------------------------------------------------ Sink API

    def publish(self, result: InspectionResult, heatmap_jpeg: bytes | None = None) -> None:
        """Queue the result (and its heatmap): the outbox, or memory while it cannot be written;
        the sender thread does the rest."""
        self._c.inc("results_in")
        if heatmap_jpeg is not None:
            self._c.inc("heatmaps_in")
        seq = getattr(result, "seq", None)
        if self._closed:
            self._spool.lose([Message("", b"", "result", seq)], "a result arrived after close")
            log.error("mqtt: result seq %s arrived after close: NOT published", seq)
            return
        try:
            payload = result.to_json().encode("utf-8")
        except Exception as exc:  # a bug upstream (e.g. a non-JSON value): count, never raise
            self._spool.lose([Message("", b"", "result", seq)], "the result could not be serialised")
            log.error("mqtt: result seq %s could not be serialised: %s", seq, _short(exc))
            return
        msgs = [Message(self.cfg.result_topic, payload, "result", seq)]
        if heatmap_jpeg is not None:
            if self.cfg.heatmaps:
                msgs.append(Message(self.cfg.heatmap_topic(seq), bytes(heatmap_jpeg), "heatmap", seq))
            else:
                self._c.inc("heatmaps_skipped")
        self._spool.put(msgs)
        self._wake.set()

    def publish_status(self, status: dict) -> None:
        """Retained on ``<prefix>/status`` (latest wins); re-sent on every (re)connect."""
        self._last_status = dict(status)
        self._status_gen += 1
        self._wake.set()

    def drain_events(self) -> list[dict]:
        """Events since the last call (see the module docstring); the daemon publishes them."""
        self._spool.flush_lost_event()
        return self._events.drain()

    def health_problems(self) -> list[str]:
        out = []
        p = self._spool.problem()
        if p is not None:
            out.append(p)
        if self._clear_credentials:
            out.append(f"mqtt: username and password sent without TLS to {self.cfg.host}:{self.cfg.port}")
        return out

    def stats(self) -> dict:
        c = self._c.snapshot()
        ob, sp = self._outbox, self._spool
        c["dropped_overflow"] = ob.dropped_overflow
        c["dropped_overflow_heatmaps"] = ob.dropped_by_kind.get("heatmap", 0)
        c["queued"] = len(ob)
        c["queued_bytes"] = ob.bytes
        c["outbox_file_bytes"] = ob.file_bytes()
        c["outbox_writable"] = not sp.fault.active
        c["memory_queued"] = len(sp.memory)
        c["memory_inflight"] = sp.memory_inflight
        c["inflight"] = self._inflight_n
        c["connected"] = self._connected
        c["last_error"] = self._last_error or sp.last_error
        age = ob.oldest_age_s() if c["queued"] else None
        c["oldest_queued_s"] = None if age is None else round(age, 1)
        c["events_dropped"] = self._events.dropped
        c["health_problems"] = self.health_problems()
        return c

    def _backlog(self) -> int:
        """Messages still to be sent: outbox rows (not those delivered but not deleted yet) and memory."""
        return max(0, len(self._outbox) - len(self._st.undeleted)) + len(self._spool.memory)

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until nothing waits to be sent and nothing is in flight (True) or the timeout (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._backlog() == 0 and not self._busy:
                return True
            time.sleep(0.02)
        return self._backlog() == 0 and not self._busy

    @property
    def connected(self) -> bool:
        return self._connected

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what can be sent within ``timeout_s`` (while connected), publish the retained
        ``offline`` status (a clean disconnect does not fire the last will), disconnect. Rows
        not acknowledged stay in the outbox for the next start; messages in memory are written
        there if it takes them now, else counted lost."""
        if self._closed:
            return
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._closing = True
        self._wake.set()
        while (self._connected and (self._backlog() or self._busy or self._status_sent != self._status_gen)
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
        unacked = [p.msg for p in self._st.pending.values() if p.msg is not None]
        saved, lost = self._spool.close(unacked)
        left = len(self._outbox)
        st = self._c.snapshot()
        (log.warning if left or lost else log.info)(
            "mqtt: closed: %d result(s) published (%d directly, without the outbox), %d message(s) left in the outbox "
            "%s (sent on the next start; %d of them moved there from memory), %d dropped by overflow, %d lost",
            st["published"], st["direct_publishes"], left, self.cfg.outbox_path, saved, self._outbox.dropped_overflow,
            st["lost"])

    # ------------------------------------------------------------------ payloads

    def _online_payload(self) -> bytes:
        base = dict(self._last_status or {})
        base.update({"device_id": base.get("device_id", self.device_id), "online": True,
                     "state": base.get("state", "online"), "ts": time.time(), "outbox": self._spool.info()})
        return json.dumps(base, separators=(",", ":"), default=str).encode()

    def _offline_payload(self, reason: str) -> bytes:
        d = {"device_id": self.device_id, "online": False, "state": "offline", "reason": reason}
        if reason != "connection lost (last will)":
            d["ts"] = time.time()
            if self._last_status:
                d["last_state"] = self._last_status.get("state")
            d["outbox"] = self._spool.info()
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
        st = self._st
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            self._take_acks(st)
            self._retry_deletes(st)
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

    def _take_acks(self, st: _SendState) -> None:
        """Acknowledged rows leave the outbox; a message the broker refused is counted, not retried."""
        done, kinds = [], []
        while self._acks:
            mid, failed, why = self._acks.popleft()
            entry = st.pending.pop(mid, None)
            if entry is None:
                continue  # a status message, or a message already given up on
            if failed:  # MQTT 5 brokers may refuse a message (e.g. not authorised): retrying cannot help
                self._c.inc("rejected")
                self._c.inc("failed")
                self._rl("rejected", logging.ERROR, "mqtt: broker refused a %s message: %s", entry.kind, why)
            if entry.msg is not None:
                self._spool.memory_acked(entry.msg, failed)
            else:
                done.append(entry.row_id)
            kinds.append((entry.kind, failed))
        for kind, failed in kinds:
            if not failed:
                self._c.inc("heatmaps_published" if kind == "heatmap" else "published")
        if done:
            self._delete_rows(st, done)

    def _delete_rows(self, st: _SendState, ids: list[int]) -> None:
        """Delete delivered rows; on a full disk SQLite cannot delete either: they are kept aside and
        retried (they are never sent again by this process; the next one would send them twice)."""
        try:
            self._outbox.delete(ids)
        except OutboxError as exc:
            self._c.inc("outbox_errors")
            st.undeleted.extend(i for i in ids if i not in st.undeleted)
            st.next_delete_try = time.monotonic() + 1.0
            self._rl("outbox-del", logging.ERROR, "mqtt: %d delivered row(s) not deleted yet: %s", len(st.undeleted),
                     exc)

    def _retry_deletes(self, st: _SendState) -> None:
        if st.undeleted and time.monotonic() >= st.next_delete_try:
            ids, st.undeleted = st.undeleted, []
            self._delete_rows(st, ids)

    def _send_status_if_due(self, st: _SendState, gen: int) -> None:
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

    def _awaiting_resend(self, st: _SendState, gen: int) -> bool:
        """True while messages from before the reconnect may still be re-sent by paho; past the
        deadline the sender publishes them again itself, in their original order."""
        if st.stale_deadline is None:
            return False
        if not any(p.gen < gen for p in st.pending.values()):
            st.stale_deadline = None
            return False
        if time.monotonic() <= st.stale_deadline:
            return True
        log.warning("mqtt: %d message(s) from before the reconnect were not acknowledged; sending "
                    "them again", len(st.pending))
        self._c.inc("republished", len(st.pending))
        old = list(st.pending.values())
        st.pending.clear()
        st.stale_deadline = None
        try:
            rows = self._outbox.get([p.row_id for p in old if p.msg is None])
        except OutboxError as exc:
            self._rl("outbox-read", logging.ERROR, "mqtt: %s", exc)
            rows = {}
        for p in old:
            if p.msg is not None:
                self._resend(st, gen, p.msg.topic, p.msg.payload, _Pending(None, gen, p.kind, p.msg))
            elif p.row_id in rows:
                r = rows[p.row_id]
                self._resend(st, gen, r.topic, r.payload, _Pending(r.id, gen, r.kind))
        return False

    def _resend(self, st: _SendState, gen: int, topic: str, payload: bytes, entry: _Pending) -> None:
        mid = self._hand_over(topic, payload)
        if isinstance(mid, int):
            st.pending[mid] = entry
        elif entry.msg is not None:
            self._spool.memory_acked(entry.msg, True)
            self._spool.lose([entry.msg], f"cannot be published again ({mid})")

    def _fill_window(self, st: _SendState, gen: int) -> None:
        """Hand the next outbox rows to paho, in order, up to the in-flight window; then, once no
        row waits, the messages waiting in memory."""
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
                return
        sent = len(rows)
        if sent < room:
            sent += self._spool.take_memory(st.cursor, room - sent, lambda m: self._publish_memory(m, st, gen))
        self._note_inflight(st.pending)
        if sent == room:
            self._wake.set()  # more may be waiting once acks come back

    def _hand_over(self, topic: str, payload: bytes) -> int | str:
        """paho's message id, or ``later`` (its queue is full), or why it can never be published."""
        mqtt = self._mqtt
        try:
            info = self._client.publish(topic, payload, qos=self.cfg.qos, retain=False)
        except Exception as exc:  # e.g. ValueError for a payload over the MQTT size limit
            return _short(exc)
        # NO_CONN: paho keeps the message and sends it on connect
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            return info.mid
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            return "later"
        return f"rc {info.rc}"

    def _publish_row(self, row: Row, st: _SendState, gen: int) -> bool:
        """Publish one outbox row; False when paho's queue is full (the row waits). A row that can
        never be sent (too large, bad topic) is dropped, loudly."""
        mid = self._hand_over(row.topic, row.payload)
        if mid == "later":
            return False
        st.cursor = row.id
        if isinstance(mid, int):
            st.pending[mid] = _Pending(row.id, gen, row.kind)
            return True
        self._c.inc("rejected")
        self._spool.lose([Message(row.topic, b"", row.kind, None)], f"cannot be published ({mid})")
        log.error("mqtt: %s message on %s (%d bytes) cannot be published (%s): dropped", row.kind,
                  row.topic, len(row.payload), mid)
        self._delete_rows(st, [row.id])
        return True

    def _publish_memory(self, m: Message, st: _SendState, gen: int) -> str:
        """``take_memory``'s hand-over: sent, later or bad (counted by the spool)."""
        mid = self._hand_over(m.topic, m.payload)
        if mid == "later":
            return "later"
        if isinstance(mid, int):
            st.pending[mid] = _Pending(None, gen, m.kind, m)
            return "sent"
        self._c.inc("rejected")
        log.error("mqtt: %s message on %s (%d bytes) cannot be published (%s): dropped", m.kind, m.topic,
                  len(m.payload), mid)
        return "bad"

    def _send_status(self, payload: bytes) -> None:
        try:
            info = self._client.publish(self.cfg.status_topic, payload, qos=1, retain=True)
            if info.rc == self._mqtt.MQTT_ERR_SUCCESS:
                self._c.inc("status_published")
        except Exception as exc:
            self._rl("status", logging.WARNING, "mqtt: status not published: %s", _short(exc))
