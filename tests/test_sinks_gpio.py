"""GPIO reject pulse: the schedule (simulated backend records timed edges) and the API calls the
real backends make (fake Jetson.GPIO and gpiod modules; the real ones need the device).

The schedule runs in virtual time (VirtualClock): the sink's scheduler thread reads a clock only
the test moves and sleeps on a condition whose timed waits end on that clock, so every edge lands
at exactly the time asked for and no assertion depends on wall time or the machine's load.
"""
from __future__ import annotations

import math
import sys
import threading
import time
import types

import pytest

from edge.results import InspectionResult, Latency
from edge.sinks import gpio, make_sinks
from edge.sinks.gpio import GpioSink, SimulatedBackend, capture_monotonic_of, parse_gpio_config

EXACT = 1e-9  # s: virtual times are exact up to float rounding
HANG_S = 30.0  # s of wall time before a scheduler that never comes back to wait fails the test


class VirtualClock(threading.Condition):
    """A monotonic clock that moves only when the test says so, and the condition GpioSink's
    scheduler thread sleeps on (``GpioSink(cfg, backend, clock=vc, condition=vc)``).

    A timed sleep ``wait(timeout)`` whose end lies within the horizon ends at once, the clock jumping
    to its end; a sleep past the horizon (or an untimed one) parks the thread until the sink notifies
    it. ``run_until(t)`` moves the horizon to ``t`` and returns once the thread is parked again, so
    everything due by ``t`` has happened; the clock is then at ``t``.
    """

    def __init__(self, start: float = 100.0):
        lock = threading.RLock()
        super().__init__(lock)
        self.now = start
        self.horizon = start
        self._parked = False
        self._parked_cv = threading.Condition(lock)

    def __call__(self) -> float:
        return self.now

    def wait(self, timeout: float | None = None) -> bool:  # the scheduler thread, lock held
        if timeout is not None and self.now + timeout <= self.horizon:
            # nextafter: a deadline rounded onto `now` must still move the clock
            self.now = max(self.now + timeout, math.nextafter(self.now, math.inf))
            return False
        self._parked = True
        self._parked_cv.notify_all()
        return super().wait()

    def notify(self, n: int = 1) -> None:
        self._parked = False  # a notified scheduler is about to run again
        super().notify(n)

    def run_until(self, t: float) -> None:
        with self:
            self.horizon = max(self.horizon, t)
            self.notify()
            if not self._parked_cv.wait_for(lambda: self._parked, timeout=HANG_S):
                raise AssertionError("the gpio scheduler thread did not come back to wait")
            self.now = max(self.now, t)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)


def result(seq: int, decision: str = "reject", **kw) -> InspectionResult:
    score = {"pass": 0.1, "reject": 0.9, "no_decision": None}[decision]
    return InspectionResult(device_id="cam1", seq=seq, mode="rgbd", reason="ok", score=score, threshold=0.5,
                            decision=decision, **kw)


def sim_sink(vc: VirtualClock, backend: SimulatedBackend | None = None, **cfg) -> GpioSink:
    c = parse_gpio_config({"backend": "simulated", **cfg})
    backend = backend if backend is not None else SimulatedBackend(c.line, c.active_high, clock=vc)
    alarm = SimulatedBackend(c.alarm.line, c.alarm.active_high, clock=vc) if c.alarm else None
    return GpioSink(c, backend=backend, clock=vc, condition=vc, alarm_backend=alarm)


def pulses(backend: SimulatedBackend, active_high: bool = True) -> list[tuple[float, float]]:
    """(rise, fall) of every active period, from the recorded edges."""
    on = 1 if active_high else 0
    out, start = [], None
    for t, v in backend.edges:
        if v == on and start is None:
            start = t
        elif v != on and start is not None:
            out.append((start, t))
            start = None
    return out


def settle(vc: VirtualClock, sink: GpioSink) -> None:
    """Run a virtual minute: every pulse scheduled so far has started and ended."""
    vc.run_for(60.0)
    st = sink.stats()
    assert not st["scheduled"] and not st["active"], st


