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

Exit codes (``EXIT_*``): 0 clean stop (a signal at any point, end of a replay, ``--max-frames``),
2 configuration error, 3 bundle error, 4 engine load error, 5 source could not be opened (at
start, or again after ``source.reopen_attempts`` failures in a row), 6 internal fatal error (a
pipeline thread crashed or the pipeline did not drain in time), 7 another instance holds this
device's lock.

The modules, one job each:

* ``inspector``: one frame -> one result, no threads (preprocess, mode, engine, threshold, overlay).
* ``startup``: sinks, bundle, engines (systemd start timeout extended), warm-up, selector, source.
* ``capture``, ``sinkloop``: the capture and sink threads; ``control``: stop/abort, queue markers.
* ``pipeline``: ``Daemon`` (start-up, the inference thread, status and health, watchdog, drain, close).
* ``reload``: SIGHUP, the bundle reloaded in the background and swapped in between two frames.
* ``main``: ``run()``, the command's entry (start-up in a thread a stop request can leave);
  ``signals``: the handlers, installed for the whole run; ``lock``: one instance per device id;
  ``logsetup``: logging (journald-aware).
* ``counters``, ``exits``: the counters; the exit codes, ``StartupError`` and ``StartupInterrupted``.
"""
from __future__ import annotations

from .counters import Counters
from .exits import (
    EXIT_BUNDLE,
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_ENGINE,
    EXIT_FATAL,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_SOURCE,
    StartupError,
    StartupInterrupted,
)
from .inspector import Inspection, Inspector
from .logsetup import setup_logging
from .main import STARTUP_STOP_GRACE_S, run
from .pipeline import DRAIN_TIMEOUT_S, SINK_CLOSE_TIMEOUT_S, Daemon
from .startup import ENGINE_LOAD_MAX_S, EXTEND_BY_S, EXTEND_EVERY_S

__all__ = [
    "Counters", "Daemon", "Inspection", "Inspector", "StartupError", "StartupInterrupted", "run", "setup_logging",
    "EXIT_OK", "EXIT_CONFIG", "EXIT_BUNDLE", "EXIT_ENGINE", "EXIT_SOURCE", "EXIT_FATAL", "EXIT_LOCKED", "EXIT_CODES",
    "DRAIN_TIMEOUT_S", "SINK_CLOSE_TIMEOUT_S", "STARTUP_STOP_GRACE_S", "ENGINE_LOAD_MAX_S", "EXTEND_EVERY_S",
    "EXTEND_BY_S",
]
