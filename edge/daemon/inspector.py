"""One frame -> one inspection result, without threads.

``Inspector.inspect(frame)`` preprocesses the frame, lets the fallback's ``ModeSelector`` choose
the mode the healthy streams allow, runs that mode's engine, applies the bundle's threshold and,
for a reject, renders the heatmap overlay JPEG. The daemon's inference thread calls it once per
frame; a benchmark or a tool can drive it directly with a bundle, engines and a selector.

Every call produces exactly one ``InspectionResult`` with the next sequence number (gap-free from
0). It never raises for bad frames or engine failures: those become ``no_decision`` results whose
reason names the error, and are counted. Even an unexpected error inside the inspection (a bug, a
frame the checks did not foresee) becomes a counted ``no_decision`` (``inspect_errors``): the
pipeline goes on, and the part is never passed uninspected.

``swap_model`` replaces the bundle and its engines between two frames (the daemon's SIGHUP
reload); every result names the bundle it was scored with (``model.bundle_digest``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from ..config import HeatmapConfig
from ..fallback import ModeDecision, ModeSelector
from ..frames import Frame, depth_metres, frame_number_or_unknown
from ..modes import MODE_STREAMS, STREAMS
from ..overlay import overlay_jpeg
from ..preprocess import Preprocessed, preprocess
from ..results import InspectionResult, Latency
from .counters import Counters
from .exits import short_error

log = logging.getLogger("edge.daemon")


def engine_feed(pre: Preprocessed, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Engine inputs, batch 1, in the export's layout (convert/export.py)."""
    arrays = {
        "rgb": lambda: pre.rgb[None],
        "depth": lambda: pre.depth[None],
        "foreground": lambda: pre.foreground[None, None].astype(np.float32),
    }
    return {n: np.ascontiguousarray(arrays[n](), dtype=np.float32) for n in names}


def zero_feed(names: Iterable[str], size: int) -> dict[str, np.ndarray]:
    """All-zero engine inputs of the export's shapes (the warm-up inference)."""
    shapes = {"rgb": (1, 3, size, size), "depth": (1, 3, size, size), "foreground": (1, 1, size, size)}
    return {n: np.zeros(shapes[n], np.float32) for n in names}


def finite_or_none(v: Any) -> float | None:
    """``v`` as a float when it is a finite number, else None (results carry no NaN)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def stream_inputs(frame: Frame, streams: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, depth) for preprocess(): the frame's streams in ``streams``, zeros for the others.
    Depth in metres (integer counts times their declared scale); depth that cannot be read as
    metres is left out (the fallback names it malformed, so no mode uses it)."""
    rgb = frame.rgb if "rgb" in streams else None
    depth = depth_metres(frame) if "depth" in streams else None
    if rgb is None and depth is None:
        raise ValueError("no stream to preprocess")
    if rgb is None:
        rgb = np.zeros(depth.shape[:2] + (3,), np.uint8)
    if depth is None:
        depth = np.zeros(rgb.shape[:2], np.float32)
    return rgb, depth


@dataclass
class Inspection:
    """What one frame produced. ``mode_change`` is the status message (event ``mode_change``) to
    publish before the result when this frame changed the mode, else None."""

    result: InspectionResult
    jpeg: bytes | None
    mode_change: dict | None = None


@dataclass
class _Verdict:
    """The engine/threshold part of a result; ``decision`` stays ``no_decision`` unless scored."""

    reason: str
    decision: str = "no_decision"
    score: float | None = None
    threshold: float | None = None
    model: Any = None  # the engine's ModelInfo once an engine was chosen
    jpeg: bytes | None = None