def test_delay_and_width_from_capture_time():
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=150, pulse_ms=80)
    try:
        cap = vc.now
        sink.publish(result(0), capture_monotonic=cap)
        vc.run_until(cap + 0.100)
        assert pulses(sink.backend) == [] and sink.stats()["scheduled"] == 1  # not yet
        settle(vc, sink)
        (rise, fall), = pulses(sink.backend)
        assert rise >= cap + 0.150 - EXACT and rise == pytest.approx(cap + 0.150, abs=EXACT)  # never early
        assert fall - rise == pytest.approx(0.080, abs=EXACT)
        assert fall >= rise + 0.080 - EXACT  # never shorter than asked
        st = sink.stats()
        assert st["pulses"] == 1 and st["late"] == 0 and st["requested"] == 1 and st["published"] == 1
    finally:
        sink.close()
    assert sink.backend.level == 0 and not sink.backend.is_open


class _SlowRiseBackend(SimulatedBackend):
    """A line whose activation takes 30 ms (a loaded CPU, a slow driver call) before it shows."""

    def set(self, active: bool) -> None:
        if active:
            self._clock.now += 0.030  # the virtual clock moves while the driver call runs
        super().set(active)


def test_a_late_rise_still_gives_the_full_width():
    vc = VirtualClock()
    sink = sim_sink(vc, backend=_SlowRiseBackend(clock=vc), delay_ms=50, pulse_ms=80)
    try:
        cap = vc.now
        sink.publish(result(0), capture_monotonic=cap)
        settle(vc, sink)
        (rise, fall), = pulses(sink.backend)
        assert rise >= cap + 0.050 + 0.030 - EXACT  # the line showed late
        assert fall >= rise + 0.080 - EXACT  # and still stayed active as long as asked
    finally:
        sink.close()


def test_capture_time_reconstructed_from_result_wall_time_and_latency(monkeypatch):
    # made 40 ms ago, 60 ms after capture -> captured 100 ms ago
    r = result(0, wall_time=time.time() - 0.040, latency=Latency(total_ms=60.0))
    now = time.monotonic()
    cap, step = capture_monotonic_of(r, now_mono=now, now_wall=r.wall_time + 0.040)
    assert cap == pytest.approx(now - 0.100, abs=1e-6) and not step
    # a wall clock that jumped an hour: only latency.total_ms is trusted
    cap, step = capture_monotonic_of(r, now_mono=now, now_wall=r.wall_time + 3600)
    assert cap == pytest.approx(now - 0.060, abs=1e-6) and step

    vc = VirtualClock()
    wall_now = 1.7e9
    # the sink reads the wall clock at publish time: a fixed one here, on the virtual monotonic clock
    monkeypatch.setattr(gpio, "time", types.SimpleNamespace(time=lambda: wall_now, monotonic=vc))
    sink = sim_sink(vc, delay_ms=200, pulse_ms=50)
    try:
        t0 = vc.now
        r = result(1, wall_time=wall_now - 0.040, latency=Latency(total_ms=60.0))
        sink.publish(r)  # the daemon's call: no capture time passed
        settle(vc, sink)
        (rise, fall), = pulses(sink.backend)
        assert rise == pytest.approx(t0 - 0.100 + 0.200, abs=1e-6)  # wall times near 1.7e9 s round at 1e-7 s
        assert sink.stats()["clock_steps"] == 0
    finally:
        sink.close()


