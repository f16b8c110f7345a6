"""Local sinks: a JSONL result log and a one-line-per-result console view.

JSONL (``sinks.jsonl``): one ``InspectionResult.to_json()`` per line, flushed after every line
(a crash loses at most the line being written). Optional rotation by size: when the next line
would make the file exceed ``max_bytes``, ``path`` becomes ``path.1`` (``path.1`` -> ``path.2``
... up to ``backups``, the oldest deleted) and a new ``path`` is started. Write errors (disk
full) are logged, counted in ``failed`` and retried on the next result (the file is reopened);
they never raise.

Console (``sinks.console``): one line per result on stdout (journald under systemd), e.g.::

    seq 42 REJECT score 0.734 > thr 0.500 rgbd 23.1 ms frame_0042.png

``only_rejects: true`` prints only rejects and no_decision results.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..checks import Section
from ..results import InspectionResult
from .base import Counters, RateLimitedLog

log = logging.getLogger("edge.sinks.files")

JSONL_KEYS = ("enabled", "path", "max_bytes", "backups", "only_rejects", "fsync")
CONSOLE_KEYS = ("enabled", "only_rejects", "color")


@dataclass(frozen=True)
class JsonlConfig:
    path: str
    max_bytes: int | None = None  # None: no rotation
    backups: int = 5
    only_rejects: bool = False
    fsync: bool = False           # fsync after every line (power-cut safe, slower)


@dataclass(frozen=True)
class ConsoleConfig:
    only_rejects: bool = False
    color: str = "auto"           # auto (when stdout is a TTY and NO_COLOR is unset) | always | never


def parse_jsonl_config(d: Any, key: str = "sinks.jsonl") -> JsonlConfig:
    s = Section(d, key, JSONL_KEYS)
    return JsonlConfig(path=s.str("path", required=True),
                       max_bytes=s.int("max_bytes", 1024, 2 ** 50, default=None),
                       backups=s.int("backups", 0, 1000, default=5),
                       only_rejects=s.bool("only_rejects", False),
                       fsync=s.bool("fsync", False))


def parse_console_config(d: Any, key: str = "sinks.console") -> ConsoleConfig:
    s = Section(d, key, CONSOLE_KEYS)
    return ConsoleConfig(only_rejects=s.bool("only_rejects", False),
                         color=s.choice("color", ("auto", "always", "never"), "auto"))


class JsonlSink:
    name = "jsonl"

    def __init__(self, cfg: JsonlConfig):
        self.cfg = cfg
        self.path = Path(os.path.expanduser(cfg.path))
        self._c = Counters("published", "failed", "rotations", "skipped")
        self._rl = RateLimitedLog(log, 30.0)
        self._lock = threading.Lock()
        self._f = None
        self._size = 0
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:  # at start-up a clear error beats a silent log
            raise ValueError(f"sinks.jsonl.path: cannot open {self.path} for appending: {exc}") from exc
        log.info("jsonl: appending results to %s%s", self.path,
                 f" (rotating at {cfg.max_bytes} bytes, {cfg.backups} backups)" if cfg.max_bytes else "")

    def _open(self) -> None:
        self._f = open(self.path, "a", encoding="utf-8")
        self._size = self._f.tell()

    def publish(self, result: InspectionResult, heatmap_jpeg: bytes | None = None) -> None:
        if self.cfg.only_rejects and result.decision == "pass":
            self._c.inc("skipped")
            return
        try:
            line = result.to_json() + "\n"
        except Exception as exc:
            self._c.inc("failed")
            log.error("jsonl: result seq %s could not be serialised: %s", getattr(result, "seq", "?"), exc)
            return
        data = line.encode("utf-8")
        with self._lock:
            if self._closed:
                self._c.inc("failed")
                log.error("jsonl: result seq %s after close: not written", result.seq)
                return
            try:
                if self._f is None:
                    self._open()
                if self.cfg.max_bytes and self._size and self._size + len(data) > self.cfg.max_bytes:
                    self._rotate()
                self._f.write(line)
                self._f.flush()
                if self.cfg.fsync:
                    os.fsync(self._f.fileno())
                self._size += len(data)
                self._c.inc("published")
            except OSError as exc:
                self._c.inc("failed")
                self._rl("write", logging.ERROR, "jsonl: writing result seq %s to %s failed: %s", result.seq,
                         self.path, exc)
                self._drop_handle()

    def _drop_handle(self) -> None:
        try:
            if self._f is not None:
                self._f.close()
        except OSError:
            pass
        self._f = None

    def _rotate(self) -> None:
        self._drop_handle()
        n = self.cfg.backups
        if n == 0:
            self.path.unlink(missing_ok=True)
        else:
            oldest = self.path.with_name(f"{self.path.name}.{n}")
            oldest.unlink(missing_ok=True)
            for i in range(n - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._c.inc("rotations")
        self._open()

    def publish_status(self, status: dict) -> None:
        pass  # the file holds results only (one schema per line)

    def stats(self) -> dict:
        c = self._c.snapshot()
        c["bytes"] = self._size
        return c

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._f is not None:
                try:
                    self._f.flush()
                    os.fsync(self._f.fileno())
                except OSError as exc:
                    log.error("jsonl: final flush of %s failed: %s", self.path, exc)
                self._drop_handle()


_COLORS = {"reject": "\033[1;31m", "pass": "\033[32m", "no_decision": "\033[33m"}
_RESET = "\033[0m"


def use_color(stream: TextIO, mode: str = "auto") -> bool:
    if mode != "auto":
        return mode == "always"
    try:
        return stream.isatty() and not os.environ.get("NO_COLOR")
    except (AttributeError, ValueError):
        return False


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_result(r: dict, color: bool = False, device: bool = False) -> str:
    """One line for a result dict (InspectionResult.to_dict() or the parsed MQTT JSON)."""
    decision = str(r.get("decision", "?"))
    word = decision.upper()
    if color:
        word = f"{_COLORS.get(decision, '')}{word}{_RESET}"
    score, thr = r.get("score"), r.get("threshold")
    rel = ">" if (score is not None and thr is not None and score > thr) else "<="
    lat = (r.get("latency") or {}).get("total_ms")
    parts = []
    if device:
        parts.append(str(r.get("device_id", "?")))
    parts += [f"seq {r.get('seq', '?')}", word, f"score {_num(score)} {rel} thr {_num(thr)}",
              str(r.get("mode") or "none"), "-" if lat is None else f"{lat:.1f} ms"]
    if r.get("frame_name"):
        parts.append(str(r["frame_name"]))
    if decision == "no_decision" and r.get("reason"):
        parts.append(f"({r['reason']})")
    return " ".join(parts)


class ConsoleSink:
    name = "console"

    def __init__(self, cfg: ConsoleConfig, stream: TextIO | None = None):
        self.cfg = cfg
        self._stream = stream
        self._c = Counters("published", "skipped", "failed")

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def _print(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # closed or broken stdout: count, never raise
            self._c.inc("failed")
            return

    def publish(self, result: InspectionResult, heatmap_jpeg: bytes | None = None) -> None:
        if self.cfg.only_rejects and result.decision == "pass":
            self._c.inc("skipped")
            return
        self._print(format_result(result.to_dict(), color=use_color(self.stream, self.cfg.color)))
        self._c.inc("published")

    def publish_status(self, status: dict) -> None:
        event = status.get("event")
        if event in (None, "status"):
            return  # periodic counters: the daemon logs them itself
        extra = " ".join(f"{k}={status[k]}" for k in ("mode", "previous", "reason", "exit_code", "error")
                         if status.get(k) is not None)
        self._print(f"status {status.get('state', '?')} {event} {extra}".rstrip())

    def stats(self) -> dict:
        return self._c.snapshot()

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass
