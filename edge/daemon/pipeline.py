"""The running daemon: start-up, then three threads joined by two bounded queues, supervised by
the main thread (status reports, drain deadline, final status, closing).

    capture (capture.py) -> capture queue -> inference (here, Inspector) -> results queue -> sinks (sinkloop.py)

The inference thread is the only one that pings the systemd watchdog, and only while the sinks
are moving: a hung camera, engine or sink stops the pings and systemd restarts the service.

A stop request (``request_stop``, a signal) is honoured at any point: during start-up between
two steps (``StartupInterrupted``), while serving by draining. SIGHUP reloads the bundle in the
background (reload.py) and the inference thread swaps the new model in between two frames.
Every status message carries ``health`` ({ok, problems}): the sinks' ``health_problems`` and
the daemon's own (a failed reload, no usable stream).
"""
from __future__ import annotations

import logging
import queue
import threading
import time

from ..config import Config
from ..frames import Frame
from ..notify import Notifier
from ..results import InspectionResult
from . import startup
from .capture import CaptureLoop
from .control import POLL_S, RunControl, Tick, put_end, until_end
from .counters import Counters
from .exits import EXIT_CODES, EXIT_FATAL, EXIT_OK, StartupError, StartupInterrupted, short_error
from .inspector import Inspector
from .reload import Reloader, bundle_digest, close_engines
from .signals import SignalRouter
from .sinkloop import SinkLoop, publish_sink_events, publish_status_direct, sink_name

log = logging.getLogger("edge.daemon")

DRAIN_TIMEOUT_S = 20.0  # shutdown: how long the queues may take to drain (the unit's TimeoutStopSec is 45)
SINK_CLOSE_TIMEOUT_S = 10.0  # all sinks together, to flush (MQTT outbox, JSONL fsync)
_PROBLEMS = ("frames_dropped", "results_dropped", "engine_errors", "preprocess_errors", "source_errors",
             "sink_errors", "status_dropped")