def test_overlapping_pulses_merge():
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=100, pulse_ms=100)
    try:
        cap = vc.now
        sink.publish(result(0), capture_monotonic=cap)
        sink.publish(result(1), capture_monotonic=cap + 0.030)  # overlaps the first
        sink.publish(result(2), capture_monotonic=cap + 0.400)  # separate
        settle(vc, sink)
        p = pulses(sink.backend)
        assert len(p) == 2
        (r1, f1), (r2, f2) = p
        assert r1 == pytest.approx(cap + 0.100, abs=EXACT)
        assert f1 == pytest.approx(cap + 0.230, abs=EXACT)  # one long pulse
        assert r2 == pytest.approx(cap + 0.500, abs=EXACT) and f2 == pytest.approx(cap + 0.600, abs=EXACT)
        st = sink.stats()
        assert st["merged"] == 1 and st["pulses"] == 2 and st["requested"] == 3
    finally:
        sink.close()


def test_merge_into_the_active_pulse():
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=0, pulse_ms=150)
    try:
        cap = vc.now + 0.020
        sink.publish(result(0), capture_monotonic=cap)
        vc.run_until(cap + 0.060)
        assert sink.stats()["active"]  # the first pulse is on now
        sink.publish(result(1), capture_monotonic=cap + 0.100)
        settle(vc, sink)
        (rise, fall), = pulses(sink.backend)
        assert rise == pytest.approx(cap, abs=EXACT) and fall == pytest.approx(cap + 0.250, abs=EXACT)
        assert sink.stats()["merged"] == 1
    finally:
        sink.close()


def test_late_pulse_fires_immediately_with_full_width_and_is_counted():
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=50, pulse_ms=60, max_late_ms=2000)  # a generous limit: within it, late fires
    try:
        t_pub = vc.now
        sink.publish(result(0), capture_monotonic=t_pub - 1.0)  # due 950 ms ago
        settle(vc, sink)
        (rise, fall), = pulses(sink.backend)
        assert rise == pytest.approx(t_pub, abs=EXACT)
        assert fall - rise >= 0.060 - EXACT
        assert sink.stats()["late"] == 1
    finally:
        sink.close()


def test_too_late_pulse_is_skipped_when_max_late_ms_is_set(caplog):
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=50, pulse_ms=60, max_late_ms=100)
    try:
        sink.publish(result(0), capture_monotonic=vc.now - 1.0)
        sink.publish(result(1), capture_monotonic=vc.now - 0.1)  # 50 ms late: fires
        settle(vc, sink)
        assert len(pulses(sink.backend)) == 1
        st = sink.stats()
        assert st["skipped_too_late"] == 1 and st["late"] == 1
        assert any("NO pulse" in r.getMessage() for r in caplog.records)
    finally:
        sink.close()


def test_result_2_s_late_with_delay_350_ms_is_skipped_and_stops_the_line(monkeypatch):
    """The issue's case: delay_ms 350 and a result that arrives 2 s after capture. The part under
    the ejector now is another one: no pulse, the line-stop alarm instead (latched)."""
    vc = VirtualClock()
    wall_now = 1.7e9
    monkeypatch.setattr(gpio, "time", types.SimpleNamespace(time=lambda: wall_now, monotonic=vc))
    sink = sim_sink(vc, delay_ms=350, pulse_ms=80, alarm={"line": 5})
    try:
        assert sink.stats()["max_late_ms"] == 40.0  # default: half the pulse width
        t_pub = vc.now
        r = result(7, wall_time=wall_now - 0.010, latency=Latency(total_ms=1990.0))  # captured 2 s ago
        sink.publish(r)  # the daemon's call
        settle(vc, sink)
        assert pulses(sink.backend) == []  # the reject line never moved
        assert sink.alarm_backend.edges == [(t_pub, 0), (t_pub, 1)]  # idle since the start, raised at once
        assert sink.alarm_backend.level == 1 and sink.alarm_active  # latched: still raised a minute later
        st = sink.stats()
        assert st["skipped_too_late"] == 1 and st["pulses"] == 0 and st["late"] == 0 and st["alarms"] == 1
        (problem,) = st["health_problems"]
        assert "1 reject pulse(s) skipped" in problem and "seq 7" in problem and "line 5" in problem
        (ev,) = sink.drain_events()
        assert ev["event"] == "gpio_pulse_skipped_late" and ev["sink"] == "gpio" and ev["seq"] == 7
        assert ev["late_ms"] == pytest.approx(1650.0, abs=0.01) and ev["max_late_ms"] == 40.0
        assert ev["alarm"] == "raised" and ev["delay_ms"] == 350.0 and ev["pulse_ms"] == 80.0
        assert sink.drain_events() == []

        assert sink.clear_alarm("test") and not sink.clear_alarm("test")
        assert sink.alarm_backend.level == 0 and sink.stats()["health_problems"] == []
        assert [e["event"] for e in sink.drain_events()] == ["gpio_alarm_cleared"]
    finally:
        sink.close()
    assert not sink.alarm_backend.is_open and sink.alarm_backend.level == 0  # released with the daemon


