"""Write RGB-D frames into a RealSense recording (.db3) with librealsense's
software device, so a data set can be replayed through the very pipeline code
that reads a live camera (`source: {type: recording}`).

librealsense 2.58+ writes only the ROS2 .db3 format. Depth is stored as z16
with the given depth units (metres per count); colour as rgb8. A depth frame
listed as dropped is re-sent stale (same frame number, pixels and timestamp),
which is what playback does when a camera dropped one.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Iterable

import numpy as np


def _intrinsics(rs, w: int, h: int, fx: float, fy: float, cx: float, cy: float):
    i = rs.intrinsics()
    i.width, i.height, i.ppx, i.ppy, i.fx, i.fy = w, h, cx, cy, fx, fy
    i.model = rs.distortion.none
    i.coeffs = [0.0] * 5
    return i


def write_recording(path, frames: Iterable[tuple[np.ndarray, np.ndarray]], fps: int = 30,
                    depth_units: float = 1e-4, intrinsics: dict | None = None,
                    stale_depth_at: set[int] | None = None) -> int:
    """Record (rgb uint8 HxWx3, depth float32 metres HxW) pairs; returns the frame count.

    stale_depth_at: indices whose depth frame is replaced by a stale re-send of the previous one.
    """
    import pyrealsense2 as rs

    path = Path(path)
    if path.suffix != ".db3":
        raise ValueError(f"{path}: librealsense 2.58+ writes .db3 recordings only")
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    try:
        first = next(frames)
    except StopIteration:
        raise ValueError("no frames to record") from None
    h, w = first[1].shape
    intr = intrinsics or {"fx": float(w), "fy": float(w), "cx": w / 2, "cy": h / 2}
    dev = rs.software_device()
    dsens, csens = dev.add_sensor("Stereo Module"), dev.add_sensor("RGB Camera")
    dsens.add_read_only_option(rs.option.depth_units, depth_units)
    profiles = []
    for sensor, stream, uid, bpp, fmt in ((dsens, rs.stream.depth, 0, 2, rs.format.z16),
                                          (csens, rs.stream.color, 1, 3, rs.format.rgb8)):
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = stream, 0, uid, w, h, fps, bpp, fmt
        vs.intrinsics = _intrinsics(rs, w, h, intr["fx"], intr["fy"], intr["cx"], intr["cy"])
        profiles.append(sensor.add_video_stream(vs))
    dprof, cprof = profiles
    ext = rs.extrinsics()
    ext.rotation, ext.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
    dprof.register_extrinsics_to(cprof, ext)  # depth is already registered to colour

    recorder = rs.recorder(str(path), dev)
    for s, p in ((dsens, dprof), (csens, cprof)):
        s.open(p)
        s.start(lambda f: None)
    stale = stale_depth_at or set()
    n, last = 0, None
    max_count = np.iinfo(np.uint16).max
    for i, (rgb, depth) in enumerate(_chain(first, frames)):
        if depth.shape != (h, w) or rgb.shape[:2] != (h, w):
            raise ValueError(f"frame {i}: size {rgb.shape[:2]}/{depth.shape} differs from the first frame's {(h, w)}")
        if i in stale and last is not None:
            d_pix, d_num = last
        else:
            counts = np.clip(np.round(np.nan_to_num(depth) / depth_units), 0, max_count).astype(np.uint16)
            d_pix, d_num = counts, i
            last = (counts, i)
        for sensor, prof, num, pix, bpp in ((dsens, dprof, d_num, d_pix, 2),
                                            (csens, cprof, i, np.ascontiguousarray(rgb, np.uint8), 3)):
            f = rs.software_video_frame()
            f.pixels, f.stride, f.bpp = pix, w * bpp, bpp
            f.timestamp = num * 1000.0 / fps
            f.domain = rs.timestamp_domain.hardware_clock
            f.frame_number = num
            f.profile = prof.as_video_stream_profile()
            if sensor is dsens:
                f.depth_units = depth_units
            sensor.on_video_frame(f)
        n += 1
    for s in (dsens, csens):
        s.stop()
        s.close()
    del recorder, dsens, csens, dprof, cprof, dev  # the recorder finishes the file when released
    gc.collect()
    return n


def _chain(first, rest):
    yield first
    yield from rest


def record_dataset(root, split: str, out, fps: int = 30, stale_depth_at=(), limit: int = 0) -> int:
    """A data set split (MVTec 3D-AD or rgbd-folder) as a .db3 recording, frames in split order.

    Frames must share one size. stale_depth_at: frame indices whose depth is re-sent stale.
    (librealsense playback loses a last frameset whose depth is stale: keep them inside.)
    """
    from edge.data import open_dataset

    refs = open_dataset(root, split)
    if limit:
        refs = refs[:limit]
    return write_recording(out, ((s.rgb, s.depth) for s in (r.load() for r in refs)), fps=fps,
                           stale_depth_at=set(stale_depth_at))
