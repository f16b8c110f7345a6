"""``run()``: what `rgbd-edge run` does. Load the configuration, set up logging, install the
signal handlers, take the single-instance lock, start the daemon, serve, return the exit code.

Signals (signals.py) are handled from before the lock to the last line: a SIGTERM or SIGINT at
any point is a requested stop and ends with exit 0, closing what was opened.

* During start-up the steps (sinks, bundle, engines and a TensorRT build or the wait for
  another build, warm-up, source) run in a start-up thread while the main thread waits for them
  or for a stop. A stop is honoured between two steps; a step that is still running
  ``STARTUP_STOP_GRACE_S`` after the stop (a TensorRT build in C code, a camera reset) is not
  waited for: what was opened is closed and the process exits 0 (a second signal skips even
  that wait).
* Once serving, the first signal drains, a second one aborts the drain.
* While the sinks close (MQTT outbox flush, JSONL fsync), stop signals are recorded and ignored.
* SIGHUP reloads the bundle (reload.py); during start-up it is kept for after READY.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from ..config import Config, ConfigError, load_config
from ..notify import Notifier
from . import lock
from .control import POLL_S
from .exits import EXIT_CODES, EXIT_CONFIG, EXIT_FATAL, EXIT_LOCKED, EXIT_OK, StartupError, StartupInterrupted, \
    short_error
from .logsetup import remove_handlers, setup_logging
from .pipeline import Daemon
from .signals import SignalRouter

log = logging.getLogger("edge.daemon")

STARTUP_STOP_GRACE_S = 10.0  # how long a stop during start-up waits for the running step to return


def run(config: Config | str | os.PathLike, max_frames: int | None = None, log_level: str | None = None) -> int:
    """Load the config (if a path), set up logging, run the daemon with signal handlers. Exit code.

    The logging set-up and the signal handlers are undone on return, so ``run`` can be called
    from tests and tools."""
    root = logging.getLogger()
    level = root.level
    signals = SignalRouter().install()
    try:
        return _run(config, max_frames, log_level, signals)
    finally:
        signals.restore()
        remove_handlers(root)
        root.setLevel(level)


def _run(config, max_frames: int | None, log_level: str | None, signals: SignalRouter) -> int:
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
    try:
        held = lock.acquire(config.device_id)
    except lock.InstanceLocked as exc:  # before any sink: the running instance's broker session is untouched
        log.error("%s", exc)
        log.error("exit %d (%s)", EXIT_LOCKED, EXIT_CODES[EXIT_LOCKED])
        return EXIT_LOCKED
    except OSError as exc:
        log.error("instance lock: %s", short_error(exc, 500))
        log.error("exit %d (%s)", EXIT_FATAL, EXIT_CODES[EXIT_FATAL])
        return EXIT_FATAL
    with held:
        log.info("instance lock %s held", held.path)
        notifier = Notifier.from_env()
        if notifier.enabled:
            wd = notifier.watchdog_interval()
            log.info("systemd notify socket %s; watchdog %s", notifier.address,
                     f"ping every {wd:.1f} s" if wd and config.watchdog.enabled else "off")
        daemon = Daemon(config, max_frames=max_frames, notifier=notifier, signals=signals)
        daemon.poll_signals()  # a signal before there was a daemon to take it (config, lock)
        code = start(daemon)
        return daemon.serve() if code is None else code


def start(daemon: Daemon) -> int | None:
    """``daemon.start()`` in a start-up thread, the main thread waiting for it or for a stop
    request; None when started, else the exit code."""
    box: dict = {}
    t = threading.Thread(target=_start_body, args=(daemon, box), name="rgbd-start", daemon=True)
    t.start()
    grace_end = None
    while t.is_alive():
        t.join(POLL_S)
        daemon.poll_signals()
        if daemon.control.stop.is_set() and grace_end is None and t.is_alive():
            log.info("%s during start-up (%s): stopping after this step", daemon.end_reason, daemon.phase)
            grace_end = time.monotonic() + STARTUP_STOP_GRACE_S
        if grace_end is not None and t.is_alive() and (time.monotonic() > grace_end or daemon.control.abort.is_set()):
            log.warning("start-up step '%s' still running after the stop request: not waiting for it", daemon.phase)
            break
    daemon.poll_signals()
    if daemon.control.stop.is_set():  # a requested stop wins over whatever the start-up did
        return daemon.stopped_during_startup(f"{daemon.end_reason} during start-up ({daemon.phase})")
    if "error" in box:
        return daemon.startup_failed(box["error"])
    if "crash" in box:
        exc = box["crash"]
        log.error("start-up failed: %s", short_error(exc), exc_info=exc)
        daemon.close_all()
        log.error("exit %d (%s)", EXIT_FATAL, EXIT_CODES[EXIT_FATAL])
        return EXIT_FATAL
    return None


def _start_body(daemon: Daemon, box: dict) -> None:
    try:
        daemon.start()
    except StartupInterrupted:
        box["interrupted"] = True
        daemon.close_all()  # what this thread opened after the main thread stopped waiting
    except StartupError as exc:
        box["error"] = exc
        if daemon.control.stop.is_set():
            daemon.close_all()
    except Exception as exc:
        box["crash"] = exc
        if daemon.control.stop.is_set():
            daemon.close_all()
