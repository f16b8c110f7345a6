"""The :class:`Sink` protocol every result sink implements, and small helpers the sinks share
(thread-safe counters, rate-limited error logging). The sinks read their configuration sections
with :class:`edge.checks.Section`, whose errors name the dotted key.

The daemon calls, from its single sink thread::

    sink.publish(result, heatmap_jpeg=None)   # every inspected frame, in seq order
    sink.publish_status(status)               # mode changes, periodic counters, start/stop events
    sink.close(timeout_s)                     # once, at shutdown
    sink.stats()                              # any thread, any time

Rules: ``publish`` never blocks for long and never raises because of transport trouble (a broker
that is down, a full disk, a GPIO write error): the problem is logged and counted in ``stats()``.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol, runtime_checkable

from ..results import InspectionResult

__all__ = ["Sink", "Counters", "RateLimitedLog"]


@runtime_checkable
class Sink(Protocol):
    name: str

    def publish(self, result: InspectionResult, heatmap_jpeg: bytes | None = None) -> None:
        """Hand over one result (and the reject overlay JPEG, if any). Never blocks long; never
        raises on transport trouble (it is counted instead)."""

    def publish_status(self, status: dict) -> None:
        """Daemon status/health (mode changes, counters, start/stop). May be a no-op."""

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout_s``, then release resources. Idempotent."""

    def stats(self) -> dict:
        """Counters (published, failed, queued, dropped_overflow, ... depending on the sink)."""


class Counters:
    """A dict of integer counters safe to update from several threads."""

    def __init__(self, *names: str):
        self._lock = threading.Lock()
        self._c: dict[str, int] = {n: 0 for n in names}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._c[name] = self._c.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._c.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._c)


class RateLimitedLog:
    """Log a recurring problem at most once per ``every_s`` (the first occurrence always), with
    the number of occurrences since the last line, so a long outage cannot flood journald."""

    def __init__(self, logger: logging.Logger, every_s: float = 30.0):
        self._log = logger
        self._every = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._every:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
        if n:
            msg = f"{msg} ({n} more since the last report)"
        self._log.log(level, msg, *args)

    def reset(self, key: str) -> None:
        with self._lock:
            self._last.pop(key, None)
            self._suppressed.pop(key, None)
