"""GPIO reject pulse: drive an output line active for ``pulse_ms``, ``delay_ms`` after the
rejected part was *captured* (the part travels from the camera to the ejector meanwhile); and a
line-stop alarm line when a pulse would come too late to hit its part.

Timing (docs/results.md, "GPIO timing"):

* The pulse starts at ``capture + delay_ms`` and ends ``pulse_ms`` later, on the
  ``time.monotonic()`` clock. ``capture`` is the frame's monotonic capture time: pass it as
  ``publish(result, capture_monotonic=t)`` when known; otherwise (the daemon's plain
  ``publish(result, jpeg)``) it is reconstructed from the result at publish time as
  ``now_mono - (now_wall - result.wall_time) - result.latency.total_ms / 1000``: ``wall_time`` is
  when the result was made and ``latency.total_ms`` is capture -> result on the monotonic clock,
  so only the few milliseconds between making and publishing the result are measured on the wall
  clock (a wall-clock step larger than 10 s in that window is detected: then only
  ``latency.total_ms`` is used, counted in ``clock_steps``).
* A scheduler thread sets the line; overlapping (or touching) pulses merge into one longer pulse
  (``merged``).
* **Bounded lateness.** A pulse that starts late by at most the lateness limit fires at once with
  its full width (``late``). The limit is ``max_late_ms``, or by default ``max_late_fraction``
  (0.5) x ``pulse_ms``: ``pulse_ms`` is the time the part is in front of the ejector, so a pulse
  that starts more than half of it late would graze its part at best, or hit the next one. Later
  than the limit (decided when the result arrives, and again when the scheduler rises the line,
  in case it woke late) the pulse is skipped: counted in ``skipped_too_late``, logged at ERROR,
  reported as the event ``gpio_pulse_skipped_late`` (``drain_events()``), and the **alarm** is
  raised.
* **Alarm.** ``alarm: {line, active_high, latch, hold_ms}`` names a second output on the same
  backend (and chip) wired to the line's stop input. Raised on every skipped pulse; with
  ``latch: true`` (default) it stays active until the daemon stops (the line is released at
  close) or :meth:`GpioSink.clear_alarm` is called; with ``latch: false`` it drops ``hold_ms``
  after the last skip. Without an alarm line the skip is still counted, published and a health
  problem, and a WARNING at start says that nothing stops the line.
* Only ``decision == "reject"`` pulses (and ``no_decision`` with ``on_no_decision: true``).

Backends: edge/sinks/gpio_backends.py (``jetson``, ``gpiod``, ``simulated``); the alarm line uses
the same kind as the reject line.
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..checks import Section
from ..results import InspectionResult
from .base import Counters, EventQueue, RateLimitedLog
from .gpio_backends import BACKENDS, GpiodBackend, JetsonBackend, SimulatedBackend, make_line  # noqa: F401

log = logging.getLogger("edge.sinks.gpio")

GPIO_KEYS = ("enabled", "backend", "pin", "line", "chip", "active_high", "delay_ms", "pulse_ms", "on_no_decision",
             "max_late_ms", "max_late_fraction", "alarm", "consumer")
ALARM_KEYS = ("pin", "line", "active_high", "latch", "hold_ms")
COUNTERS = ("published", "requested", "pulses", "merged", "late", "skipped_too_late", "cancelled", "errors",
            "clock_steps", "alarms", "alarm_clears")
CLOCK_STEP_S = 10.0
MAX_LINE = 65535          # line offsets and BOARD pins are far below
MAX_MS = 60_000.0         # delays, widths and lateness: a minute is already far beyond any conveyor
DEFAULT_MAX_LATE_FRACTION = 0.5


@dataclass(frozen=True)
class AlarmConfig:
    line: int | str
    active_high: bool = True
    latch: bool = True         # stay active until the daemon stops or clear_alarm()
    hold_ms: float = 5000.0    # without latch: active this long after the last skipped pulse


@dataclass(frozen=True)
class GpioConfig:
    backend: str = "jetson"
    line: int | str | None = None   # Jetson.GPIO: BOARD pin number; gpiod: line offset (or line name)
    chip: str = "/dev/gpiochip0"    # gpiod only (the alarm line is on the same chip)
    active_high: bool = True
    delay_ms: float = 0.0           # capture -> pulse start
    pulse_ms: float = 50.0
    on_no_decision: bool = False
    max_late_ms: float | None = None  # None: max_late_fraction x pulse_ms
    max_late_fraction: float = DEFAULT_MAX_LATE_FRACTION
    alarm: AlarmConfig | None = None
    consumer: str = "rgbd-edge"     # gpiod consumer label (shown by gpioinfo)

    @property
    def late_limit_ms(self) -> float:
        """How late a pulse may start and still fire."""
        return self.max_late_ms if self.max_late_ms is not None else self.max_late_fraction * self.pulse_ms


def _parse_line(s: Section, backend: str, required: bool) -> int | str | None:
    if s.has("pin") and s.has("line"):
        raise s.fail("pin", "give either pin or line, not both")
    name = "pin" if s.has("pin") else "line"
    line = s.raw(name)
    if line is None:
        if required:
            raise s.fail("pin" if backend == "jetson" else "line", f"required for backend {backend}")
        return None
    if isinstance(line, bool) or not isinstance(line, (int, str)) or (isinstance(line, int)
                                                                       and not 0 <= line <= MAX_LINE):
        raise s.fail(name, f"must be a non-negative integer up to {MAX_LINE} (or a line name), got {line!r}")
    if isinstance(line, str) and (not line.strip() or len(line) > 64):
        raise s.fail(name, "a line name must have 1 to 64 characters")
    return line


def _parse_alarm(d: Any, key: str, backend: str, reject_line: int | str) -> AlarmConfig | None:
    if d is None or d is False:
        return None
    s = Section({} if d is True else d, key, ALARM_KEYS)
    line = _parse_line(s, backend, required=True)
    if line == reject_line:
        raise s.fail("pin" if s.has("pin") else "line", f"must differ from the reject line ({reject_line!r})")
    return AlarmConfig(line=line, active_high=s.bool("active_high", True), latch=s.bool("latch", True),
                       hold_ms=s.number("hold_ms", 0.0, 600_000.0, default=5000.0, lo_open=True))


def parse_gpio_config(d: Any, key: str = "sinks.gpio") -> GpioConfig:
    s = Section(d, key, GPIO_KEYS)
    backend = s.choice("backend", BACKENDS, "jetson")
    line = _parse_line(s, backend, required=backend != "simulated")
    line = 0 if line is None else line
    if s.has("max_late_ms") and s.has("max_late_fraction"):
        raise s.fail("max_late_fraction", "give either max_late_ms (absolute) or max_late_fraction (of pulse_ms)")
    return GpioConfig(
        backend=backend, line=line, chip=s.str("chip", "/dev/gpiochip0"),
        active_high=s.bool("active_high", True),
        delay_ms=s.number("delay_ms", 0.0, MAX_MS, default=0.0),
        pulse_ms=s.number("pulse_ms", 0.0, MAX_MS, default=50.0, lo_open=True),
        on_no_decision=s.bool("on_no_decision", False),
        max_late_ms=s.number("max_late_ms", 0.0, MAX_MS, default=None, lo_open=True),
        max_late_fraction=s.number("max_late_fraction", 0.0, 1.0, default=DEFAULT_MAX_LATE_FRACTION, lo_open=True),
        alarm=_parse_alarm(s.d.get("alarm"), f"{key}.alarm", backend, line),
        consumer=s.str("consumer", "rgbd-edge"),
    )


def make_backend(cfg: GpioConfig):
    """The reject line."""
    return make_line(cfg.backend, cfg.line, cfg.active_high, cfg.chip, cfg.consumer)


def make_alarm_backend(cfg: GpioConfig):
    """The alarm line (same backend kind and chip), or None without one."""
    if cfg.alarm is None:
        return None
    return make_line(cfg.backend, cfg.alarm.line, cfg.alarm.active_high, cfg.chip, f"{cfg.consumer}-alarm")


# --------------------------------------------------------------------------- sink


def capture_monotonic_of(result: InspectionResult, now_mono: float | None = None,
                         now_wall: float | None = None) -> tuple[float, bool]:
    """The result's capture time on the monotonic clock, reconstructed at publish time (see the
    module docstring). Returns (time, clock_step_detected)."""
    now_mono = time.monotonic() if now_mono is None else now_mono
    now_wall = time.time() if now_wall is None else now_wall
    total_s = max(0.0, float(result.latency.total_ms or 0.0)) / 1000.0
    since_result = now_wall - result.wall_time if result.wall_time else 0.0
    step = not (0.0 <= since_result <= CLOCK_STEP_S) and bool(result.wall_time)
    if step:
        since_result = 0.0
    return now_mono - since_result - total_s, step


@dataclass
class _Pulse:
    start: float
    end: float
    seq: int | None


_DONE = object()  # the scheduler's step: stop the thread


class GpioSink:
    """See the module docstring. ``backend`` and ``alarm_backend`` may be injected (tests);
    ``.backend`` and ``.alarm_backend`` expose them.

    The scheduler thread reads the time from ``clock`` and sleeps in ``condition.wait(timeout)``:
    a test injects both (a clock it advances and a condition whose timed waits end on that clock)
    to run the schedule in virtual time, with no wall-clock sleeps."""

    name = "gpio"

    def __init__(self, cfg: GpioConfig, backend=None, clock: Callable[[], float] = time.monotonic,
                 condition: threading.Condition | None = None, alarm_backend=None):
        self.cfg = cfg
        self._clock = clock
        self.backend = backend if backend is not None else make_backend(cfg)
        self.alarm_backend = alarm_backend if alarm_backend is not None else make_alarm_backend(cfg)
        self._c = Counters(*COUNTERS)
        self._rl = RateLimitedLog(log, 30.0)
        self._events = EventQueue("gpio")
        self._cv = condition if condition is not None else threading.Condition()
        self._pending: list[_Pulse] = []  # sorted by start, all after _active_until
        self._active_until: float | None = None
        self._alarm_on = False
        self._alarm_until: float | None = None  # without latch: when the alarm drops
        self._last_skip: dict | None = None
        self._write_failed = False
        self._stop = False
        self._drain_until: float | None = None
        self._max_start_error = 0.0
        self._closed = False
        self._open_lines()  # may raise: the daemon reports it at start-up
        self._thread = threading.Thread(target=self._run, name="gpio-pulses", daemon=True)
        self._thread.start()
        log.info("gpio: %s line %s (active %s), pulse %.0f ms, %.0f ms after capture, on %s; a pulse later than "
                 "%.1f ms is skipped", self.backend.kind, cfg.line, "high" if cfg.active_high else "low", cfg.pulse_ms,
                 cfg.delay_ms, "reject and no_decision" if cfg.on_no_decision else "reject", cfg.late_limit_ms)
        if self.alarm_backend is None:
            log.warning("gpio: no alarm output wired (sinks.gpio.alarm): a reject pulse skipped because it would come "
                        "too late is only counted and reported (status event, health); nothing stops the line")
        else:
            a = cfg.alarm
            log.info("gpio: line-stop alarm on line %s (active %s), %s", a.line, "high" if a.active_high else "low",
                     "latched until the daemon stops" if a.latch else f"held {a.hold_ms:.0f} ms after a skip")

    def _open_lines(self) -> None:
        self.backend.open()
        if self.alarm_backend is None:
            return
        try:
            self.alarm_backend.open()
        except BaseException:
            self.backend.close()
            raise

    # ------------------------------------------------------------------ Sink API

    def publish(self, result: InspectionResult, heatmap_jpeg: bytes | None = None, *,
                capture_monotonic: float | None = None) -> None:
        self._c.inc("published")
        if result.decision == "reject" or (result.decision == "no_decision" and self.cfg.on_no_decision):
            if capture_monotonic is None:
                capture_monotonic, step = capture_monotonic_of(result, self._clock())
                if step:
                    self._c.inc("clock_steps")
                    self._rl("clock", logging.WARNING, "gpio: wall clock stepped while result seq %s was "
                             "queued: timing the pulse from latency.total_ms only", result.seq)
            self.trigger(capture_monotonic, seq=result.seq)

    def trigger(self, capture_monotonic: float, seq: int | None = None) -> bool:
        """Schedule one pulse for a part captured at ``capture_monotonic``. False if skipped."""
        cfg = self.cfg
        start = capture_monotonic + cfg.delay_ms / 1000.0
        width = cfg.pulse_ms / 1000.0
        with self._cv:
            now = self._clock()
            if self._closed or self._stop:
                self._c.inc("cancelled")
                log.error("gpio: reject seq %s after close: NO pulse", seq)
                return False
            self._c.inc("requested")
            if start < now:
                late_ms = (now - start) * 1000.0
                if late_ms > cfg.late_limit_ms:
                    self._skip_locked(seq, late_ms, "the result arrived too late")
                    return False
                self._c.inc("late")
                self._rl("late", logging.WARNING, "gpio: reject seq %s: pulse %.0f ms late, fired now "
                         "(delay_ms %.0f is shorter than capture -> decision)", seq, late_ms, cfg.delay_ms)
                start = now
            self._add_locked(_Pulse(start, start + width, seq))
            self._cv.notify()
        return True

    def _add_locked(self, p: _Pulse) -> None:
        """Into the active pulse when it overlaps or touches it, else into the sorted schedule
        (pulses merge when the first of them rises: :meth:`_absorb_locked`)."""
        if self._active_until is not None and p.start <= self._active_until:
            self._active_until = max(self._active_until, p.end)
            self._c.inc("merged")
            self._absorb_locked()
            return
        bisect.insort(self._pending, p, key=lambda q: q.start)

    def _absorb_locked(self) -> None:
        """Pending pulses that start before the active one ends become part of it."""
        while self._pending and self._active_until is not None and self._pending[0].start <= self._active_until:
            p = self._pending.pop(0)
            self._active_until = max(self._active_until, p.end)
            self._c.inc("merged")

    def _skip_locked(self, seq: int | None, late_ms: float, why: str) -> None:
        cfg = self.cfg
        self._c.inc("skipped_too_late")
        wired = self.alarm_backend is not None
        self._raise_alarm_locked()
        self._last_skip = {"seq": seq, "late_ms": round(late_ms, 1), "max_late_ms": round(cfg.late_limit_ms, 3)}
        log.error("gpio: reject seq %s is %.0f ms late (> %.1f ms, %s): NO pulse, the part has passed the ejector; "
                  "%s", seq, late_ms, cfg.late_limit_ms, why,
                  f"line-stop alarm raised on line {cfg.alarm.line}" if wired else
                  "no alarm output wired (sinks.gpio.alarm): nothing stops the line")
        self._events.emit("gpio_pulse_skipped_late", seq=seq, late_ms=round(late_ms, 1),
                          max_late_ms=round(cfg.late_limit_ms, 3), delay_ms=cfg.delay_ms, pulse_ms=cfg.pulse_ms,
                          why=why, alarm="raised" if wired else "not wired",
                          skipped_too_late=self._c["skipped_too_late"])

    # ------------------------------------------------------------------ alarm

    def _raise_alarm_locked(self) -> None:
        a = self.cfg.alarm
        if a is not None and not a.latch:
            self._alarm_until = self._clock() + a.hold_ms / 1000.0
            self._cv.notify()  # the scheduler drops it when the hold ends
        if self._alarm_on:
            return
        self._alarm_on = True
        self._c.inc("alarms")
        if self.alarm_backend is not None:
            self._write(self.alarm_backend, True)

    def clear_alarm(self, who: str = "operator") -> bool:
        """Drop the alarm (True if it was raised). Logged and reported as ``gpio_alarm_cleared``."""
        with self._cv:
            if not self._alarm_on:
                return False
            self._lower_alarm_locked()
        log.warning("gpio: line-stop alarm cleared by %s", who)
        self._events.emit("gpio_alarm_cleared", by=who, skipped_too_late=self._c["skipped_too_late"])
        self._c.inc("alarm_clears")
        return True

    def _lower_alarm_locked(self) -> None:
        self._alarm_on = False
        self._alarm_until = None
        if self.alarm_backend is not None:
            self._write(self.alarm_backend, False)

    @property
    def alarm_active(self) -> bool:
        return self._alarm_on

    # ------------------------------------------------------------------ reporting

    def publish_status(self, status: dict) -> None:
        pass

    def drain_events(self) -> list[dict]:
        return self._events.drain()

    def health_problems(self) -> list[str]:
        out = []
        with self._cv:
            on, last = self._alarm_on, self._last_skip
        if on and last is not None:
            where = (f"line-stop alarm raised on line {self.cfg.alarm.line}" if self.alarm_backend is not None
                     else "no alarm output wired")
            out.append(f"gpio: {self._c['skipped_too_late']} reject pulse(s) skipped as too late (last: seq "
                       f"{last['seq']}, {last['late_ms']:.0f} ms > {last['max_late_ms']:g} ms); {where}")
        if self._write_failed:
            out.append(f"gpio: the last write to a GPIO line failed ({self._c['errors']} error(s)): its state is unknown")
        return out

    def stats(self) -> dict:
        c = self._c.snapshot()
        with self._cv:
            c["scheduled"] = len(self._pending)
            c["active"] = self._active_until is not None
            c["alarm_active"] = self._alarm_on
        c["max_start_error_ms"] = round(self._max_start_error * 1000.0, 2)
        c["max_late_ms"] = round(self.cfg.late_limit_ms, 3)
        c["backend"] = self.backend.kind
        c["alarm_wired"] = self.alarm_backend is not None
        c["health_problems"] = self.health_problems()
        return c

    def close(self, timeout_s: float = 5.0) -> None:
        """Fire the pulses due within ``timeout_s`` (those parts are still on the conveyor), cancel
        the rest (counted, logged), leave the lines inactive and release them (the alarm too)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._drain_until = self._clock() + max(0.0, timeout_s)
            self._cv.notify()
        self._thread.join(timeout=max(0.0, timeout_s) + 1.0)
        with self._cv:
            self._stop = True
            n = len(self._pending)
            self._pending = []
            self._cv.notify()
        if n:
            self._c.inc("cancelled", n)
            log.error("gpio: %d scheduled reject pulse(s) cancelled at close (due later than %.1f s)", n, timeout_s)
        self._thread.join(timeout=1.0)
        for b in (self.backend, self.alarm_backend):
            if b is None:
                continue
            try:
                b.close()
            except Exception as exc:
                self._c.inc("errors")
                log.error("gpio: release of line %s failed: %s", b.line if hasattr(b, "line") else b.pin, exc)
        if self._alarm_on and self.alarm_backend is not None:
            log.warning("gpio: line-stop alarm released at close (%d pulse(s) were skipped)",
                        self._c["skipped_too_late"])

    # ------------------------------------------------------------------ scheduler thread

    def _write(self, line, active: bool) -> None:
        try:
            line.set(active)
            self._write_failed = False
        except Exception as exc:  # keep scheduling; the line state is unknown: count and say so
            self._write_failed = True
            self._c.inc("errors")
            name = "alarm" if line is self.alarm_backend else "reject"
            self._rl(f"write-{name}", logging.ERROR, "gpio: setting the %s line %s %s failed: %s", name,
                     self.cfg.alarm.line if name == "alarm" else self.cfg.line,
                     "active" if active else "inactive", exc)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("gpio: scheduler thread crashed: no more reject pulses")
            self._c.inc("errors")
        finally:
            with self._cv:
                was_active = self._active_until is not None
                self._active_until = None
            if was_active:
                self._write(self.backend, False)

    def _loop(self) -> None:
        with self._cv:
            while True:
                now = self._clock()
                if self._stop:
                    return
                if self._alarm_until is not None and now >= self._alarm_until:
                    self._lower_alarm_locked()
                    log.warning("gpio: line-stop alarm dropped after hold_ms %.0f", self.cfg.alarm.hold_ms)
                    continue
                wait = self._step_locked(now)
                if wait is _DONE:
                    return
                if wait == 0.0:
                    continue
                if self._alarm_until is not None:
                    wait = self._alarm_until - now if wait is None else min(wait, self._alarm_until - now)
                self._cv.wait(wait)

    def _step_locked(self, now: float):
        """One scheduling step: 0.0 to step again at once, a time to sleep, None to sleep until
        notified, or _DONE."""
        if self._active_until is not None:
            if now < self._active_until:
                return self._active_until - now
            self._write(self.backend, False)
            self._active_until = None
            return 0.0
        if not self._pending:
            return _DONE if self._drain_until is not None else None
        p = self._pending[0]  # the earliest
        if self._drain_until is not None and p.start > self._drain_until:
            return _DONE  # the rest is cancelled by close()
        if now < p.start:
            return p.start - now
        self._pending.pop(0)
        late_ms = (now - p.start) * 1000.0
        if late_ms > self.cfg.late_limit_ms:  # this thread woke too late (an overloaded CPU)
            self._skip_locked(p.seq, late_ms, "the scheduler woke too late")
            return 0.0
        self._write(self.backend, True)
        self._c.inc("pulses")
        self._max_start_error = max(self._max_start_error, now - p.start)
        # The full width from the actual rise (never before `start`, so never before `end`): a late
        # wake-up on a loaded CPU must not shorten the pulse.
        self._active_until = self._clock() + max(p.end - p.start, 1e-4)
        self._absorb_locked()
        return 0.0
