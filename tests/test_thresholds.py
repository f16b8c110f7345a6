"""Decision thresholds from normal validation scores (calibrate/thresholds.py)."""
from statistics import NormalDist

import numpy as np
import pytest

from calibrate.thresholds import detection_report, image_threshold, mode_threshold


def test_gaussian_term_sets_the_threshold_for_few_samples():
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # mean 2, sample std sqrt(2.5)
    thr, frr = image_threshold(scores, 0.01)
    expected = 2.0 + NormalDist().inv_cdf(0.99) * np.sqrt(2.5)
    assert thr == pytest.approx(expected)
    assert thr > scores.max()  # not sitting on the largest normal score
    assert frr == pytest.approx(0.01, rel=1e-6)


def test_empirical_quantile_wins_when_the_tail_is_heavier():
    scores = np.r_[np.zeros(90), np.full(10, 10.0)]  # a tenth of normal parts score high
    thr, frr = image_threshold(scores, 0.05)
    assert thr == pytest.approx(np.quantile(scores, 0.95))
    assert thr >= NormalDist(scores.mean(), scores.std(ddof=1)).inv_cdf(0.95)
    assert 0 <= frr <= 0.05


@pytest.mark.parametrize("bad", [[1.0], []])
def test_too_few_scores_is_an_error(bad):
    with pytest.raises(ValueError, match="at least 2"):
        image_threshold(np.array(bad), 0.01)


@pytest.mark.parametrize("frr", [0.0, 1.0, -0.1])
def test_frr_out_of_range_is_an_error(frr):
    with pytest.raises(ValueError, match="FRR"):
        image_threshold(np.array([1.0, 2.0]), frr)


def test_mode_threshold_pixel_heatmap_and_detection():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((10, 32, 32)).astype(np.float32)
    scores = maps.reshape(10, -1).max(1)
    th = mode_threshold("rgb", maps, scores, target_frr=0.01, pixel_fpr=1e-2, precision="int8")
    assert th.pixel == pytest.approx(np.quantile(maps, 0.99))
    assert (maps > th.pixel).mean() == pytest.approx(0.01, abs=1e-3)
    assert th.heatmap_low < th.heatmap_high == th.score
    assert th.n_validation == 10 and th.precision == "int8"
    assert th.validation_frr == 0.0
    assert th.to_bundle() == {"score": th.score, "pixel": th.pixel, "target_frr": 0.01,
                              "expected_frr": th.expected_frr, "n_validation": 10, "precision": "int8"}
    labels = np.array([0, 0, 1, 1, 1, -1])
    test_scores = np.array([th.score - 1, th.score + 1, th.score + 2, th.score - 3, th.score + 5, 99.0])
    detection_report(th, test_scores, labels)
    assert th.test_detection_rate == pytest.approx(2 / 3)
    assert th.test_frr == pytest.approx(1 / 2)
