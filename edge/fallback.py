"""Missing-modality fallback: which mode (rgbd, rgb, depth or none) to run per frame.

Each frame, both streams get a health verdict (`StreamHealth`): absent, malformed
(including corrupt counters and integer depth without a declared scale), stale (a
re-send: device frame number and timestamp not advancing), unverified (counters lost),
for depth not from this capture (its timestamp more than half a frame period from the
colour frame's) and too many missing points, for colour frozen, black or saturated.

A stream that is unhealthy in a frame is never used for that frame (fail safe: a part
that was not really seen must not pass). Hysteresis only delays switching back: after
`hold_bad` consecutive unhealthy frames (absent or malformed: at once) the stream is
dropped, and a dropped stream is used again only after `hold_good` consecutive healthy
frames. The mode is the best one the streams used in this frame support that the
bundle offers.

Pure state machine: no I/O, no clocks, numpy and OpenCV only. See docs/fallback.md.
"""
from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass, fields

import cv2
import numpy as np

from edge.checks import Checker
from edge.frames import Frame, counter_problem, depth_problem
from edge.modes import MODES, STREAMS

_STREAM_PROSE = {"rgb": "colour", "depth": "depth"}
# Health kinds (StreamHealth.kind); the unhealthy ones key stats()["reasons"].
HEALTH_KINDS = ("ok", "absent", "malformed", "stale", "unverified", "unpaired", "frozen", "black", "saturated",
                "missing")
_IMMEDIATE = ("absent", "malformed")  # unusable at once, no hold_bad grace
_SAMPLE_SIDE = 128  # colour is checked on a strided sample of at most this many pixels per side
_PERIOD_STEPS = 16  # colour timestamp steps the frame period is estimated from (the smallest one)


# ----------------------------------------------------------------------------- config

# Errors name keys below `fallback` (exc.key "hold_bad"; the message reads "fallback.hold_bad: ...").
_CHECK = Checker(prefix="fallback")
_COUNTS = ("frozen_frames", "hold_bad", "hold_good")
_MAX_COUNT = 1000  # frames; at 30 fps a hold of 1000 frames is half a minute of a degraded line
_RANGES = {"max_missing_depth": (0.0, 1.0), "black_level": (0.0, 255.0), "saturated_level": (0.0, 255.0),
           "saturated_fraction": (0.0, 1.0)}
# Keys that were settings once and must not be silently accepted with their old meaning.
_REMOVED = {"stale_frames": "no longer a setting: a re-sent frame (counters not advancing) is stale from its "
                            "first repeat and never used (docs/fallback.md); remove the key"}


@dataclass
class FallbackConfig:
    max_missing_depth: float = 0.6  # depth unusable when the share of missing points exceeds this
    frozen_frames: int = 3  # colour frozen after this many consecutive identical images or non-advancing frame numbers
    black_level: float = 8.0  # mean grey below -> black (lens cap, lights off)
    saturated_level: float = 247.0  # mean grey above -> saturated
    saturated_fraction: float = 0.6  # or this share of pixels at 255
    hold_bad: int = 1  # consecutive unhealthy frames that drop a stream (then it needs hold_good to return)
    hold_good: int = 5  # consecutive healthy frames before a dropped stream is used again
    available_modes: tuple = MODES  # what the bundle offers

    def __post_init__(self) -> None:
        for name in _COUNTS:
            v = _CHECK.integer(getattr(self, name), name, lo=1)
            if v > _MAX_COUNT:
                raise _CHECK.fail(name, f"must be at most {_MAX_COUNT}, got {v}")
            setattr(self, name, v)
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
        for key, why in _REMOVED.items():
            if key in d:
                raise _CHECK.fail(key, why)
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
    """Which of a stream's counters are known (valid counters only: see edge.frames.counter_problem)."""
    return fn >= 0, not math.isnan(ts)


def _s(n: int) -> str:
    return "s" if n != 1 else ""