class Inspector:
    """Frame -> ``Inspection``. ``engines`` maps mode -> Engine (the dict is used, not copied: an
    engine replaced in it is used from the next frame on); ``counters`` default to a fresh set."""

    def __init__(self, bundle, engines: dict, selector: ModeSelector, *, device_id: str,
                 heatmaps: HeatmapConfig | None = None, counters: Counters | None = None):
        self.bundle = bundle
        self.engines = engines
        self.selector = selector
        self.device_id = device_id
        self.heatmaps = heatmaps if heatmaps is not None else HeatmapConfig()
        self.counters = counters if counters is not None else Counters()
        self.mode: str | None = None  # the current mode (None before the first frame, or no usable stream)
        self.seq = 0  # the next result's sequence number

    def source_reopened(self) -> None:
        """The source was reopened: forget the streams' history (frame numbers restart)."""
        self.selector.reset()

    def swap_model(self, bundle, engines: dict, available_modes: tuple) -> None:
        """Use ``bundle`` and ``engines`` from the next frame on (call between two frames, from the
        thread that calls ``inspect``). The selector keeps its stream history: the camera did not
        change, only the model; it offers ``available_modes`` from now on."""
        self.bundle = bundle
        self.engines = engines
        self.selector.cfg = dataclasses.replace(self.selector.cfg, available_modes=tuple(available_modes))

    def inspect(self, frame: Frame) -> Inspection:
        """One frame -> exactly one result (and an overlay JPEG for rejects)."""
        t0 = time.monotonic()
        seq = self.seq
        self.seq += 1
        try:
            return self._inspect(frame, seq, t0)
        except Exception as exc:  # a bug or an unforeseen frame: this frame is not inspected, the rest are
            return self._failed(frame, seq, t0, exc)

    def _failed(self, frame: Frame, seq: int, t0: float, exc: Exception) -> Inspection:
        """The no_decision result of a frame whose inspection raised."""
        self.counters.inc("inspect_errors")
        log.error("frame seq %d: inspection failed (no_decision): %s", seq, short_error(exc, 500), exc_info=exc)
        v = _Verdict(reason=f"none: inspection failed: {short_error(exc)}")
        result = self._result(frame, seq, None, v, (t0, t0, t0))
        self.counters.inc("frames_inspected")
        self.counters.inc("no_decision")
        self.counters.inc_mode(None)
        return Inspection(result, None, None)

    def _inspect(self, frame: Frame, seq: int, t0: float) -> Inspection:
        # Preprocess what is there (zeros stand in for an absent stream: the shared code path, and
        # an all-missing depth map costs nothing). Malformed input is left to the fallback to name.
        pre, pre_err = None, None
        if frame.rgb is not None or frame.depth is not None:
            pre, pre_err = self._preprocess(frame, STREAMS)
        t_pre = time.monotonic()

        has_depth = depth_metres(frame) is not None
        dvf = pre.valid_fraction if (pre is not None and has_depth) else None
        decision = self.selector.update(frame, depth_valid_fraction=dvf)
        mode_change = self._mode_changed(decision, seq) if decision.changed else None
        mode = decision.mode
        if mode is not None and pre is None:  # the full preprocess failed: retry with only the mode's streams
            pre, pre_err = self._preprocess(frame, MODE_STREAMS[mode])
            t_pre = time.monotonic()

        verdict, t_inf = self._decide(frame, seq, decision, pre, pre_err, t_pre)
        result = self._result(frame, seq, mode, verdict, (t0, t_pre, t_inf))
        self.counters.inc("frames_inspected")
        self.counters.inc(verdict.decision)
        self.counters.inc_mode(mode)
        return Inspection(result, verdict.jpeg, mode_change)

    def _preprocess(self, frame: Frame, streams) -> tuple[Preprocessed | None, Exception | None]:
        try:
            return preprocess(*stream_inputs(frame, streams), self.bundle.preprocess), None
        except Exception as exc:
            return None, exc

    def _decide(self, frame: Frame, seq: int, decision: ModeDecision, pre: Preprocessed | None,
                pre_err: Exception | None, t_pre: float) -> tuple[_Verdict, float]:
        """Engine and threshold for the chosen mode; returns the verdict and the inference end time."""
        mode = decision.mode
        v = _Verdict(reason=decision.reason)
        if mode is None:
            return v, t_pre  # reason: the fallback's ("none: no usable stream; ...")
        if mode not in self.engines:  # cannot happen in the daemon: available_modes are the loaded engines
            v.reason = f"{v.reason}; no engine loaded for mode '{mode}'"
            self.counters.inc("engine_errors")
            return v, t_pre
        if pre is None:
            self.counters.inc("preprocess_errors")
            v.reason = f"{v.reason}; preprocessing failed: {short_error(pre_err)}"
            log.warning("frame seq %d (%s): preprocessing failed: %s", seq, frame.name, short_error(pre_err))
            return v, t_pre
        eng = self.engines[mode]
        v.model = dataclasses.replace(eng.info, bundle_digest=getattr(self.bundle, "digest", "") or "")
        try:
            amap, raw = eng.run(engine_feed(pre, eng.inputs))
        except Exception as exc:
            t_inf = time.monotonic()
            self.counters.inc("engine_errors")
            v.reason = f"{v.reason}; engine error ({mode}): {short_error(exc)}"
            log.error("frame seq %d (%s): engine for mode %s failed: %s", seq, frame.name, mode,
                      short_error(exc, 500))
            return v, t_inf
        t_inf = time.monotonic()
        self._score(v, frame, seq, mode, pre, amap, raw)
        return v, t_inf

    def _score(self, v: _Verdict, frame: Frame, seq: int, mode: str, pre: Preprocessed, amap, raw) -> None:
        """Threshold the engine's score into ``v`` (pass/reject, overlay for a reject)."""
        s = finite_or_none(raw if np.ndim(raw) == 0 else np.asarray(raw).reshape(-1)[0])
        if s is None:
            self.counters.inc("engine_errors")
            v.reason = f"{v.reason}; engine returned a non-finite score ({raw!r})"
            log.error("frame seq %d (%s): mode %s returned a non-finite score", seq, frame.name, mode)
            return
        v.score, v.threshold = s, self.bundle.modes[mode].threshold.score
        v.decision = "reject" if v.score > v.threshold else "pass"
        if v.decision == "reject" and self.heatmaps.on_reject:
            v.jpeg = self._overlay(frame, pre, amap, mode, seq)

    def _result(self, frame: Frame, seq: int, mode: str | None, v: _Verdict,
                times: tuple[float, float, float]) -> InspectionResult:
        """The result; every frame field is made JSON-safe (corrupt counters become unknown)."""
        t0, t_pre, t_inf = times
        t_end = time.monotonic()
        captured = finite_or_none(getattr(frame, "capture_time", None)) or 0.0
        latency = Latency(capture_ms=(t0 - captured) * 1000.0 if captured else 0.0,
                          preprocess_ms=(t_pre - t0) * 1000.0, inference_ms=(t_inf - t_pre) * 1000.0,
                          total_ms=(t_end - captured) * 1000.0 if captured else (t_end - t0) * 1000.0)
        name = getattr(frame, "name", "")
        return InspectionResult(
            device_id=self.device_id, seq=seq, mode=mode, reason=v.reason, score=v.score,
            threshold=v.threshold, decision=v.decision,
            color_frame_number=frame_number_or_unknown(getattr(frame, "color_frame_number", None)),
            depth_frame_number=frame_number_or_unknown(getattr(frame, "depth_frame_number", None)),
            color_timestamp_ms=finite_or_none(getattr(frame, "color_timestamp_ms", None)),
            depth_timestamp_ms=finite_or_none(getattr(frame, "depth_timestamp_ms", None)),
            wall_time=time.time(), latency=latency, model=v.model, frame_name=name if isinstance(name, str) else "")

    def _overlay(self, frame: Frame, pre: Preprocessed, amap, mode: str, seq: int) -> bytes | None:
        spec = self.bundle.modes[mode]
        try:
            rgb = frame.rgb if "rgb" in MODE_STREAMS[mode] else None
            return overlay_jpeg(np.asarray(amap, np.float32), spec.heatmap.low, spec.heatmap.high, rgb=rgb,
                                height=pre.height, roi=self.bundle.preprocess.roi,
                                pixel_threshold=spec.threshold.pixel, quality=self.heatmaps.jpeg_quality,
                                max_width=self.heatmaps.max_width)
        except Exception as exc:
            self.counters.inc("overlay_errors")
            log.warning("frame seq %d: heatmap overlay failed (result sent without it): %s", seq,
                        short_error(exc))
            return None

    def _mode_changed(self, decision: ModeDecision, seq: int) -> dict:
        """Record and log a mode change; returns its status message (event ``mode_change``)."""
        self.mode = decision.mode
        if decision.previous is None and self.counters["mode_changes"] == 0 and seq == 0:
            level = logging.INFO if decision.mode == next(iter(self.engines), None) else logging.WARNING
            log.log(level, "mode %s (first frame): %s", decision.mode or "none", decision.reason)
        else:
            self.counters.inc("mode_changes")
            best = next((m for m in self.bundle.modes if m in self.engines), None)
            level = logging.INFO if decision.mode == best else logging.WARNING
            log.log(level, "mode change %s -> %s at seq %d: %s", decision.previous or "none",
                    decision.mode or "none", seq, decision.reason)
        return {"state": "running", "event": "mode_change", "mode": decision.mode, "previous": decision.previous,
                "reason": decision.reason, "seq": seq, "rgb": decision.rgb.reason, "depth": decision.depth.reason}
