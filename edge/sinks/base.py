"""The :class:`Sink` protocol every result sink implements, and small helpers the sinks share
(thread-safe counters, rate-limited error logging, the events and faults a sink reports). The
sinks read their configuration sections with :class:`edge.checks.Section`, whose errors name the
dotted key.

The daemon calls, from its single sink thread::

    sink.publish(result, heatmap_jpeg=None)   # every inspected frame, in seq order
    sink.publish_status(status)               # mode changes, periodic counters, start/stop events
    sink.close(timeout_s)                     # once, at shutdown
    sink.stats()                              # any thread, any time
    sink.drain_events()                       # optional: after each publish and on each status tick

Rules: ``publish`` never blocks for long and never raises because of transport trouble (a broker
that is down, a full disk, a GPIO write error): the problem is logged and counted in ``stats()``.

Optional parts of the protocol (a sink without them is fine; the daemon uses ``getattr``):

* ``drain_events() -> list[dict]``: what happened since the last call, each a JSON-able dict with
  at least ``"event"`` (``gpio_pulse_skipped_late``, ``outbox_write_failed``, ``outbox_ok``,
  ``disk_error``, ``disk_ok``, ...) and ``"sink"``. The daemon publishes each one as a status
  message. :class:`EventQueue` implements it.
* ``stats()["health_problems"]``: short strings, one per problem that lasts (a full disk, a raised
  line-stop alarm, credentials sent in clear text); empty when the sink is healthy. :class:`Fault`
  keeps one such problem with its start and end events.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Protocol, runtime_checkable

from ..results import InspectionResult

__all__ = ["Sink", "Counters", "RateLimitedLog", "EventQueue", "Fault"]


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
        """Counters (published, failed, queued, dropped_overflow, ... depending on the sink), and
        optionally ``health_problems`` (see the module docstring)."""


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


class EventQueue:
    """The events one sink reports through ``drain_events()``. Bounded (``maxlen``): when the daemon
    does not drain it, the oldest events are dropped and counted in ``dropped``, so a sink never
    grows without limit."""

    def __init__(self, sink: str, maxlen: int = 200):
        self.sink = sink
        self._q: collections.deque = collections.deque()
        self._maxlen = maxlen
        self._lock = threading.Lock()
        self.dropped = 0

    def emit(self, event: str, **fields: Any) -> dict:
        e = {"event": event, "sink": self.sink, "ts": round(time.time(), 3), **fields}
        with self._lock:
            if len(self._q) >= self._maxlen:
                self._q.popleft()
                self.dropped += 1
            self._q.append(e)
        return e

    def drain(self) -> list[dict]:
        with self._lock:
            out = list(self._q)
            self._q.clear()
        return out


class Fault:
    """One condition that lasts (a disk that cannot be written): the first ``fail`` emits
    ``fail_event`` and logs at ERROR, the first ``ok`` after it emits ``ok_event`` and logs at
    INFO; ``problem`` is the health problem while it lasts (updated by every ``fail``)."""

    def __init__(self, events: EventQueue, fail_event: str, ok_event: str, logger: logging.Logger):
        self._events = events
        self._fail_event = fail_event
        self._ok_event = ok_event
        self._log = logger
        self._lock = threading.Lock()
        self.problem: str | None = None
        self.since: float | None = None  # time.monotonic() of the first failure
        self.failures = 0  # during the current fault

    @property
    def active(self) -> bool:
        return self.problem is not None

    def fail(self, problem: str, **fields: Any) -> bool:
        """Record a failure; True (event emitted, logged) when the fault starts with it."""
        with self._lock:
            new = self.problem is None
            self.problem = problem
            self.failures = 1 if new else self.failures + 1
            if new:
                self.since = time.monotonic()
        if new:
            self._log.error("%s", problem)
            self._events.emit(self._fail_event, problem=problem, **fields)
        return new

    def ok(self, message: str, **fields: Any) -> bool:
        """Record a success; True (event emitted, logged) when it ends the fault."""
        with self._lock:
            if self.problem is None:
                return False
            lasted = time.monotonic() - (self.since or time.monotonic())
            failures = self.failures
            self.problem, self.since, self.failures = None, None, 0
        self._log.info("%s (after %.1f s, %d failure(s))", message, lasted, failures)
        self._events.emit(self._ok_event, message=message, lasted_s=round(lasted, 1), failures=failures, **fields)
        return True
