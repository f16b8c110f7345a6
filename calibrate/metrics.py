"""Evaluation metrics: image AUROC, pixel AUROC and AUPRO.

Numbers produced here are compared against published MVTec AD / MVTec 3D-AD
results, so AUPRO follows the official MVTec evaluation code rather than a
home-grown variant (different threshold sampling or integration changes the
value in the second decimal). Pure numpy / scipy / scikit-learn; no torch.
"""
from __future__ import annotations

import warnings
from bisect import bisect

import numpy as np
from scipy.ndimage import label as _cc_label
from scipy.stats import bootstrap
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "image_auroc",
    "image_auroc_interval",
    "pixel_auroc",
    "aupro",
    "pro_curve",
    "trapezoid",
    "roc_curve_image",
    "roc_curve_pixel",
]

# 8-connectivity, as in the official code: diagonally touching defect pixels
# belong to the same ground-truth region.
_STRUCTURE = np.ones((3, 3), dtype=int)


# --------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------
def _image_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if y.size == 0:
        raise ValueError("labels and scores are empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (good) or 1 (anomalous)")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    if np.unique(y).size < 2:
        raise ValueError(
            f"ROC AUC needs both good and anomalous images; only label {int(y[0])} is present"
        )
    return y.astype(np.int8), s


def _as_list(x, what: str) -> list[np.ndarray]:
    """Accept an N x H x W array, a single H x W array or a sequence of H x W arrays."""
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            return [x]
        if x.ndim == 3:
            return list(x)
        raise ValueError(f"{what} must be H x W, N x H x W or a sequence of H x W arrays, got shape {x.shape}")
    out = []
    for i, a in enumerate(x):
        if a is None:
            raise ValueError(f"{what}[{i}] is None (unlabelled image); pass an all-False mask for good images")
        a = np.asarray(a)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim != 2:
            raise ValueError(f"{what}[{i}] must be 2-D (H x W), got shape {a.shape}")
        out.append(a)
    return out


def _pixel_inputs(masks, maps) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate and return lists of bool masks and float32 maps, pairwise equal in shape."""
    m_list = _as_list(masks, "masks")
    a_list = _as_list(maps, "maps")
    if len(m_list) != len(a_list):
        raise ValueError(f"{len(m_list)} masks but {len(a_list)} maps")
    if not m_list:
        raise ValueError("masks and maps are empty")
    bool_masks, float_maps = [], []
    for i, (m, a) in enumerate(zip(m_list, a_list)):
        if m.shape != a.shape:
            raise ValueError(f"image {i}: mask shape {m.shape} differs from map shape {a.shape}")
        a = np.asarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"image {i}: anomaly map contains NaN or inf")
        bool_masks.append(np.asarray(m) != 0)
        float_maps.append(a)
    return bool_masks, float_maps


def _flat_pixels(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    m_list, a_list = _pixel_inputs(masks, maps)
    y = np.concatenate([m.ravel() for m in m_list])
    s = np.concatenate([a.ravel() for a in a_list])
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        kind = "anomalous" if n_pos == 0 else "anomaly-free"
        raise ValueError(f"pixel ROC needs both classes; the masks contain no {kind} pixels")
    return y, s


# --------------------------------------------------------------------------
# ROC
# --------------------------------------------------------------------------
def image_auroc(labels, scores) -> float:
    """Image-level ROC AUC (labels 0 good / 1 anomalous, higher score = more anomalous)."""
    y, s = _image_inputs(labels, scores)
    return float(roc_auc_score(y, s))


def _mann_whitney_auroc(good, bad):
    """P(bad > good) + P(tie) / 2 over all pairs (last axis): the ROC AUC, vectorised over resamples."""
    g, b = np.expand_dims(good, -1), np.expand_dims(bad, -2)
    return ((b > g) + 0.5 * (b == g)).mean(axis=(-2, -1))


def image_auroc_interval(labels, scores, confidence: float = 0.95, n_resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the image AUROC, resampling good and anomalous images
    separately (each class keeps its size). MVTec 3D-AD test splits have few good images
    (cable_gland: 11), so one of them moves I-AUROC by several points; this says how far."""
    y, s = _image_inputs(labels, scores)
    res = bootstrap((s[y == 0], s[y == 1]), lambda g, b, axis=-1: _mann_whitney_auroc(
        np.moveaxis(g, axis, -1), np.moveaxis(b, axis, -1)), vectorized=True, paired=False,
        confidence_level=confidence, n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed),
        batch=100)  # bounds memory: each resample compares every good with every anomalous score
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def pixel_auroc(masks, maps) -> float:
    """Pixel-level ROC AUC over all pixels of all images pooled together (MVTec convention)."""
    y, s = _flat_pixels(masks, maps)
    return float(roc_auc_score(y, s))


