"""Replay a dataset split (MVTec 3D-AD category or rgbd-folder) as a stream of Frames.

Frame numbers are the sequence index of the read (both streams; it keeps counting across
``loop`` restarts, so it never repeats); timestamps are synthetic (``index * 1000 / fps``) when
``fps`` > 0, else the milliseconds since ``open()``. ``name``/``label`` come from the sample,
intrinsics from the dataset when it has them (rgbd-folder ``dataset.yaml``). Depth comes from the
dataset readers as float32 metres (an rgbd-folder's 16-bit PNGs times its ``depth_scale``), so the
Frame's ``depth_scale`` stays None.
"""
from __future__ import annotations

import time
from pathlib import Path

from edge.data import DatasetError, open_dataset
from edge.frames import Frame

from .base import BaseSource, EndOfStream, FrameTimeout, SourceError, intrinsics_from_dict


class FolderSource(BaseSource):
    extra_counters = ("loops",)

    def __init__(self, cfg: dict, *, sleep=None, clock=None):
        super().__init__(sleep=sleep, clock=clock)
        self.cfg = dict(cfg)
        self.path = Path(cfg["path"])
        self.split = cfg["split"]
        self.fps = float(cfg.get("fps") or 0)
        self.loop = bool(cfg.get("loop", False))
        self.name = f"folder:{self.path.name or self.path}/{self.split}"
        self._refs: list = []
        self._pos = 0
        self._seq = 0

    def __len__(self) -> int:
        """Samples in the split (0 before ``open()``)."""
        return len(self._refs)

    def _open(self) -> None:
        if not self.path.exists():
            raise SourceError(f"{self.name}: dataset folder {self.path} does not exist")
        try:
            refs = open_dataset(self.path, self.split)
        except DatasetError as e:
            raise SourceError(f"{self.name}: {e}") from e
        if not refs:
            raise SourceError(f"{self.name}: split {self.split!r} of {self.path} has no samples")
        self._refs = list(refs)
        self._pos = 0
        self._seq = 0
        self._t0 = self._clock()
        self._next_due = self._t0

    def _close(self) -> None:
        self._refs = []

    def _read(self, timeout_s: float) -> Frame:
        if self._pos >= len(self._refs):
            if not self.loop:
                raise EndOfStream(f"{self.name}: end of the {len(self._refs)} samples")
            self._pos = 0
            self._counters["loops"] += 1
        if self.fps > 0:
            wait = self._next_due - self._clock()
            if wait > timeout_s:
                self._sleep(max(timeout_s, 0.0))
                self._counters["timeouts"] += 1
                raise FrameTimeout(f"{self.name}: next frame is due in {wait:.3f} s (fps {self.fps:g}), "
                                   f"beyond the {timeout_s:g} s timeout")
            if wait > 0:
                self._sleep(wait)
        ref = self._refs[self._pos]
        try:
            sample = ref.load()
        except DatasetError as e:
            raise SourceError(f"{self.name}: cannot load {ref.name}: {e}") from e
        seq = self._seq
        if self.fps > 0:
            ts = seq * 1000.0 / self.fps
            # the next frame is due one period after this one; a slow reader does not get a burst
            self._next_due = max(self._next_due, self._clock()) + 1.0 / self.fps
        else:
            ts = (self._clock() - self._t0) * 1000.0
        intr = intrinsics_from_dict(ref.intrinsics) or intrinsics_from_dict(sample.meta.get("intrinsics"))
        frame = Frame(
            rgb=sample.rgb,
            depth=sample.depth,
            color_frame_number=seq,
            depth_frame_number=seq,
            color_timestamp_ms=ts,
            depth_timestamp_ms=ts,
            intrinsics=intr,
            capture_time=time.monotonic(),
            source=self.name,
            name=sample.name,
            label=sample.label,
            frame_period_ms=1000.0 / self.fps if self.fps > 0 else None,
        )
        self._pos += 1
        self._seq += 1
        self._tracker.observe(frame)
        return frame