class Daemon:
    """The pipeline. ``Daemon(cfg).run()`` returns the exit code.

    Components can be injected (tests, tools): ``bundle``, ``engines`` (dict mode -> Engine),
    ``sinks`` (list), ``source`` (an unopened Source) and ``notifier``; whatever is not given is
    built from the configuration. ``max_frames`` stops capture after that many frames, then the
    pipeline drains and ``run`` returns 0. ``signals``: the process's SignalRouter (`rgbd-edge
    run` installs one before start-up); with ``install_signal_handlers`` and none given, ``serve``
    installs its own.
    """

    def __init__(self, config: Config, max_frames: int | None = None, *, notifier: Notifier | None = None,
                 bundle=None, engines: dict | None = None, sinks: list | None = None, source=None,
                 install_signal_handlers: bool = False, signals: SignalRouter | None = None):
        self.cfg = config
        self.max_frames = max_frames
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.bundle = bundle
        self.engines = engines
        self.sinks = sinks
        self.source = source
        self.selector = None
        self.inspector: Inspector | None = None  # built by start()
        self.install_signal_handlers = install_signal_handlers
        self.counters = Counters()
        self.control = RunControl()
        self._stop = self.control.stop    # stop capturing, then drain
        self._abort = self.control.abort  # stop now: skip the drain (second signal, fatal error)
        self._capture_q: queue.Queue = queue.Queue(maxsize=config.queues.capture)
        self._results_q: queue.Queue = queue.Queue(maxsize=config.queues.results)
        self._threads: list[threading.Thread] = []
        self._sink_loop: SinkLoop | None = None
        self._started_at = time.monotonic()
        self._last_ping = 0.0
        self._watchdog_s = self.notifier.watchdog_interval() if config.watchdog.enabled else None
        self._logged_problems: dict = {}
        self._logged_at = 0.0
        self.ready_event = threading.Event()  # set once READY=1 was sent (tests wait on it)
        self.phase = "not started"  # the start-up step in progress (for the log of a stop request)
        self.signals = signals
        self._signals_seen = 0  # stop signals of ``signals`` acted on
        self.reloader = Reloader(config, self.counters, self._reload_failed)
        self._retired: queue.Queue = queue.Queue()  # engines of swapped-out bundles, closed by the main thread
        self._reload_problem: str | None = None
        self._closed_ids: set[int] = set()
        self._close_lock = threading.Lock()

    @property
    def mode(self) -> str | None:
        """The current inspection mode (None before the first frame or when no stream is usable)."""
        return self.inspector.mode if self.inspector is not None else None

    @property
    def end_reason(self) -> str | None:
        return self.control.end_reason

    # ------------------------------------------------------------------ control

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop capturing; queued frames are still inspected and published (thread-safe)."""
        self.control.request_stop(reason)

    def poll_signals(self) -> None:
        """Act on the stop signals the router recorded since the last call (main thread): the
        first stops (drain), a second aborts (no drain; during start-up: no wait for the step)."""
        r = self.signals
        while r is not None and self._signals_seen < r.stops:
            self._signals_seen += 1
            if self._signals_seen == 1:
                self.request_stop(f"signal {r.received[0]}")
            else:
                self._abort.set()
                self._stop.set()

    def _checkpoint(self, phase: str) -> None:
        """Between two start-up steps: raise StartupInterrupted when a stop was requested."""
        if self._stop.is_set():
            raise StartupInterrupted(f"{self.end_reason or 'stop requested'} during start-up ({self.phase})")
        self.phase = phase

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        """Create the sinks, load the bundle and the engines, open the source (in that order, so a
        failure after the sinks are up is also published); raise StartupError with the exit code,
        or StartupInterrupted when a stop was requested (checked between the steps)."""
        cfg = self.cfg
        self._checkpoint("creating sinks")
        if self.sinks is None:
            self.sinks = startup.sinks_from_config(cfg)  # first, so later start-up errors reach the line
        try:
            self._start_components()
        except StartupError as exc:
            if not self._stop.is_set():  # a requested stop is not a failure to report
                self._publish_direct({"state": "error", "event": "startup_failed", "exit_code": exc.code,
                                      "error": str(exc)})
            raise
        self._checkpoint("ready")
        self.inspector = Inspector(self.bundle, self.engines, self.selector, device_id=cfg.device_id,
                                   heatmaps=cfg.heatmaps, counters=self.counters)
        startup.log_ready(cfg, self.bundle, self.engines, self.source, self.sinks, self._watchdog_s)

    def _start_components(self) -> None:
        cfg = self.cfg
        self._checkpoint("loading the bundle")
        if self.bundle is None:
            self.bundle = startup.bundle_from_config(cfg)
        startup.log_bundle(self.bundle)
        self._checkpoint("loading engines")
        if self.engines is None:
            self.engines = startup.engines_from_config(cfg, self.bundle, self.notifier)
        self._checkpoint("warming up engines")
        startup.check_engines(cfg, self.bundle, self.engines)
        self.selector = startup.selector_from_config(cfg, self.bundle, self.engines)
        self._checkpoint("opening the source")
        if self.source is None:
            self.source = startup.source_from_config(cfg)
        startup.open_for_start(self.source)

    # ------------------------------------------------------------------ inference thread

    def _inference_loop(self) -> None:
        try:
            for item in until_end(self._capture_q):  # no frames and no ticks: capture is hung, no ping
                if self._abort.is_set():
                    if isinstance(item, Frame):
                        self.counters.inc("dropped_at_shutdown")
                    continue
                self._maybe_swap()  # between two frames: a reloaded bundle takes over here
                if isinstance(item, Tick):
                    if item.kind == "reopened":
                        self.inspector.source_reopened()
                    self._maybe_ping()
                    continue
                result, jpeg = self.inspect(item)
                self._enqueue(("result", result, jpeg))
                self._maybe_ping()
        except Exception as exc:
            self.control.set_fatal(EXIT_FATAL, f"inference thread crashed: {short_error(exc, 500)}")
            self._abort.set()
        finally:
            put_end(self._results_q, self._abort, self.counters)

    def inspect(self, frame: Frame) -> tuple[InspectionResult, bytes | None]:
        """One frame -> exactly one result (and an overlay JPEG for rejects); a mode change is
        queued for the sinks first. Never raises for bad frames or engine failures."""
        inspection = self.inspector.inspect(frame)
        if inspection.mode_change is not None:
            self._enqueue(("status", inspection.mode_change, None))
        return inspection.result, inspection.jpeg

    def _maybe_swap(self) -> None:
        """Swap in a reloaded model (inference thread, between two frames); its status event goes
        to the sinks before the first result it scores."""
        loaded = self.reloader.take()
        if loaded is None:
            return
        old_bundle, old_engines = self.bundle, self.engines
        self.inspector.swap_model(loaded.bundle, loaded.engines, loaded.available_modes)
        self.bundle, self.engines = loaded.bundle, loaded.engines
        self._reload_problem = None
        self.counters.inc("bundle_reloads")
        self._retired.put(old_engines)
        seq = self.inspector.seq
        log.info("bundle reloaded from seq %d on: %s %s (%s) replaces %s %s (%s)", seq, loaded.bundle.model_name,
                 loaded.bundle.model_version, loaded.bundle.root, old_bundle.model_name, old_bundle.model_version,
                 old_bundle.root)
        self._enqueue(("status", {"state": "running", "device_id": self.cfg.device_id, "event": "bundle_reloaded",
                                  "seq": seq, "bundle": str(loaded.bundle.root), "digest": bundle_digest(loaded.bundle),
                                  "previous_bundle": str(old_bundle.root),
                                  "previous_digest": bundle_digest(old_bundle),
                                  "model": f"{loaded.bundle.model_name} {loaded.bundle.model_version}",
                                  "modes": list(loaded.available_modes)}, None))

    def _reload_failed(self, reason: str) -> None:
        """Reloader's ``on_failed`` (reload thread): keep the running model, tell the line."""
        self._reload_problem = f"bundle reload failed: {reason}"
        status = {"state": "running", "device_id": self.cfg.device_id, "event": "bundle_reload_failed",
                  "bundle": str(self.cfg.bundle), "reason": reason}
        if self._sink_loop is None:
            return
        try:
            self._results_q.put(("status", status, None), timeout=self.cfg.queues.results_timeout_s)
        except queue.Full:
            self.counters.inc("status_dropped")
            log.error("results queue full: status bundle_reload_failed NOT published")

    def _enqueue(self, item: tuple) -> None:
        """Results and mode changes to the sinks; waits up to queues.results_timeout_s, then drops (counted)."""
        try:
            self._results_q.put(item, timeout=self.cfg.queues.results_timeout_s)
        except queue.Full:
            kind, payload, _ = item
            if kind == "result":
                self.counters.inc("results_dropped")
                log.error("results queue full for %.1f s (sinks stuck?): result seq %d (%s) NOT published; %d "
                          "dropped so far", self.cfg.queues.results_timeout_s, payload.seq, payload.decision,
                          self.counters["results_dropped"])
            else:
                self.counters.inc("status_dropped")
                log.error("results queue full: status %s NOT published", payload.get("event"))

    def _maybe_ping(self) -> None:
        """WATCHDOG=1 at half of WATCHDOG_USEC, only from here and only while the sinks are moving."""
        if self._watchdog_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping < self._watchdog_s:
            return
        busy = self._sink_loop.busy_since if self._sink_loop is not None else None
        if busy is not None and now - busy > self._watchdog_s:
            if now - self._last_ping < 2 * self._watchdog_s + POLL_S:  # log once per missed ping
                log.error("sinks stuck in one publish for %.0f s: not pinging the watchdog", now - busy)
            return
        self._last_ping = now
        self.notifier.watchdog()

    # ------------------------------------------------------------------ status

    def stats(self) -> dict:
        out = {
            "device_id": self.cfg.device_id,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "mode": self.mode,
            "counters": self.counters.snapshot(),
            "queues": {"capture": self._capture_q.qsize(), "capture_max": self.cfg.queues.capture,
                       "results": self._results_q.qsize(), "results_max": self.cfg.queues.results},
        }
        for name, obj in (("fallback", self.selector), ("source", self.source)):
            try:
                if obj is not None:
                    out[name] = obj.stats()
            except Exception:  # stats are best effort
                pass
        sinks = self._sink_stats()
        if sinks:
            out["sinks"] = sinks
        out["bundle"] = {"root": str(getattr(self.bundle, "root", "")), "digest": bundle_digest(self.bundle)}
        out["health"] = self.health(sinks)
        return out

    def _sink_stats(self) -> dict:
        out = {}
        for s in self.sinks or ():
            try:
                out[sink_name(s)] = s.stats()
            except Exception:  # stats are best effort
                pass
        return out

    def health(self, sink_stats: dict | None = None) -> dict:
        """``{"ok": bool, "problems": [...]}``: the sinks' ``health_problems`` (disk full, alarm
        raised, ...), a failed bundle reload (until one succeeds), no usable stream."""
        if sink_stats is None:
            sink_stats = self._sink_stats()
        problems = []
        for name, st in sink_stats.items():
            hp = st.get("health_problems") if isinstance(st, dict) else None
            if isinstance(hp, (list, tuple)):
                problems += [f"{name}: {p}" for p in hp]
        if self._reload_problem:
            problems.append(self._reload_problem)
        if self.inspector is not None and self.counters["frames_inspected"] and self.mode is None:
            problems.append("no usable stream: results are no_decision")
        return {"ok": not problems, "problems": problems}

    def _problems(self) -> dict:
        c = self.counters.snapshot()
        return {k: c[k] for k in _PROBLEMS}

    def status_line(self) -> str:
        c = self.counters.snapshot()
        errors = c["engine_errors"] + c["preprocess_errors"] + c["source_errors"] + c["sink_errors"]
        return (f"mode={self.mode or 'none'} inspected={c['frames_inspected']} pass={c['pass']} "
                f"reject={c['reject']} no_decision={c['no_decision']} dropped={c['frames_dropped']} "
                f"results_dropped={c['results_dropped']} timeouts={c['timeouts']} errors={errors}")

    def _report(self, state: str, via_queue: bool) -> str:
        line = self.status_line()
        self.notifier.status(f"{state}: {line}")
        status = {"state": state, "event": "status", **self.stats()}
        if via_queue:
            try:
                self._results_q.put_nowait(("status", {"device_id": self.cfg.device_id, **status}, None))
            except queue.Full:
                self.counters.inc("status_dropped")
        else:
            self._publish_direct(status)
        return line

    def _log_status(self, line: str, now: float) -> None:
        """The periodic status line: WARNING when a problem counter moved, INFO once a minute, else DEBUG."""
        problems = self._problems()
        if problems != self._logged_problems or now - self._logged_at >= 60.0:
            (log.warning if problems != self._logged_problems else log.info)("status: %s", line)
            self._logged_problems, self._logged_at = problems, now
        else:
            log.debug("status: %s", line)

    def _publish_direct(self, status: dict) -> None:
        """publish_status from the main thread (only while the sink thread is not running), then
        the sinks' pending events."""
        publish_status_direct(self.sinks, {"device_id": self.cfg.device_id, **status}, self.counters)
        publish_sink_events(self.sinks, self.cfg.device_id, self.counters)

    # ------------------------------------------------------------------ main

    def run(self) -> int:
        """Start, run until stopped or the replay ends, drain, close. Returns the exit code."""
        try:
            self.start()
        except StartupError as exc:
            if self._stop.is_set():
                return self.stopped_during_startup(str(exc))
            return self.startup_failed(exc)
        except StartupInterrupted as exc:
            return self.stopped_during_startup(str(exc))
        return self.serve()

    def stopped_during_startup(self, what: str) -> int:
        """A requested stop ended the start-up: close what was opened, exit 0."""
        log.info("%s: not starting; closing what was opened", what)
        self.notifier.stopping(f"stopping ({self.end_reason}) during start-up")
        self.close_all()
        log.info("exit %d (%s)", EXIT_OK, EXIT_CODES[EXIT_OK])
        return EXIT_OK

    def startup_failed(self, exc: StartupError) -> int:
        """Log the start-up error, close what was opened; returns its exit code."""
        log.error("%s", exc)
        log.error("exit %d (%s)", exc.code, EXIT_CODES.get(exc.code, "?"))
        self.close_all()
        return exc.code

    def serve(self) -> int:
        """Run the started pipeline (``start()`` done) to the end."""
        own = None
        if self.signals is None and self.install_signal_handlers:
            own = self.signals = SignalRouter().install()
        try:
            self._start_threads()
            return self._finish(stopping_sent=self._supervise())
        finally:
            if own is not None:
                own.restore()

    def _start_threads(self) -> None:
        self._started_at = time.monotonic()
        self._last_ping = time.monotonic()
        capture = CaptureLoop(self.cfg, self.source, self._capture_q, self.counters, self.control, self.max_frames)
        self._sink_loop = SinkLoop(self.sinks, self._results_q, self.counters, self.control, self.cfg.device_id)
        for name, fn in (("capture", capture.run), ("inference", self._inference_loop),
                         ("sinks", self._sink_loop.run)):
            self._threads.append(threading.Thread(target=fn, name=f"rgbd-{name}", daemon=True))
        # READY (and the first ping) before the threads start: every later WATCHDOG=1 comes from
        # the inference loop.
        self.notifier.ready(f"running: {self.status_line()}")
        if self._watchdog_s is not None:
            self.notifier.watchdog()
        self.ready_event.set()
        self._report("running", via_queue=True)  # first in the results queue
        for t in reversed(self._threads):  # consumers first
            t.start()

    def _supervise(self) -> bool:
        """The main thread while the pipeline threads run: a status report every status.interval_s
        and, once stopping, the drain deadline. Returns whether STOPPING=1 was sent."""
        last_report = self._logged_at = time.monotonic()
        self._logged_problems = self._problems()
        stopping_sent = False
        drain_deadline = None
        while any(t.is_alive() for t in self._threads):
            time.sleep(POLL_S)
            now = time.monotonic()
            self._housekeeping()
            if self._stop.is_set() and not stopping_sent:
                stopping_sent = True
                drain_deadline = now + DRAIN_TIMEOUT_S
                self.notifier.stopping(f"stopping ({self.end_reason}): draining")
                log.info("stopping (%s): draining %d queued frames and %d results", self.end_reason,
                         self._capture_q.qsize(), self._results_q.qsize())
            if drain_deadline is not None and now > drain_deadline:
                self._drain_timed_out()
                break
            if now - last_report >= self.cfg.status.interval_s:
                last_report = now
                self._log_status(self._report("running", via_queue=True), now)
        return stopping_sent

    def _housekeeping(self) -> None:
        """Main thread, every poll: act on signals (stop; SIGHUP: reload), close the engines of
        swapped-out bundles."""
        self.poll_signals()
        if self.signals is not None and self.signals.take_reload():
            if self._stop.is_set():
                log.info("SIGHUP while stopping: no bundle reload")
            else:
                self.reloader.request()
        while True:
            try:
                close_engines(self._retired.get_nowait())
            except queue.Empty:
                break

    def _drain_timed_out(self) -> None:
        running = ", ".join(t.name for t in self._threads if t.is_alive())
        self.control.set_fatal(EXIT_FATAL, f"pipeline did not drain within {DRAIN_TIMEOUT_S:.0f} s "
                                           f"(threads still running: {running})")
        self._abort.set()
        for t in self._threads:
            t.join(timeout=1.0)

    def _finish(self, stopping_sent: bool) -> int:
        """Sink thread done (or abandoned): final status straight to the sinks, then flush them."""
        fatal = self.control.fatal
        code = fatal[0] if fatal else EXIT_OK
        if not stopping_sent:
            self.notifier.stopping(f"stopping ({self.end_reason})")
        sink_thread_alive = any(t.is_alive() and t.name == "rgbd-sinks" for t in self._threads)
        line = self.status_line()
        if not sink_thread_alive:
            extra = {"exit_code": code, "reason": self.end_reason}
            if fatal:
                extra["error"] = fatal[1]
            final = "stopped" if code == EXIT_OK else "error"
            self._publish_direct({"state": final, "event": "stopped", **extra, **self.stats()})
        self.close_all()
        log.info("stopped (%s): %s", self.end_reason or "?", line)
        log.info("exit %d (%s)", code, EXIT_CODES.get(code, "?"))
        return code

    def _first_close(self, obj) -> bool:
        """True the first time ``obj`` is to be closed (close_all may run twice: the main thread
        and an abandoned start-up step that finished late)."""
        if obj is None:
            return False
        with self._close_lock:
            if id(obj) in self._closed_ids:
                return False
            self._closed_ids.add(id(obj))
            return True

    def close_all(self) -> None:
        """Close the source, the sinks (flushing, SINK_CLOSE_TIMEOUT_S in all), the engines, the
        notifier. Stop signals meanwhile are recorded and ignored: a flush is never cut short."""
        self.reloader.close()
        if self._first_close(self.source):
            try:
                self.source.close()
            except Exception as exc:
                log.warning("source close failed: %s", short_error(exc))
        self._close_sinks()
        engines = [self.engines] + list(self._drain_retired())
        for d in engines:
            if self._first_close(d):
                close_engines(d)
        self.notifier.close()

    def _close_sinks(self) -> None:
        sinks = [s for s in (self.sinks or ()) if self._first_close(s)]
        if not sinks:
            return
        if self.signals is not None:
            self.signals.closing = True
        log.info("closing the sinks (flushing, at most %.0f s)", SINK_CLOSE_TIMEOUT_S)
        try:
            deadline = time.monotonic() + SINK_CLOSE_TIMEOUT_S
            for s in sinks:  # gpio first (as make_sinks orders them), then mqtt, jsonl, console
                try:
                    s.close(max(1.0, deadline - time.monotonic()))
                except Exception as exc:
                    log.warning("sink %s close failed: %s", sink_name(s), short_error(exc))
        finally:
            if self.signals is not None:
                self.signals.closing = False
                if self.signals.ignored:
                    log.info("%s while the sinks were closing: ignored (the flush was not cut short)",
                             ", ".join(self.signals.ignored))

    def _drain_retired(self):
        while True:
            try:
                yield self._retired.get_nowait()
            except queue.Empty:
                return