def test_lateness_limit_is_a_fraction_of_the_pulse_or_absolute():
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=100, pulse_ms=80)  # limit 40 ms
    try:
        sink.publish(result(0), capture_monotonic=vc.now - 0.100 - 0.039)  # 39 ms late: fires now
        sink.publish(result(1), capture_monotonic=vc.now - 0.100 - 0.041)  # 41 ms late: skipped
        settle(vc, sink)
        assert len(pulses(sink.backend)) == 1
        st = sink.stats()
        assert st["late"] == 1 and st["skipped_too_late"] == 1 and st["alarm_active"] and not st["alarm_wired"]
    finally:
        sink.close()
    for cfg, limit in (({"max_late_fraction": 0.25}, 20.0), ({"max_late_ms": 5}, 5.0), ({}, 40.0)):
        assert parse_gpio_config({"backend": "simulated", "pulse_ms": 80, **cfg}).late_limit_ms == limit


def test_a_scheduler_that_wakes_too_late_skips_the_pulse():
    """The result came in time, but the scheduler thread itself ran late (an overloaded CPU):
    firing now would hit the next part."""
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=100, pulse_ms=80, alarm={"line": 6})
    try:
        cap = vc.now
        sink.publish(result(0), capture_monotonic=cap)
        vc.run_until(cap + 0.050)  # parked until the pulse is due
        with vc:
            vc.now = cap + 0.300  # the thread does not run for 250 ms: it wakes 200 ms after the start
        settle(vc, sink)
        assert pulses(sink.backend) == [] and sink.alarm_backend.level == 1
        (ev,) = sink.drain_events()
        assert ev["why"] == "the scheduler woke too late" and ev["late_ms"] == pytest.approx(200.0, abs=1e-6)
    finally:
        sink.close()


def test_alarm_without_latch_drops_after_hold_ms():
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=0, pulse_ms=20, alarm={"line": 3, "latch": False, "hold_ms": 500,
                                                         "active_high": False})
    try:
        assert sink.alarm_backend.level == 1  # active low: idle high
        t0 = vc.now
        sink.publish(result(0), capture_monotonic=t0 - 1.0)
        vc.run_for(0.2)
        sink.publish(result(1), capture_monotonic=vc.now - 1.0)  # a second skip extends the hold
        settle(vc, sink)
        assert [(t - t0, v) for t, v in sink.alarm_backend.edges[1:]] == [(0.0, 0), (pytest.approx(0.7), 1)]
        assert not sink.alarm_active and sink.stats()["alarms"] == 1 and sink.stats()["skipped_too_late"] == 2
    finally:
        sink.close()


def test_without_an_alarm_line_a_skip_is_still_reported(caplog):
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=0, pulse_ms=20)
    try:
        assert any(r.levelname == "WARNING" and "no alarm output wired" in r.getMessage() for r in caplog.records)
        sink.publish(result(4), capture_monotonic=vc.now - 1.0)
        (ev,) = sink.drain_events()
        assert ev["alarm"] == "not wired" and ev["seq"] == 4
        (problem,) = sink.stats()["health_problems"]
        assert "no alarm output wired" in problem
        assert any("NO pulse" in r.getMessage() and "nothing stops the line" in r.getMessage()
                   for r in caplog.records)
    finally:
        sink.close()


