"""``run()``: what `rgbd-edge run` does. Load the configuration, set up logging, start the daemon
with SIGTERM/SIGINT handlers, serve, return the exit code.

A signal during start-up (a first start may build TensorRT engines for minutes) ends the process
with exit 0 without serving; once serving, the first signal drains, a second one aborts.
"""
from __future__ import annotations

import logging
import os
import signal

from ..config import Config, ConfigError, load_config
from ..notify import Notifier
from .exits import EXIT_CODES, EXIT_CONFIG, EXIT_FATAL, EXIT_OK, StartupError, short_error
from .logsetup import remove_handlers, setup_logging
from .pipeline import Daemon

log = logging.getLogger("edge.daemon")


def run(config: Config | str | os.PathLike, max_frames: int | None = None, log_level: str | None = None) -> int:
    """Load the config (if a path), set up logging, run the daemon with signal handlers. Exit code.

    The logging set-up is undone on return, so ``run`` can be called from tests and tools."""
    root = logging.getLogger()
    level = root.level
    try:
        return _run(config, max_frames, log_level)
    finally:
        remove_handlers(root)
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
    code = _start(daemon)
    return daemon.serve() if code is None else code


def _start(daemon: Daemon) -> int | None:
    """``daemon.start()`` with signals ending the start-up; None when started, else the exit code."""
    old = {s: signal.signal(s, _startup_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.start()
    except StartupError as exc:
        return daemon.startup_failed(exc)
    except _StartupInterrupted as exc:
        log.info("%s during start-up: exiting", exc)
        daemon.notifier.stopping()
        daemon.close_all()
        return EXIT_OK
    except Exception as exc:
        log.exception("start-up failed: %s", short_error(exc))
        daemon.close_all()
        return EXIT_FATAL
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return None


class _StartupInterrupted(Exception):
    pass


def _startup_signal(signum, _frame):
    raise _StartupInterrupted(signal.Signals(signum).name)
