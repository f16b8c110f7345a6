"""The one sample type every reader, preprocessor and model sees."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RGBDSample:
    """One registered RGB-D capture.

    rgb:   H x W x 3 uint8, RGB channel order (not OpenCV's BGR).
    depth: H x W float32, metres along the optical axis; 0 marks a missing point.
    mask:  H x W bool ground-truth anomaly mask, or None where unlabelled.
    label: 0 good, 1 anomalous, -1 unknown.
    """

    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray | None = None
    label: int = -1
    defect: str = ""
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"{self.name or 'sample'}: rgb must be HxWx3, got {self.rgb.shape}")
        if self.depth.shape != self.rgb.shape[:2]:
            raise ValueError(
                f"{self.name or 'sample'}: rgb {self.rgb.shape[:2]} and depth {self.depth.shape} sizes differ"
            )
        if self.mask is not None and self.mask.shape != self.depth.shape:
            raise ValueError(f"{self.name or 'sample'}: mask {self.mask.shape} does not match depth {self.depth.shape}")


@dataclass
class Intrinsics:
    """Pinhole intrinsics of the colour stream (depth is aligned to it)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float


@dataclass
class Frame:
    """One capture as the runtime sees it: either stream may be absent (None).

    Timestamps are the device's, in milliseconds; frame numbers are the
    device's counters. Both let the runtime tell a fresh depth frame from a
    stale one re-sent by playback or a stalled stream, and a depth frame from
    another capture than the colour frame's (docs/fallback.md, "Same capture").
    Unknown counters are -1 (frame numbers) and NaN (timestamps); any other value
    outside their domain (None, a negative number, infinity, not a number at all)
    makes that stream unusable for the frame (``counter_problem``).

    Depth is float metres. A source that hands over integer counts must declare
    ``depth_scale`` (metres per count); integer depth without it is refused by the
    fallback rather than read as metres (a uint16 millimetre map would otherwise look
    like a wall 1000 m away).
    """

    rgb: np.ndarray | None  # H x W x 3 uint8, RGB order
    depth: np.ndarray | None  # H x W float32 metres (or counts x depth_scale), 0 = missing, aligned to rgb
    color_frame_number: int = -1
    depth_frame_number: int = -1
    color_timestamp_ms: float = float("nan")
    depth_timestamp_ms: float = float("nan")
    intrinsics: Intrinsics | None = None
    capture_time: float = 0.0  # time.monotonic() when the frame was received
    source: str = ""
    name: str = ""  # e.g. the file stem during folder replay
    label: int = -1  # known only for labelled replays
    depth_scale: float | None = None  # metres per unit of `depth`; None: depth is float metres already
    frame_period_ms: float | None = None  # the source's nominal frame period (1000 / fps), None when unknown


UNKNOWN_FRAME_NUMBER = -1


def counter_problem(frame_number: Any, timestamp_ms: Any) -> str | None:
    """Why a stream's counters are unusable, or None when each is valid or unknown.

    A frame number is an integer >= 0, or -1 when unknown; a timestamp a finite number >= 0 ms,
    or NaN when unknown. Anything else (None, NaN or a fraction as a frame number, infinity,
    a negative timestamp, a string) is corrupt: the fallback cannot tell whether the stream's
    frame is fresh or from this capture, so it does not use it (fail closed)."""
    fn = frame_number
    if isinstance(fn, bool) or not isinstance(fn, numbers.Integral) or fn < UNKNOWN_FRAME_NUMBER:
        return f"frame number {_show(fn)} (expected an integer >= 0, or -1 when unknown)"
    ts = timestamp_ms
    if isinstance(ts, bool) or not isinstance(ts, numbers.Real) or (
            not math.isnan(ts) and (math.isinf(ts) or ts < 0)):
        return f"timestamp {_show(ts)} (expected milliseconds >= 0, or NaN when unknown)"
    return None


def frame_number_or_unknown(v: Any) -> int:
    """``v`` as an int when it is a valid frame number, else -1 (results always carry an int)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < UNKNOWN_FRAME_NUMBER:
        return UNKNOWN_FRAME_NUMBER
    return int(v)


def depth_problem(depth: Any, depth_scale: Any) -> str | None:
    """Why ``depth`` cannot be read as metres (None when it can): not a 2-D numeric array,
    integer counts without a declared scale, or a scale that is not a positive finite number."""
    if not isinstance(depth, np.ndarray) or depth.ndim != 2 or depth.size == 0 \
            or not (np.issubdtype(depth.dtype, np.floating) or np.issubdtype(depth.dtype, np.integer)):
        return (f"depth map shape {getattr(depth, 'shape', None)} "
                f"dtype {getattr(depth, 'dtype', type(depth).__name__)}, expected HxW float metres")
    if depth_scale is not None:
        ok = (not isinstance(depth_scale, bool) and isinstance(depth_scale, numbers.Real)
              and math.isfinite(depth_scale) and depth_scale > 0)
        if not ok:
            return f"depth scale {_show(depth_scale)} (expected metres per count > 0)"
    elif np.issubdtype(depth.dtype, np.integer):
        return f"depth dtype {depth.dtype}: expected float metres (or a declared depth_scale)"
    return None


def depth_metres(frame: "Frame") -> np.ndarray | None:
    """The frame's depth as float32 metres, or None when it is absent or cannot be read as
    metres (``depth_problem``)."""
    d = frame.depth
    if d is None or depth_problem(d, frame.depth_scale) is not None:
        return None
    if frame.depth_scale is None:
        return d
    return d.astype(np.float32) * np.float32(frame.depth_scale)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
