"""GPIO output lines for the GPIO sink: the reject line and the optional line-stop alarm line.

Each backend drives one output line: ``open()`` (line set up, inactive), ``set(active: bool)``,
``close()`` (inactive, released). ``active`` is the logical state; the backend maps it to the
electrical level (``active_high``).

* ``jetson``: Jetson.GPIO (NVIDIA's RPi.GPIO-compatible library), BOARD pin numbering;
* ``gpiod``: libgpiod v2 Python API, ``gpiod.request_lines`` on a chip path and line offset;
* ``simulated``: records timed writes, like a logic analyser on the pin (tests, dry runs).

The real backends import their library in ``open()``; they only run on the device.
"""
from __future__ import annotations

import time
from typing import Callable

__all__ = ["BACKENDS", "SimulatedBackend", "JetsonBackend", "GpiodBackend", "make_line"]

BACKENDS = ("jetson", "gpiod", "simulated")


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


def make_line(backend: str, line: int | str, active_high: bool = True, chip: str = "/dev/gpiochip0",
              consumer: str = "rgbd-edge"):
    """One output line of the given backend kind (not opened yet)."""
    if backend == "jetson":
        return JetsonBackend(line, active_high)
    if backend == "gpiod":
        return GpiodBackend(chip, line, active_high, consumer)
    return SimulatedBackend(line, active_high)