def test_active_low_inverts_levels():
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=20, pulse_ms=50, active_high=False)
    try:
        assert sink.backend.level == 1  # idle high
        cap = vc.now
        sink.publish(result(0), capture_monotonic=cap)
        settle(vc, sink)
        levels = [v for _, v in sink.backend.edges]
        assert levels == [1, 0, 1]
        (rise, fall), = pulses(sink.backend, active_high=False)
        assert rise == pytest.approx(cap + 0.020, abs=EXACT)
    finally:
        sink.close()
    assert sink.backend.level == 1


def test_only_rejects_pulse_unless_no_decision_enabled():
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=0, pulse_ms=20)
    try:
        sink.publish(result(0, "pass"), capture_monotonic=vc.now)
        sink.publish(result(1, "no_decision"), capture_monotonic=vc.now)
        vc.run_for(0.1)
        assert pulses(sink.backend) == [] and sink.stats()["requested"] == 0 and sink.stats()["published"] == 2
    finally:
        sink.close()
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=0, pulse_ms=20, on_no_decision=True)
    try:
        sink.publish(result(0, "no_decision"), capture_monotonic=vc.now)
        settle(vc, sink)
        assert len(pulses(sink.backend)) == 1
    finally:
        sink.close()


def test_close_fires_pulses_due_soon_and_cancels_later_ones(caplog):
    vc = VirtualClock()
    sink = sim_sink(vc, delay_ms=100, pulse_ms=30)
    cap = vc.now
    sink.publish(result(0), capture_monotonic=cap)          # due in 0.1 s: fired during close
    sink.publish(result(1), capture_monotonic=cap + 10.0)   # due in 10 s: cancelled
    with vc:
        vc.horizon = cap + 60.0  # close's drain runs in virtual time: its sleeps end at once
    sink.close(timeout_s=0.5)
    (rise, fall), = pulses(sink.backend)
    assert rise == pytest.approx(cap + 0.100, abs=EXACT) and fall == pytest.approx(cap + 0.130, abs=EXACT)
    st = sink.stats()
    assert st["cancelled"] == 1 and st["pulses"] == 1
    assert any("cancelled" in r.getMessage() for r in caplog.records)
    assert sink.backend.level == 0
    sink.publish(result(2), capture_monotonic=vc.now)  # after close: counted, no raise
    assert sink.stats()["cancelled"] == 2


def test_backend_write_errors_are_counted_not_raised():
    class Flaky(SimulatedBackend):
        def set(self, active):
            raise OSError("EIO")

    vc = VirtualClock()
    sink = sim_sink(vc, backend=Flaky(clock=vc), pulse_ms=10)
    try:
        sink.publish(result(0), capture_monotonic=vc.now)
        settle(vc, sink)
        assert sink.stats()["errors"] >= 1
    finally:
        sink.close()


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"^sinks\.gpio\.pulse_width: unknown key"):
        make_sinks({"gpio": {"backend": "simulated", "pulse_width": 5}}, "cam1")
    with pytest.raises(ValueError, match=r"sinks\.gpio\.pin: required for backend jetson"):
        make_sinks({"gpio": {"backend": "jetson"}}, "cam1")
    with pytest.raises(ValueError, match=r"sinks\.gpio\.line: required for backend gpiod"):
        make_sinks({"gpio": {"backend": "gpiod"}}, "cam1")
    with pytest.raises(ValueError, match=r"sinks\.gpio\.pin: give either pin or line"):
        make_sinks({"gpio": {"backend": "gpiod", "pin": 1, "line": 2}}, "cam1")
    with pytest.raises(ValueError, match=r"sinks\.gpio\.backend: must be one of"):
        make_sinks({"gpio": {"backend": "rpi"}}, "cam1")
    with pytest.raises(ValueError, match=r"sinks\.gpio\.pulse_ms"):
        make_sinks({"gpio": {"backend": "simulated", "pulse_ms": 0}}, "cam1")
    c = parse_gpio_config({"pin": 33})
    assert (c.backend, c.line, c.active_high, c.delay_ms, c.pulse_ms, c.on_no_decision) == \
        ("jetson", 33, True, 0.0, 50.0, False)
    assert c.late_limit_ms == 25.0 and c.alarm is None  # bounded by default


