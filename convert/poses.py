"""Pose augmentation of normal training captures: parts arrive on a line in any rotation, so
every capture is trained in rotations x (mirrored or not) poses.

Poses are made one at a time from one capture (`capture_poses`), so training holds one capture
and one pose however many it trains on. Each posed sample records its pose in its meta
(edge.preprocess.POSE_KEY): preprocessing moves the site plane with the pixels
(edge.preprocess.params_for_sample), so a rotated pose is measured from its own plane.
"""
from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from edge.frames import RGBDSample
from edge.preprocess import POSE_KEY


def rotate_capture(rgb: np.ndarray, depth: np.ndarray, angle: float, flip: bool):
    """Rotate a raw capture about its centre; uncovered depth becomes missing (0)."""
    if flip:
        rgb, depth = rgb[:, ::-1], depth[:, ::-1]
    k = angle / 90.0
    if abs(k - round(k)) < 1e-9:  # exact, no resampling
        return np.ascontiguousarray(np.rot90(rgb, int(round(k)))), np.ascontiguousarray(np.rot90(depth, int(round(k))))
    h, w = depth.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    r = cv2.warpAffine(np.ascontiguousarray(rgb), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    d = cv2.warpAffine(np.ascontiguousarray(depth), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    return r, d


def pose_settings(rotations: int, flip: bool) -> list[tuple[float, bool]]:
    """(angle in degrees, mirrored first) of each pose of a capture, in training order; the
    first is the capture as taken."""
    n = max(rotations, 1)
    return [(360.0 * j / n, f) for f in ([False, True] if flip else [False]) for j in range(n)]


def capture_poses(s: RGBDSample, rotations: int, flip: bool) -> Iterator[tuple[RGBDSample, float, bool]]:
    """(pose, angle, flip) for every pose of capture s, made one at a time."""
    for angle, f in pose_settings(rotations, flip):
        if angle == 0 and not f:
            yield s, angle, f
            continue
        r, d = rotate_capture(s.rgb, s.depth, angle, f)
        yield RGBDSample(rgb=r, depth=d, label=s.label, defect=s.defect,
                         name=f"{s.name}@r{angle:g}{'f' if f else ''}",
                         meta={**s.meta, POSE_KEY: (s.depth.shape, angle, f)}), angle, f


def augment_samples(samples, rotations: int, flip: bool):
    return [pose for s in samples for pose, _, _ in capture_poses(s, rotations, flip)]
