"""The daemon's counters: one lock, plain integers, a JSON-serialisable snapshot.

Shared by the inspector (inspections, decisions, modes, engine/preprocess/overlay errors) and the
pipeline threads (captures, drops, source errors, sinks); docs/daemon.md says what each one counts.
"""
from __future__ import annotations

import threading


class Counters:
    """Thread-safe counters; ``snapshot()`` is JSON-serialisable."""

    NAMES = (
        "frames_captured", "frames_dropped", "frames_inspected", "pass", "reject", "no_decision",
        "engine_errors", "preprocess_errors", "overlay_errors", "timeouts", "source_errors", "source_reopens",
        "results_dropped", "results_published", "sink_errors", "status_dropped", "mode_changes",
        "dropped_at_shutdown", "inspect_errors", "sink_events", "bundle_reloads", "bundle_reloads_failed",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._v = {n: 0 for n in self.NAMES}
        self._modes: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._v[name] += n

    def inc_mode(self, mode: str | None) -> None:
        with self._lock:
            k = mode or "none"
            self._modes[k] = self._modes.get(k, 0) + 1

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._v[name]

    def snapshot(self) -> dict:
        with self._lock:
            return {**self._v, "modes": dict(self._modes)}