def roc_curve_image(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the image-level ROC, via sklearn.metrics.roc_curve."""
    y, s = _image_inputs(labels, scores)
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def roc_curve_pixel(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the pooled pixel-level ROC, via sklearn.metrics.roc_curve."""
    y, s = _flat_pixels(masks, maps)
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


# --------------------------------------------------------------------------
# PRO
# --------------------------------------------------------------------------
def trapezoid(x, y, x_max: float | None = None) -> float:
    """Area under a curve given by points, optionally integrated only up to ``x_max``.

    Same as the official MVTec ``trapezoid``: non-finite points are dropped with
    a warning; if ``x_max`` lies strictly between two samples, y is linearly
    interpolated at ``x_max`` and the partial trapezoid is added. ``x`` must be
    sorted ascending (repeated values allowed: vertical steps).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x ({x.size}) and y ({y.size}) differ in length")
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        warnings.warn("trapezoid: dropping points whose x or y is not finite", RuntimeWarning, stacklevel=2)
        x, y = x[finite], y[finite]
    if x.size and np.any(np.diff(x) < 0):
        raise ValueError("trapezoid: x must be sorted in ascending order")

    correction = 0.0
    if x_max is not None:
        x_max = float(x_max)
        if x_max not in x:
            # Insertion index that keeps x sorted; x_max must lie inside [x[0], x[-1]].
            ins = bisect(x.tolist(), x_max)
            if not 0 < ins < len(x):
                raise ValueError(f"trapezoid: x_max={x_max} is outside the sampled range [{x.min() if x.size else None}, "
                                 f"{x.max() if x.size else None}]")
            y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
            correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
        keep = x <= x_max
        x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def _components(masks, maps):
    """Per-pixel bookkeeping shared by both PRO curve methods.

    Returns (ok_scores, comp_scores, comp_weights, n_components) where
    ok_scores are the scores of all anomaly-free pixels, comp_scores the scores
    of all ground-truth-region pixels and comp_weights = 1 / (region size *
    n_components), i.e. each region counts equally in the PRO mean whatever its
    size (that is what makes PRO different from pixel recall).
    """
    m_list, a_list = _pixel_inputs(masks, maps)
    ok_parts, comp_parts, weight_parts = [], [], []
    n_components = 0
    for m, a in zip(m_list, a_list):
        labeled, n = _cc_label(m, structure=_STRUCTURE)
        ok_parts.append(a[labeled == 0])
        if n:
            fg = labeled > 0
            lab = labeled[fg]
            sizes = np.bincount(lab, minlength=n + 1)
            comp_parts.append(a[fg])
            weight_parts.append(1.0 / sizes[lab])
        n_components += n
    if n_components == 0:
        raise ValueError("PRO is undefined: the ground-truth masks contain no anomalous pixels")
    ok_scores = np.concatenate(ok_parts)
    if ok_scores.size == 0:
        raise ValueError("PRO is undefined: the ground-truth masks contain no anomaly-free pixels")
    comp_scores = np.concatenate(comp_parts)
    comp_weights = np.concatenate(weight_parts) / n_components
    return ok_scores, comp_scores, comp_weights, n_components


def _pro_curve_exact(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Official MVTec AD cumsum method: every distinct score is a threshold.

    Each anomaly-free pixel moves the FPR by 1/num_ok_pixels and each region
    pixel moves the PRO by 1/(region_size * num_regions) once the threshold
    drops to its score. Sorting all scores descending and taking cumulative
    sums gives (FPR, PRO) at threshold = each score (positives: score >= t);
    among equal scores only the last cumulative value is kept.
    """
    ok_scores, comp_scores, comp_weights, _ = _components(masks, maps)
    n_ok = ok_scores.size
    scores = np.concatenate([ok_scores, comp_scores])
    fp_change = np.concatenate([np.ones(n_ok, dtype=np.int64), np.zeros(comp_scores.size, dtype=np.int64)])
    pro_change = np.concatenate([np.zeros(n_ok, dtype=np.float64), comp_weights])
    del ok_scores, comp_scores, comp_weights

    order = np.argsort(scores, kind="stable")[::-1]
    scores = scores[order]
    fprs = np.cumsum(fp_change[order]) / n_ok
    del fp_change
    pros = np.cumsum(pro_change[order])
    del pro_change, order

    keep = np.append(np.diff(scores) != 0, True)
    fprs = np.minimum(fprs[keep], 1.0)
    pros = np.minimum(pros[keep], 1.0)
    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0]))


