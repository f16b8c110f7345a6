"""Test-only hooks for a real `python -m edge.cli run` subprocess (tests/test_daemon_signals.py).

This directory is put first on the subprocess's PYTHONPATH, so Python imports this module at
start-up; nothing in edge/ knows about it. Environment:

* ``RGBD_TEST_HOLD=<phase>`` and ``RGBD_TEST_GATE=<path>``: the start-up step ``<phase>`` (sinks,
  bundle, engines, warmup, source) first creates ``<path>.entered``, then waits until
  ``<path>.release`` exists before it does its real work: the test can send a signal while the
  daemon is in that step.
* ``RGBD_TEST_CLOSED=<path>``: every real close of a source, a JSONL sink or an ONNX Runtime
  engine appends a line (``source``, ``sink jsonl``, ``engine <mode>``) to that file, so the
  test sees that what was opened got closed.
"""
import os
import time
from pathlib import Path

_STEPS = {"sinks": "sinks_from_config", "bundle": "bundle_from_config", "engines": "engines_from_config",
          "warmup": "check_engines", "source": "open_for_start"}


def _hold(phase: str, gate: str) -> None:
    from edge.daemon import startup

    name = _STEPS[phase]
    real = getattr(startup, name)

    def held(*args, **kwargs):
        Path(gate + ".entered").touch()
        while not Path(gate + ".release").exists():
            time.sleep(0.02)
        return real(*args, **kwargs)

    setattr(startup, name, held)


def _record_closes(path: str) -> None:
    from edge.engines.onnxruntime_engine import OnnxRuntimeEngine
    from edge.sinks.files import JsonlSink
    from edge.sources.base import BaseSource

    def note(what: str) -> None:
        with open(path, "a") as f:
            f.write(what + "\n")

    def wrap(cls, label):
        real = cls.close

        def close(self, *args, **kwargs):
            was_open = getattr(self, "is_open", True) and not getattr(self, "_closed", False)
            out = real(self, *args, **kwargs)
            if was_open:
                note(label(self))
            return out

        cls.close = close

    wrap(BaseSource, lambda s: "source")
    wrap(JsonlSink, lambda s: "sink jsonl")
    wrap(OnnxRuntimeEngine, lambda s: f"engine {s.mode}")


if os.environ.get("RGBD_TEST_HOLD"):
    _hold(os.environ["RGBD_TEST_HOLD"], os.environ["RGBD_TEST_GATE"])
if os.environ.get("RGBD_TEST_CLOSED"):
    _record_closes(os.environ["RGBD_TEST_CLOSED"])
