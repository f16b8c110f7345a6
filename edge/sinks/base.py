"""The :class:`Sink` protocol every result sink implements, and small helpers the sinks share
(thread-safe counters, rate-limited error logging, configuration checking with key names).

The daemon calls, from its single sink thread::

    sink.publish(result, heatmap_jpeg=None)   # every inspected frame, in seq order
    sink.publish_status(status)               # mode changes, periodic counters, start/stop events
    sink.close(timeout_s)                     # once, at shutdown
    sink.stats()                              # any thread, any time

Rules: ``publish`` never blocks for long and never raises because of transport trouble (a broker
that is down, a full disk, a GPIO write error): the problem is logged and counted in ``stats()``.
"""
from __future__ import annotations

import difflib
import logging
import math
import threading
import time
from typing import Any, Iterable, Protocol, runtime_checkable

from ..results import InspectionResult

__all__ = ["Sink", "Counters", "RateLimitedLog", "Section"]


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


def _describe(v: Any) -> str:
    return f"{type(v).__name__} {v!r}" if not isinstance(v, str) else repr(v)


class Section:
    """Read one configuration mapping with checks; errors are ValueErrors naming the dotted key.

    >>> s = Section({"port": 1883}, "sinks.mqtt", allowed=("host", "port"))
    >>> s.int("port", 1, 65535, default=1883)
    1883
    """

    def __init__(self, d: Any, key: str, allowed: Iterable[str]):
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ValueError(f"{key}: must be a mapping, got {_describe(d)}")
        self.d = d
        self.key = key
        allowed = tuple(allowed)
        for k in d:
            if k not in allowed:
                close = difflib.get_close_matches(str(k), allowed, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"{key}.{k}: unknown key{hint}; known keys: {', '.join(allowed)}")

    def k(self, name: str) -> str:
        return f"{self.key}.{name}"

    def has(self, name: str) -> bool:
        return self.d.get(name) is not None

    def raw(self, name: str, default: Any = None) -> Any:
        v = self.d.get(name)
        return default if v is None else v

    def str(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        v = self.d.get(name)
        if v is None:
            if required:
                raise ValueError(f"{self.k(name)}: required")
            return default
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{self.k(name)}: must be a non-empty string, got {_describe(v)}")
        return v

    def bool(self, name: str, default: bool) -> bool:
        v = self.d.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise ValueError(f"{self.k(name)}: must be true or false, got {_describe(v)}")
        return v

    def int(self, name: str, lo: int, hi: int, default: int | None = None, required: bool = False) -> int | None:
        v = self.d.get(name)
        if v is None:
            if required:
                raise ValueError(f"{self.k(name)}: required")
            return default
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"{self.k(name)}: must be an integer from {lo} to {hi}, got {_describe(v)}")
        return v

    def number(self, name: str, lo: float, hi: float, default: float | None = None,
               lo_open: bool = False) -> float | None:
        v = self.d.get(name)
        if v is None:
            return default
        ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
              and (v > lo if lo_open else v >= lo) and v <= hi)
        if not ok:
            rng = f"{'>' if lo_open else '>='} {lo:g} and <= {hi:g}"
            raise ValueError(f"{self.k(name)}: must be a number {rng}, got {_describe(v)}")
        return float(v)

    def choice(self, name: str, allowed: Iterable[Any], default: Any) -> Any:
        allowed = tuple(allowed)
        v = self.d.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or v not in allowed:  # (True == 1: a bool is never a valid choice here)
            close = difflib.get_close_matches(str(v), [str(a) for a in allowed], n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"{self.k(name)}: must be one of {', '.join(map(str, allowed))}, "
                             f"got {_describe(v)}{hint}")
        return v
