"""What the pipeline threads share besides the counters: the stop/abort flags and the first fatal
error (``RunControl``), the items that travel the queues besides frames and results (``END``,
``Tick``), and the blocking puts that give up when the run is aborted.

Stop means: capture stops, queued frames are still inspected and their results published (the
drain). Abort means: stop now, skip the drain (a second signal, a crashed thread, a drain that
takes too long).
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

from ..frames import Frame
from .counters import Counters

log = logging.getLogger("edge.daemon")

POLL_S = 0.2  # how often a blocked thread looks at the stop/abort flags

END = object()  # end of stream marker, capture -> inference -> sinks


@dataclass
class Tick:
    """A non-frame event from capture (not a frame: no result, no sequence number)."""

    kind: str  # "timeout" (read timed out) | "reopened" (source reopened: forget stream history)
    time: float


class RunControl:
    """Stop, abort and the first fatal error, shared by the threads (thread-safe)."""

    def __init__(self) -> None:
        self.stop = threading.Event()   # stop capturing, then drain
        self.abort = threading.Event()  # stop now: skip the drain (second signal, fatal error)
        self.end_reason: str | None = None
        self.fatal: tuple[int, str] | None = None  # (exit code, message) of the first fatal error
        self._lock = threading.Lock()

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop capturing; queued frames are still inspected and published."""
        if not self.stop.is_set():
            self.end_reason = self.end_reason or reason
        self.stop.set()

    def set_fatal(self, code: int, message: str) -> None:
        """Record the first fatal error (its code becomes the exit code), log it, stop."""
        with self._lock:
            if self.fatal is None:
                self.fatal = (code, message)
        log.error("%s", message)
        self.request_stop(message)


def until_end(q: queue.Queue) -> Iterator:
    """The items of ``q`` up to the END marker. Waits as long as the queue stays empty: a consumer
    that gets nothing does nothing (an inference thread that gets no frames pings no watchdog)."""
    while True:
        try:
            item = q.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if item is END:
            return
        yield item


def put_blocking(q: queue.Queue, item, abort: threading.Event) -> bool:
    """Put ``item``, waiting for room as long as it takes; False when the run was aborted first."""
    while True:
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            if abort.is_set():
                return False


def put_end(q: queue.Queue, abort: threading.Event, counters: Counters) -> None:
    """Put the END marker. When aborted and the consumer is not draining, make room by discarding
    queued items (frames and results count as ``dropped_at_shutdown``)."""
    while True:
        try:
            q.put(END, timeout=POLL_S)
            return
        except queue.Full:
            if abort.is_set():
                try:
                    item = q.get_nowait()
                    if isinstance(item, Frame) or (isinstance(item, tuple) and item[0] == "result"):
                        counters.inc("dropped_at_shutdown")
                except queue.Empty:
                    pass
