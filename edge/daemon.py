"""`rgbd-edge run`: the headless inspection daemon (systemd ``Type=notify`` service).

Three threads joined by two bounded queues::

    capture  --[capture queue, queues.capture]-->  inference  --[results queue, queues.results]-->  sinks
    Source.read                                    preprocess, ModeSelector,                         Sink.publish
                                                   engine, threshold, overlay                        Sink.publish_status

and the main thread, which starts everything, reports status, handles SIGTERM/SIGINT and
shuts down. Accounting rules (docs/daemon.md has the full story):

* Every frame the source delivers is counted (``frames_captured``).
* A frame that finds the capture queue full is dropped *before* inference (policy
  ``queues.on_full``): it is counted in ``frames_dropped``, logged, and reported in every status
  message, but it gets no result and no sequence number. (A result would claim an inspection
  that never happened; the line sees the gap in ``color_frame_number`` and the counter.)
* Every frame that reaches inference produces exactly one ``InspectionResult`` with the next
  sequence number (gap-free from 0): ``pass``/``reject`` with a score, or ``no_decision`` when no
  stream is usable (mode None, the fallback's reason), when preprocessing or the engine raises
  (counted, the reason names the error) or when the score is not finite.
* A result that cannot be queued for the sinks within ``queues.results_timeout_s`` is counted in
  ``results_dropped`` and logged at ERROR: the sinks have been stuck for that long.

Exit codes (``EXIT_*``): 0 clean stop (signal, end of a replay, ``--max-frames``), 2 configuration
error, 3 bundle error, 4 engine load error, 5 source could not be opened (at start, or again after
``source.reopen_attempts`` failures in a row), 6 internal fatal error (a pipeline thread crashed
or the pipeline did not drain in time).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .config import Config, ConfigError, check_fallback, load_config
from .frames import Frame
from .modes import MODE_STREAMS, STREAMS
from .notify import Notifier
from .preprocess import Preprocessed, preprocess
from .results import InspectionResult, Latency

log = logging.getLogger("edge.daemon")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_BUNDLE = 3
EXIT_ENGINE = 4
EXIT_SOURCE = 5
EXIT_FATAL = 6
EXIT_CODES = {
    EXIT_OK: "clean stop",
    EXIT_CONFIG: "configuration error",
    EXIT_BUNDLE: "bundle error",
    EXIT_ENGINE: "engine load error",
    EXIT_SOURCE: "source could not be opened",
    EXIT_FATAL: "internal fatal error",
}

ENGINE_LOAD_MAX_S = 3600.0  # start-up: how long engine loading/building may extend systemd's start timeout
EXTEND_EVERY_S = 30.0
EXTEND_BY_S = 120.0
DRAIN_TIMEOUT_S = 20.0  # shutdown: how long the queues may take to drain (the unit's TimeoutStopSec is 45)
SINK_CLOSE_TIMEOUT_S = 10.0  # all sinks together, to flush (MQTT outbox, JSONL fsync)
_POLL_S = 0.2


class StartupError(Exception):
    """Start-up failed; ``code`` is the process exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class _Tick:
    """A non-frame event from capture (not a frame: no result, no sequence number)."""

    kind: str  # "timeout" (read timed out) | "reopened" (source reopened: forget stream history)
    time: float


_END = object()  # end of stream marker, capture -> inference -> sinks


