"""Is the camera still where the site plane says it is? A state machine over the per-frame plane
check of preprocess() (Preprocessed.stats, edge.background_plane.check_plane).

The site plane (PreprocessParams.plane) is fitted once, on the training captures. If the camera
is bumped, moved or re-mounted, every height map is measured from the wrong plane. Each frame's
border band is checked against the plane; a frame is **off** the plane when almost none of its
band lies on it (the camera moved closer: everything reads as a tall part) or a large share
lies behind it (moved away, or tilted: nothing on a conveyor can be below the belt). A part,
however much of the band it covers, only adds points in front of the plane, so a large part
does not make a frame off; nor does a frame without depth (it is neither on nor off).

After `frames` consecutive off frames the watch reports `camera_moved` with the numbers and
refits the plane on that frame (edge.background_plane.fit_plane_inverse_depth on its border
band); `params` then carries the refitted plane for the frames after it. The frame being
checked is never changed: its inputs were computed before the watch saw its stats. If the
refit fails (too little depth, or the new plane does not explain the band), the plane in use
stays and a refit is tried again every `frames` off frames (`plane_refitted` when one
succeeds). Later off episodes first ask whether the camera is back where the site plane says
(`back_on_plane`, the site plane in use again) before refitting anew; `back_on_plane` is also
reported when frames return to the plane in use after a move whose refit had not succeeded.

Pure: no clock, no I/O, no threads. The daemon feeds it and reports its events.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from edge.background_plane import check_plane, fit_plane_inverse_depth, plane_grid
from edge.preprocess import PreprocessParams, crop_roi, resize_depth

ON, OFF, UNKNOWN = "on", "off", "unknown"


@dataclass(frozen=True)
class PlaneWatchConfig:
    # Consecutive off-plane frames before camera_moved (one second at 30 frames a second: a
    # hand or an unusually large part passing does not last that long; a moved camera does).
    frames: int = 30
    # A frame is off when fewer of its border-band points than this lie on the plane ...
    min_inlier_fraction: float = 0.05
    # ... or more than this lie behind it.
    max_below_fraction: float = 0.25
    # A refitted plane is used only when this share of the refit frame's band lies on it.
    refit_min_inlier_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not (isinstance(self.frames, int) and self.frames >= 1):
            raise ValueError(f"frames must be an integer >= 1, got {self.frames!r}")
        for k in ("min_inlier_fraction", "max_below_fraction", "refit_min_inlier_fraction"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"{k} must be a share in [0, 1], got {getattr(self, k)!r}")


@dataclass(frozen=True)
class PlaneEvent:
    """What the watch reports; `to_dict()` is JSON-ready."""

    kind: str  # "camera_moved" | "plane_refitted" | "back_on_plane"
    frame: int  # the watch's frame count (1 = the first frame it saw)
    frames_off: int  # consecutive off-plane frames up to this one
    inlier_fraction: float | None  # this frame's check against the plane in use
    below_fraction: float | None
    residual_m: float | None
    plane: tuple[float, float, float] | None  # the plane for the frames after this one
    previous_plane: tuple[float, float, float] | None
    refit_ok: bool  # camera_moved: whether the refit on this frame succeeded

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("plane", "previous_plane"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d


def frame_verdict(stats: dict, config: PlaneWatchConfig) -> str:
    """ON, OFF or UNKNOWN (no check: no site plane, or too little depth in the band)."""
    inl, below = stats.get("plane_inlier_fraction"), stats.get("plane_below_fraction")
    if inl is None or below is None:
        return UNKNOWN
    if inl < config.min_inlier_fraction or below > config.max_below_fraction:
        return OFF
    return ON


def check_depth_against(depth: np.ndarray, params: PreprocessParams, plane) -> dict:
    """The plane check of one raw depth frame against any plane (preprocess() checks against
    params.plane only)."""
    z, valid = resize_depth(crop_roi(depth, params.roi), params.image_size)
    grid = plane_grid(plane, params.image_size, params.plane_border_frac, cache=False)
    return check_plane(z, valid, grid, params.plane_inlier_m)


def refit_plane(depth: np.ndarray, params: PreprocessParams, config: PlaneWatchConfig):
    """(plane, its check on this frame) fitted on this frame's border band, or (None, check)
    when no plane can be fitted or it leaves too much of the band off it."""
    z, valid = resize_depth(crop_roi(depth, params.roi), params.image_size)
    fit = fit_plane_inverse_depth(z, valid, params.plane_border_frac, params.plane_inlier_m,
                                  params.ransac_iters, params.ransac_seed)
    if fit is None:
        return None, {}
    plane = tuple(float(x) for x in fit)
    stats = check_plane(z, valid, plane_grid(plane, params.image_size, params.plane_border_frac, cache=False),
                        params.plane_inlier_m)
    inl = stats.get("plane_inlier_fraction")
    if inl is None or inl < config.refit_min_inlier_fraction or frame_verdict(stats, config) != ON:
        return None, stats
    return plane, stats


class PlaneWatch:
    """Feed `update(pre.stats, depth)` once per frame, preprocess the next frame with `params`.

    Inactive (never reports) when the parameters have no site plane.
    """

    def __init__(self, params: PreprocessParams, config: PlaneWatchConfig | None = None):
        self.config = config or PlaneWatchConfig()
        self.site = params
        self._params = params
        self.frame = 0
        self.frames_off = 0
        self.pending = False  # camera_moved reported, no plane fitted since
        self.events = 0
        self.transient = 0  # off episodes that ended before `frames` frames
        self.last: dict = {}

    @property
    def params(self) -> PreprocessParams:
        """The parameters for the next frame: the site plane, or the plane refitted after a move."""
        return self._params

    @property
    def active(self) -> bool:
        return self.site.plane is not None

    def update(self, stats: dict, depth: np.ndarray | None = None) -> PlaneEvent | None:
        """One frame's plane check (Preprocessed.stats) and its raw depth (used only to refit
        or to test the site plane again, when an off episode reaches `frames`)."""
        self.frame += 1
        if not self.active:
            return None
        verdict = frame_verdict(stats, self.config)
        if verdict == UNKNOWN:
            return None
        self.last = dict(stats)
        if verdict == ON:
            return self._on_plane(stats)
        self.frames_off += 1
        n = self.config.frames
        if self.frames_off < n or (self.frames_off - n) % n:
            return None
        return self._moved(stats, depth)

    def _on_plane(self, stats: dict) -> PlaneEvent | None:
        was_off, self.frames_off = self.frames_off, 0
        if self.pending:  # the camera_moved episode ended without a refit: the plane in use holds
            self.pending = False
            return self._event("back_on_plane", stats, 0, self._params.plane, refit_ok=False)
        if was_off:
            self.transient += 1
        return None

    def _moved(self, stats: dict, depth: np.ndarray | None) -> PlaneEvent | None:
        off = self.frames_off
        if depth is not None and self._params.plane != self.site.plane:
            if frame_verdict(check_depth_against(depth, self.site, self.site.plane), self.config) == ON:
                previous = self._params.plane
                self._params, self.frames_off, self.pending = self.site, 0, False
                return self._event("back_on_plane", stats, off, previous, refit_ok=False)
        plane = None if depth is None else refit_plane(depth, self._params, self.config)[0]
        previous = self._params.plane
        kind = "plane_refitted" if self.pending else "camera_moved"
        if plane is None:
            if self.pending:
                return None  # still off, still no usable plane: already reported
            self.pending = True
            return self._event(kind, stats, off, previous, refit_ok=False)
        self._params = replace(self._params, plane=plane)
        self.frames_off, self.pending = 0, False
        return self._event(kind, stats, off, previous, refit_ok=True)

    def _event(self, kind: str, stats: dict, frames_off: int, previous, refit_ok: bool) -> PlaneEvent:
        self.events += 1
        return PlaneEvent(kind=kind, frame=self.frame, frames_off=frames_off,
                          inlier_fraction=stats.get("plane_inlier_fraction"),
                          below_fraction=stats.get("plane_below_fraction"),
                          residual_m=stats.get("plane_residual_m"), plane=self._params.plane,
                          previous_plane=previous, refit_ok=refit_ok)

    def status(self) -> dict:
        """For the daemon's status message: where the watch stands."""
        if not self.active:
            state = "inactive"
        elif self.pending or self.frames_off:
            state = "off_plane"
        else:
            state = "on_plane"
        return {"state": state, "plane": "site" if self._params.plane == self.site.plane else "refitted",
                "frames_off": self.frames_off, "events": self.events, "transient_off_episodes": self.transient,
                "inlier_fraction": self.last.get("plane_inlier_fraction"),
                "below_fraction": self.last.get("plane_below_fraction"),
                "residual_m": self.last.get("plane_residual_m")}
