"""Reload the model bundle on SIGHUP without dropping a frame.

``Reloader.request()`` (main thread) starts a background thread that does what start-up does
with the bundle at ``cfg.bundle`` as it is now (on an installed device a ``current`` link,
resolved at this moment): ``load_bundle`` with the configured verification, engines for every
mode (ONNX Runtime sessions, or TensorRT engines from the cache, built when missing), one
warm-up inference each, and the fallback's check of the new modes. The running model serves
every frame meanwhile. Only a complete, warmed-up model is handed over: the inference thread
calls ``take()`` between two frames and swaps it in, so no frame is dropped and none is scored
by a half-built model. Results before the swap carry the old bundle's digest, after it the new
one's.

If anything fails, the running model stays, the failure is logged, counted
(``bundle_reloads_failed``), published as a status event ``bundle_reload_failed`` with the
reason, and reported as a health problem until a reload succeeds. Requests that arrive while a
reload runs are folded into one more reload after it.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from ..config import Config
from ..notify import Notifier
from . import startup
from .counters import Counters
from .exits import StartupError, short_error

log = logging.getLogger("edge.daemon")


@dataclass
class LoadedModel:
    """A bundle with its engines loaded and warmed up, ready to be swapped in."""

    bundle: object
    engines: dict
    available_modes: tuple


def bundle_digest(bundle) -> str:
    return getattr(bundle, "digest", "") or ""


def load_model(cfg: Config) -> LoadedModel:
    """Bundle, engines, warm-up and fallback check, as start-up does them; raises StartupError
    (or anything a loader raises). Engines loaded before a failure are closed."""
    bundle = startup.bundle_from_config(cfg)
    # No systemd start timeout to extend: the service is running (a no-op notifier).
    engines = startup.engines_from_config(cfg, bundle, Notifier(None))
    try:
        startup.check_engines(cfg, bundle, engines)
        startup.selector_from_config(cfg, bundle, engines)  # the fallback accepts the new modes
    except BaseException:
        close_engines(engines)
        raise
    return LoadedModel(bundle, engines, tuple(m for m in bundle.modes if m in engines))


def close_engines(engines: dict | None) -> None:
    for eng in (engines or {}).values():
        try:
            eng.close()
        except Exception as exc:
            log.warning("engine close failed: %s", short_error(exc))


class Reloader:
    """One reload at a time in a background thread; the result waits in ``take()``.

    ``on_failed(reason)`` is called from the reload thread after a failed reload (the daemon
    publishes and records it); ``loader`` is ``load_model`` (tests may pass another)."""

    def __init__(self, cfg: Config, counters: Counters, on_failed: Callable[[str], None],
                 loader: Callable[[Config], LoadedModel] = load_model):
        self.cfg = cfg
        self.counters = counters
        self.on_failed = on_failed
        self.loader = loader
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False
        self._ready: LoadedModel | None = None
        self._closed = False

    def request(self) -> None:
        """Start a reload (or one more after the running one)."""
        with self._lock:
            if self._closed:
                return
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                log.info("SIGHUP: a bundle reload is running; reloading once more after it")
                return
            self._thread = threading.Thread(target=self._run, name="rgbd-reload", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            log.info("SIGHUP: reloading the bundle %s", self.cfg.bundle)
            try:
                loaded = self.loader(self.cfg)
            except Exception as exc:  # StartupError, a loader's error, a bug: the running model stays
                reason = str(exc) if isinstance(exc, StartupError) else short_error(exc, 500)
                self.counters.inc("bundle_reloads_failed")
                log.error("bundle reload failed, still running the previous model: %s", reason)
                self.on_failed(reason)
            else:
                self._offer(loaded)
            with self._lock:
                if not self._again or self._closed:
                    return
                self._again = False

    def _offer(self, loaded: LoadedModel) -> None:
        with self._lock:
            stale, self._ready = self._ready, loaded
            closed = self._closed
        if stale is not None:  # a newer reload finished before the older one was swapped in
            close_engines(stale.engines)
        if closed:
            self.close()
        log.info("bundle %s loaded and warmed up (modes %s); switching at the next frame",
                 getattr(loaded.bundle, "root", "?"), ", ".join(loaded.available_modes))

    def take(self) -> LoadedModel | None:
        """The model to swap in now, or None (inference thread, between two frames)."""
        if self._ready is None:  # unlocked fast path: checked once per frame
            return None
        with self._lock:
            loaded, self._ready = self._ready, None
        return loaded

    def close(self) -> None:
        """No more reloads; a loaded model that was never swapped in is closed. A reload still
        loading is left to finish in its (daemon) thread and closes what it loaded."""
        with self._lock:
            self._closed = True
            loaded, self._ready = self._ready, None
        if loaded is not None:
            close_engines(loaded.engines)
