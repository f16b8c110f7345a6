"""Frame sources: a live RealSense camera, a RealSense recording (.bag/.db3) or a dataset folder
replayed as frames. All yield :class:`edge.frames.Frame` through the :class:`Source` protocol.

```python
from edge.sources import open_source, FrameTimeout, EndOfStream
with open_source({"type": "folder", "path": "data/", "split": "test"}) as src:
    while True:
        try:
            frame = src.read(timeout_s=1.0)
        except FrameTimeout:
            continue
        except EndOfStream:
            break
```

``open_source(cfg)`` checks the configuration and builds the source; it does not touch the
device or the files (``open()``, the ``with`` statement or the first ``read()`` does).
Configuration keys and behaviour are described in docs/sources.md.

pyrealsense2 is imported only when a RealSense source opens.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..checks import Checker, describe
from .base import (
    COMMON_COUNTERS,
    BaseSource,
    EndOfStream,
    FrameTimeout,
    FrameTracker,
    Source,
    SourceConfigError,
    SourceError,
)

__all__ = [
    "COMMON_COUNTERS",
    "DEFAULTS",
    "FILTERS",
    "SOURCE_TYPES",
    "BaseSource",
    "EndOfStream",
    "FrameTimeout",
    "FrameTracker",
    "Source",
    "SourceConfigError",
    "SourceError",
    "open_source",
    "validate_source_config",
]

SOURCE_TYPES = ("realsense", "recording", "folder")
#: librealsense post-processing filters we allow, in the order they are applied.
FILTERS = ("spatial", "temporal", "hole_filling")
RECORDING_SUFFIXES = (".bag", ".db3")

#: Every accepted key per type with its default (``"path"`` is required where listed as None).
DEFAULTS: dict[str, dict[str, Any]] = {
    "realsense": {
        "serial": None,               # None = the first camera found
        "width": 640,
        "height": 480,
        "fps": 30,
        "align_to_color": True,
        "filters": [],
        "hardware_reset": True,        # reset the camera before (re)starting it
        "timeout_ms": 1000,            # one librealsense frame wait
        "timeouts_before_reconnect": 3,  # consecutive frame-wait timeouts that trigger a reconnect
        "reconnect_backoff_s": [0.5, 1, 2, 5, 10],  # delay before each reconnect attempt
    },
    "recording": {
        "path": None,                  # .bag (ROS1, as librealsense writes it up to 2.57) or .db3
        "realtime": False,             # False: every frame, as fast as read; True: at recorded pace
        "loop": False,
        "align_to_color": True,
        "filters": [],
    },
    "folder": {
        "path": None,                  # MVTec 3D-AD category folder or rgbd-folder dataset
        "split": "test",
        "fps": 0,                      # 0 = as fast as read
        "loop": False,
    },
}


# Errors name keys below `source` (exc.key "fps"; the message reads "source.fps: ...").
_CHECK = Checker(prefix="source", error=SourceConfigError)

# Upper bounds: beyond them a value is a typo or a unit mistake, and some would crash or hang the
# daemon later (a frame buffer of 100000 x 100000 pixels, a wait of 1e10 ms). The RealSense D4xx
# streams at most 1920 x 1080 (colour) and 300 fps (depth at low resolution).
MAX_SIDE = 4096            # width, height (pixels)
MAX_FPS = 1000             # realsense and folder fps
MAX_TIMEOUT_MS = 60_000    # one librealsense frame wait
MAX_TIMEOUTS = 1000        # timeouts_before_reconnect
MAX_BACKOFF_S = 3600.0     # one reconnect delay
MAX_BACKOFF_STEPS = 100    # entries of reconnect_backoff_s


def validate_source_config(cfg: Any) -> dict:
    """Check a source configuration and return a new dict with every default filled in.

    Raises :class:`SourceConfigError` (a ``ValueError``) naming the offending key for an unknown
    type, an unknown key, a missing ``path`` or a value of the wrong type. Does not check that
    files exist or that a camera is connected (``open()`` does).
    """
    if not isinstance(cfg, dict):
        raise _CHECK.fail("type", f"a source configuration must be a mapping, got {type(cfg).__name__}")
    if cfg.get("type") is None:
        raise _CHECK.fail("type", f"missing required key (one of {', '.join(SOURCE_TYPES)})")
    kind = cfg["type"]
    if kind not in SOURCE_TYPES:
        raise _CHECK.fail("type", f"unknown source type {kind!r}; expected one of {', '.join(SOURCE_TYPES)}")
    allowed = DEFAULTS[kind]
    _CHECK.keys(cfg, None, ("type", *allowed), context=f" for a '{kind}' source")
    out: dict[str, Any] = {"type": kind}
    for k, default in allowed.items():
        v = cfg.get(k, default)
        out[k] = list(v) if isinstance(v, (list, tuple)) else v
    {"realsense": _check_realsense, "recording": _check_recording, "folder": _check_folder}[kind](out)
    if "filters" in out:
        out["filters"] = _check_filters(out["filters"])
    return out


def _check_realsense(out: dict) -> None:
    s = out["serial"]
    if isinstance(s, int) and not isinstance(s, bool):
        out["serial"] = str(s)  # YAML reads an unquoted serial as a number
    elif s is not None and (not isinstance(s, str) or not s.strip()):
        raise _CHECK.fail("serial", f"must be the camera's serial number as a string, or null, got {describe(s)}")
    for k, top in (("width", MAX_SIDE), ("height", MAX_SIDE), ("fps", MAX_FPS),
                   ("timeouts_before_reconnect", MAX_TIMEOUTS)):
        _at_most(_CHECK.positive_int(out[k], k), k, top)
    _at_most(_CHECK.number(out["timeout_ms"], "timeout_ms", lo=0, lo_open=True), "timeout_ms", MAX_TIMEOUT_MS)
    for k in ("align_to_color", "hardware_reset"):
        _CHECK.boolean(out[k], k)
    b = out["reconnect_backoff_s"]
    if not isinstance(b, list) or not b or len(b) > MAX_BACKOFF_STEPS:
        raise _CHECK.fail("reconnect_backoff_s", f"must be a non-empty list of at most {MAX_BACKOFF_STEPS} "
                                                 f"delays in seconds, got {describe(b)}")
    out["reconnect_backoff_s"] = [_at_most(_CHECK.number(x, f"reconnect_backoff_s[{i}]", lo=0),
                                           f"reconnect_backoff_s[{i}]", MAX_BACKOFF_S) for i, x in enumerate(b)]


def _check_recording(out: dict) -> None:
    _check_path(out)
    if Path(out["path"]).suffix.lower() not in RECORDING_SUFFIXES:
        raise _CHECK.fail("path", f"{out['path']}: a recording must be a {' or '.join(RECORDING_SUFFIXES)} file "
                                  "(for a dataset folder use type 'folder')")
    for k in ("realtime", "loop", "align_to_color"):
        _CHECK.boolean(out[k], k)


def _check_folder(out: dict) -> None:
    _check_path(out)
    if not isinstance(out["split"], str) or not out["split"]:
        raise _CHECK.fail("split", f"must be a split folder name such as 'test', got {describe(out['split'])}")
    _at_most(_CHECK.number(out["fps"], "fps", lo=0), "fps", MAX_FPS)
    _CHECK.boolean(out["loop"], "loop")


def _at_most(value: float, key: str, top: float) -> float:
    """``value`` (already checked from below) when it is at most ``top``; the error names the bound."""
    if value > top:
        raise _CHECK.fail(key, f"must be at most {top:g}, got {value:g}")
    return value


def _check_path(out: dict) -> None:
    v = out["path"]
    if v is None:
        raise _CHECK.fail("path", "missing required key (the file or folder to replay)")
    if not isinstance(v, (str, os.PathLike)) or not str(v):
        raise _CHECK.fail("path", f"must be a path, got {describe(v)}")
    out["path"] = str(v)


def _check_filters(f: Any) -> list[str]:
    """The post-processing filters, in librealsense's recommended order."""
    if f is None:
        return []
    if not isinstance(f, list) or not all(isinstance(x, str) for x in f):
        raise _CHECK.fail("filters", f"must be a list of filter names ({', '.join(FILTERS)}), got {describe(f)}")
    for x in f:
        if x == "decimation":
            raise _CHECK.fail(
                "filters", "'decimation' is not supported: it changes the depth resolution, so depth would no "
                           "longer match the colour image and the model input; lower width/height instead")
        if x not in FILTERS:
            raise _CHECK.fail("filters", f"unknown filter {x!r}; accepted: {', '.join(FILTERS)}")
    if len(set(f)) != len(f):
        raise _CHECK.fail("filters", f"lists a filter twice: {f}")
    return [x for x in FILTERS if x in f]


def open_source(cfg: dict, **kwargs) -> BaseSource:
    """Build the source ``cfg`` describes (checked by :func:`validate_source_config`).

    The source is not opened yet: use ``with open_source(cfg) as src:``, call ``open()``, or just
    ``read()`` (which opens a never-opened source). Keyword arguments (``sleep``, ``clock``, and
    for RealSense ``starter``) are test hooks passed to the source class.
    """
    c = validate_source_config(cfg)
    if c["type"] == "folder":
        from .replay import FolderSource

        return FolderSource(c, **kwargs)
    from .realsense import RealSenseSource

    return RealSenseSource(c, **kwargs)