@pytest.mark.parametrize("cfg, key, problem", [
    ({"delay_ms": 1e10}, "delay_ms", r"must be a number in \[0, 60000\]"),
    ({"pulse_ms": 60_001}, "pulse_ms", r"must be a number in \(0, 60000\]"),
    ({"max_late_ms": 1e12}, "max_late_ms", r"must be a number in \(0, 60000\]"),
    ({"max_late_fraction": 2}, "max_late_fraction", r"must be a number in \(0, 1\]"),
    ({"max_late_ms": 10, "max_late_fraction": 0.5}, "max_late_fraction", "give either max_late_ms"),
    ({"line": 10 ** 12}, "line", "must be a non-negative integer up to 65535"),
    ({"alarm": {"line": 4, "hold_ms": 1e9}}, "alarm.hold_ms", r"must be a number in \(0, 600000\]"),
    ({"alarm": {"line": 0}}, "alarm.line", "must differ from the reject line"),
    ({"alarm": {"active_high": False}}, "alarm.line", "required for backend simulated"),
    ({"alarm": {"line": 2, "latched": True}}, "alarm.latched", "unknown key .*did you mean 'latch'"),
])
def test_gpio_numbers_are_bounded_and_errors_name_the_key(cfg, key, problem):
    with pytest.raises(ValueError, match=rf"^sinks\.gpio\.{key}: {problem}"):
        make_sinks({"gpio": {"backend": "simulated", **cfg}}, "cam1")


# --------------------------------------------------------------------------- real backends, faked libraries


def fake_jetson_gpio(monkeypatch) -> list:
    """A fake Jetson.GPIO module in sys.modules; returns the list of the calls made to it."""
    calls = []
    gpio = types.ModuleType("Jetson.GPIO")
    gpio.BOARD, gpio.OUT, gpio.HIGH, gpio.LOW = "BOARD", "OUT", 1, 0
    gpio.setwarnings = lambda flag: calls.append(("setwarnings", flag))
    gpio.setmode = lambda mode: calls.append(("setmode", mode))
    gpio.setup = lambda pin, direction, initial: calls.append(("setup", pin, direction, initial))
    gpio.output = lambda pin, value: calls.append(("output", pin, value))
    gpio.cleanup = lambda pin: calls.append(("cleanup", pin))
    jetson = types.ModuleType("Jetson")
    jetson.GPIO = gpio
    monkeypatch.setitem(sys.modules, "Jetson", jetson)
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", gpio)
    return calls


def fake_gpiod(monkeypatch) -> list:
    """A fake libgpiod v2 module in sys.modules; returns the list of the calls made to it."""
    calls = []

    class Direction:
        OUTPUT = "OUTPUT"

    class Value:
        ACTIVE, INACTIVE = "ACTIVE", "INACTIVE"

    class LineSettings:
        def __init__(self, **kw):
            self.kw = kw

    class Request:
        def set_value(self, line, value):
            calls.append(("set_value", line, value))

        def release(self):
            calls.append(("release",))

    def request_lines(path, consumer=None, config=None):
        (line, settings), = config.items()
        calls.append(("request_lines", path, consumer, line, settings.kw))
        return Request()

    gpiod = types.ModuleType("gpiod")
    gpiod.LineSettings, gpiod.request_lines = LineSettings, request_lines
    line_mod = types.ModuleType("gpiod.line")
    line_mod.Direction, line_mod.Value = Direction, Value
    gpiod.line = line_mod
    monkeypatch.setitem(sys.modules, "gpiod", gpiod)
    monkeypatch.setitem(sys.modules, "gpiod.line", line_mod)
    return calls


