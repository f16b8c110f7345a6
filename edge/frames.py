"""The one sample type every reader, preprocessor and model sees."""
from __future__ import annotations

from dataclasses import dataclass, field

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
    stale one re-sent by playback or a stalled stream.
    """

    rgb: np.ndarray | None  # H x W x 3 uint8, RGB order
    depth: np.ndarray | None  # H x W float32 metres, 0 = missing, aligned to rgb
    color_frame_number: int = -1
    depth_frame_number: int = -1
    color_timestamp_ms: float = float("nan")
    depth_timestamp_ms: float = float("nan")
    intrinsics: Intrinsics | None = None
    capture_time: float = 0.0  # time.monotonic() when the frame was received
    source: str = ""
    name: str = ""  # e.g. the file stem during folder replay
    label: int = -1  # known only for labelled replays
