"""Scoring a split's maps and scores in MVTec 3D-AD conventions (numpy only).

Maps come at model resolution and are bilinearly resized to each ground-truth
mask's own resolution: the official evaluation compares at the dataset's
resolution, and small defects would otherwise vanish in a downsampled mask.
"""
from __future__ import annotations

import cv2
import numpy as np

from . import metrics
from .dataset import PreparedSplit


def maps_at_mask_resolution(maps: np.ndarray, masks: list) -> tuple[list, list]:
    out_m, out_a = [], []
    for amap, mask in zip(maps, masks):
        if mask is None:
            continue
        out_m.append(mask)
        out_a.append(cv2.resize(np.asarray(amap, np.float32), (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR))
    return out_m, out_a


def score_split(maps: np.ndarray, scores: np.ndarray, split: PreparedSplit, mode: str) -> dict:
    lab = split.labels >= 0
    res = {"mode": mode, "n_images": int(lab.sum()), "n_anomalous": int((split.labels == 1).sum())}
    res["i_auroc"] = metrics.image_auroc(split.labels[lab], scores[lab])
    masks, amaps = maps_at_mask_resolution(maps, split.masks)
    if masks and any(m.any() for m in masks):
        res["p_auroc"] = metrics.pixel_auroc(masks, amaps)
        res["aupro"] = metrics.aupro(masks, amaps, fpr_limit=0.3)
    else:
        res["p_auroc"] = res["aupro"] = None
    return res


def curves(maps: np.ndarray, scores: np.ndarray, split: PreparedSplit) -> tuple[tuple, tuple | None]:
    """(image ROC fpr, tpr) and (PRO fpr, pro) or None without masks."""
    lab = split.labels >= 0
    roc = metrics.roc_curve_image(split.labels[lab], scores[lab])
    masks, amaps = maps_at_mask_resolution(maps, split.masks)
    pro = metrics.pro_curve(masks, amaps) if masks and any(m.any() for m in masks) else None
    return roc, pro


def gallery_items(maps, scores, split: PreparedSplit, k: int = 4) -> list[dict]:
    """The k worst and k best images: anomalous ranked by score, good by -score."""
    lab = np.flatnonzero(split.labels >= 0)
    margin = np.where(split.labels[lab] == 1, scores[lab], -scores[lab])
    order = lab[np.argsort(margin, kind="stable")]
    pick = list(order[:k]) + list(order[-k:][::-1])

    def item(i, tag):
        mask = split.masks[i]
        if mask is not None:
            mask = cv2.resize(mask.astype(np.uint8), maps[i].shape[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
        return {"rgb": split.thumbs[i], "map": maps[i], "mask": mask, "score": float(scores[i]),
                "label": int(split.labels[i]), "name": f"{tag}: {split.names[i]}"}

    return [item(i, "worst" if j < k else "best") for j, i in enumerate(pick)]