@dataclass
class _StreamState:
    # counters of the last frame this stream was present in
    last_fn: int = -1
    last_ts: float = float("nan")
    counters_seen: bool = False  # some counter of this stream was known since the last reset
    stale_run: int = 0  # consecutive frames with frame number and timestamp not advancing (re-sends)
    fn_run: int = 0  # colour: consecutive frames with the frame number not advancing
    last_hash: bytes | None = None
    hash_run: int = 0  # colour: consecutive frames whose image equals the previous one
    # hysteresis
    usable: bool = False  # not dropped (a usable stream is still not used in a frame where it is unhealthy)
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
        self._steps: deque = deque(maxlen=_PERIOD_STEPS)  # recent colour timestamp steps, ms
        self._first = True  # next frame decides without hysteresis history
        if not hasattr(self, "_stats"):
            self._mode: str | None = None
            self._stats = {
                "frames": 0,
                "modes": {**{m: 0 for m in MODES}, "none": 0},
                "changes": 0,  # mode switches after the first decision
                "current": None,
                "reasons": {},  # "<stream>.<kind>" -> unhealthy frames
                "skipped": {s: 0 for s in STREAMS},  # unhealthy frames of a stream not (yet) dropped: not used
                "dropped": {s: 0 for s in STREAMS},  # usable -> unusable transitions
                "restored": {s: 0 for s in STREAMS},  # unusable -> usable transitions
                "restarts": {s: 0 for s in STREAMS},  # device counters went backwards (stream restart, replay loop)
            }

    # ------------------------------------------------------------------ counters

    def _advance(self, stream: str, fn: int, ts: float) -> tuple[str, bool]:
        """Compare with the stream's last counters: ('fresh'|'repeat'|'unknown'|'lost', frame number
        stuck). 'lost': no counter of this frame can be compared with the last frame's although
        earlier frames had known counters."""
        st = self._state[stream]
        fn_ok, ts_ok = _counters_known(fn, ts)
        lfn_ok, lts_ok = _counters_known(st.last_fn, st.last_ts)
        cmp_fn, cmp_ts = fn_ok and lfn_ok, ts_ok and lts_ok
        fn_stuck = cmp_fn and fn == st.last_fn
        if not (cmp_fn or cmp_ts):  # nothing to compare: fine at the start, not once counters were known
            status = "lost" if st.counters_seen else "unknown"
        elif (cmp_fn and fn > st.last_fn) or (cmp_ts and ts > st.last_ts):
            status = "fresh"
        elif (cmp_fn and fn < st.last_fn) or (cmp_ts and ts < st.last_ts):
            status = "fresh"  # counters went backwards: a restart or a replay loop, i.e. a new frame
            self._stats["restarts"][stream] += 1
        else:
            status = "repeat"
        if stream == "rgb" and status == "fresh" and cmp_ts and ts > st.last_ts:
            self._steps.append(ts - st.last_ts)
        if fn_ok:
            st.last_fn = int(fn)
        if ts_ok:
            st.last_ts = float(ts)
        st.counters_seen = st.counters_seen or fn_ok or ts_ok
        return status, fn_stuck

    def _counter_health(self, stream: str, fn, ts) -> tuple[StreamHealth | None, str]:
        """Corrupt, lost or repeated counters as a verdict (None when none applies), and the
        advance status ('fresh', 'repeat', 'unknown', 'lost', or 'corrupt')."""
        st, name = self._state[stream], _STREAM_PROSE[stream]
        problem = counter_problem(fn, ts)
        if problem is not None:
            st.stale_run = st.fn_run = 0
            return StreamHealth(False, f"malformed: {name} {problem}", "malformed"), "corrupt"
        status, fn_stuck = self._advance(stream, fn, ts)
        st.stale_run = st.stale_run + 1 if status == "repeat" else 0
        st.fn_run = st.fn_run + 1 if fn_stuck else 0
        if status == "repeat":
            return StreamHealth(False, self._stale_reason(stream, st.stale_run), "stale"), status
        if status == "lost":
            return StreamHealth(False, f"unverified: {name} frame number and timestamp unknown after known "
                                       f"ones (cannot tell a new frame from a re-send)", "unverified"), status
        return None, status

    def _stale_reason(self, stream: str, run: int) -> str:
        st = self._state[stream]
        name = _STREAM_PROSE[stream]
        if st.last_fn >= 0:
            what = f"{name} frame number {st.last_fn}"
            if math.isfinite(st.last_ts):
                what += f" (timestamp {st.last_ts:.1f} ms)"
        else:
            what = f"{name} timestamp {st.last_ts:.1f} ms"
        return f"stale: {what} not advancing for {run} frame{_s(run)}"

    def _period_ms(self, frame: Frame) -> float | None:
        """The frame period: as the source declares it, else the smallest recent colour timestamp step."""
        p = frame.frame_period_ms
        if isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and p > 0:
            return float(p)
        return min(self._steps) if self._steps else None

    # ------------------------------------------------------------------ health

    def _colour_health(self, frame: Frame) -> tuple[StreamHealth, str]:
        """Colour's verdict and its counters' advance status (the depth pairing check needs it)."""
        cfg, st = self.cfg, self._state["rgb"]
        rgb = frame.rgb
        if rgb is None:
            st.stale_run = st.fn_run = st.hash_run = 0
            return StreamHealth(False, "absent", "absent"), "absent"
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 \
                or rgb.size == 0:
            st.stale_run = st.fn_run = st.hash_run = 0
            shape = getattr(rgb, "shape", None)
            dtype = getattr(rgb, "dtype", type(rgb).__name__)
            return StreamHealth(False, f"malformed: colour image shape {shape} dtype {dtype}, "
                                       f"expected HxWx3 uint8", "malformed"), "malformed"
        verdict, status = self._counter_health("rgb", frame.color_frame_number, frame.color_timestamp_ms)
        sample = _colour_sample(rgb)
        digest = hashlib.blake2b(sample.tobytes(), digest_size=16).digest() + bytes(str(sample.shape), "ascii")
        st.hash_run = st.hash_run + 1 if digest == st.last_hash else 0
        st.last_hash = digest
        if verdict is not None:
            return verdict, status
        return self._colour_image_health(sample), status

    def _colour_image_health(self, sample: np.ndarray) -> StreamHealth:
        cfg, st = self.cfg, self._state["rgb"]
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
        if st.hash_run:
            return StreamHealth(True, f"ok (image repeated for {st.hash_run} frame{_s(st.hash_run)})", "ok")
        return StreamHealth(True, "ok", "ok")

    def _depth_health(self, frame: Frame, valid_fraction: float | None, colour_status: str) -> StreamHealth:
        cfg, st = self.cfg, self._state["depth"]
        depth = frame.depth
        if depth is None:
            st.stale_run = 0
            return StreamHealth(False, "absent", "absent")
        problem = depth_problem(depth, frame.depth_scale)
        if problem is None and isinstance(frame.rgb, np.ndarray) and frame.rgb.ndim == 3 \
                and frame.rgb.shape[:2] != depth.shape:
            problem = (f"depth size {depth.shape[0]}x{depth.shape[1]} differs from colour "
                       f"{frame.rgb.shape[0]}x{frame.rgb.shape[1]} (align depth to colour)")
        if problem:
            st.stale_run = 0
            return StreamHealth(False, f"malformed: {problem}", "malformed")
        verdict, _ = self._counter_health("depth", frame.depth_frame_number, frame.depth_timestamp_ms)
        if verdict is not None:
            return verdict
        unpaired = self._unpaired(frame, colour_status)
        if unpaired is not None:
            return StreamHealth(False, unpaired, "unpaired")
        vf = depth_valid_fraction(depth) if valid_fraction is None else valid_fraction
        if vf <= 0.0:
            return StreamHealth(False, "missing 100% of depth points (no valid point)", "missing")
        missing = 1.0 - vf
        if missing > cfg.max_missing_depth:
            return StreamHealth(False, f"missing {_pct(missing, cfg.max_missing_depth)} of depth points "
                                       f"(limit {_pct(cfg.max_missing_depth)})", "missing")
        return StreamHealth(True, "ok", "ok")

    def _unpaired(self, frame: Frame, colour_status: str) -> str | None:
        """Why the depth frame is not from the colour frame's capture, or None. Judged when colour
        is not itself a re-send (then colour is the stale one) and both timestamps and the frame
        period are known: depth must lie within half a frame period of colour."""
        if colour_status not in ("fresh", "unknown"):  # repeated, lost, corrupt, absent, malformed
            return None
        cts, dts = frame.color_timestamp_ms, frame.depth_timestamp_ms
        period = self._period_ms(frame)
        if period is None or math.isnan(cts) or math.isnan(dts):
            return None
        limit = period / 2.0  # librealsense's syncer pairs frames by the same rule (are_equivalent)
        if abs(dts - cts) < limit:
            return None
        return (f"not from this capture: depth timestamp {dts:.1f} ms is {abs(dts - cts):.1f} ms from colour's "
                f"{cts:.1f} ms (limit {limit:.1f} ms, half a frame period)")

    # ------------------------------------------------------------------ hysteresis

    def _hysteresis(self, stream: str, h: StreamHealth) -> bool:
        """Update the stream's usability; True when the stream is used for this frame (usable AND
        healthy: an unhealthy frame is never used, whatever the hysteresis says)."""
        st, cfg, stats = self._state[stream], self.cfg, self._stats
        if not h.ok:
            st.last_problem = h.reason
            key = f"{stream}.{h.kind}"
            stats["reasons"][key] = stats["reasons"].get(key, 0) + 1
        if self._first:  # no history: start in the best mode this frame supports
            st.usable = h.ok
            st.bad_run = 0 if h.ok else 1
            st.good_run = 1 if h.ok else 0
            return h.ok
        if h.ok:
            st.bad_run = 0
            st.good_run += 1
            if not st.usable and st.good_run >= cfg.hold_good:
                st.usable = True
                stats["restored"][stream] += 1
            return st.usable
        st.good_run = 0
        st.bad_run += 1
        if st.usable:
            if h.kind in _IMMEDIATE or st.bad_run >= cfg.hold_bad:
                st.usable = False
                stats["dropped"][stream] += 1
            else:
                stats["skipped"][stream] += 1
        return False

    def _note(self, stream: str, h: StreamHealth) -> str | None:
        """What the mode reason says about one stream (None: healthy and used)."""
        st, name = self._state[stream], _STREAM_PROSE[stream]
        if st.usable:
            if h.ok:
                return None
            return f"{name} skipped in this frame, {h.reason} ({st.bad_run}/{self.cfg.hold_bad} before dropped)"
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
        rgb_h, colour_status = self._colour_health(frame)
        depth_h = self._depth_health(frame, depth_valid_fraction, colour_status)
        use_rgb = self._hysteresis("rgb", rgb_h)
        use_depth = self._hysteresis("depth", depth_h)
        mode, reason = self._choose(use_rgb, use_depth, rgb_h, depth_h)

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

    def _choose(self, use_rgb: bool, use_depth: bool, rgb_h: StreamHealth,
                depth_h: StreamHealth) -> tuple[str | None, str]:
        """The best available mode for the streams used in this frame, and its reason."""
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
        return mode, f"{mode or 'none'}: " + "; ".join(parts)

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
            "skipped": dict(s["skipped"]),
            "dropped": dict(s["dropped"]),
            "restored": dict(s["restored"]),
            "restarts": dict(s["restarts"]),
        }
