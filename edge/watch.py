"""`rgbd-edge watch`: a live view of one or all devices through the MQTT broker.

    rgbd-edge watch --host broker.lan [--port 1883] [--device ID|+] [--prefix rgbd-edge]
                    [--tls] [--ca-file F] [--cert-file F --key-file F] [--insecure]
                    [--username U --password-file F] [--json] [--count N] [--timeout S]
                    [--save-heatmaps DIR]

Subscribes to ``<prefix>/<device>/result`` and ``<prefix>/<device>/status`` (``+`` = every
device) and prints one line per result (device, seq, decision coloured on a TTY, score vs
threshold, mode, latency) and one per status change (online/offline, mode changes). ``--json``
prints every message as one JSON object per line instead. Exit 0 (after --count messages,
--timeout or Ctrl-C), 1 when the broker was never reached, 2 on bad arguments.

For tests and scripts: :func:`watch` returns the received messages.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Sequence, TextIO

PROG = "rgbd-edge watch"
log = logging.getLogger("edge.watch")


def _status_line(device: str, s: dict) -> str:
    online = s.get("online")
    word = "ONLINE" if online else ("OFFLINE" if online is False else "status")
    parts = [device, word, str(s.get("state", ""))]
    if s.get("event") not in (None, "status"):
        parts.append(f"event={s['event']}")
    for k in ("mode", "previous", "reason", "exit_code", "error"):
        if s.get(k) is not None:
            parts.append(f"{k}={s[k]}")
    ob = s.get("outbox")
    if isinstance(ob, dict) and (ob.get("queued") or ob.get("dropped_overflow")):
        parts.append(f"outbox queued={ob.get('queued')} dropped={ob.get('dropped_overflow')}")
    return " ".join(p for p in parts if p)


def _status_key(s: dict) -> tuple:
    return (s.get("online"), s.get("state"), s.get("event"), s.get("mode"), s.get("reason"))


def _make_client(mqtt, client_id: str, tls: dict | bool | None, username: str | None, password_file: str | None):
    """A paho client with TLS, credentials and reconnect back-off set; not yet connected."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if tls:
        t = tls if isinstance(tls, dict) else {}
        c.tls_set(ca_certs=t.get("ca_file"), certfile=t.get("cert_file"), keyfile=t.get("key_file"),
                  cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if t.get("insecure"):
            c.tls_insecure_set(True)
    if username:
        pw = None
        if password_file:
            pw = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        c.username_pw_set(username, pw)
    c.reconnect_delay_set(1, 10)
    return c


class _Subscription:
    """The client's callbacks: subscribe on every (re)connection, queue what arrives, and remember
    the last connection error (reported once per change unless quiet)."""

    def __init__(self, client, topics: list[str], where: str, ready: threading.Event | None, quiet: bool):
        self.topics, self.where, self.ready, self.quiet = topics, where, ready, quiet
        self.queue: queue.Queue = queue.Queue()
        self.error: str | None = None
        self.connected_once = False
        client.on_connect, client.on_connect_fail = self.on_connect, self.on_connect_fail
        client.on_subscribe, client.on_message = self.on_subscribe, self.on_message

    def on_connect(self, client, userdata, flags, rc, props):
        if getattr(rc, "is_failure", False):
            self.error = f"broker refused the connection: {rc}"
            return
        self.connected_once = True
        client.subscribe([(t, 1) for t in self.topics])

    def on_connect_fail(self, client, userdata):
        exc = sys.exc_info()[1]
        msg = f"{type(exc).__name__}: {exc}" if exc else "connection failed"
        if msg != self.error and not self.quiet:
            print(f"{PROG}: cannot connect to {self.where}: {msg} (retrying)", file=sys.stderr)
        self.error = msg

    def on_subscribe(self, client, userdata, mid, reason_codes, props):
        if self.ready is not None:
            self.ready.set()

    def on_message(self, client, userdata, m):
        self.queue.put((m.topic, bytes(m.payload), bool(m.retain)))


class _Printer:
    """Turns received messages into the returned dicts and the printed lines (or JSON lines);
    heatmaps are saved, not returned."""

    def __init__(self, prefix: str, out: TextIO, color: bool, json_output: bool, quiet: bool,
                 heatmap_dir: str | os.PathLike | None):
        from .sinks.files import format_result

        self.format_result = format_result
        self.prefix, self.out, self.color, self.json_output, self.quiet = prefix, out, color, json_output, quiet
        self.heatmap_dir = heatmap_dir
        self.last_status: dict[str, tuple] = {}

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def handle(self, topic: str, payload: bytes, retained: bool) -> dict | None:
        """The message as watch() returns it, or None for a heatmap."""
        rest = topic[len(self.prefix) + 1:] if topic.startswith(self.prefix + "/") else topic
        dev, _, kind = rest.partition("/")
        if kind.startswith("heatmap/"):
            self._save_heatmap(dev, kind.split("/", 1)[1], payload)
            return None
        try:
            obj = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            obj = {"_raw": payload.decode("utf-8", "replace")}
        msg = {"kind": kind, "device": dev, "topic": topic, "retained": retained, "payload": obj}
        if self.quiet:
            return msg
        if self.json_output:
            self._print(json.dumps(msg, separators=(",", ":")))
        elif kind == "result":
            self._print(self.format_result(obj, color=self.color, device=True))
        elif kind == "status" and isinstance(obj, dict):
            key = _status_key(obj)
            if self.last_status.get(dev) != key:  # print changes, not every periodic counter update
                self.last_status[dev] = key
                self._print(("(retained) " if retained else "") + _status_line(dev, obj))
        return msg

    def _save_heatmap(self, dev: str, seq: str, payload: bytes) -> None:
        if self.heatmap_dir is None:
            return
        f = Path(self.heatmap_dir) / f"{dev}_{seq}.jpg"
        f.write_bytes(payload)
        if not self.json_output and not self.quiet:
            self._print(f"{dev} heatmap seq {seq} -> {f}")


def _receive(q: queue.Queue, handle, max_messages: int | None, timeout_s: float | None) -> list[dict]:
    """Handle queued messages until max_messages were returned, timeout_s passed or Ctrl-C;
    returns what was handled by then."""
    got: list[dict] = []
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while max_messages is None or len(got) < max_messages:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                item = q.get(timeout=wait)
            except queue.Empty:
                continue
            msg = handle(*item)
            if msg is not None:
                got.append(msg)
    except KeyboardInterrupt:
        pass
    return got


def watch(host: str = "localhost", port: int | None = None, device: str = "+", prefix: str = "rgbd-edge", *,
          tls: dict | bool | None = None, username: str | None = None, password_file: str | None = None,
          json_output: bool = False, max_messages: int | None = None, timeout_s: float | None = None,
          out: TextIO | None = None, color: bool | None = None, heatmap_dir: str | os.PathLike | None = None,
          client_id: str = "", ready: threading.Event | None = None, quiet: bool = False) -> list[dict]:
    """Subscribe and print until ``max_messages`` messages (results and status, heatmaps not
    counted), ``timeout_s`` or KeyboardInterrupt. Returns the messages as dicts
    ``{"kind": "result"|"status", "device": ..., "topic": ..., "retained": bool, "payload": dict}``.
    ``ready`` is set once the subscriptions are acknowledged. Raises ConnectionError when the
    broker was never reached (its last error in the message)."""
    from .sinks.files import use_color
    from .sinks.mqtt import _import_paho

    mqtt = _import_paho()
    out = out if out is not None else sys.stdout
    if color is None:
        color = use_color(out)
    if heatmap_dir is not None:
        Path(heatmap_dir).mkdir(parents=True, exist_ok=True)
    port = port or (8883 if tls else 1883)
    topics = [f"{prefix}/{device}/result", f"{prefix}/{device}/status"]
    if heatmap_dir is not None:
        topics.append(f"{prefix}/{device}/heatmap/+")
    c = _make_client(mqtt, client_id, tls, username, password_file)
    sub = _Subscription(c, topics, f"{host}:{port}", ready, quiet)
    printer = _Printer(prefix, out, color, json_output, quiet, heatmap_dir)
    c.connect_async(host, port, keepalive=30)
    c.loop_start()
    try:
        got = _receive(sub.queue, printer.handle, max_messages, timeout_s)
    finally:
        c.disconnect()
        c.loop_stop()
    if not sub.connected_once and sub.error:
        raise ConnectionError(f"cannot connect to {host}:{port}: {sub.error}")
    return got


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="localhost", help="broker host (default localhost)")
    p.add_argument("--port", type=int, default=None, help="broker port (default 1883, 8883 with TLS)")
    p.add_argument("--device", default="+", metavar="ID|+", help="device id to watch, + for all (default)")
    p.add_argument("--prefix", default="rgbd-edge", help="topic root (default rgbd-edge; topics are "
                                                          "<prefix>/<device>/result|status)")
    g = p.add_argument_group("TLS and authentication")
    g.add_argument("--tls", action="store_true", help="use TLS (implied by --ca-file/--cert-file)")
    g.add_argument("--ca-file", help="CA certificate(s) to verify the broker (default: system store)")
    g.add_argument("--cert-file", help="client certificate (mutual TLS)")
    g.add_argument("--key-file", help="client private key")
    g.add_argument("--insecure", action="store_true", help="do not check the broker's host name")
    g.add_argument("--username")
    g.add_argument("--password-file", help="file holding the password (never on the command line)")
    p.add_argument("--json", action="store_true", help="one JSON object per message instead of text lines")
    p.add_argument("--count", type=int, default=None, metavar="N", help="exit after N result/status messages")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="exit after S seconds")
    p.add_argument("--save-heatmaps", metavar="DIR", help="also save reject heatmaps as DIR/<device>_<seq>.jpg")


