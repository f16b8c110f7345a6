"""The capture thread: read frames from the source into the capture queue.

Every frame the source delivers is counted (``frames_captured``). A frame that finds the queue
full is handled by ``queues.on_full`` (block, drop the new frame, drop the oldest queued frame);
a dropped frame is counted (``frames_dropped``) and logged, and gets no result. Read timeouts and
reopen backoff send ticks, so the inference thread keeps pinging the watchdog while the camera is
merely silent. A failing source is closed and reopened (backoff 1, 2, 4 ... s) up to
``source.reopen_attempts`` times in a row, then the run ends with exit code 5.
"""
from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..frames import Frame
from ..sources import EndOfStream, FrameTimeout
from .control import RunControl, Tick, put_blocking, put_end
from .counters import Counters
from .exits import EXIT_FATAL, EXIT_SOURCE, short_error

log = logging.getLogger("edge.daemon")


@dataclass
class CaptureLoop:
    """``run()`` is the thread's body; it always ends by putting END into ``q``, the capture queue."""

    cfg: Config
    source: Any  # an opened edge.sources Source
    q: queue.Queue
    counters: Counters
    control: RunControl
    max_frames: int | None = None  # stop (and drain) after this many frames
    _last_drop_log: float = field(default=0.0, init=False)

    @property
    def _name(self) -> str:
        return getattr(self.source, "name", "")

    def run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug here must not leave a silent, half-dead service
            self.control.set_fatal(EXIT_FATAL, f"capture thread crashed: {short_error(exc, 500)}")
        finally:
            put_end(self.q, self.control.abort, self.counters)

    def _loop(self) -> None:
        cfg, stop = self.cfg, self.control.stop
        failures = 0
        n = 0
        while not stop.is_set():
            if self.max_frames is not None and n >= self.max_frames:
                self.control.request_stop(f"--max-frames {self.max_frames} reached")
                return
            try:
                frame = self.source.read(cfg.read_timeout_s)
            except FrameTimeout:
                self.counters.inc("timeouts")
                self._put_tick("timeout")
                continue
            except EndOfStream:
                if not self._end_of_stream():
                    return
                continue
            except Exception as exc:  # SourceError, or anything a driver throws
                failures += 1
                if not self._read_failed(exc, failures):
                    return
                continue
            failures = 0
            n += 1
            self.counters.inc("frames_captured")
            if not frame.capture_time:
                frame.capture_time = time.monotonic()
            self._put_frame(frame)

    def _end_of_stream(self) -> bool:
        """Stop (``source.exit_at_end``) or reopen the finished source. True to go on reading."""
        if self.cfg.exit_at_end:
            log.info("source %s: end of stream", self._name)
            self.control.request_stop("end of stream")
            return False
        log.info("source %s: end of stream; reopening (source.exit_at_end is false)", self._name)
        return self._reopen(reason="end of stream")

    def _read_failed(self, exc: Exception, failures: int) -> bool:
        """Count and log a failed read, then reopen or give up. True to go on reading."""
        self.counters.inc("source_errors")
        log.error("source %s: read failed (%d in a row): %s", self._name, failures, short_error(exc))
        if failures > self.cfg.reopen_attempts:
            self.control.set_fatal(EXIT_SOURCE, f"source {self._name}: {failures} failures in a row, giving up "
                                                f"(systemd restarts the service)")
            return False
        return self._reopen(reason=short_error(exc), attempt=failures)

    def _reopen(self, reason: str, attempt: int = 1) -> bool:
        """Close and reopen the source after a failure (backoff 1, 2, 4 ... s). False when stopping."""
        delay = min(2.0 ** (attempt - 1), 30.0)
        try:
            self.source.close()
        except Exception as exc:
            log.warning("source close failed: %s", short_error(exc))
        if self._wait_ticking(delay if reason != "end of stream" else 0.0):
            return False
        while True:
            try:
                self.source.open()
                break
            except Exception as exc:
                self.counters.inc("source_errors")
                attempt += 1
                if attempt > self.cfg.reopen_attempts + 1:
                    self.control.set_fatal(EXIT_SOURCE, f"source {self._name} could not be reopened: "
                                                        f"{short_error(exc)}")
                    return False
                delay = min(2.0 ** (attempt - 1), 30.0)
                log.error("source reopen failed (%s); retrying in %.0f s", short_error(exc), delay)
                if self._wait_ticking(delay):
                    return False
        self.counters.inc("source_reopens")
        log.log(logging.INFO if reason == "end of stream" else logging.WARNING, "source %s reopened after: %s",
                self._name, reason)
        self._put_tick("reopened")
        return True

    def _wait_ticking(self, delay: float) -> bool:
        """Sleep ``delay`` s between reopen attempts, ticking the inference loop every read timeout
        (the backoff is ours, not a hang: the watchdog should not count it). True when stopping."""
        stop = self.control.stop
        end = time.monotonic() + delay
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return stop.is_set()
            if stop.wait(min(left, self.cfg.read_timeout_s)):
                return True
            self._put_tick("timeout")

    def _put_tick(self, kind: str) -> None:
        item = Tick(kind, time.monotonic())
        if kind == "reopened":  # must arrive: it resets the fallback's stream history
            put_blocking(self.q, item, self.control.abort)
            return
        try:
            self.q.put_nowait(item)
        except queue.Full:
            pass  # the queue holds frames: inference is busy and will ping the watchdog anyway

    def _put_frame(self, frame: Frame) -> None:
        q, policy = self.q, self.cfg.queues.on_full
        if policy == "block":
            put_blocking(q, frame, self.control.abort)
            return
        try:
            q.put_nowait(frame)
            return
        except queue.Full:
            pass
        dropped = frame
        if policy == "drop_oldest":
            try:
                dropped = q.get_nowait()  # only this thread puts, so the put below succeeds
            except queue.Empty:
                dropped = None
            q.put_nowait(frame)
        if isinstance(dropped, Frame):
            self.counters.inc("frames_dropped")
            self._log_drop(dropped)

    def _log_drop(self, frame: Frame) -> None:
        now = time.monotonic()
        total = self.counters["frames_dropped"]
        if total == 1 or now - self._last_drop_log >= self.cfg.status.interval_s:
            self._last_drop_log = now
            log.warning("capture queue full (%d): dropped frame %s (color #%s) before inference; %d dropped so "
                        "far (inference slower than the camera?)", self.cfg.queues.capture,
                        frame.name or "", frame.color_frame_number, total)
