"""Intel RealSense frames, live or from a recording, through one librealsense pipeline path.

- live (``type: realsense``): ``rs.pipeline`` on the camera with ``serial`` (or the first one),
  depth z16 + colour rgb8 at width x height @ fps, optional ``hardware_reset()`` first;
- recording (``type: recording``): the same pipeline fed by ``enable_device_from_file`` (.bag or
  .db3), real-time playback off by default so every recorded frame comes out.

Each frameset then goes through the same code: optional librealsense filters (spatial,
temporal, hole_filling), ``rs.align(rs.stream.color)``, depth counts x the depth sensor's scale
-> float32 metres (0 stays missing; the Frame's ``depth_scale`` stays None because the depth is
metres already), colour -> RGB uint8, frame numbers and timestamps of the *original* frames
passed through unchanged (``rs.align`` makes a new depth frame on the colour grid; the numbers
and timestamps are read from the frameset's own depth frame, not from the aligned copy), and
the colour stream's frame period, so the fallback can tell a depth frame of another capture.

Staleness. The librealsense pipeline always hands out complete framesets: when one stream has
no new frame it repeats the last one it had (same frame number, same timestamp). This happens
live when a stream drops frames and, measured, during playback when a recording lacks a frame.
We never hide it: numbers go out unchanged, ``stats()`` counts ``stale_depth``/``stale_color``,
and a frameset identical to the previous one (both numbers unchanged) is not delivered again
(counted in ``duplicates``/``dropped``).

Live failures. A frame wait that times out raises :class:`FrameTimeout`. After
``timeouts_before_reconnect`` x ``timeout_ms`` without a frame (or at once on any other device
error, e.g. a USB unplug), the pipeline is stopped and reconnected with the delays of
``reconnect_backoff_s``: each ``read()`` during that time sleeps at most its own timeout and
raises FrameTimeout, so the caller stays responsive; when every attempt has failed, ``read()``
raises :class:`SourceError`. The process never exits on its own. Everything is logged on the
``edge.sources.realsense`` logger.

pyrealsense2 is imported only when a source opens.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from edge.frames import Frame, Intrinsics

from . import validate_source_config
from .base import BaseSource, EndOfStream, FrameTimeout, SourceError

log = logging.getLogger("edge.sources.realsense")

#: after hardware_reset() the camera leaves the bus; wait this long before looking for it ...
RESET_SETTLE_S = 2.0
#: ... and give up if it is not back this long after that.
RESET_WAIT_S = 15.0
#: playback: how often a wait checks whether the recording has ended.
PLAYBACK_POLL_MS = 50

_TIMEOUT_MARKERS = ("didn't arrive", "did not arrive", "timed out", "timeout")


def import_pyrealsense2():
    """``import pyrealsense2`` or a SourceError saying how to get it."""
    try:
        import pyrealsense2 as rs  # noqa: PLC0415 - optional dependency, imported where used
    except ImportError as e:
        raise SourceError(
            "pyrealsense2 is not installed: `pip install 'rgbd-edge[realsense]'` (on a Jetson, build "
            "librealsense with -DBUILD_PYTHON_BINDINGS=ON)"
        ) from e
    return rs


def _is_timeout(err: BaseException) -> bool:
    msg = str(err).lower()
    return any(m in msg for m in _TIMEOUT_MARKERS)


@dataclass
class RealSenseSession:
    """One started pipeline and what the frame conversion needs from it.

    Built by ``RealSenseSource`` from pyrealsense2, or by a test's ``starter`` with a fake
    pipeline (anything with ``wait_for_frames(timeout_ms)`` and ``stop()``; recordings also use
    ``try_wait_for_frames``/``poll_for_frames`` and a ``playback`` with ``current_status()``).
    """

    pipeline: Any
    depth_scale: float | None = None   # metres per depth count; None: each frame's get_units()
    intrinsics: Intrinsics | None = None
    align: Any = None                  # rs.align(rs.stream.color) or None
    filters: Sequence[Any] = ()        # librealsense processing blocks applied before align
    playback: Any = None               # rs.playback for recordings
    serial: str = ""
    description: str = ""
    frame_period_ms: float | None = None  # 1000 / the colour stream's fps (the fallback pairs depth with it)

    def stop(self) -> None:
        try:
            self.pipeline.stop()
        except Exception as e:  # noqa: BLE001 - stopping a dead pipeline must not raise
            log.debug("pipeline.stop(): %s", e)


class RealSenseSource(BaseSource):
    """Live camera (``type: realsense``) or recording (``type: recording``); see the module doc."""

    extra_counters = ("reconnect_attempts", "unaligned_depth", "loops")

    def __init__(self, cfg: dict, *, sleep: Callable[[float], None] | None = None,
                 clock: Callable[[], float] | None = None,
                 starter: Callable[["RealSenseSource"], RealSenseSession] | None = None):
        super().__init__(sleep=sleep, clock=clock)
        cfg = validate_source_config(cfg)
        if cfg["type"] not in ("realsense", "recording"):
            raise ValueError(f"source.type: RealSenseSource plays 'realsense' or 'recording', not {cfg['type']!r}")
        self.cfg = cfg
        self.live = cfg["type"] == "realsense"
        self.serial: str | None = cfg.get("serial") if self.live else None
        self.path: Path | None = None if self.live else Path(cfg["path"])
        self.name = f"realsense:{self.serial or 'any'}" if self.live else f"recording:{self.path.name}"
        self._starter = starter
        self._session: RealSenseSession | None = None
        self._state = "closed"  # streaming | reconnecting | ended | failed | closed
        self._starved = 0.0     # consecutive frame waits without a frame, in units of timeout_ms
        self._attempt = 0
        self._next_attempt = 0.0
        self._failure = ""
        self._warned: set[str] = set()

    @property
    def state(self) -> str:
        return self._state

    @property
    def session(self) -> RealSenseSession | None:
        return self._session

    # ------------------------------------------------------------------ open / close
    def _open(self) -> None:
        self._starved = 0.0
        self._session = self._start()
        self._state = "streaming"

    def _close(self) -> None:
        session, self._session = self._session, None
        self._state = "closed"
        if session is not None:
            session.stop()

    def _start(self) -> RealSenseSession:
        if self._starter is not None:
            return self._starter(self)
        return self._start_live() if self.live else self._start_recording()

    def _start_live(self) -> RealSenseSession:
        rs = import_pyrealsense2()
        ctx = rs.context()
        dev = self._find_device(rs, ctx)
        serial = dev.get_info(rs.camera_info.serial_number)
        if self.cfg["hardware_reset"]:
            log.info("%s: hardware reset of camera %s", self.name, serial)
            try:
                dev.hardware_reset()
            except RuntimeError as e:
                raise SourceError(f"{self.name}: hardware_reset() of camera {serial} failed: {e}") from e
            self._wait_for_device(rs, ctx, serial)
        w, h, fps = self.cfg["width"], self.cfg["height"], self.cfg["fps"]
        pipeline = rs.pipeline(ctx)
        config = rs.config()
        config.enable_device(serial)
        config.enable_stream(rs.stream.depth, w, h, rs.format.z16, fps)
        config.enable_stream(rs.stream.color, w, h, rs.format.rgb8, fps)
        try:
            profile = pipeline.start(config)
        except RuntimeError as e:
            raise SourceError(f"{self.name}: cannot start camera {serial} with depth z16 + colour rgb8 "
                              f"{w}x{h} @ {fps} fps: {e}") from e
        return self._session_from(rs, pipeline, profile, serial=serial, playback=None)

    def _find_device(self, rs, ctx):
        serials = []
        try:
            devices = list(ctx.query_devices())
        except RuntimeError as e:
            raise SourceError(f"{self.name}: cannot list RealSense devices: {e}") from e
        for d in devices:
            try:
                s = d.get_info(rs.camera_info.serial_number)
            except RuntimeError:
                continue
            serials.append(s)
            if self.serial is None or s == self.serial:
                return d
        want = f"serial {self.serial}" if self.serial else "any serial (serial: null)"
        raise SourceError(f"{self.name}: no RealSense camera with {want} found; "
                          f"connected: {', '.join(serials) if serials else 'none'}")

    def _wait_for_device(self, rs, ctx, serial: str) -> None:
        self._sleep(RESET_SETTLE_S)
        deadline = self._clock() + RESET_WAIT_S
        while True:
            try:
                for d in ctx.query_devices():
                    if d.get_info(rs.camera_info.serial_number) == serial:
                        return
            except RuntimeError:
                pass
            if self._clock() >= deadline:
                raise SourceError(f"{self.name}: camera {serial} did not come back within "
                                  f"{RESET_SETTLE_S + RESET_WAIT_S:g} s after hardware_reset()")
            self._sleep(0.5)

    def _start_recording(self) -> RealSenseSession:
        path = self.path
        if not path.exists():
            raise SourceError(f"{self.name}: recording {path} does not exist")
        if not path.is_file():
            raise SourceError(f"{self.name}: recording {path} is not a file")
        rs = import_pyrealsense2()
        realtime = self.cfg["realtime"]
        pipeline = rs.pipeline()
        config = rs.config()
        try:
            config.enable_device_from_file(str(path), repeat_playback=False)  # loop: see _restart_recording
            # Resolve first: start() reuses the playback device this loads into the pipeline's
            # context, so real-time mode is set before the first frame plays. Setting it only
            # after start() races the playback thread and loses the first frames (measured).
            resolved = config.resolve(rs.pipeline_wrapper(pipeline))
            held = resolved.get_device().as_playback()
            held.set_real_time(realtime)
            # Hold the file until start() has set up every sensor and the syncer, then play it.
            # Without the hold the real D435 test file lost its first depth frame on every open,
            # and now and then a 4-frame test file lost its first frames or paired them wrongly.
            held.pause()
            profile = pipeline.start(config)
            playback = profile.get_device().as_playback()
            playback.set_real_time(realtime)
            playback.resume()
        except RuntimeError as e:
            raise SourceError(f"{self.name}: cannot play recording {path}: {e}") from e
        return self._session_from(rs, pipeline, profile, serial="", playback=playback)

    def _session_from(self, rs, pipeline, profile, *, serial: str, playback) -> RealSenseSession:
        streams: dict[str, Any] = {}
        for sp in profile.get_streams():
            kind = {rs.stream.depth: "depth", rs.stream.color: "color"}.get(sp.stream_type())
            if kind and kind not in streams:
                streams[kind] = sp.as_video_stream_profile()
        if not streams:
            RealSenseSession(pipeline=pipeline).stop()
            raise SourceError(f"{self.name}: no depth or colour stream "
                              f"({'in ' + str(self.path) if self.path else 'on the camera'})")
        depth_scale = None
        try:
            depth_scale = float(profile.get_device().first_depth_sensor().get_depth_scale())
        except RuntimeError:
            log.info("%s: no depth sensor depth scale; using each frame's depth units", self.name)
        ref = streams.get("color") or streams.get("depth")
        i = ref.get_intrinsics()
        intr = Intrinsics(width=int(i.width), height=int(i.height), fx=float(i.fx), fy=float(i.fy),
                          cx=float(i.ppx), cy=float(i.ppy))
        align = None
        if self.cfg["align_to_color"]:
            if "color" in streams and "depth" in streams:
                align = rs.align(rs.stream.color)
            else:
                log.warning("%s: align_to_color is on but there is no %s stream; depth is not aligned",
                            self.name, "colour" if "color" not in streams else "depth")
        makers = {"spatial": rs.spatial_filter, "temporal": rs.temporal_filter,
                  "hole_filling": rs.hole_filling_filter}
        filters = [makers[f]() for f in self.cfg["filters"]]
        desc = ", ".join(f"{k} {s.width()}x{s.height()} {str(s.format()).rsplit('.', 1)[-1]} @ {s.fps()}"
                         for k, s in streams.items())
        fps = ref.fps()
        period = 1000.0 / fps if fps and fps > 0 else None
        log.info("%s: started (%s; depth scale %s m; filters %s; aligned to colour: %s)", self.name, desc,
                 depth_scale, ",".join(self.cfg["filters"]) or "none", align is not None)
        return RealSenseSession(pipeline=pipeline, depth_scale=depth_scale, intrinsics=intr, align=align,
                                filters=filters, playback=playback, serial=serial, description=desc,
                                frame_period_ms=period)

    # ------------------------------------------------------------------ reading
    def _read(self, timeout_s: float) -> Frame:
        timeout_s = max(0.0, timeout_s)
        deadline = self._clock() + timeout_s
        budget = [timeout_s * 1000.0]  # ms of frame waiting this read may still do
        while True:
            if self._state == "ended":
                raise EndOfStream(f"{self.name}: end of recording {self.path}")
            if self._state == "failed":
                raise SourceError(self._failure)
            if self._state == "reconnecting":
                self._reconnect_step(deadline)
            if self.live:
                fs = self._wait_live(deadline, budget)
            else:
                fs = self._wait_recording(deadline, budget)
            frame = self._to_frame(fs)
            if self._tracker.observe(frame):
                return frame
            log.debug("%s: duplicate frameset (colour %d, depth %d) not delivered", self.name,
                      frame.color_frame_number, frame.depth_frame_number)
            if self._clock() >= deadline:
                self._counters["timeouts"] += 1
                raise FrameTimeout(f"{self.name}: only a repeated frameset within the timeout")

    def _wait_live(self, deadline: float, budget: list) -> Any:
        timeout_ms = float(self.cfg["timeout_ms"])
        limit = self.cfg["timeouts_before_reconnect"]
        pipeline = self._session.pipeline
        while True:
            remaining = min(budget[0], (deadline - self._clock()) * 1000.0)
            wait_ms = int(max(1, min(timeout_ms, math.ceil(remaining))))
            try:
                fs = pipeline.wait_for_frames(wait_ms)
            except RuntimeError as e:
                if not self._is_open:
                    raise SourceError(f"{self.name}: closed while reading") from e
                budget[0] -= wait_ms
                if not _is_timeout(e):
                    self._counters["errors"] += 1
                    self._begin_reconnect(f"camera error: {e}")
                    raise FrameTimeout(f"{self.name}: camera error ({e}); reconnecting") from e
                self._starved += wait_ms / timeout_ms
                if self._starved >= limit - 1e-9:
                    self._counters["timeouts"] += 1
                    self._begin_reconnect(f"no frame for {self._starved * timeout_ms / 1000:.1f} s "
                                          f"({limit} waits of {timeout_ms:g} ms)")
                    raise FrameTimeout(f"{self.name}: {e}; reconnecting") from e
                if budget[0] <= 0 or self._clock() >= deadline:
                    self._counters["timeouts"] += 1
                    raise FrameTimeout(f"{self.name}: {e}") from e
                continue
            self._starved = 0.0
            return fs

    def _wait_recording(self, deadline: float, budget: list) -> Any:
        session = self._session
        pipeline = session.pipeline
        while True:
            wait_ms = int(max(1, min(PLAYBACK_POLL_MS, budget[0])))
            try:
                ok, fs = pipeline.try_wait_for_frames(wait_ms)
            except RuntimeError as e:
                if not self._is_open:
                    raise SourceError(f"{self.name}: closed while reading") from e
                raise SourceError(f"{self.name}: reading {self.path} failed: {e}") from e
            if ok:
                return fs
            budget[0] -= wait_ms
            if self._playback_stopped():
                # the last frames may still be passing through the pipeline's syncer
                ok, fs = pipeline.try_wait_for_frames(2 * PLAYBACK_POLL_MS)
                if ok:
                    return fs
                if self.cfg["loop"]:
                    self._restart_recording()
                    pipeline = self._session.pipeline
                    continue
                self._state = "ended"
                log.info("%s: end of recording (%d frames delivered)", self.name, self._counters["frames"])
                raise EndOfStream(f"{self.name}: end of recording {self.path}")
            if budget[0] <= 0 or self._clock() >= deadline:
                self._counters["timeouts"] += 1
                raise FrameTimeout(f"{self.name}: no frame from {self.path} within the timeout")

    def _restart_recording(self) -> None:
        """``loop``: play the file again with a fresh pipeline once it has ended. (librealsense's own
        ``repeat_playback`` is not used: stopping a pipeline while its playback wraps around
        occasionally crashes librealsense 2.59 in its reader thread, measured with short files.)"""
        self._session.stop()
        self._session = None
        self._session = self._start()
        self._tracker.reset()  # a new pass: its first frame is not a duplicate of the last one
        self._counters["loops"] += 1
        log.debug("%s: end of recording, playing it again (loop %d)", self.name, self._counters["loops"])

    def _playback_stopped(self) -> bool:
        pb = self._session.playback
        if pb is None:
            return False
        try:
            return str(pb.current_status()).rsplit(".", 1)[-1] == "stopped"
        except RuntimeError:
            return False

    # ------------------------------------------------------------------ reconnection (live)
    def _begin_reconnect(self, reason: str) -> None:
        backoff = self.cfg["reconnect_backoff_s"]
        log.warning("%s: %s; stopping the pipeline, reconnect attempt 1 of %d in %g s",
                    self.name, reason, len(backoff), backoff[0])
        if self._session is not None:
            self._session.stop()
            self._session = None
        self._state = "reconnecting"
        self._starved = 0.0
        self._attempt = 0
        self._next_attempt = self._clock() + backoff[0]
        self._tracker.reset()

    def _reconnect_step(self, deadline: float) -> None:
        """One step of the reconnection: sleep towards the next attempt (at most until the read's
        deadline), then try. Returns once streaming again; raises FrameTimeout while still
        waiting, SourceError when the last attempt failed."""
        backoff = self.cfg["reconnect_backoff_s"]
        now = self._clock()
        if now < self._next_attempt:
            nap = min(self._next_attempt - now, max(0.0, deadline - now))
            if nap > 0:
                self._sleep(nap)
            left = self._next_attempt - self._clock()
            if left > 1e-9:
                raise FrameTimeout(f"{self.name}: camera lost; reconnect attempt {self._attempt + 1} of "
                                   f"{len(backoff)} in {left:.1f} s")
        self._counters["reconnect_attempts"] += 1
        try:
            session = self._start()
        except (SourceError, RuntimeError) as e:
            self._attempt += 1
            if self._attempt >= len(backoff):
                self._state = "failed"
                self._failure = (f"{self.name}: camera {self.serial or '(any serial)'} did not come back after "
                                 f"{len(backoff)} reconnect attempts; last error: {e}")
                log.error("%s", self._failure)
                raise SourceError(self._failure) from e
            delay = backoff[self._attempt]
            self._next_attempt = self._clock() + delay
            log.warning("%s: reconnect attempt %d of %d failed: %s; next in %g s",
                        self.name, self._attempt, len(backoff), e, delay)
            raise FrameTimeout(f"{self.name}: camera lost; reconnect attempt {self._attempt} failed, "
                               f"next in {delay:g} s") from e
        self._session = session
        self._state = "streaming"
        self._starved = 0.0
        self._counters["reconnects"] += 1
        log.warning("%s: reconnected on attempt %d (reconnect #%d)", self.name, self._attempt + 1,
                    self._counters["reconnects"])

    # ------------------------------------------------------------------ conversion
    def _to_frame(self, fs) -> Frame:
        session = self._session
        depth_f = fs.get_depth_frame()
        color_f = fs.get_color_frame()
        depth_f = depth_f if depth_f else None
        color_f = color_f if color_f else None

        depth_out = None
        if depth_f is not None:
            processed = fs
            for flt in session.filters:
                processed = flt.process(processed).as_frameset()
            if session.align is not None:
                if color_f is not None:
                    depth_out = session.align.process(processed).get_depth_frame()
                else:
                    self._counters["unaligned_depth"] += 1
                    self._warn_once("unaligned", "%s: a frameset without colour: its depth cannot be aligned "
                                    "to colour and is delivered as None (counted in unaligned_depth)", self.name)
            else:
                depth_out = processed.get_depth_frame()
            depth_out = depth_out if depth_out else None

        return Frame(
            rgb=self._to_rgb(color_f) if color_f is not None else None,
            depth=self._to_metres(depth_out, session) if depth_out is not None else None,
            color_frame_number=int(color_f.get_frame_number()) if color_f is not None else -1,
            depth_frame_number=int(depth_f.get_frame_number()) if depth_f is not None else -1,
            color_timestamp_ms=float(color_f.get_timestamp()) if color_f is not None else float("nan"),
            depth_timestamp_ms=float(depth_f.get_timestamp()) if depth_f is not None else float("nan"),
            intrinsics=session.intrinsics,
            capture_time=time.monotonic(),
            source=self.name,
            frame_period_ms=session.frame_period_ms,
        )

    def _to_rgb(self, f) -> np.ndarray:
        fmt = _format_name(f)
        data = np.asanyarray(f.get_data())
        if fmt == "rgb8":
            return np.array(data, dtype=np.uint8, copy=True)
        conv = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB,
                "yuyv": cv2.COLOR_YUV2RGB_YUY2, "uyvy": cv2.COLOR_YUV2RGB_UYVY}.get(fmt)
        if conv is None:
            raise SourceError(f"{self.name}: colour format {fmt!r} is not supported "
                              "(rgb8, bgr8, rgba8, bgra8, yuyv, uyvy are)")
        if fmt in ("yuyv", "uyvy") and data.ndim == 2:
            data = data.reshape(data.shape[0], -1, 2)
        return cv2.cvtColor(np.ascontiguousarray(data), conv)

    def _to_metres(self, f, session: RealSenseSession) -> np.ndarray:
        fmt = _format_name(f)
        if fmt != "z16":
            raise SourceError(f"{self.name}: depth format {fmt!r} is not supported (z16 is)")
        scale = session.depth_scale
        if scale is None:
            scale = float(f.as_depth_frame().get_units())
        raw = np.asanyarray(f.get_data())
        return raw.astype(np.float32) * np.float32(scale)  # 0 counts stay 0 = missing

    def _warn_once(self, key: str, msg: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)


def _format_name(frame) -> str:
    """``rs.format.rgb8`` -> ``"rgb8"`` (works for fakes returning a string too)."""
    return str(frame.get_profile().format()).rsplit(".", 1)[-1].lower()
