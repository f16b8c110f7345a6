"""Local sinks: a JSONL result log and a one-line-per-result console view.

JSONL (``sinks.jsonl``): one ``InspectionResult.to_json()`` per line, written with one unbuffered
``write`` (a crash loses at most the line being written). Rotated by size, by default: when the
next line would make the file exceed ``max_bytes`` (100 MiB), ``path`` becomes ``path.1``
(``path.1`` -> ``path.2`` ... up to ``backups``, 5, the oldest deleted) and a new ``path`` is
started, so the log never takes more than about (backups + 1) x max_bytes (at 30 fps a result
line of ~600 bytes is ~1.6 GB a day: unrotated, it fills a Jetson's eMMC in days).

Disk trouble (a full disk, a read-only remount, an I/O error) never raises and never blocks the
other sinks: the result is counted (``failed``, ``write_errors``), the first failure is logged at
ERROR and reported as the event ``disk_error`` with the OS error, and the problem stays in
``stats()["health_problems"]``. Every later result retries (the file is reopened); a short write
is cut off again (the file is truncated to its last complete line) so no half line is ever
followed by the next one; the first success ends the fault (event ``disk_ok``).

Console (``sinks.console``): one line per result on stdout (journald under systemd), e.g.::

    seq 42 REJECT score 0.734 > thr 0.500 rgbd 23.1 ms frame_0042.png

``only_rejects: true`` prints only rejects and no_decision results.
"""
from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..checks import Section
from ..results import InspectionResult
from .base import Counters, EventQueue, Fault, RateLimitedLog
from .disk import describe_write_error

log = logging.getLogger("edge.sinks.files")

JSONL_KEYS = ("enabled", "path", "max_bytes", "backups", "only_rejects", "fsync")
CONSOLE_KEYS = ("enabled", "only_rejects", "color")
DEFAULT_MAX_BYTES = 100 << 20
MAX_BYTES = 1 << 40   # 1 TiB: no sane log file is larger
MAX_BACKUPS = 100


@dataclass(frozen=True)
class JsonlConfig:
    path: str
    max_bytes: int = DEFAULT_MAX_BYTES  # rotate before the file would grow past this
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
                       max_bytes=s.int("max_bytes", 1024, MAX_BYTES, default=DEFAULT_MAX_BYTES),
                       backups=s.int("backups", 0, MAX_BACKUPS, default=5),
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
        self._c = Counters("published", "failed", "rotations", "skipped", "write_errors")
        self._rl = RateLimitedLog(log, 30.0)
        self._events = EventQueue("jsonl")
        self._fault = Fault(self._events, "disk_error", "disk_ok", log)
        self._lock = threading.Lock()
        self._f = None
        self._size = 0
        self._good_size = 0  # bytes of complete lines in the current file
        self._dirty = False  # a write failed: the file may end with part of a line
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:  # at start-up a clear error beats a silent log
            raise ValueError(f"sinks.jsonl.path: cannot open {self.path} for appending: {exc}") from exc
        log.info("jsonl: appending results to %s (rotating at %d bytes, %d backups)", self.path, cfg.max_bytes,
                 cfg.backups)

    def _open(self) -> None:
        f = open(self.path, "ab", buffering=0)  # one write() per line: a short write is seen, not buffered
        try:
            size = f.seek(0, os.SEEK_END)
            if self._dirty and size > self._good_size:
                f.truncate(self._good_size)  # cut the part of a line a failed write left
                size = self._good_size
            elif size and not self._dirty and _last_byte(self.path) != b"\n":
                size += f.write(b"\n")  # a line cut off by a crash before us: our first line stays whole
        except BaseException:
            f.close()
            raise
        self._f, self._size, self._good_size, self._dirty = f, size, size, False

    def publish(self, result: InspectionResult, heatmap_jpeg: bytes | None = None) -> None:
        if self.cfg.only_rejects and result.decision == "pass":
            self._c.inc("skipped")
            return
        try:
            data = (result.to_json() + "\n").encode("utf-8")
        except Exception as exc:
            self._c.inc("failed")
            log.error("jsonl: result seq %s could not be serialised: %s", getattr(result, "seq", "?"), exc)
            return
        with self._lock:
            if self._closed:
                self._c.inc("failed")
                log.error("jsonl: result seq %s after close: not written", result.seq)
                return
            try:
                self._write_line(data)
            except OSError as exc:
                self._write_failed(exc, result.seq)
                return
            self._c.inc("published")
            self._fault.ok(f"jsonl: writing {self.path} works again", path=str(self.path),
                           write_errors=self._c["write_errors"])

    def _write_line(self, data: bytes) -> None:
        if self._f is None:
            self._open()
        if self._size and self._size + len(data) > self.cfg.max_bytes:
            self._rotate()
        self._dirty = True  # until the whole line is written
        n = self._f.write(data)
        if n != len(data):
            raise OSError(errno.ENOSPC, f"No space left on device (short write: {n or 0} of {len(data)} bytes)")
        if self.cfg.fsync:
            os.fsync(self._f.fileno())
        self._size += n
        self._good_size, self._dirty = self._size, False

    def _write_failed(self, exc: OSError, seq) -> None:
        self._c.inc("failed")
        self._c.inc("write_errors")
        condition, detail = describe_write_error(exc, self.path)
        problem = (f"jsonl: {condition}: writing {self.path} fails ({detail}); results are not logged to the "
                   f"file until it works again")
        if not self._fault.fail(problem, path=str(self.path), error=detail, condition=condition, seq=seq):
            self._rl("write", logging.ERROR, "jsonl: writing result seq %s to %s failed: %s", seq, self.path, detail)
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

    def drain_events(self) -> list[dict]:
        return self._events.drain()

    def stats(self) -> dict:
        c = self._c.snapshot()
        c["bytes"] = self._size
        c["health_problems"] = [self._fault.problem] if self._fault.problem else []
        return c

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._f is not None:
                try:
                    os.fsync(self._f.fileno())
                except OSError as exc:
                    log.error("jsonl: final flush of %s failed: %s", self.path, exc)
                self._drop_handle()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


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
