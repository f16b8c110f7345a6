"""Tests for calibrate.metrics (hand-computed values) and smoke tests for calibrate.plots."""
from __future__ import annotations

import numpy as np
import pytest

from calibrate import metrics as M

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# image / pixel AUROC
# --------------------------------------------------------------------------
def test_image_auroc_hand_computed():
    # positives {0.35, 0.8}, negatives {0.1, 0.4}: of the 4 (pos, neg) pairs only
    # (0.35, 0.4) is mis-ordered -> 3/4
    assert M.image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.image_auroc(np.array([1, 0]), np.array([0.9, 0.1])) == pytest.approx(1.0)
    # a tie counts 1/2: pairs (0.5 vs 0.5) = 0.5, (0.5 vs 0.2) = 1 -> 0.75
    assert M.image_auroc([1, 0, 0], [0.5, 0.5, 0.2]) == pytest.approx(0.75)


def test_image_auroc_errors():
    with pytest.raises(ValueError, match="both"):
        M.image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="length"):
        M.image_auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 .good. or 1"):
        M.image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        M.image_auroc([0, 1], [0.1, np.nan])


def test_image_auroc_interval_brackets_the_auroc_and_narrows_with_more_images():
    rng = np.random.default_rng(0)

    def sample(n_good, n_bad):
        y = np.r_[np.zeros(n_good), np.ones(n_bad)]
        return y, rng.normal(size=y.size) + 1.2 * y

    y, s = sample(11, 44)  # cable_gland's test split
    lo, hi = M.image_auroc_interval(y, s)
    assert lo < M.image_auroc(y, s) < hi
    assert M.image_auroc_interval(y, s) == (lo, hi)  # seeded: reproducible
    lo_big, hi_big = M.image_auroc_interval(*sample(110, 440))
    assert hi_big - lo_big < hi - lo
    # perfectly separated: every resample separates too
    assert M.image_auroc_interval([0, 0, 1, 1, 1], [0.1, 0.2, 0.5, 0.7, 0.9]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="both"):
        M.image_auroc_interval([1, 1], [0.2, 0.3])


def test_pixel_auroc_hand_computed():
    # same numbers as the image case, laid out as a 2x2 map: positives (bottom row)
    # {0.35, 0.8}, negatives {0.1, 0.4} -> 3/4
    mask = np.array([[0, 0], [1, 1]], dtype=bool)
    amap = np.array([[0.1, 0.4], [0.35, 0.8]])
    assert M.pixel_auroc([mask], [amap]) == pytest.approx(0.75)
    # N x H x W arrays, pixels pooled over images: the second image is all good,
    # so negatives become {0.1, 0.4, 0.0, 0.9, 0.0, 0.0}
    masks = np.stack([mask, np.zeros((2, 2), bool)])
    maps = np.stack([amap, np.array([[0.0, 0.9], [0.0, 0.0]])])
    # pos 0.35 beats {0.1, 0.0, 0.0, 0.0} = 4 of 6; pos 0.8 beats all but 0.9 = 5 of 6 -> 9/12
    assert M.pixel_auroc(masks, maps) == pytest.approx(9 / 12)
    fpr, tpr = M.roc_curve_pixel(masks, maps)
    assert fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1


def test_pixel_auroc_errors():
    with pytest.raises(ValueError, match="no anomalous"):
        M.pixel_auroc([np.zeros((3, 3), bool)], [np.random.rand(3, 3)])
    with pytest.raises(ValueError, match="shape"):
        M.pixel_auroc([np.eye(3, dtype=bool)], [np.random.rand(3, 4)])
    with pytest.raises(ValueError, match="2 masks but 1 maps"):
        M.pixel_auroc([np.eye(3, dtype=bool)] * 2, [np.random.rand(3, 3)])
    with pytest.raises(ValueError, match="None"):
        M.pixel_auroc([None], [np.random.rand(3, 3)])