def _cmd_watch(a: argparse.Namespace) -> int:
    tls = None
    if a.tls or a.ca_file or a.cert_file:
        tls = {"ca_file": a.ca_file, "cert_file": a.cert_file, "key_file": a.key_file, "insecure": a.insecure}
    for flag, f in (("--ca-file", a.ca_file), ("--cert-file", a.cert_file), ("--key-file", a.key_file),
                    ("--password-file", a.password_file)):
        if f and not Path(f).is_file():
            print(f"{PROG}: error: {flag}: file not found: {f}", file=sys.stderr)
            return 2
    if a.password_file and not a.username:
        print(f"{PROG}: error: --password-file needs --username", file=sys.stderr)
        return 2
    try:
        watch(a.host, a.port, a.device, a.prefix, tls=tls, username=a.username, password_file=a.password_file,
              json_output=a.json, max_messages=a.count, timeout_s=a.timeout, heatmap_dir=a.save_heatmaps)
    except ImportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (ssl.SSLError, ValueError) as exc:
        print(f"{PROG}: error: TLS setup failed: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `watch` on an argparse subparsers object (sets ``func``)."""
    p = subparsers.add_parser("watch", help="watch a running device's results and status",
                              description="Live view of results and status changes through the MQTT broker. "
                                          "Exit 0 on --count/--timeout/Ctrl-C, 1 when the broker was never "
                                          "reached, 2 on bad arguments.")
    _add_arguments(p)
    p.set_defaults(func=_cmd_watch)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="live view of rgbd-edge results and status via MQTT")
    _add_arguments(p)
    return _cmd_watch(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