def _pro_curve_sampled(masks, maps, num_thresholds: int) -> tuple[np.ndarray, np.ndarray]:
    """Official MVTec 3D-AD method: thresholds at equidistant positions of the
    sorted anomaly-free scores.

    As in ``au_pro_util.compute_pro``: positions = linspace(0, n_ok - 1,
    num_thresholds) truncated to int; at position p the threshold is
    ok_sorted[p], FPR = 1 - (p + 1) / n_ok and a region's overlap is the
    fraction of its pixels with score strictly greater than the threshold.
    The point (1, 1) is appended. Vectorised with searchsorted instead of the
    official per-component loop.
    """
    ok_scores, comp_scores, comp_weights, _ = _components(masks, maps)
    n_ok = ok_scores.size
    ok_sorted = np.sort(ok_scores)
    positions = np.linspace(0, n_ok - 1, num=int(num_thresholds), dtype=int)
    thresholds = ok_sorted[positions]
    fprs = 1.0 - (positions + 1) / n_ok

    order = np.argsort(comp_scores, kind="stable")
    comp_sorted = comp_scores[order]
    below = np.concatenate(([0.0], np.cumsum(comp_weights[order])))  # weight of pixels <= t
    n_below = np.searchsorted(comp_sorted, thresholds, side="right")
    pros = np.clip(below[-1] - below[n_below], 0.0, 1.0)

    # increasing FPR order, then close the curve at (1, 1)
    return np.concatenate((fprs[::-1], [1.0])), np.concatenate((pros[::-1], [1.0]))


def pro_curve(masks, maps, num_thresholds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PRO curve (fpr, pro), sorted by increasing FPR, as in the official MVTec code.

    Ground-truth regions are 8-connected components of each mask. FPR is taken
    over all anomaly-free pixels of all images; PRO is the mean over all regions
    (of all images) of the fraction of the region detected at that threshold.
    ``num_thresholds=None`` uses every distinct score (MVTec AD cumsum method);
    an int samples that many thresholds at equidistant positions of the sorted
    anomaly-free scores (MVTec 3D-AD method).
    """
    if num_thresholds is None:
        return _pro_curve_exact(masks, maps)
    if int(num_thresholds) < 2:
        raise ValueError(f"num_thresholds must be >= 2 or None, got {num_thresholds}")
    return _pro_curve_sampled(masks, maps, int(num_thresholds))


def aupro(masks, maps, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (in [0, 1]).

    Official MVTec definition: ``trapezoid(fpr, pro, x_max=fpr_limit) /
    fpr_limit``. The PRO metric weights every defect region equally, so small
    defects count as much as large ones, unlike pixel AUROC.
    """
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fprs, pros = pro_curve(masks, maps, num_thresholds=num_thresholds)
    return trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit
