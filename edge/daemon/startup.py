"""Start-up of the daemon, one step per function: sinks, bundle, engines (systemd's start timeout
extended while they load or build), their check and warm-up, the fallback's mode selector, the
source. Each step raises ``StartupError`` carrying the exit code that names what failed.

``Daemon.start`` runs them in this order; the sinks come first so a later failure is published.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time

from ..bundle import BundleError, load_bundle
from ..config import Config, ConfigError, check_fallback
from ..engines import DEFAULT_WORKSPACE_MIB, load_engines
from ..fallback import ModeSelector
from ..notify import Notifier
from ..sinks import make_sinks
from ..sources import SourceError, open_source
from .exits import EXIT_BUNDLE, EXIT_CONFIG, EXIT_ENGINE, EXIT_FATAL, EXIT_SOURCE, StartupError, short_error
from .inspector import zero_feed

log = logging.getLogger("edge.daemon")

ENGINE_LOAD_MAX_S = 3600.0  # start-up: how long engine loading/building may extend systemd's start timeout
EXTEND_EVERY_S = 30.0
EXTEND_BY_S = 120.0


def sinks_from_config(cfg: Config) -> list:
    """The configured sinks, started; at least one."""
    try:
        sinks = make_sinks(cfg.sinks, cfg.device_id)
    except (ValueError, TypeError, KeyError, ImportError) as exc:  # ImportError: a sink's library is missing
        msg = str(exc)
        raise StartupError(EXIT_CONFIG, msg if msg.startswith("sinks") else f"sinks: {msg}") from exc
    except Exception as exc:  # e.g. a GPIO chip that cannot be opened
        raise StartupError(EXIT_FATAL, f"sinks could not be started: {short_error(exc)}") from exc
    if not sinks:
        raise StartupError(EXIT_CONFIG, "sinks: no sink configured (results would go nowhere)")
    return list(sinks)


def bundle_from_config(cfg: Config):
    """The configured bundle, loaded (and its files' hashes checked unless ``engine.verify_hashes`` is
    off); with ``trusted_keys`` configured, it must be signed by one of them. The SIGHUP reload
    calls this too, so a reloaded bundle passes exactly the checks of a start."""
    keys = getattr(cfg, "trusted_keys", ())  # signed bundles: the keys the device trusts
    extra = {"trusted_keys": keys} if keys else {}
    try:
        return load_bundle(cfg.bundle, verify_hashes=cfg.engine.verify_hashes, **extra)
    except BundleError as exc:
        raise StartupError(EXIT_BUNDLE, f"bundle: {exc}") from exc


def log_bundle(bundle) -> None:
    log.info("bundle %s: model %s %s, modes %s", bundle.root, bundle.model_name, bundle.model_version,
             ", ".join(bundle.modes))


def engines_from_config(cfg: Config, bundle, notifier: Notifier) -> dict:
    """One engine per mode of ``bundle`` as the ``engine`` section asks (a first start on a device
    builds TensorRT engines: the start timeout is extended meanwhile)."""
    ecfg = cfg.engine
    t0 = time.monotonic()
    try:
        with extend_start_timeout(notifier, "loading engines (a first start builds TensorRT engines)"):
            engines = dict(load_engines(
                bundle, backend=ecfg.backend, precision=ecfg.precision, cache_dir=ecfg.cache_dir,
                build_missing=ecfg.build_missing, cuda=ecfg.cuda, intra_op_num_threads=ecfg.threads,
                workspace_mib=ecfg.workspace_mib if ecfg.workspace_mib is not None else DEFAULT_WORKSPACE_MIB))
    except Exception as exc:  # EngineError, missing runtime, TensorRT build failure, ...
        raise StartupError(EXIT_ENGINE, f"engines: {short_error(exc, 500)}") from exc
    log.info("engines loaded in %.1f s", time.monotonic() - t0)
    return engines


def check_engines(cfg: Config, bundle, engines: dict) -> None:
    """At least one engine, each for a mode of the bundle; one zero-input inference each when
    ``engine.warmup`` is on (so the first frame does not pay for lazy initialisation)."""
    if not engines:
        raise StartupError(EXIT_ENGINE, "engines: no engine could be loaded for any mode of the bundle")
    unknown = [m for m in engines if m not in bundle.modes]
    if unknown:
        raise StartupError(EXIT_ENGINE, f"engines: modes {unknown} are not in the bundle")
    if not cfg.engine.warmup:
        return
    for mode, eng in engines.items():
        try:
            eng.run(zero_feed(eng.inputs, bundle.image_size))
        except Exception as exc:
            raise StartupError(EXIT_ENGINE, f"engine for mode '{mode}' failed its warm-up inference: "
                                            f"{short_error(exc, 500)}") from exc


def selector_from_config(cfg: Config, bundle, engines: dict) -> ModeSelector:
    """The fallback's mode selector over the modes that have an engine, in bundle order."""
    available = tuple(m for m in bundle.modes if m in engines)
    try:
        fb = check_fallback(cfg.path, cfg.fallback, available_modes=available)
    except ConfigError as exc:
        raise StartupError(EXIT_CONFIG, str(exc)) from exc
    return ModeSelector(fb)


def source_from_config(cfg: Config):
    """The configured source, not yet opened."""
    try:
        return open_source(dict(cfg.source))
    except SourceError as exc:
        raise StartupError(EXIT_SOURCE, f"source: {short_error(exc, 500)}") from exc
    except Exception as exc:  # a bad source section (unknown key, wrong type): the configuration's fault
        raise StartupError(EXIT_CONFIG, f"source: {short_error(exc, 500)}") from exc


def open_for_start(source) -> None:
    """Open ``source`` (a camera that is not there, an empty recording: exit 5)."""
    try:
        source.open()
    except Exception as exc:
        raise StartupError(EXIT_SOURCE, f"source {getattr(source, 'name', '')} could not be opened: "
                                        f"{short_error(exc, 500)}") from exc


def log_ready(cfg: Config, bundle, engines: dict, source, sinks: list, watchdog_s: float | None) -> None:
    modes = ", ".join(f"{m} ({getattr(e.info, 'engine', '?')} {getattr(e.info, 'precision', '?')})"
                      for m, e in engines.items())
    log.info("ready: device %s, bundle %s %s, modes %s, source %s, sinks %s", cfg.device_id,
             bundle.model_name, bundle.model_version, modes, getattr(source, "name", "?"),
             ", ".join(getattr(s, "name", type(s).__name__) for s in sinks))
    if watchdog_s is not None and cfg.read_timeout_s >= watchdog_s:
        log.warning("source.read_timeout_s %.1f s is not below half the watchdog timeout (%.1f s): the "
                    "watchdog may fire while the camera is merely silent", cfg.read_timeout_s, watchdog_s)


@contextlib.contextmanager
def extend_start_timeout(notifier: Notifier, what: str):
    """While ``what`` runs, keep extending systemd's start timeout (EXTEND_TIMEOUT_USEC), up to
    ENGINE_LOAD_MAX_S in total: TensorRT builds on first start take minutes, the rest of the
    start-up must fit the unit's TimeoutStartSec. (The watchdog is not armed before READY=1.)"""
    done = threading.Event()
    t0 = time.monotonic()

    def keepalive():
        while not done.wait(EXTEND_EVERY_S):
            elapsed = time.monotonic() - t0
            if elapsed > ENGINE_LOAD_MAX_S:
                log.error("%s: still running after %.0f s; no longer extending the start timeout", what, elapsed)
                return
            notifier.extend_timeout(EXTEND_BY_S, f"starting: {what} ({elapsed:.0f} s)")
            log.info("%s ... (%.0f s)", what, elapsed)

    notifier.extend_timeout(EXTEND_BY_S, f"starting: {what}")
    t = threading.Thread(target=keepalive, name="rgbd-start-keepalive", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join(timeout=1.0)