class Counters:
    """Thread-safe counters; ``snapshot()`` is JSON-serialisable."""

    NAMES = (
        "frames_captured", "frames_dropped", "frames_inspected", "pass", "reject", "no_decision",
        "engine_errors", "preprocess_errors", "overlay_errors", "timeouts", "source_errors", "source_reopens",
        "results_dropped", "results_published", "sink_errors", "status_dropped", "mode_changes",
        "dropped_at_shutdown",
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


# --------------------------------------------------------------------------- helpers


def _feed(pre: Preprocessed, names) -> dict[str, np.ndarray]:
    """Engine inputs, batch 1, in the export's layout (convert/export.py)."""
    arrays = {
        "rgb": lambda: pre.rgb[None],
        "depth": lambda: pre.depth[None],
        "foreground": lambda: pre.foreground[None, None].astype(np.float32),
    }
    return {n: np.ascontiguousarray(arrays[n](), dtype=np.float32) for n in names}


def _zero_feed(names, size: int) -> dict[str, np.ndarray]:
    shapes = {"rgb": (1, 3, size, size), "depth": (1, 3, size, size), "foreground": (1, 1, size, size)}
    return {n: np.zeros(shapes[n], np.float32) for n in names}


def _finite_or_none(v: float) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _short_error(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- daemon


class Daemon:
    """The pipeline. ``Daemon(cfg).run()`` returns the exit code.

    Components can be injected (tests, tools): ``bundle``, ``engines`` (dict mode -> Engine),
    ``sinks`` (list), ``source`` (an unopened Source) and ``notifier``; whatever is not given is
    built from the configuration. ``max_frames`` stops capture after that many frames, then the
    pipeline drains and ``run`` returns 0.
    """

    def __init__(self, config: Config, max_frames: int | None = None, *, notifier: Notifier | None = None,
                 bundle=None, engines: dict | None = None, sinks: list | None = None, source=None,
                 install_signal_handlers: bool = False):
        self.cfg = config
        self.max_frames = max_frames
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.bundle = bundle
        self.engines = engines
        self.sinks = sinks
        self.source = source
        self.selector = None
        self.install_signal_handlers = install_signal_handlers
        self.counters = Counters()
        self.mode: str | None = None
        self.end_reason: str | None = None
        self._capture_q: queue.Queue = queue.Queue(maxsize=config.queues.capture)
        self._results_q: queue.Queue = queue.Queue(maxsize=config.queues.results)
        self._stop = threading.Event()      # stop capturing, then drain
        self._abort = threading.Event()     # stop now: skip the drain (second signal, fatal error)
        self._fatal: tuple[int, str] | None = None
        self._fatal_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._seq = 0
        self._started_at = time.monotonic()
        self._last_ping = 0.0
        self._sink_busy_since: float | None = None
        self._watchdog_s = self.notifier.watchdog_interval() if config.watchdog.enabled else None
        self._last_drop_log = 0.0
        self._signals = 0
        self.ready_event = threading.Event()  # set once READY=1 was sent (tests wait on it)

    # ------------------------------------------------------------------ control

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop capturing; queued frames are still inspected and published (thread-safe)."""
        if not self._stop.is_set():
            self.end_reason = self.end_reason or reason
        self._stop.set()

    def _on_signal(self, signum, _frame) -> None:
        self._signals += 1
        if self._signals == 1:
            self.request_stop(f"signal {signal.Signals(signum).name}")
        else:  # a second signal: do not wait for the drain
            self._abort.set()
            self._stop.set()

    def _set_fatal(self, code: int, message: str) -> None:
        with self._fatal_lock:
            if self._fatal is None:
                self._fatal = (code, message)
        log.error("%s", message)
        self.request_stop(message)

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        """Create the sinks, load the bundle and the engines, open the source (in that order, so a
        failure after the sinks are up is also published); raise StartupError with the exit code."""
        cfg = self.cfg
        if self.sinks is None:
            self.sinks = self._make_sinks()  # first, so later start-up errors reach the line
        try:
            self._load_bundle()
            self._load_engines()
            self._open_source()
        except StartupError as exc:
            self._publish_direct({"state": "error", "event": "startup_failed", "exit_code": exc.code,
                                  "error": str(exc)})
            raise
        modes = ", ".join(f"{m} ({getattr(e.info, 'engine', '?')} {getattr(e.info, 'precision', '?')})"
                          for m, e in self.engines.items())
        log.info("ready: device %s, bundle %s %s, modes %s, source %s, sinks %s", cfg.device_id,
                 self.bundle.model_name, self.bundle.model_version, modes, getattr(self.source, "name", "?"),
                 ", ".join(getattr(s, "name", type(s).__name__) for s in self.sinks))
        if self._watchdog_s is not None and cfg.read_timeout_s >= self._watchdog_s:
            log.warning("source.read_timeout_s %.1f s is not below half the watchdog timeout (%.1f s): the "
                        "watchdog may fire while the camera is merely silent", cfg.read_timeout_s, self._watchdog_s)

    def _make_sinks(self) -> list:
        try:
            from .sinks import make_sinks
        except ImportError as exc:
            raise StartupError(EXIT_FATAL, f"edge.sinks is not available: {exc}") from exc
        try:
            sinks = make_sinks(self.cfg.sinks, self.cfg.device_id)
        except (ValueError, TypeError, KeyError, ImportError) as exc:
            msg = str(exc)
            raise StartupError(EXIT_CONFIG, msg if msg.startswith("sinks") else f"sinks: {msg}") from exc
        except Exception as exc:  # e.g. a GPIO chip that cannot be opened
            raise StartupError(EXIT_FATAL, f"sinks could not be started: {_short_error(exc)}") from exc
        if not sinks:
            raise StartupError(EXIT_CONFIG, "sinks: no sink configured (results would go nowhere)")
        return list(sinks)

    def _load_bundle(self) -> None:
        from .bundle import BundleError, load_bundle

        if self.bundle is None:
            try:
                self.bundle = load_bundle(self.cfg.bundle, verify_hashes=self.cfg.engine.verify_hashes)
            except BundleError as exc:
                raise StartupError(EXIT_BUNDLE, f"bundle: {exc}") from exc
        log.info("bundle %s: model %s %s, modes %s", self.bundle.root, self.bundle.model_name,
                 self.bundle.model_version, ", ".join(self.bundle.modes))

    def _load_engines(self) -> None:
        ecfg = self.cfg.engine
        if self.engines is None:
            try:
                from .engines import load_engines
            except ImportError as exc:
                raise StartupError(EXIT_ENGINE, f"edge.engines is not available: {exc}") from exc
            kwargs: dict[str, Any] = dict(backend=ecfg.backend, precision=ecfg.precision, cache_dir=ecfg.cache_dir,
                                          build_missing=ecfg.build_missing)
            kwargs.update(_optional_kwargs(load_engines, intra_op_num_threads=ecfg.threads, cuda=ecfg.cuda,
                                           workspace_mib=ecfg.workspace_mib))
            t0 = time.monotonic()
            try:
                with self._extend_start_timeout("loading engines (a first start builds TensorRT engines)"):
                    self.engines = dict(load_engines(self.bundle, **kwargs))
            except Exception as exc:  # EngineError, missing runtime, TensorRT build failure, ...
                raise StartupError(EXIT_ENGINE, f"engines: {_short_error(exc, 500)}") from exc
            log.info("engines loaded in %.1f s", time.monotonic() - t0)
        if not self.engines:
            raise StartupError(EXIT_ENGINE, "engines: no engine could be loaded for any mode of the bundle")
        unknown = [m for m in self.engines if m not in self.bundle.modes]
        if unknown:
            raise StartupError(EXIT_ENGINE, f"engines: modes {unknown} are not in the bundle")
        if ecfg.warmup:
            for mode, eng in self.engines.items():
                try:
                    eng.run(_zero_feed(eng.inputs, self.bundle.image_size))
                except Exception as exc:
                    raise StartupError(EXIT_ENGINE, f"engine for mode '{mode}' failed its warm-up inference: "
                                                    f"{_short_error(exc, 500)}") from exc
        available = tuple(m for m in self.bundle.modes if m in self.engines)
        try:
            from .fallback import ModeSelector
        except ImportError as exc:
            raise StartupError(EXIT_FATAL, f"edge.fallback is not available: {exc}") from exc
        try:
            fb = check_fallback(self.cfg.path, self.cfg.fallback, available_modes=available)
        except ConfigError as exc:
            raise StartupError(EXIT_CONFIG, str(exc)) from exc
        self.selector = ModeSelector(fb)

    @contextlib.contextmanager
    def _extend_start_timeout(self, what: str):
        """While ``what`` runs, keep extending systemd's start timeout (EXTEND_TIMEOUT_USEC), up to
        ENGINE_LOAD_MAX_S in total: TensorRT builds on first start take minutes, the rest of the
        start-up must fit the unit's TimeoutStartSec. (The watchdog is not armed before READY=1.)"""
        done = threading.Event()
        t0 = time.monotonic()

        def keepalive():
            while not done.wait(EXTEND_EVERY_S):
                elapsed = time.monotonic() - t0
                if elapsed > ENGINE_LOAD_MAX_S:
                    log.error("%s: still running after %.0f s; no longer extending the start timeout", what,
                              elapsed)
                    return
                self.notifier.extend_timeout(EXTEND_BY_S, f"starting: {what} ({elapsed:.0f} s)")
                log.info("%s ... (%.0f s)", what, elapsed)

        self.notifier.extend_timeout(EXTEND_BY_S, f"starting: {what}")
        t = threading.Thread(target=keepalive, name="rgbd-start-keepalive", daemon=True)
        t.start()
        try:
            yield
        finally:
            done.set()
            t.join(timeout=1.0)

    def _open_source(self) -> None:
        if self.source is None:
            try:
                from .sources import open_source
            except ImportError as exc:
                raise StartupError(EXIT_SOURCE, f"edge.sources is not available: {exc}") from exc
            try:
                self.source = open_source(dict(self.cfg.source))
            except Exception as exc:
                if _is_source_error(exc):
                    raise StartupError(EXIT_SOURCE, f"source: {_short_error(exc, 500)}") from exc
                # a bad source section (unknown key, wrong type): the configuration's fault
                raise StartupError(EXIT_CONFIG, f"source: {_short_error(exc, 500)}") from exc
        try:
            self.source.open()
        except Exception as exc:
            raise StartupError(EXIT_SOURCE, f"source {getattr(self.source, 'name', '')} could not be opened: "
                                            f"{_short_error(exc, 500)}") from exc

    # ------------------------------------------------------------------ capture thread

    def _capture_loop(self) -> None:
        src, cfg = self.source, self.cfg
        from .sources.base import EndOfStream, FrameTimeout  # noqa: F401 (the real classes, when present)

        failures = 0
        n = 0
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and n >= self.max_frames:
                    self.request_stop(f"--max-frames {self.max_frames} reached")
                    break
                try:
                    frame = src.read(cfg.read_timeout_s)
                except FrameTimeout:
                    self.counters.inc("timeouts")
                    self._put_tick("timeout")
                    continue
                except EndOfStream:
                    if cfg.exit_at_end:
                        log.info("source %s: end of stream", getattr(src, "name", ""))
                        self.request_stop("end of stream")
                        break
                    log.info("source %s: end of stream; reopening (source.exit_at_end is false)",
                             getattr(src, "name", ""))
                    if not self._reopen(reason="end of stream"):
                        break
                    continue
                except Exception as exc:  # SourceError, or anything a driver throws
                    self.counters.inc("source_errors")
                    failures += 1
                    log.error("source %s: read failed (%d in a row): %s", getattr(src, "name", ""), failures,
                              _short_error(exc))
                    if failures > cfg.reopen_attempts:
                        self._set_fatal(EXIT_SOURCE, f"source {getattr(src, 'name', '')}: {failures} failures in "
                                                     f"a row, giving up (systemd restarts the service)")
                        break
                    if not self._reopen(reason=_short_error(exc), attempt=failures):
                        break
                    continue
                failures = 0
                n += 1
                self.counters.inc("frames_captured")
                if not frame.capture_time:
                    frame.capture_time = time.monotonic()
                self._put_frame(frame)
        except Exception as exc:  # a bug here must not leave a silent, half-dead service
            self._set_fatal(EXIT_FATAL, f"capture thread crashed: {_short_error(exc, 500)}")
        finally:
            self._put_end(self._capture_q)

    def _reopen(self, reason: str, attempt: int = 1) -> bool:
        """Close and reopen the source after a failure (backoff 1, 2, 4 ... s). False when stopping."""
        delay = min(2.0 ** (attempt - 1), 30.0)
        try:
            self.source.close()
        except Exception as exc:
            log.warning("source close failed: %s", _short_error(exc))
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
                    self._set_fatal(EXIT_SOURCE, f"source {getattr(self.source, 'name', '')} could not be "
                                                 f"reopened: {_short_error(exc)}")
                    return False
                delay = min(2.0 ** (attempt - 1), 30.0)
                log.error("source reopen failed (%s); retrying in %.0f s", _short_error(exc), delay)
                if self._wait_ticking(delay):
                    return False
        self.counters.inc("source_reopens")
        log.log(logging.INFO if reason == "end of stream" else logging.WARNING, "source %s reopened after: %s",
                getattr(self.source, "name", ""), reason)
        self._put_tick("reopened")
        return True

    def _wait_ticking(self, delay: float) -> bool:
        """Sleep ``delay`` s between reopen attempts, ticking the inference loop every read timeout
        (the backoff is ours, not a hang: the watchdog should not count it). True when stopping."""
        end = time.monotonic() + delay
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return self._stop.is_set()
            if self._stop.wait(min(left, self.cfg.read_timeout_s)):
                return True
            self._put_tick("timeout")

    def _put_tick(self, kind: str) -> None:
        item = _Tick(kind, time.monotonic())
        if kind == "reopened":  # must arrive: it resets the fallback's stream history
            self._put_blocking(self._capture_q, item)
            return
        try:
            self._capture_q.put_nowait(item)
        except queue.Full:
            pass  # the queue holds frames: inference is busy and will ping the watchdog anyway

    def _put_frame(self, frame: Frame) -> None:
        q, policy = self._capture_q, self.cfg.queues.on_full
        if policy == "block":
            self._put_blocking(q, frame)
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
            log.warning("capture queue full (%d): dropped frame %s (color #%d) before inference; %d dropped so "
                        "far (inference slower than the camera?)", self.cfg.queues.capture,
                        frame.name or "", frame.color_frame_number, total)

    def _put_blocking(self, q: queue.Queue, item) -> bool:
        while True:
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                if self._abort.is_set():
                    return False

    def _put_end(self, q: queue.Queue) -> None:
        while True:
            try:
                q.put(_END, timeout=_POLL_S)
                return
            except queue.Full:
                if self._abort.is_set():  # the consumer is not draining: make room
                    try:
                        item = q.get_nowait()
                        if isinstance(item, Frame) or (isinstance(item, tuple) and item[0] == "result"):
                            self.counters.inc("dropped_at_shutdown")
                    except queue.Empty:
                        pass

    # ------------------------------------------------------------------ inference thread

    def _inference_loop(self) -> None:
        try:
            while True:
                try:
                    item = self._capture_q.get(timeout=_POLL_S)
                except queue.Empty:
                    continue  # no frames and no timeouts: capture is hung -> no watchdog ping
                if item is _END:
                    break
                if self._abort.is_set():
                    if isinstance(item, Frame):
                        self.counters.inc("dropped_at_shutdown")
                    continue
                if isinstance(item, _Tick):
                    if item.kind == "reopened":
                        self.selector.reset()
                    self._maybe_ping()
                    continue
                result, jpeg = self.inspect(item)
                self._enqueue(("result", result, jpeg))
                self._maybe_ping()
        except Exception as exc:
            self._set_fatal(EXIT_FATAL, f"inference thread crashed: {_short_error(exc, 500)}")
            self._abort.set()
        finally:
            self._put_end(self._results_q)

    def inspect(self, frame: Frame) -> tuple[InspectionResult, bytes | None]:
        """One frame -> exactly one result (and an overlay JPEG for rejects). Never raises for
        bad frames or engine failures: those become ``no_decision`` results."""
        t0 = time.monotonic()
        seq = self._seq
        self._seq += 1
        capture_ms = (t0 - frame.capture_time) * 1000.0 if frame.capture_time else 0.0
        params = self.bundle.preprocess

        # Preprocess what is there (zeros stand in for an absent stream: the shared code path, and
        # an all-missing depth map costs nothing). Malformed input is left to the fallback to name.
        pre, pre_err = None, None
        if frame.rgb is not None or frame.depth is not None:
            try:
                pre = preprocess(*_inputs(frame, STREAMS), params)
            except Exception as exc:
                pre_err = exc
        t_pre = time.monotonic()

        dvf = pre.valid_fraction if (pre is not None and frame.depth is not None) else None
        decision = self.selector.update(frame, depth_valid_fraction=dvf)
        mode, reason = decision.mode, decision.reason
        if decision.changed:
            self._mode_changed(decision, seq)

        if mode is not None and pre is None:  # the full preprocess failed: retry with only the mode's streams
            try:
                pre = preprocess(*_inputs(frame, MODE_STREAMS[mode]), params)
                pre_err = None
            except Exception as exc:
                pre_err = exc
            t_pre = time.monotonic()

        score = threshold = None
        verdict = "no_decision"
        info = None
        jpeg = None
        amap = None
        t_inf = t_pre
        if mode is None:
            pass  # reason: the fallback's ("none: no usable stream; ...")
        elif mode not in self.engines:  # cannot happen: available_modes are the loaded engines
            reason = f"{reason}; no engine loaded for mode '{mode}'"
            self.counters.inc("engine_errors")
        elif pre is None:
            self.counters.inc("preprocess_errors")
            reason = f"{reason}; preprocessing failed: {_short_error(pre_err)}"
            log.warning("frame seq %d (%s): preprocessing failed: %s", seq, frame.name, _short_error(pre_err))
        else:
            eng = self.engines[mode]
            info = eng.info
            spec = self.bundle.modes[mode]
            try:
                amap, raw = eng.run(_feed(pre, eng.inputs))
                t_inf = time.monotonic()
            except Exception as exc:
                t_inf = time.monotonic()
                self.counters.inc("engine_errors")
                reason = f"{reason}; engine error ({mode}): {_short_error(exc)}"
                log.error("frame seq %d (%s): engine for mode %s failed: %s", seq, frame.name, mode,
                          _short_error(exc, 500))
            else:
                s = _finite_or_none(raw if np.ndim(raw) == 0 else np.asarray(raw).reshape(-1)[0])
                if s is None:
                    self.counters.inc("engine_errors")
                    reason = f"{reason}; engine returned a non-finite score ({raw!r})"
                    log.error("frame seq %d (%s): mode %s returned a non-finite score", seq, frame.name, mode)
                else:
                    score, threshold = s, spec.threshold.score
                    verdict = "reject" if score > threshold else "pass"
                    if verdict == "reject" and self.cfg.heatmaps.on_reject:
                        jpeg = self._overlay(frame, pre, amap, mode, seq)

        t_end = time.monotonic()
        latency = Latency(capture_ms=capture_ms, preprocess_ms=(t_pre - t0) * 1000.0,
                          inference_ms=(t_inf - t_pre) * 1000.0,
                          total_ms=(t_end - frame.capture_time) * 1000.0 if frame.capture_time
                          else (t_end - t0) * 1000.0)
        result = InspectionResult(
            device_id=self.cfg.device_id, seq=seq, mode=mode, reason=reason, score=score, threshold=threshold,
            decision=verdict, color_frame_number=int(frame.color_frame_number),
            depth_frame_number=int(frame.depth_frame_number),
            color_timestamp_ms=_finite_or_none(frame.color_timestamp_ms),
            depth_timestamp_ms=_finite_or_none(frame.depth_timestamp_ms),
            wall_time=time.time(), latency=latency, model=info, frame_name=frame.name)
        self.counters.inc("frames_inspected")
        self.counters.inc(verdict)
        self.counters.inc_mode(mode)
        return result, jpeg

    def _overlay(self, frame: Frame, pre: Preprocessed, amap, mode: str, seq: int) -> bytes | None:
        from .overlay import overlay_jpeg

        spec = self.bundle.modes[mode]
        try:
            rgb = frame.rgb if "rgb" in MODE_STREAMS[mode] else None
            return overlay_jpeg(np.asarray(amap, np.float32), spec.heatmap.low, spec.heatmap.high, rgb=rgb,
                                height=pre.height, roi=self.bundle.preprocess.roi,
                                pixel_threshold=spec.threshold.pixel, quality=self.cfg.heatmaps.jpeg_quality,
                                max_width=self.cfg.heatmaps.max_width)
        except Exception as exc:
            self.counters.inc("overlay_errors")
            log.warning("frame seq %d: heatmap overlay failed (result sent without it): %s", seq,
                        _short_error(exc))
            return None

    def _mode_changed(self, decision, seq: int) -> None:
        self.mode = decision.mode
        if decision.previous is None and self.counters["mode_changes"] == 0 and seq == 0:
            level = logging.INFO if decision.mode == next(iter(self.engines), None) else logging.WARNING
            log.log(level, "mode %s (first frame): %s", decision.mode or "none", decision.reason)
        else:
            self.counters.inc("mode_changes")
            best = next((m for m in self.bundle.modes if m in self.engines), None)
            level = logging.INFO if decision.mode == best else logging.WARNING
            log.log(level, "mode change %s -> %s at seq %d: %s", decision.previous or "none",
                    decision.mode or "none", seq, decision.reason)
        status = {"state": "running", "event": "mode_change", "mode": decision.mode, "previous": decision.previous,
                  "reason": decision.reason, "seq": seq, "rgb": decision.rgb.reason, "depth": decision.depth.reason}
        self._enqueue(("status", status, None))

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
        busy = self._sink_busy_since
        if busy is not None and now - busy > self._watchdog_s:
            if now - self._last_ping < 2 * self._watchdog_s + _POLL_S:  # log once per missed ping
                log.error("sinks stuck in one publish for %.0f s: not pinging the watchdog", now - busy)
            return
        self._last_ping = now
        self.notifier.watchdog()

    # ------------------------------------------------------------------ sink thread

    def _sink_loop(self) -> None:
        try:
            while True:
                try:
                    item = self._results_q.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if item is _END:
                    break
                kind, payload, jpeg = item
                self._sink_busy_since = time.monotonic()
                for s in self.sinks:
                    try:
                        if kind == "result":
                            s.publish(payload, heatmap_jpeg=jpeg)
                        else:
                            s.publish_status(payload)
                    except Exception as exc:  # sinks should not raise; count it when one does
                        self.counters.inc("sink_errors")
                        log.error("sink %s: %s failed: %s", getattr(s, "name", type(s).__name__), kind,
                                  _short_error(exc))
                if kind == "result":
                    self.counters.inc("results_published")
                self._sink_busy_since = None
        except Exception as exc:
            self._set_fatal(EXIT_FATAL, f"sink thread crashed: {_short_error(exc, 500)}")
            self._abort.set()
        finally:
            self._sink_busy_since = None

    def _publish_direct(self, status: dict) -> None:
        """publish_status from the main thread (only while the sink thread is not running)."""
        status = {"device_id": self.cfg.device_id, **status}
        for s in self.sinks or ():
            try:
                s.publish_status(status)
            except Exception as exc:
                self.counters.inc("sink_errors")
                log.error("sink %s: status failed: %s", getattr(s, "name", type(s).__name__), _short_error(exc))

    # ------------------------------------------------------------------ status

    def stats(self) -> dict:
        c = self.counters.snapshot()
        out = {
            "device_id": self.cfg.device_id,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "mode": self.mode,
            "counters": c,
            "queues": {"capture": self._capture_q.qsize(), "capture_max": self.cfg.queues.capture,
                       "results": self._results_q.qsize(), "results_max": self.cfg.queues.results},
        }
        for name, obj in (("fallback", self.selector), ("source", self.source)):
            try:
                if obj is not None:
                    out[name] = obj.stats()
            except Exception:  # stats are best effort
                pass
        sinks = {}
        for s in self.sinks or ():
            try:
                sinks[getattr(s, "name", type(s).__name__)] = s.stats()
            except Exception:
                pass
        if sinks:
            out["sinks"] = sinks
        return out

    def _problems(self) -> dict:
        c = self.counters.snapshot()
        return {k: c[k] for k in ("frames_dropped", "results_dropped", "engine_errors", "preprocess_errors",
                                  "source_errors", "sink_errors", "status_dropped")}

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

    # ------------------------------------------------------------------ main

    def run(self) -> int:
        """Start, run until stopped or the replay ends, drain, close. Returns the exit code."""
        try:
            self.start()
        except StartupError as exc:
            return self._startup_failed(exc)
        return self.serve()

    def _startup_failed(self, exc: "StartupError") -> int:
        log.error("%s", exc)
        log.error("exit %d (%s)", exc.code, EXIT_CODES.get(exc.code, "?"))
        self._close_all()
        return exc.code

    def serve(self) -> int:
        """Run the started pipeline (``start()`` done) to the end."""
        if self.install_signal_handlers:
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        else:
            old = {}
        try:
            return self._serve()
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _serve(self) -> int:
        cfg = self.cfg
        self._started_at = time.monotonic()
        self._last_ping = time.monotonic()
        for name, fn in (("capture", self._capture_loop), ("inference", self._inference_loop),
                         ("sinks", self._sink_loop)):
            t = threading.Thread(target=fn, name=f"rgbd-{name}", daemon=True)
            self._threads.append(t)
        # READY (and the first ping) before the threads start: every later WATCHDOG=1 comes from
        # the inference loop.
        self.notifier.ready(f"running: {self.status_line()}")
        if self._watchdog_s is not None:
            self.notifier.watchdog()
        self.ready_event.set()
        self._report("running", via_queue=True)  # first in the results queue
        for t in reversed(self._threads):  # consumers first
            t.start()

        last_report = time.monotonic()
        last_logged: dict = self._problems()
        last_log = time.monotonic()
        stopping_sent = False
        drain_deadline = None
        while any(t.is_alive() for t in self._threads):
            time.sleep(_POLL_S)
            now = time.monotonic()
            if self._stop.is_set() and not stopping_sent:
                stopping_sent = True
                drain_deadline = now + DRAIN_TIMEOUT_S
                self.notifier.stopping(f"stopping ({self.end_reason}): draining")
                log.info("stopping (%s): draining %d queued frames and %d results", self.end_reason,
                         self._capture_q.qsize(), self._results_q.qsize())
            if drain_deadline is not None and now > drain_deadline:
                self._set_fatal(EXIT_FATAL, f"pipeline did not drain within {DRAIN_TIMEOUT_S:.0f} s "
                                            f"(threads still running: {', '.join(t.name for t in self._threads if t.is_alive())})")
                self._abort.set()
                for t in self._threads:
                    t.join(timeout=1.0)
                break
            if now - last_report >= cfg.status.interval_s:
                last_report = now
                line = self._report("running", via_queue=True)
                problems = self._problems()
                if problems != last_logged or now - last_log >= 60.0:
                    (log.warning if problems != last_logged else log.info)("status: %s", line)
                    last_logged, last_log = problems, now
                else:
                    log.debug("status: %s", line)

        # Sink thread done (or abandoned): final status straight to the sinks, then flush them.
        code = self._fatal[0] if self._fatal else EXIT_OK
        if not stopping_sent:
            self.notifier.stopping(f"stopping ({self.end_reason})")
        sink_thread_alive = any(t.is_alive() and t.name == "rgbd-sinks" for t in self._threads)
        final = "stopped" if code == EXIT_OK else "error"
        line = self.status_line()
        if not sink_thread_alive:
            extra = {"exit_code": code, "reason": self.end_reason}
            if self._fatal:
                extra["error"] = self._fatal[1]
            self._publish_direct({"state": final, "event": "stopped", **extra, **self.stats()})
        self._close_all()
        log.info("stopped (%s): %s", self.end_reason or "?", line)
        log.info("exit %d (%s)", code, EXIT_CODES.get(code, "?"))
        return code

    def _close_all(self) -> None:
        if self.source is not None:
            try:
                self.source.close()
            except Exception as exc:
                log.warning("source close failed: %s", _short_error(exc))
        deadline = time.monotonic() + SINK_CLOSE_TIMEOUT_S
        for s in self.sinks or ():  # gpio first (as make_sinks orders them), then mqtt, jsonl, console
            try:
                s.close(max(1.0, deadline - time.monotonic()))
            except Exception as exc:
                log.warning("sink %s close failed: %s", getattr(s, "name", type(s).__name__), _short_error(exc))
        for eng in (self.engines or {}).values():
            try:
                eng.close()
            except Exception as exc:
                log.warning("engine close failed: %s", _short_error(exc))
        self.notifier.close()


def _inputs(frame: Frame, streams) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, depth) for preprocess(): the frame's streams in ``streams``, zeros for the others."""
    rgb = frame.rgb if "rgb" in streams else None
    depth = frame.depth if "depth" in streams else None
    if rgb is None and depth is None:
        raise ValueError("no stream to preprocess")
    if rgb is None:
        rgb = np.zeros(depth.shape[:2] + (3,), np.uint8)
    if depth is None:
        depth = np.zeros(rgb.shape[:2], np.float32)
    return rgb, depth


def _optional_kwargs(fn, **kw) -> dict:
    """The subset of ``kw`` that ``fn`` accepts (and that is set)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    has_var = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in kw.items() if v is not None and (has_var or k in params)}


def _is_source_error(exc: BaseException) -> bool:
    try:
        from .sources.base import SourceError
    except ImportError:
        return False
    return isinstance(exc, SourceError)


# --------------------------------------------------------------------------- logging and entry point


class _JournalFormatter(logging.Formatter):
    """Under journald (JOURNAL_STREAM set) prefix the syslog priority (<3> error ... <7> debug) so
    `journalctl -p warning` works; journald adds the time stamp itself."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(level: str = "INFO", stream=None) -> logging.Handler:
    """One stderr handler on the root logger, simple format; time stamps only outside journald."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_rgbd_edge", False):
            root.removeHandler(h)
    handler._rgbd_edge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return handler


def run(config: Config | str | os.PathLike, max_frames: int | None = None, log_level: str | None = None) -> int:
    """Load the config (if a path), set up logging, run the daemon with signal handlers. Exit code.

    The logging set-up is undone on return, so ``run`` can be called from tests and tools."""
    root = logging.getLogger()
    level = root.level
    try:
        return _run(config, max_frames, log_level)
    finally:
        for h in list(root.handlers):
            if getattr(h, "_rgbd_edge", False):
                root.removeHandler(h)
        root.setLevel(level)


def _run(config, max_frames: int | None, log_level: str | None) -> int:
    if not isinstance(config, Config):
        try:
            config = load_config(config)
        except ConfigError as exc:
            setup_logging(log_level or "INFO")
            log.error("%s", exc)
            log.error("exit %d (%s)", EXIT_CONFIG, EXIT_CODES[EXIT_CONFIG])
            return EXIT_CONFIG
    setup_logging(log_level or config.log_level)
    log.info("rgbd-edge run: config %s, pid %d", config.path or "(in memory)", os.getpid())
    notifier = Notifier.from_env()
    if notifier.enabled:
        wd = notifier.watchdog_interval()
        log.info("systemd notify socket %s; watchdog %s", notifier.address,
                 f"ping every {wd:.1f} s" if wd and config.watchdog.enabled else "off")
    daemon = Daemon(config, max_frames=max_frames, notifier=notifier, install_signal_handlers=True)
    # Signals during start-up (engine builds can take minutes): exit 0 without serving.
    old = {s: signal.signal(s, _startup_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.start()
    except StartupError as exc:
        return daemon._startup_failed(exc)
    except _StartupInterrupted as exc:
        log.info("%s during start-up: exiting", exc)
        notifier.stopping()
        daemon._close_all()
        return EXIT_OK
    except Exception as exc:
        log.exception("start-up failed: %s", _short_error(exc))
        daemon._close_all()
        return EXIT_FATAL
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return daemon.serve()


class _StartupInterrupted(Exception):
    pass


def _startup_signal(signum, _frame):
    raise _StartupInterrupted(signal.Signals(signum).name)
