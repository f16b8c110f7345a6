"""What every frame source is: the exceptions, the ``Source`` protocol, and shared bookkeeping.

A source yields :class:`edge.frames.Frame`s from ``read(timeout_s)``:

- :class:`FrameTimeout` - no frame within the timeout; the source stays usable (read again).
- :class:`EndOfStream`  - a finite replay or recording has ended (read again: it ends again).
- :class:`SourceError`  - unrecoverable: bad file, bad data, device absent after every retry.
  The caller may ``close()`` and ``open()`` again.

Configuration mistakes are found before anything opens and raise ``ValueError``
(:class:`SourceConfigError`) naming the key; see ``edge.sources.validate_source_config``.

This module imports only the standard library, ``edge.checks`` and ``edge.frames``.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Protocol, runtime_checkable

from edge.checks import CheckError
from edge.frames import Frame, Intrinsics


class SourceError(RuntimeError):
    """Unrecoverable source failure: bad file, bad config at open, device absent after retries."""


class FrameTimeout(TimeoutError):
    """No frame arrived within the timeout. The source stays usable: read again."""


class EndOfStream(Exception):
    """A finite replay or recording ended (never raised by a live camera)."""


class SourceConfigError(CheckError):
    """A source configuration is invalid (a ``ValueError``). ``key`` is the offending key below
    ``source`` (e.g. ``"fps"``); the message starts with ``source.<key>:``."""


@runtime_checkable
class Source(Protocol):
    """The contract the daemon and the capture tool rely on."""

    name: str

    def open(self) -> None: ...

    def read(self, timeout_s: float = 1.0) -> Frame: ...

    def close(self) -> None: ...

    def stats(self) -> dict: ...

    def __enter__(self) -> "Source": ...

    def __exit__(self, *exc) -> None: ...


#: Counters every source reports from ``stats()`` (a source may add more; all values are ints).
COMMON_COUNTERS = (
    "frames",         # frames delivered by read()
    "timeouts",       # reads (or frame waits) that ran out of time
    "reconnects",     # successful reconnections of a live camera
    "errors",         # device or read errors that were retried
    "stale_depth",    # delivered frames whose depth frame number did not advance
    "stale_color",    # delivered frames whose colour frame number did not advance
    "duplicates",     # framesets identical to the previous one (both numbers unchanged): not delivered
    "dropped",        # framesets read but not delivered (currently: the duplicates)
    "gaps_depth",     # depth frame numbers skipped by the device/recording (sum of the gaps)
    "gaps_color",     # colour frame numbers skipped
    "missing_rgb",    # delivered frames with rgb None
    "missing_depth",  # delivered frames with depth None
)


class FrameTracker:
    """Watches the device frame numbers of delivered frames and counts staleness.

    - a frameset whose present streams all carry the same frame numbers as the previous frame
      (and the same streams are present) is a *duplicate*: ``observe`` returns False and the
      caller does not deliver it (counted in ``duplicates`` and ``dropped``);
    - otherwise a depth (colour) frame number equal to the previous one is counted in
      ``stale_depth`` (``stale_color``); the frame is delivered with its numbers unchanged so
      downstream logic can see the staleness itself;
    - an advance by more than one is a gap (``gaps_depth``/``gaps_color`` add the missing count);
      a decrease (a looped recording, a reconnected camera) is neither.
    """

    def __init__(self, counters: dict):
        self.counters = counters
        self.reset()

    def reset(self) -> None:
        self._last_key: tuple | None = None
        self._last = {"depth": None, "color": None}

    def observe(self, frame: Frame) -> bool:
        c = frame.color_frame_number if frame.rgb is not None else None
        d = frame.depth_frame_number if frame.depth is not None else None
        key = (c, d)
        if self._last_key is not None and key == self._last_key and (c is not None or d is not None):
            self.counters["duplicates"] += 1
            self.counters["dropped"] += 1
            return False
        for stream, num in (("depth", d), ("color", c)):
            if num is None:
                continue
            last = self._last[stream]
            if last is not None:
                if num == last:
                    self.counters[f"stale_{stream}"] += 1
                elif num > last + 1:
                    self.counters[f"gaps_{stream}"] += num - last - 1
            self._last[stream] = num
        self._last_key = key
        if frame.rgb is None:
            self.counters["missing_rgb"] += 1
        if frame.depth is None:
            self.counters["missing_depth"] += 1
        self.counters["frames"] += 1
        return True


class BaseSource:
    """Shared plumbing: counters, context manager, lazy open on the first ``read``.

    Subclasses implement ``_open()``, ``_read(timeout_s)`` and ``_close()``.
    ``open()`` is idempotent; ``read()`` opens a never-opened source; after ``close()``,
    ``read()`` raises SourceError until ``open()`` is called again (counters are kept).
    """

    name: str = "source"
    extra_counters: tuple = ()

    def __init__(self, *, sleep: Callable[[float], None] | None = None,
                 clock: Callable[[], float] | None = None):
        self._sleep = sleep or time.sleep
        self._clock = clock or time.monotonic
        self._counters = {k: 0 for k in COMMON_COUNTERS + tuple(self.extra_counters)}
        self._tracker = FrameTracker(self._counters)
        self._is_open = False
        self._was_opened = False

    # -- public API --------------------------------------------------------------
    def open(self) -> None:
        if self._is_open:
            return
        self._tracker.reset()
        self._open()
        self._is_open = True
        self._was_opened = True

    def read(self, timeout_s: float = 1.0) -> Frame:
        if not self._is_open:
            if self._was_opened:
                raise SourceError(f"{self.name}: read() after close(); call open() first")
            self.open()
        return self._read(float(timeout_s))

    def close(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        self._close()

    def stats(self) -> dict:
        return dict(self._counters)

    @property
    def is_open(self) -> bool:
        return self._is_open

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, open={self._is_open})"

    # -- for subclasses ----------------------------------------------------------
    def _open(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, timeout_s: float) -> Frame:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def intrinsics_from_dict(d: Any) -> Intrinsics | None:
    """``{"fx", "fy", "cx", "cy", "width", "height"}`` (as in dataset.yaml) -> Intrinsics, else None."""
    if not isinstance(d, dict):
        return None
    try:
        return Intrinsics(width=int(d["width"]), height=int(d["height"]), fx=float(d["fx"]),
                          fy=float(d["fy"]), cx=float(d["cx"]), cy=float(d["cy"]))
    except (KeyError, TypeError, ValueError):
        return None


def intrinsics_to_dict(intr: Intrinsics | None) -> dict | None:
    """The dataset.yaml form of :class:`Intrinsics` (what ``write_folder_sample`` takes)."""
    if intr is None:
        return None
    return {"fx": float(intr.fx), "fy": float(intr.fy), "cx": float(intr.cx), "cy": float(intr.cy),
            "width": int(intr.width), "height": int(intr.height)}
