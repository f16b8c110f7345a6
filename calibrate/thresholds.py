"""Decision thresholds from normal samples only, as on a real line.

Image threshold for a target false-reject rate (FRR): the larger of the
empirical (1 - FRR) quantile of the validation scores and a Gaussian tail
estimate (mean + z * std). With the few dozen normal parts a line keeps for
validation, the empirical 99 % quantile is just "the largest score seen"; the
Gaussian term keeps the threshold from sitting on that one sample.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np


@dataclass
class ModeThreshold:
    mode: str
    score: float
    pixel: float
    target_frr: float
    expected_frr: float  # Gaussian tail estimate at the threshold
    validation_frr: float  # share of validation scores above it (in-sample)
    n_validation: int
    precision: str
    heatmap_low: float
    heatmap_high: float
    test_detection_rate: float | None = None
    test_frr: float | None = None

    def to_bundle(self) -> dict:
        keys = ("score", "pixel", "target_frr", "expected_frr", "n_validation", "precision")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict:
        return asdict(self)


def image_threshold(scores: np.ndarray, target_frr: float) -> tuple[float, float]:
    """(threshold, expected FRR) for normal validation scores."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size < 2:
        raise ValueError(f"need at least 2 normal validation scores for a threshold, got {s.size}")
    if not 0 < target_frr < 1:
        raise ValueError(f"target FRR must be in (0, 1), got {target_frr}")
    mean, std = float(s.mean()), float(s.std(ddof=1)) or 1e-6
    gauss = mean + NormalDist().inv_cdf(1 - target_frr) * std
    empirical = float(np.quantile(s, 1 - target_frr))
    thr = max(gauss, empirical)
    return thr, float(1 - NormalDist(mean, std).cdf(thr))


def mode_threshold(mode: str, maps: np.ndarray, scores: np.ndarray, target_frr: float = 0.01,
                   pixel_fpr: float = 1e-3, precision: str = "fp32") -> ModeThreshold:
    """Thresholds and heatmap normalisation for one mode from normal validation outputs."""
    thr, expected = image_threshold(scores, target_frr)
    pix = np.asarray(maps, dtype=np.float32).ravel()
    return ModeThreshold(
        mode=mode,
        score=float(thr),
        # A pixel is marked when it is rarer than pixel_fpr among normal pixels.
        pixel=float(np.quantile(pix, 1 - pixel_fpr)),
        target_frr=float(target_frr),
        expected_frr=expected,
        validation_frr=float((np.asarray(scores) > thr).mean()),
        n_validation=int(len(scores)),
        precision=precision,
        # Colours start at a typical normal part's peak and saturate at the decision:
        # the background and ordinary texture stay dark, near-misses show.
        heatmap_low=float(min(np.median(scores), thr - 1e-3)),
        heatmap_high=float(thr),
    )


def detection_report(th: ModeThreshold, scores: np.ndarray, labels: np.ndarray) -> ModeThreshold:
    """Fill in detection rate and FRR on a labelled test split at the threshold."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    bad, good = labels == 1, labels == 0
    th.test_detection_rate = float((scores[bad] > th.score).mean()) if bad.any() else None
    th.test_frr = float((scores[good] > th.score).mean()) if good.any() else None
    return th
