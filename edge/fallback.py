"""Missing-modality fallback: which mode (rgbd, rgb, depth or none) to run per frame.

Each frame, both streams get a health verdict (`StreamHealth`): absent, malformed,
stale (device frame number and timestamp not advancing), and for colour frozen,
black or saturated, for depth too many missing points. Hysteresis turns verdicts
into usability: an unhealthy stream is dropped only after `hold_bad` consecutive
unhealthy frames (absent or malformed: at once, there is nothing to feed), and a
dropped stream is used again only after `hold_good` consecutive healthy frames.
The mode is the best one the usable streams support that the bundle offers.

Pure state machine: no I/O, no clocks, numpy and OpenCV only. See docs/fallback.md.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields

import cv2
import numpy as np

from edge.checks import Checker
from edge.frames import Frame
from edge.modes import MODES, STREAMS

_STREAM_PROSE = {"rgb": "colour", "depth": "depth"}
# Health kinds (StreamHealth.kind); the unhealthy ones key stats()["reasons"].
HEALTH_KINDS = ("ok", "absent", "malformed", "stale", "frozen", "black", "saturated", "missing")
_IMMEDIATE = ("absent", "malformed")  # unusable at once, no hold_bad grace
_SAMPLE_SIDE = 128  # colour is checked on a strided sample of at most this many pixels per side


# ----------------------------------------------------------------------------- config

# Errors name keys below `fallback` (exc.key "hold_bad"; the message reads "fallback.hold_bad: ...").
_CHECK = Checker(prefix="fallback")
_COUNTS = ("stale_frames", "frozen_frames", "hold_bad", "hold_good")
_RANGES = {"max_missing_depth": (0.0, 1.0), "black_level": (0.0, 255.0), "saturated_level": (0.0, 255.0),
           "saturated_fraction": (0.0, 1.0)}


@dataclass
class FallbackConfig:
    max_missing_depth: float = 0.6  # depth unusable when the share of missing points exceeds this
    stale_frames: int = 2  # stale after this many consecutive frames whose frame number AND timestamp did not advance
    frozen_frames: int = 3  # colour frozen after this many consecutive identical images or non-advancing frame numbers
    black_level: float = 8.0  # mean grey below -> black (lens cap, lights off)
    saturated_level: float = 247.0  # mean grey above -> saturated
    saturated_fraction: float = 0.6  # or this share of pixels at 255
    hold_bad: int = 2  # consecutive unhealthy frames before a stream is dropped
    hold_good: int = 5  # consecutive healthy frames before a dropped stream is used again
    available_modes: tuple = MODES  # what the bundle offers

    def __post_init__(self) -> None:
        for name in _COUNTS:
            setattr(self, name, _CHECK.integer(getattr(self, name), name, lo=1))
        for name, (lo, hi) in _RANGES.items():
            setattr(self, name, _CHECK.number(getattr(self, name), name, lo, hi))
        if self.saturated_fraction <= 0:
            raise _CHECK.fail("saturated_fraction", f"must be > 0, got {self.saturated_fraction!r}")
        if self.black_level >= self.saturated_level:
            raise _CHECK.fail("black_level", f"must be below saturated_level ({self.saturated_level:g}), "
                                             f"got {self.black_level:g}")
        am = self.available_modes
        if isinstance(am, str) or not isinstance(am, (list, tuple)) or not am:
            raise _CHECK.fail("available_modes", f"must be a non-empty list of modes ({', '.join(MODES)}), "
                                                 f"got {am!r}")
        bad = [m for m in am if m not in MODES]
        if bad:
            raise _CHECK.fail("available_modes", f"unknown mode(s) {bad} (known modes: {', '.join(MODES)})")
        self.available_modes = tuple(dict.fromkeys(am))  # de-duplicated, order kept

    @classmethod
    def from_dict(cls, d) -> "FallbackConfig":
        """From the `fallback:` section of a config file; None or {} gives the defaults."""
        d = _CHECK.mapping(d, None, allow_none=True)
        _CHECK.keys(d, None, [f.name for f in fields(cls)])
        return cls(**d)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["available_modes"] = list(self.available_modes)
        return d


# ----------------------------------------------------------------------------- messages


@dataclass
class StreamHealth:
    ok: bool
    reason: str  # "ok", "absent", "black (mean 2.1)", "stale: depth frame number 41 not advancing for 2 frames", ...
    kind: str = "ok"  # one of HEALTH_KINDS: a stable key for counters and dashboards


@dataclass
class ModeDecision:
    mode: str | None  # rgbd | rgb | depth | None (no usable stream: the daemon emits "no_decision")
    reason: str  # "rgbd: both streams healthy", "rgb: depth unusable, stale: ...", ...
    changed: bool  # mode differs from the previous decision (True on the first decision)
    previous: str | None  # the previous decision's mode (None on the first decision)
    rgb: StreamHealth
    depth: StreamHealth


# ----------------------------------------------------------------------------- helpers


def _pct(x: float, limit: float | None = None) -> str:
    """Percent for reasons: whole numbers, one decimal when that would look equal to the limit."""
    s = f"{100 * x:.0f}"
    if limit is not None and s == f"{100 * limit:.0f}" and x != limit:
        s = f"{100 * x:.1f}"
    return s + "%"


def depth_valid_fraction(depth: np.ndarray) -> float:
    """Share of measured depth points (finite and > 0), as preprocessing counts them."""
    if depth.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    return float(np.count_nonzero(valid)) / depth.size


def _colour_sample(rgb: np.ndarray) -> np.ndarray:
    """Strided (not averaged) sample: keeps sensor noise, so a live static scene never hashes equal."""
    h, w = rgb.shape[:2]
    sy, sx = max(1, h // _SAMPLE_SIDE), max(1, w // _SAMPLE_SIDE)
    return np.ascontiguousarray(rgb[::sy, ::sx])


def _counters_known(fn: int, ts: float) -> tuple[bool, bool]:
    return fn is not None and fn >= 0, ts is not None and math.isfinite(ts)


@dataclass
class _StreamState:
    # counters of the last frame this stream was present in
    last_fn: int = -1
    last_ts: float = float("nan")
    stale_run: int = 0  # consecutive frames with frame number and timestamp not advancing
    fn_run: int = 0  # colour: consecutive frames with the frame number not advancing
    last_hash: bytes | None = None
    hash_run: int = 0  # colour: consecutive frames whose image equals the previous one
    # hysteresis
    usable: bool = False
    bad_run: int = 0
    good_run: int = 0
    last_problem: str = ""


# ----------------------------------------------------------------------------- selector


class ModeSelector:
    """Per-frame mode decision with hysteresis. One instance per camera; not thread-safe."""

    def __init__(self, cfg: FallbackConfig | None = None):
        self.cfg = cfg if cfg is not None else FallbackConfig()
        self.reset()

    def reset(self) -> None:
        """Forget stream history (e.g. after the source was reopened): the next frame decides
        without hysteresis. Stats and the last mode are kept, so `changed`/`previous` stay
        meaningful across the reset."""
        self._state = {s: _StreamState() for s in STREAMS}
        self._first = True  # next frame decides without hysteresis history
        if not hasattr(self, "_stats"):
            self._mode: str | None = None
            self._stats = {
                "frames": 0,
                "modes": {**{m: 0 for m in MODES}, "none": 0},
                "changes": 0,  # mode switches after the first decision
                "current": None,
                "reasons": {},  # "<stream>.<kind>" -> unhealthy frames
                "tolerated": {s: 0 for s in STREAMS},  # unhealthy frames still used (within hold_bad)
                "dropped": {s: 0 for s in STREAMS},  # usable -> unusable transitions
                "restored": {s: 0 for s in STREAMS},  # unusable -> usable transitions
                "restarts": {s: 0 for s in STREAMS},  # device counters went backwards (stream restart, replay loop)
            }

    # ------------------------------------------------------------------ counters

    def _advance(self, stream: str, fn: int, ts: float) -> tuple[str, bool]:
        """Compare with the stream's last counters: ('fresh'|'repeat'|'unknown', frame number stuck)."""
        st = self._state[stream]
        fn_ok, ts_ok = _counters_known(fn, ts)
        lfn_ok, lts_ok = _counters_known(st.last_fn, st.last_ts)
        cmp_fn, cmp_ts = fn_ok and lfn_ok, ts_ok and lts_ok
        fn_stuck = cmp_fn and fn == st.last_fn
        if not (cmp_fn or cmp_ts):
            status = "unknown"
        elif (cmp_fn and fn > st.last_fn) or (cmp_ts and ts > st.last_ts):
            status = "fresh"
        elif (cmp_fn and fn < st.last_fn) or (cmp_ts and ts < st.last_ts):
            status = "fresh"  # counters went backwards: a restart or a replay loop, i.e. a new frame
            self._stats["restarts"][stream] += 1
        else:
            status = "repeat"
        if fn_ok:
            st.last_fn = int(fn)
        if ts_ok:
            st.last_ts = float(ts)
        return status, fn_stuck

    def _stale_reason(self, stream: str, run: int) -> str:
        st = self._state[stream]
        name = _STREAM_PROSE[stream]
        if st.last_fn >= 0:
            what = f"{name} frame number {st.last_fn}"
            if math.isfinite(st.last_ts):
                what += f" (timestamp {st.last_ts:.1f} ms)"
        else:
            what = f"{name} timestamp {st.last_ts:.1f} ms"
        return f"stale: {what} not advancing for {run} frame{'s' if run != 1 else ''}"

    # ------------------------------------------------------------------ health

    def _colour_health(self, frame: Frame) -> StreamHealth:
        cfg, st = self.cfg, self._state["rgb"]
        rgb = frame.rgb
        if rgb is None:
            st.stale_run = st.fn_run = st.hash_run = 0
            return StreamHealth(False, "absent", "absent")
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 \
                or rgb.size == 0:
            st.stale_run = st.fn_run = st.hash_run = 0
            shape = getattr(rgb, "shape", None)
            dtype = getattr(rgb, "dtype", type(rgb).__name__)
            return StreamHealth(False, f"malformed: colour image shape {shape} dtype {dtype}, "
                                       f"expected HxWx3 uint8", "malformed")
        status, fn_stuck = self._advance("rgb", frame.color_frame_number, frame.color_timestamp_ms)
        st.stale_run = st.stale_run + 1 if status == "repeat" else 0
        st.fn_run = st.fn_run + 1 if fn_stuck else 0
        sample = _colour_sample(rgb)
        digest = hashlib.blake2b(sample.tobytes(), digest_size=16).digest() + bytes(str(sample.shape), "ascii")
        st.hash_run = st.hash_run + 1 if digest == st.last_hash else 0
        st.last_hash = digest

        if st.stale_run >= cfg.stale_frames:
            return StreamHealth(False, self._stale_reason("rgb", st.stale_run), "stale")
        grey = cv2.cvtColor(sample, cv2.COLOR_RGB2GRAY)
        mean = float(grey.mean())
        if mean < cfg.black_level:
            return StreamHealth(False, f"black (mean {mean:.1f}, limit {cfg.black_level:g})", "black")
        if mean > cfg.saturated_level:
            return StreamHealth(False, f"saturated (mean {mean:.1f}, limit {cfg.saturated_level:g})", "saturated")
        white = float(np.count_nonzero(sample.min(axis=2) == 255)) / (sample.shape[0] * sample.shape[1])
        if white >= cfg.saturated_fraction:
            return StreamHealth(False, f"saturated ({_pct(white, cfg.saturated_fraction)} of pixels at 255, "
                                       f"limit {_pct(cfg.saturated_fraction)})", "saturated")
        if st.hash_run >= cfg.frozen_frames:
            return StreamHealth(False, f"frozen: colour image identical to the previous one for "
                                       f"{st.hash_run} frames", "frozen")
        if st.fn_run >= cfg.frozen_frames:
            return StreamHealth(False, f"frozen: colour frame number {st.last_fn} not advancing for "
                                       f"{st.fn_run} frames (timestamp advancing)", "frozen")
        notes = []
        if st.stale_run:
            notes.append(f"counters repeated for {st.stale_run} frame{'s' if st.stale_run != 1 else ''}")
        if st.hash_run:
            notes.append(f"image repeated for {st.hash_run} frame{'s' if st.hash_run != 1 else ''}")
        return StreamHealth(True, "ok" + (f" ({'; '.join(notes)})" if notes else ""), "ok")

    def _depth_health(self, frame: Frame, valid_fraction: float | None) -> StreamHealth:
        cfg, st = self.cfg, self._state["depth"]
        depth = frame.depth
        if depth is None:
            st.stale_run = 0
            return StreamHealth(False, "absent", "absent")
        problem = None
        if not isinstance(depth, np.ndarray) or depth.ndim != 2 or depth.size == 0 \
                or not (np.issubdtype(depth.dtype, np.floating) or np.issubdtype(depth.dtype, np.integer)):
            problem = (f"malformed: depth map shape {getattr(depth, 'shape', None)} "
                       f"dtype {getattr(depth, 'dtype', type(depth).__name__)}, expected HxW float metres")
        elif isinstance(frame.rgb, np.ndarray) and frame.rgb.ndim == 3 and frame.rgb.shape[:2] != depth.shape:
            problem = (f"malformed: depth size {depth.shape[0]}x{depth.shape[1]} differs from colour "
                       f"{frame.rgb.shape[0]}x{frame.rgb.shape[1]} (align depth to colour)")
        if problem:
            st.stale_run = 0
            return StreamHealth(False, problem, "malformed")
        status, _ = self._advance("depth", frame.depth_frame_number, frame.depth_timestamp_ms)
        st.stale_run = st.stale_run + 1 if status == "repeat" else 0
        if st.stale_run >= cfg.stale_frames:
            return StreamHealth(False, self._stale_reason("depth", st.stale_run), "stale")
        vf = depth_valid_fraction(depth) if valid_fraction is None else valid_fraction
        missing = 1.0 - vf
        if missing > cfg.max_missing_depth:
            return StreamHealth(False, f"missing {_pct(missing, cfg.max_missing_depth)} of depth points "
                                       f"(limit {_pct(cfg.max_missing_depth)})", "missing")
        if st.stale_run:
            return StreamHealth(True, f"ok (counters repeated for {st.stale_run} "
                                      f"frame{'s' if st.stale_run != 1 else ''})", "ok")
        return StreamHealth(True, "ok", "ok")

    # ------------------------------------------------------------------ hysteresis

    def _hysteresis(self, stream: str, h: StreamHealth) -> None:
        st, cfg, stats = self._state[stream], self.cfg, self._stats
        if not h.ok:
            st.last_problem = h.reason
            key = f"{stream}.{h.kind}"
            stats["reasons"][key] = stats["reasons"].get(key, 0) + 1
        if self._first:  # no history: start in the best mode this frame supports
            st.usable = h.ok
            st.bad_run = 0 if h.ok else 1
            st.good_run = 1 if h.ok else 0
            return
        if h.ok:
            st.bad_run = 0
            st.good_run += 1
            if not st.usable and st.good_run >= cfg.hold_good:
                st.usable = True
                stats["restored"][stream] += 1
        else:
            st.good_run = 0
            st.bad_run += 1
            if st.usable:
                if h.kind in _IMMEDIATE or st.bad_run >= cfg.hold_bad:
                    st.usable = False
                    stats["dropped"][stream] += 1
                else:
                    stats["tolerated"][stream] += 1

    def _note(self, stream: str, h: StreamHealth) -> str | None:
        """What the mode reason says about one stream (None: healthy and used)."""
        st, name = self._state[stream], _STREAM_PROSE[stream]
        if st.usable:
            if h.ok:
                return None
            return f"{name} {h.reason} (tolerated {st.bad_run}/{self.cfg.hold_bad})"
        if h.ok:
            return (f"{name} unusable, recovering ({st.good_run}/{self.cfg.hold_good} healthy frames; "
                    f"last problem: {st.last_problem})")
        return f"{name} unusable, {h.reason}"

    # ------------------------------------------------------------------ public

    def update(self, frame: Frame, depth_valid_fraction: float | None = None) -> ModeDecision:
        """Decide this frame's mode.

        depth_valid_fraction: the share of measured depth points if preprocessing
        already computed it (Preprocessed.valid_fraction); else it is computed here
        from frame.depth (finite and > 0).
        """
        if depth_valid_fraction is not None:
            try:
                vf = float(depth_valid_fraction)
            except (TypeError, ValueError):
                raise ValueError(f"depth_valid_fraction must be a number in [0, 1], "
                                 f"got {depth_valid_fraction!r}") from None
            if not 0.0 <= vf <= 1.0:  # also rejects NaN
                raise ValueError(f"depth_valid_fraction must be a number in [0, 1], got {depth_valid_fraction!r}")
            depth_valid_fraction = vf
        rgb_h = self._colour_health(frame)
        depth_h = self._depth_health(frame, depth_valid_fraction)
        self._hysteresis("rgb", rgb_h)
        self._hysteresis("depth", depth_h)

        use_rgb, use_depth = self._state["rgb"].usable, self._state["depth"].usable
        if use_rgb and use_depth:
            ideal, candidates = "rgbd", MODES
        elif use_rgb:
            ideal, candidates = "rgb", ("rgb",)
        elif use_depth:
            ideal, candidates = "depth", ("depth",)
        else:
            ideal, candidates = None, ()
        avail = self.cfg.available_modes
        mode = next((m for m in candidates if m in avail), None)

        notes = [n for n in (self._note("rgb", rgb_h), self._note("depth", depth_h)) if n]
        parts = []
        if ideal is None:
            parts.append("no usable stream")
        elif mode != ideal:
            parts.append(f"{ideal} not in bundle (available: {', '.join(avail)})")
        if notes:
            parts.extend(notes)
        elif ideal == "rgbd":
            parts.append("both streams healthy")
        if ideal == "rgbd" and notes and all(self._state[s].usable for s in STREAMS):
            parts.insert(0 if mode == ideal else 1, "both streams usable")
        reason = f"{mode or 'none'}: " + "; ".join(parts)

        stats = self._stats
        previous = self._mode
        initial = stats["frames"] == 0
        changed = initial or mode != previous
        stats["frames"] += 1
        stats["modes"][mode or "none"] += 1
        if changed and not initial:
            stats["changes"] += 1
        stats["current"] = mode
        self._mode = mode
        self._first = False
        return ModeDecision(mode=mode, reason=reason, changed=changed, previous=previous, rgb=rgb_h, depth=depth_h)

    @property
    def mode(self) -> str | None:
        """The last decision's mode (None before the first frame or when no stream is usable)."""
        return self._mode

    def stats(self) -> dict:
        """Counters since construction (JSON-serialisable copy)."""
        s = self._stats
        return {
            "frames": s["frames"],
            "modes": dict(s["modes"]),
            "changes": s["changes"],
            "current": s["current"],
            "reasons": dict(sorted(s["reasons"].items())),
            "tolerated": dict(s["tolerated"]),
            "dropped": dict(s["dropped"]),
            "restored": dict(s["restored"]),
            "restarts": dict(s["restarts"]),
        }
