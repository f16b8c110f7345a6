"""Heatmap overlays for reject results: the anomaly map in an OpenCV colormap over the image.

The anomaly map is S x S at the model's resolution and covers the bundle's region of interest,
so the overlay shows the ROI crop of the colour image (what the model saw) with the map resized
onto it. Colours are normalised with the bundle's ``modes.<m>.heatmap`` low/high (not per image),
so the same colour means the same anomaly level on every overlay; pixels above the mode's
``threshold.pixel`` are outlined. Without a colour image (depth-only mode) the base is the
normalised height map in grey.
"""
from __future__ import annotations

import cv2
import numpy as np

from .preprocess import crop_roi

ALPHA = 0.45  # weight of the colormap in the blend


def normalise(amap: np.ndarray, low: float, high: float) -> np.ndarray:
    """Anomaly map -> uint8 0..255 with low -> 0 and high -> 255 (clipped)."""
    a = np.nan_to_num(np.asarray(amap, np.float32), nan=low, posinf=high, neginf=low)
    x = (a - low) / max(high - low, 1e-12)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _base_image(rgb: np.ndarray | None, height: np.ndarray | None, roi, size: int) -> np.ndarray:
    """BGR uint8 base image: the ROI crop of the colour image, else the height map in grey."""
    if rgb is not None:
        return cv2.cvtColor(np.ascontiguousarray(crop_roi(rgb, roi)), cv2.COLOR_RGB2BGR)
    if height is not None:
        g = (np.clip(np.asarray(height, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    return np.zeros((size, size, 3), np.uint8)


def render(anomaly_map: np.ndarray, low: float, high: float, rgb: np.ndarray | None = None,
           height: np.ndarray | None = None, roi=None, pixel_threshold: float | None = None,
           max_width: int = 640, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """The overlay as a BGR uint8 image (for cv2.imencode / imwrite)."""
    amap = np.asarray(anomaly_map, np.float32)
    amap = amap.reshape(amap.shape[-2:]) if amap.ndim > 2 else amap
    base = _base_image(rgb, height, roi, amap.shape[0])
    h, w = base.shape[:2]
    if w > max_width:  # scale the base down first: cheaper, and the map is coarser anyway
        h, w = max(1, round(h * max_width / w)), max_width
        base = cv2.resize(base, (w, h), interpolation=cv2.INTER_AREA)
    if w < amap.shape[1]:  # tiny frames: show at least the map's resolution
        h, w = round(h * amap.shape[1] / w), amap.shape[1]
        base = cv2.resize(base, (w, h), interpolation=cv2.INTER_NEAREST)
    big = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(normalise(big, low, high), colormap)
    out = cv2.addWeighted(base, 1.0 - ALPHA, heat, ALPHA, 0.0)
    if pixel_threshold is not None:
        marked = (big > pixel_threshold).astype(np.uint8)
        if marked.any():
            contours, _ = cv2.findContours(marked, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, w // 320))
    return out


def encode_jpeg(bgr: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError("OpenCV could not encode the overlay as JPEG")
    return buf.tobytes()


def overlay_jpeg(anomaly_map: np.ndarray, low: float, high: float, rgb: np.ndarray | None = None,
                 height: np.ndarray | None = None, roi=None, pixel_threshold: float | None = None,
                 quality: int = 85, max_width: int = 640) -> bytes:
    """The overlay as JPEG bytes: what sinks receive as ``heatmap_jpeg``."""
    return encode_jpeg(render(anomaly_map, low, high, rgb=rgb, height=height, roi=roi,
                              pixel_threshold=pixel_threshold, max_width=max_width), quality)