def test_jetson_backend_api_calls(monkeypatch):
    calls = fake_jetson_gpio(monkeypatch)

    # API calls, not timing (the real clock): a loaded machine must not make the pulse too late to fire
    sink, = make_sinks({"gpio": {"backend": "jetson", "pin": 33, "active_high": False, "pulse_ms": 10,
                                 "max_late_ms": 60_000}}, "cam1")
    sink.publish(result(0), capture_monotonic=time.monotonic())
    sink.close()  # fires the pulse due now and returns when it has ended: no wait on the test's side
    assert calls[:3] == [("setwarnings", False), ("setmode", "BOARD"), ("setup", 33, "OUT", 1)]  # idle high
    assert ("output", 33, 0) in calls and calls.index(("output", 33, 0)) < calls.index(("output", 33, 1))
    assert calls[-2:] == [("output", 33, 1), ("cleanup", 33)]


def test_gpiod_v2_backend_api_calls(monkeypatch):
    calls = fake_gpiod(monkeypatch)
    sink, = make_sinks({"gpio": {"backend": "gpiod", "chip": "/dev/gpiochip1", "line": 17, "pulse_ms": 10,
                                 "max_late_ms": 60_000}}, "cam1")  # API calls, not timing (see above)
    sink.publish(result(0), capture_monotonic=time.monotonic())
    sink.close()  # fires the pulse due now and returns when it has ended: no wait on the test's side
    assert calls[0] == ("request_lines", "/dev/gpiochip1", "rgbd-edge", 17,
                        {"direction": "OUTPUT", "output_value": "INACTIVE", "active_low": False})
    assert calls[1:3] == [("set_value", 17, "ACTIVE"), ("set_value", 17, "INACTIVE")]
    assert calls[-1] == ("release",)


def test_real_backends_drive_the_alarm_line_like_the_reject_line(monkeypatch):
    calls = fake_jetson_gpio(monkeypatch)
    sink, = make_sinks({"gpio": {"backend": "jetson", "pin": 33, "pulse_ms": 10,
                                 "alarm": {"pin": 35, "active_high": False}}}, "cam1")
    assert [c for c in calls if c[0] == "setup"] == [("setup", 33, "OUT", 0), ("setup", 35, "OUT", 1)]  # idle
    sink.publish(result(0), capture_monotonic=time.monotonic() - 5.0)  # far too late
    assert calls[-1] == ("output", 35, 0)  # the alarm is active (low)
    sink.close()
    assert ("output", 33, 1) not in calls  # the reject line never pulsed
    assert calls[-4:] == [("output", 33, 0), ("cleanup", 33), ("output", 35, 1), ("cleanup", 35)]

    calls = fake_gpiod(monkeypatch)
    sink, = make_sinks({"gpio": {"backend": "gpiod", "chip": "/dev/gpiochip1", "line": 17, "pulse_ms": 10,
                                 "alarm": {"line": 18}}}, "cam1")
    assert [c[:4] for c in calls] == [("request_lines", "/dev/gpiochip1", "rgbd-edge", 17),
                                      ("request_lines", "/dev/gpiochip1", "rgbd-edge-alarm", 18)]
    sink.publish(result(0), capture_monotonic=time.monotonic() - 5.0)
    assert calls[-1] == ("set_value", 18, "ACTIVE")
    sink.close()
    assert ("set_value", 17, "ACTIVE") not in calls
    assert calls[-4:] == [("set_value", 17, "INACTIVE"), ("release",), ("set_value", 18, "INACTIVE"), ("release",)]


def test_missing_gpio_library_is_an_import_error_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gpiod", None)
    with pytest.raises(ImportError, match="gpiod"):
        make_sinks({"gpio": {"backend": "gpiod", "line": 3}}, "cam1")