def test_roc_curve_image():
    fpr, tpr = M.roc_curve_image([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


# --------------------------------------------------------------------------
# trapezoid (official MVTec integration helper)
# --------------------------------------------------------------------------
def test_trapezoid_hand_computed():
    x, y = [0.0, 0.5, 1.0], [0.0, 1.0, 1.0]
    assert M.trapezoid(x, y) == pytest.approx(0.75)
    # x_max between samples: y interpolated to 0.5 at 0.25 -> triangle 0.5*0.25*0.5
    assert M.trapezoid(x, y, x_max=0.25) == pytest.approx(0.0625)
    # x_max on a sample: no correction term
    assert M.trapezoid(x, y, x_max=0.5) == pytest.approx(0.25)
    # 0.25 up to 0.5, plus the rectangle 0.5..0.75 at height 1
    assert M.trapezoid(x, y, x_max=0.75) == pytest.approx(0.5)
    # vertical step at x = 0 (repeated x): the area is the rectangle
    assert M.trapezoid([0, 0, 1], [0, 1, 1], x_max=0.3) == pytest.approx(0.3)


def test_trapezoid_nonfinite_and_errors():
    with pytest.warns(RuntimeWarning):
        assert M.trapezoid([0, 0.5, np.nan, 1], [0, 1, 5, 1]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="outside"):
        M.trapezoid([0, 0.5], [0, 1], x_max=0.8)
    with pytest.raises(ValueError, match="sorted"):
        M.trapezoid([0, 1, 0.5], [0, 1, 1])
    with pytest.raises(ValueError, match="length"):
        M.trapezoid([0, 1], [0, 1, 1])


# --------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------
def _two_components():
    """6x6 image, two single-pixel defects far apart (A at (0,0), B at (5,5))."""
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = True
    mask[5, 5] = True
    return mask


def test_aupro_perfect_separation():
    # map == mask: at threshold 1 both regions are fully found with FPR 0, so the
    # curve is (0,0) -> (0,1) -> (1,1): PRO = 1 on the whole [0, 0.3] -> 1.0
    mask = _two_components()
    fpr, pro = M.pro_curve([mask], [mask.astype(float)])
    np.testing.assert_allclose(fpr, [0, 0, 1, 1])
    np.testing.assert_allclose(pro, [0, 1, 1, 1])
    assert M.aupro([mask], [mask.astype(float)]) == pytest.approx(1.0)


def test_aupro_constant_map():
    # one distinct score -> a single point (1,1): the curve is the diagonal
    # (0,0) -> (1,1), whose area up to L is L^2/2; normalised: L/2
    mask = _two_components()
    amap = np.full(mask.shape, 0.7)
    assert M.aupro([mask], [amap]) == pytest.approx(0.15)
    assert M.aupro([mask], [amap], fpr_limit=0.1) == pytest.approx(0.05)
    assert M.aupro([mask], [amap], fpr_limit=1.0) == pytest.approx(0.5)


def test_aupro_one_region_early_one_late():
    # 36 pixels, 34 anomaly-free with distinct scores 1..34 (/100). A scores 1.0
    # (above every good pixel), B scores 0.175, just below exactly 17 good pixels
    # (0.18 .. 0.34), i.e. B is only found once FPR reaches 17/34 = 0.5.
    # Curve: (0,0) -> (0,0.5) [A] -> ... flat at 0.5 ... -> (0.5,0.5) -> (0.5,1) [B] -> (1,1).
    #   AUPRO@0.3 = 0.5 * 0.3 / 0.3                      = 0.5
    #   AUPRO@1.0 = 0.5 * 0.5 + 1.0 * 0.5                  = 0.75
    mask = _two_components()
    amap = np.zeros(mask.shape)
    amap[~mask] = np.arange(1, 35) / 100.0
    amap[0, 0] = 1.0
    amap[5, 5] = 0.175
    assert M.aupro([mask], [amap]) == pytest.approx(0.5)
    assert M.aupro([mask], [amap], fpr_limit=1.0) == pytest.approx(0.75)
    # Equidistant thresholds (MVTec 3D-AD): with 34 thresholds every good score is a
    # threshold; at position p FPR = 1 - (p+1)/34 and a region counts if its score is
    # strictly above. Points: PRO 0.5 for FPR <= 16/34, PRO 1 from FPR 17/34 on, so
    # the step becomes a ramp from (16/34, 0.5) to (17/34, 1):
    #   area to 1 = 0.5*16/34 + 0.75/34 + 17/34 = 25.75/34 (exact method: 0.75)
    assert M.aupro([mask], [amap], num_thresholds=34) == pytest.approx(0.5)
    assert M.aupro([mask], [amap], fpr_limit=1.0, num_thresholds=34) == pytest.approx(25.75 / 34)


def test_aupro_weights_regions_not_pixels():
    # Region A has 8 pixels, region B 1 pixel. A is found before any good pixel,
    # B never before FPR 1. Pixel recall at FPR 0 would be 8/9, but PRO averages
    # regions: (1 + 0) / 2 = 0.5 -> AUPRO@0.3 = 0.5.
    mask = np.zeros((8, 8), bool)
    mask[0, 0:8] = True
    mask[7, 7] = True
    amap = np.full(mask.shape, 0.5)
    amap[0, :] = 1.0
    amap[7, 7] = 0.0
    assert M.aupro([mask], [amap]) == pytest.approx(0.5)


def test_aupro_eight_connectivity():
    # (0,0) and (1,1) touch only diagonally -> ONE region of 2 pixels; C at (4,4) is
    # separate. Scores: (0,0)=1, (1,1)=0 (below all good pixels), C=1, good=0.5.
    # 8-connected: PRO at FPR 0 = (1/2 + 1) / 2 = 0.75 -> AUPRO@0.3 = 0.75
    # (4-connectivity would give three regions: (1 + 0 + 1) / 3 = 0.667).
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[1, 1] = mask[4, 4] = True
    amap = np.full(mask.shape, 0.5)
    amap[0, 0] = 1.0
    amap[1, 1] = 0.0
    amap[4, 4] = 1.0
    fpr, pro = M.pro_curve([mask], [amap])
    np.testing.assert_allclose(fpr, [0, 0, 1, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.75, 0.75, 1, 1])
    assert M.aupro([mask], [amap]) == pytest.approx(0.75)


def test_aupro_regions_pooled_over_images():
    # Image 1: region found at FPR 0; image 2: region never found before FPR 1.
    # The mean runs over the regions of all images -> 0.5. Images may differ in size.
    m1 = np.zeros((4, 4), bool)
    m1[1:3, 1:3] = True
    m2 = np.zeros((5, 3), bool)
    m2[0, 0] = True
    a1 = np.where(m1, 1.0, 0.5)
    a2 = np.where(m2, 0.0, 0.5)
    assert M.aupro([m1, m2], [a1, a2]) == pytest.approx(0.5)
    # good images only add anomaly-free pixels
    assert M.aupro([m1, m2, np.zeros((2, 2), bool)], [a1, a2, np.full((2, 2), 0.5)]) == pytest.approx(0.5)


def _brute_force_curve(masks, maps):
    """Definition, one threshold at a time: t runs over distinct scores (descending),
    FPR(t) = share of good pixels >= t, PRO(t) = mean over regions of share >= t."""
    from scipy.ndimage import label

    ok, regions = [], []
    for m, a in zip(masks, maps):
        lab, n = label(m, structure=np.ones((3, 3), int))
        ok.append(a[lab == 0])
        regions += [a[lab == k] for k in range(1, n + 1)]
    ok = np.concatenate(ok)
    all_scores = np.concatenate([np.ravel(a) for a in maps])
    fprs, pros = [0.0], [0.0]
    for t in np.unique(all_scores)[::-1]:
        fprs.append(np.mean(ok >= t))
        pros.append(np.mean([np.mean(r >= t) for r in regions]))
    return np.array(fprs + [1.0]), np.array(pros + [1.0])


def _random_set(seed, n=3, h=24, w=20):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 5), rng.integers(0, w - 5)
            masks[i, y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = True
    maps = rng.random((n, h, w)) + 0.6 * masks
    return masks, maps.astype(np.float32)


def test_pro_curve_matches_definition_with_ties():
    masks, maps = _random_set(1)
    maps = np.round(maps * 20) / 20  # many ties
    fpr, pro = M.pro_curve(masks, maps)
    fpr_bf, pro_bf = _brute_force_curve(masks, maps)
    np.testing.assert_allclose(fpr, fpr_bf, atol=1e-12)
    np.testing.assert_allclose(pro, pro_bf, atol=1e-12)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_and_equidistant_agree(seed):
    masks, maps = _random_set(seed, n=4, h=64, w=64)
    exact = M.aupro(masks, maps)
    sampled = M.aupro(masks, maps, num_thresholds=2000)
    assert 0.0 < exact < 1.0
    assert sampled == pytest.approx(exact, abs=0.01)
    fpr, pro = M.pro_curve(masks, maps, num_thresholds=100)
    assert fpr[0] == 0.0 and fpr[-1] == 1.0 and pro[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0)


def test_aupro_errors():
    good = [np.zeros((4, 4), bool)]
    with pytest.raises(ValueError, match="no anomalous pixels"):
        M.aupro(good, [np.random.rand(4, 4)])
    with pytest.raises(ValueError, match="no anomaly-free pixels"):
        M.aupro([np.ones((4, 4), bool)], [np.random.rand(4, 4)])
    mask = _two_components()
    with pytest.raises(ValueError, match="fpr_limit"):
        M.aupro([mask], [np.random.rand(6, 6)], fpr_limit=0.0)
    with pytest.raises(ValueError, match="num_thresholds"):
        M.aupro([mask], [np.random.rand(6, 6)], num_thresholds=1)
    with pytest.raises(ValueError, match="shape"):
        M.aupro([mask], [np.random.rand(6, 5)])
    bad = np.random.rand(6, 6)
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.aupro([mask], [bad])


# --------------------------------------------------------------------------
# plots (smoke)
# --------------------------------------------------------------------------
def _is_png(path):
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC


def test_plot_roc_and_pro(tmp_path):
    from calibrate import plots

    masks, maps = _random_set(0)
    fpr, tpr = M.roc_curve_pixel(masks, maps)
    out = plots.plot_roc(
        {"pixel": (fpr, tpr, M.pixel_auroc(masks, maps)), "image": ([0, 0.5, 1], [0, 1, 1], 0.75)},
        tmp_path / "roc.png",
        "ROC test",
    )
    assert _is_png(out)

    pfpr, ppro = M.pro_curve(masks, maps)
    out = plots.plot_pro({"model": (pfpr, ppro, M.aupro(masks, maps))}, tmp_path / "sub" / "pro.png", "PRO test")
    assert _is_png(out)


def test_heatmap_gallery(tmp_path):
    from calibrate import plots

    rng = np.random.default_rng(0)
    items = []
    for i in range(3):
        mask = np.zeros((32, 40), bool)
        if i != 1:
            mask[5:15, 10:20] = True
        items.append(
            {
                "rgb": rng.integers(0, 255, (32, 40, 3), dtype=np.uint8),
                "map": rng.random((16, 20)),  # lower resolution than the image
                "mask": None if i == 1 else mask,
                "score": float(rng.random()),
                "label": 0 if i == 1 else 1,
                "name": f"sample_{i}",
            }
        )
    out = plots.heatmap_gallery(items, tmp_path / "gallery.png", "gallery", max_cols=2)
    assert _is_png(out)
    out = plots.heatmap_gallery(items[:1], tmp_path / "one.png", "one", vmin=0.0, vmax=1.0)
    assert _is_png(out)
    with pytest.raises(ValueError):
        plots.heatmap_gallery([], tmp_path / "none.png", "empty")
