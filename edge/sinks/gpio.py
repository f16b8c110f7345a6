"""GPIO reject pulse: drive an output line active for ``pulse_ms``, ``delay_ms`` after the
rejected part was *captured* (the part travels from the camera to the ejector meanwhile).

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
  (``merged``). A pulse whose start has already passed fires immediately with its full width and is
  counted ``late`` (or skipped and counted ``skipped_too_late`` when it is later than the optional
  ``max_late_ms``: firing then would eject the wrong part).
* Only ``decision == "reject"`` pulses (and ``no_decision`` with ``on_no_decision: true``).

Backends: ``jetson`` (Jetson.GPIO, BOARD pin numbering), ``gpiod`` (libgpiod v2 Python API,
``gpiod.request_lines`` on a chip path and line offset), ``simulated`` (records timed edges; for
tests and dry runs). The real backends import their library when the sink is created; they can
only run on the device (no /dev/gpiochip here), see docs/results.md.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..checks import Section
from ..results import InspectionResult
from .base import Counters, RateLimitedLog

log = logging.getLogger("edge.sinks.gpio")

BACKENDS = ("jetson", "gpiod", "simulated")
GPIO_KEYS = ("enabled", "backend", "pin", "line", "chip", "active_high", "delay_ms", "pulse_ms", "on_no_decision",
             "max_late_ms", "consumer")
COUNTERS = ("published", "requested", "pulses", "merged", "late", "skipped_too_late", "cancelled", "errors",
            "clock_steps")
CLOCK_STEP_S = 10.0


@dataclass(frozen=True)
class GpioConfig:
    backend: str = "jetson"
    line: int | str | None = None   # Jetson.GPIO: BOARD pin number; gpiod: line offset (or line name)
    chip: str = "/dev/gpiochip0"    # gpiod only
    active_high: bool = True
    delay_ms: float = 0.0           # capture -> pulse start
    pulse_ms: float = 50.0
    on_no_decision: bool = False
    max_late_ms: float | None = None  # None: a late pulse always fires (immediately)
    consumer: str = "rgbd-edge"     # gpiod consumer label (shown by gpioinfo)


def parse_gpio_config(d: Any, key: str = "sinks.gpio") -> GpioConfig:
    s = Section(d, key, GPIO_KEYS)
    backend = s.choice("backend", BACKENDS, "jetson")
    if s.has("pin") and s.has("line"):
        raise s.fail("pin", "give either pin or line, not both")
    name = "pin" if s.has("pin") else "line"
    line = s.raw(name)
    if line is None:
        if backend != "simulated":
            raise s.fail("pin" if backend == "jetson" else "line", f"required for backend {backend}")
        line = 0
    elif isinstance(line, bool) or not isinstance(line, (int, str)) or (isinstance(line, int) and line < 0):
        raise s.fail(name, f"must be a non-negative integer (or a line name), got {line!r}")
    elif isinstance(line, str) and backend == "jetson" and not line.strip():
        raise s.fail(name, "empty")
    return GpioConfig(
        backend=backend, line=line, chip=s.str("chip", "/dev/gpiochip0"),
        active_high=s.bool("active_high", True),
        delay_ms=s.number("delay_ms", 0.0, 60_000.0, default=0.0),
        pulse_ms=s.number("pulse_ms", 0.0, 60_000.0, default=50.0, lo_open=True),
        on_no_decision=s.bool("on_no_decision", False),
        max_late_ms=s.number("max_late_ms", 0.0, 60_000.0, default=None),
        consumer=s.str("consumer", "rgbd-edge"),
    )


# --------------------------------------------------------------------------- backends
# Each backend: open() (line set up, inactive), set(active: bool), close() (inactive, released).
# ``active`` is the logical state; the backend maps it to the electrical level (active_high).


class SimulatedBackend:
    """Records every write as ``(time.monotonic(), level)`` with the electrical level (1 high,
    0 low), like a logic analyser on the pin. ``edges`` keeps only the changes."""

    kind = "simulated"

    def __init__(self, line: int | str = 0, active_high: bool = True, clock: Callable[[], float] = time.monotonic):
        self.line = line
        self.active_high = active_high
        self._clock = clock
        self.writes: list[tuple[float, int]] = []
        self.is_open = False

    def _level(self, active: bool) -> int:
        return int(active == self.active_high)

    def open(self) -> None:
        self.is_open = True
        self.writes.append((self._clock(), self._level(False)))

    def set(self, active: bool) -> None:
        if not self.is_open:
            raise RuntimeError("simulated GPIO line is not open")
        self.writes.append((self._clock(), self._level(active)))

    def close(self) -> None:
        if self.is_open:
            self.writes.append((self._clock(), self._level(False)))
            self.is_open = False

    @property
    def edges(self) -> list[tuple[float, int]]:
        out: list[tuple[float, int]] = []
        for t, v in self.writes:
            if not out or out[-1][1] != v:
                out.append((t, v))
        return out

    @property
    def level(self) -> int | None:
        return self.writes[-1][1] if self.writes else None


class JetsonBackend:
    """Jetson.GPIO (NVIDIA's RPi.GPIO-compatible library), BOARD pin numbering. JetPack 6's
    Jetson.GPIO drives the pin through /dev/gpiochip*; the service user needs the ``gpio`` group."""

    kind = "jetson"

    def __init__(self, pin: int | str, active_high: bool = True):
        self.pin = pin
        self.active_high = active_high
        self._gpio = None

    def open(self) -> None:
        try:
            import Jetson.GPIO as GPIO  # noqa: N814
        except ImportError as exc:
            raise ImportError(f"sinks.gpio.backend jetson needs Jetson.GPIO (pip install Jetson.GPIO): {exc}") from exc
        GPIO.setwarnings(False)
        GPIO.setmode(GPIO.BOARD)
        GPIO.setup(self.pin, GPIO.OUT, initial=self._level(GPIO, False))
        self._gpio = GPIO

    def _level(self, GPIO, active: bool):  # noqa: N803
        return GPIO.HIGH if active == self.active_high else GPIO.LOW

    def set(self, active: bool) -> None:
        self._gpio.output(self.pin, self._level(self._gpio, active))

    def close(self) -> None:
        if self._gpio is None:
            return
        try:
            self._gpio.output(self.pin, self._level(self._gpio, False))
        finally:
            self._gpio.cleanup(self.pin)
            self._gpio = None


class GpiodBackend:
    """libgpiod v2 Python bindings (``pip install gpiod>=2``): ``gpiod.request_lines(chip, config=
    {line: LineSettings(direction=OUTPUT, output_value=INACTIVE, active_low=...)})`` then
    ``request.set_value(line, Value.ACTIVE | Value.INACTIVE)``; polarity is the kernel's
    (``active_low``), so the values written are logical."""

    kind = "gpiod"

    def __init__(self, chip: str, line: int | str, active_high: bool = True, consumer: str = "rgbd-edge"):
        self.chip = chip
        self.line = line
        self.active_high = active_high
        self.consumer = consumer
        self._req = None
        self._value = None

    def open(self) -> None:
        try:
            import gpiod
            from gpiod.line import Direction, Value
        except ImportError as exc:
            raise ImportError(f"sinks.gpio.backend gpiod needs the libgpiod v2 Python bindings "
                              f"(pip install 'gpiod>=2'): {exc}") from exc
        if not hasattr(gpiod, "request_lines"):
            raise ImportError("sinks.gpio.backend gpiod needs libgpiod v2 bindings (found v1: no request_lines)")
        settings = gpiod.LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE,
                                      active_low=not self.active_high)
        try:
            self._req = gpiod.request_lines(self.chip, consumer=self.consumer, config={self.line: settings})
        except OSError as exc:
            raise OSError(f"sinks.gpio: cannot request line {self.line!r} on {self.chip}: {exc} (does the chip "
                          f"exist, is the service user in group gpio, is the line used by something else?)") from exc
        self._value = Value

    def set(self, active: bool) -> None:
        self._req.set_value(self.line, self._value.ACTIVE if active else self._value.INACTIVE)

    def close(self) -> None:
        if self._req is None:
            return
        try:
            self._req.set_value(self.line, self._value.INACTIVE)
        finally:
            self._req.release()
            self._req = None


def make_backend(cfg: GpioConfig):
    if cfg.backend == "jetson":
        return JetsonBackend(cfg.line, cfg.active_high)
    if cfg.backend == "gpiod":
        return GpiodBackend(cfg.chip, cfg.line, cfg.active_high, cfg.consumer)
    return SimulatedBackend(cfg.line, cfg.active_high)


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


class GpioSink:
    """See the module docstring. ``backend`` may be injected (tests); ``.backend`` exposes it.

    The scheduler thread reads the time from ``clock`` and sleeps in ``condition.wait(timeout)``:
    a test injects both (a clock it advances and a condition whose timed waits end on that clock)
    to run the schedule in virtual time, with no wall-clock sleeps."""

    name = "gpio"

    def __init__(self, cfg: GpioConfig, backend=None, clock: Callable[[], float] = time.monotonic,
                 condition: threading.Condition | None = None):
        self.cfg = cfg
        self._clock = clock
        self.backend = backend if backend is not None else make_backend(cfg)
        self._c = Counters(*COUNTERS)
        self._rl = RateLimitedLog(log, 30.0)
        self._cv = condition if condition is not None else threading.Condition()
        self._pending: list[list[float]] = []  # sorted, disjoint [start, end], all after _active_until
        self._active_until: float | None = None
        self._stop = False
        self._drain_until: float | None = None
        self._max_start_error = 0.0
        self._closed = False
        self.backend.open()  # may raise: the daemon reports it at start-up
        self._thread = threading.Thread(target=self._run, name="gpio-pulses", daemon=True)
        self._thread.start()
        log.info("gpio: %s line %s (active %s), pulse %.0f ms, %.0f ms after capture, on %s", self.backend.kind,
                 cfg.line, "high" if cfg.active_high else "low", cfg.pulse_ms, cfg.delay_ms,
                 "reject and no_decision" if cfg.on_no_decision else "reject")

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
        now = self._clock()
        with self._cv:
            if self._closed or self._stop:
                self._c.inc("cancelled")
                log.error("gpio: reject seq %s after close: NO pulse", seq)
                return False
            self._c.inc("requested")
            if start < now:
                late_ms = (now - start) * 1000.0
                if cfg.max_late_ms is not None and late_ms > cfg.max_late_ms:
                    self._c.inc("skipped_too_late")
                    log.error("gpio: reject seq %s is %.0f ms late (> max_late_ms %.0f): NO pulse (the part has "
                              "passed the ejector)", seq, late_ms, cfg.max_late_ms)
                    return False
                self._c.inc("late")
                self._rl("late", logging.WARNING, "gpio: reject seq %s: pulse %.0f ms late, fired now "
                         "(delay_ms %.0f is shorter than capture -> decision)", seq, late_ms, cfg.delay_ms)
                start = now
            self._add_locked(start, start + width)
            self._cv.notify()
        return True

    def _add_locked(self, start: float, end: float) -> None:
        """Insert [start, end] and merge everything that overlaps or touches (the active pulse too)."""
        ivs = sorted(self._pending + [[start, end]])
        merged: list[list[float]] = []
        for s0, e0 in ivs:
            if self._active_until is not None and s0 <= self._active_until:
                self._active_until = max(self._active_until, e0)
            elif merged and s0 <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e0)
            else:
                merged.append([s0, e0])
        n = len(ivs) - len(merged)
        if n:
            self._c.inc("merged", n)
        self._pending = merged

    def publish_status(self, status: dict) -> None:
        pass

    def stats(self) -> dict:
        c = self._c.snapshot()
        with self._cv:
            c["scheduled"] = len(self._pending)
            c["active"] = self._active_until is not None
        c["max_start_error_ms"] = round(self._max_start_error * 1000.0, 2)
        c["backend"] = self.backend.kind
        return c

    def close(self, timeout_s: float = 5.0) -> None:
        """Fire the pulses due within ``timeout_s`` (those parts are still on the conveyor), cancel
        the rest (counted, logged), leave the line inactive and release it."""
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
        try:
            self.backend.close()
        except Exception as exc:
            self._c.inc("errors")
            log.error("gpio: release failed: %s", exc)

    # ------------------------------------------------------------------ scheduler thread

    def _write(self, active: bool) -> None:
        try:
            self.backend.set(active)
        except Exception as exc:  # keep scheduling; the line state is unknown: count and say so
            self._c.inc("errors")
            self._rl("write", logging.ERROR, "gpio: setting line %s %s failed: %s", self.cfg.line,
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
                self._write(False)

    def _loop(self) -> None:
        with self._cv:
            while True:
                now = self._clock()
                if self._stop:
                    return
                if self._active_until is not None:
                    if now >= self._active_until:
                        self._write(False)
                        self._active_until = None
                        continue
                    self._cv.wait(self._active_until - now)
                    continue
                if self._pending:
                    start, end = self._pending[0]  # sorted, disjoint
                    if self._drain_until is not None and start > self._drain_until:
                        return  # the rest is cancelled by close()
                    if now >= start:
                        self._pending.pop(0)
                        self._write(True)
                        self._c.inc("pulses")
                        self._max_start_error = max(self._max_start_error, now - start)
                        # The full width from the actual rise (never before `start`, so never
                        # before `end`): a late wake-up on a loaded CPU must not shorten the pulse.
                        self._active_until = self._clock() + max(end - start, 1e-4)
                        continue
                    self._cv.wait(start - now)
                    continue
                if self._drain_until is not None:
                    return
                self._cv.wait()
