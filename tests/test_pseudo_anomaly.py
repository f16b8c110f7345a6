"""convert.pseudo_anomaly: DBRN pseudo-anomaly synthesis (pure numpy + OpenCV)."""
from __future__ import annotations

import numpy as np
import pytest

from convert.pseudo_anomaly import (
    AnomalyConfig,
    TextureBank,
    depth_anomaly,
    draw_case,
    foreground_mask,
    fractal_noise_2d,
    perlin_mask,
    perlin_noise_2d,
    procedural_texture,
    rgb_anomaly,
    synthesize,
)

S = 48


def _sample(seed: int = 0, size: int = S):
    r = np.random.default_rng(1000 + seed)
    rgb = r.integers(20, 236, size=(size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    fg = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    height = np.where(fg, 0.6 + 0.3 * np.sin(xx / 5.0), 0.0).astype(np.float32)
    return rgb, height, fg


def _bank(n: int = 4, size: int = S):
    imgs = [np.full((size + 8 * i, size, 3), 30 + 50 * i, np.uint8) for i in range(n)]
    return TextureBank(imgs, np.random.default_rng(0))


def _draw_until(fn, case: str, seed0: int = 0, limit: int = 200):
    for s in range(seed0, seed0 + limit):
        res = fn(np.random.default_rng(s))
        if res[-1]["case"] == case:
            return res
    raise AssertionError(f"no {case} case in {limit} seeds")


# ----------------------------------------------------------------------------- noise and masks


def test_perlin_noise_shape_range_and_determinism():
    a = perlin_noise_2d((40, 50), (4, 5), np.random.default_rng(3))
    b = perlin_noise_2d((40, 50), (4, 5), np.random.default_rng(3))
    assert a.shape == (40, 50) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.abs(a).max() <= 1.5 and a.std() > 0.05
    odd = perlin_noise_2d((37, 23), (3, 7), np.random.default_rng(1))  # not a multiple of res
    assert odd.shape == (37, 23) and np.isfinite(odd).all()
    f = fractal_noise_2d((32, 32), (2, 2), np.random.default_rng(0), octaves=4)
    assert f.shape == (32, 32) and np.isfinite(f).all()


def test_perlin_mask_binary_and_deterministic():
    m1 = perlin_mask((64, 64), np.random.default_rng(5))
    m2 = perlin_mask((64, 64), np.random.default_rng(5))
    assert m1.dtype == np.float32 and set(np.unique(m1)) <= {0.0, 1.0}
    assert np.array_equal(m1, m2)
    cover = np.mean([perlin_mask((64, 64), np.random.default_rng(s)).mean() for s in range(40)])
    assert 0.0 < cover < 0.5


def test_foreground_mask_inside_foreground_and_empty_fg_uses_image():
    _, _, fg = _sample()
    for s in range(20):
        m, _ = foreground_mask(fg, fg.shape, np.random.default_rng(s))
        assert not (m.astype(bool) & ~fg).any()
        assert m.any()
    empty = np.zeros_like(fg)
    m, _ = foreground_mask(empty, fg.shape, np.random.default_rng(0))
    assert m.any()  # whole image is allowed


# ----------------------------------------------------------------------------- rgb


def test_rgb_deterministic_with_seed():
    rgb, _, fg = _sample()
    bank = _bank()
    for s in range(10):
        a, ma = rgb_anomaly(rgb, fg, np.random.default_rng(s), bank)
        b, mb = rgb_anomaly(rgb, fg, np.random.default_rng(s), bank)
        assert np.array_equal(a, b) and np.array_equal(ma, mb)
        assert a.dtype == np.uint8 and ma.dtype == np.float32


def test_rgb_masks_inside_foreground():
    rgb, _, fg = _sample()
    for s in range(30):
        out, m = rgb_anomaly(rgb, fg, np.random.default_rng(s), _bank())
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert not (m.astype(bool) & ~fg).any()
        assert np.array_equal(out[~m.astype(bool)], rgb[~m.astype(bool)])  # nothing changes outside M


def test_rgb_unchanged_case():
    rgb, _, fg = _sample()
    out, m, info = _draw_until(lambda r: rgb_anomaly(rgb, fg, r, _bank(), return_info=True), "unchanged")
    assert np.array_equal(out, rgb) and out is not rgb
    assert not m.any()


def test_rgb_masked_out_zeroes_exactly_the_mask():
    rgb, _, fg = _sample()
    out, m, info = _draw_until(lambda r: rgb_anomaly(rgb, fg, r, _bank(), return_info=True), "masked_out")
    mb = m.astype(bool)
    assert mb.any()
    assert (out[mb] == 0).all()
    assert np.array_equal(out[~mb], rgb[~mb])


def test_rgb_blend_equals_formula():
    rgb, _, fg = _sample()
    cfg = AnomalyConfig(beta_range=(0.2, 0.6))
    out, m, info = _draw_until(lambda r: rgb_anomaly(rgb, fg, r, _bank(), cfg=cfg, return_info=True), "blended")
    beta, a = info["beta"], info["texture"]
    assert 0.2 <= beta <= 0.6
    d, m3 = rgb.astype(np.float32), m[..., None]
    expect = d * (1 - m3) + beta * d * m3 + (1 - beta) * a * m3
    assert np.abs(out.astype(np.float32) - expect).max() <= 0.5 + 1e-3


def test_texture_bank_crops_come_from_other_images():
    bank = _bank(4)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        tex, src = bank.sample((S, S), rng, exclude_index=2)
        assert tex.shape == (S, S, 3) and tex.dtype == np.float32
        assert 0 <= tex.min() and tex.max() <= 1
        if src["source"] == "crop":
            assert src["index"] != 2
            x0, y0, w, h = src["box"]
            ih, iw = bank.images[src["index"]].shape[:2]
            assert 0 <= x0 and x0 + w <= iw and 0 <= y0 and y0 + h <= ih
            seen.add(src["index"])
        else:
            assert src["kind"] in ("perlin", "stripes", "checker", "noise")
    assert seen == {0, 1, 3}
    # excluded by content too: the image being augmented is never its own texture
    own = bank.images[1]
    for _ in range(30):
        _, src = bank.sample((S, S), rng, exclude_image=own)
        assert src.get("index") != 1
    # a bank holding only the image itself falls back to procedural textures
    solo = TextureBank([own])
    for s in range(10):
        _, src = solo.sample((S, S), np.random.default_rng(s), exclude_image=own.copy())
        assert src["source"] == "procedural"


def test_procedural_texture_kinds():
    for kind in ("perlin", "stripes", "checker", "noise"):
        tex, k = procedural_texture((32, 40), np.random.default_rng(0), kind)
        assert k == kind and tex.shape == (32, 40, 3) and 0 <= tex.min() and tex.max() <= 1
    with pytest.raises(ValueError):
        procedural_texture((8, 8), np.random.default_rng(0), "plaid")


def test_case_statistics_over_300_draws():
    rgb, _, fg = _sample(size=32)
    fg = fg[:32, :32]
    counts = {"unchanged": 0, "masked_out": 0, "blended": 0}
    rng = np.random.default_rng(123)
    for _ in range(300):
        out, m, info = rgb_anomaly(rgb, fg, rng, None, return_info=True)
        counts[info["case"]] += 1
        if info["case"] != "unchanged":
            assert m.any()
    frac = {k: v / 300 for k, v in counts.items()}
    assert abs(frac["unchanged"] - 0.3) <= 0.08
    assert abs(frac["masked_out"] - 0.2) <= 0.08
    assert abs(frac["blended"] - 0.5) <= 0.08


def test_draw_case_thresholds():
    cfg = AnomalyConfig()
    cases = [draw_case(np.random.default_rng(s), cfg) for s in range(200)]
    for case, p in cases:
        expect = "unchanged" if p >= 0.7 else "masked_out" if p >= 0.5 else "blended"
        assert case == expect


# ----------------------------------------------------------------------------- depth


def test_depth_values_in_range_and_only_inside_mask():
    _, h, fg = _sample()
    for s in range(40):
        out, m, info = depth_anomaly(h, fg, np.random.default_rng(s), return_info=True)
        assert out.dtype == np.float32 and m.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 1
        assert not (m.astype(bool) & ~fg).any()
        outside = ~m.astype(bool)
        assert np.array_equal(out[outside], h[outside])
        a, b = depth_anomaly(h, fg, np.random.default_rng(s))
        assert np.array_equal(a, out) and np.array_equal(b, m)


def test_depth_cases_follow_the_rule():
    _, h, fg = _sample()
    out, m, _ = _draw_until(lambda r: depth_anomaly(h, fg, r, return_info=True), "unchanged")
    assert np.array_equal(out, h) and not m.any()
    out, m, _ = _draw_until(lambda r: depth_anomaly(h, fg, r, return_info=True), "masked_out")
    mb = m.astype(bool)
    assert mb.any() and (out[mb] == 0).all() and np.array_equal(out[~mb], h[~mb])
    out, m, info = _draw_until(lambda r: depth_anomaly(h, fg, r, return_info=True), "blended")
    beta, a = info["beta"], info["texture"]
    # texture A = (t - 0.2) / 0.6 for a grey Perlin texture t in [0, 1]
    assert a.min() == pytest.approx(-1 / 3, abs=1e-5) and a.max() == pytest.approx(4 / 3, abs=1e-5)
    expect = np.clip(h * (1 - m) + beta * h * m + (1 - beta) * a * m, 0, 1)
    np.testing.assert_allclose(out, expect, atol=1e-6)


# ----------------------------------------------------------------------------- synthesize


def test_synthesize_modalities_and_union_mask():
    rgb, h, fg = _sample()
    bank = _bank()
    seen = {"rgb": 0, "depth": 0, "both": 0}
    for s in range(90):
        r_out, h_out, m, info = synthesize(rgb, h, fg, np.random.default_rng(s), bank, return_info=True)
        seen[info["modality"]] += 1
        mb = m.astype(bool)
        assert not (mb & ~fg).any()
        rgb_changed = not np.array_equal(r_out, rgb)
        depth_changed = not np.array_equal(h_out, h)
        if info["case"] == "unchanged":
            assert not mb.any() and not rgb_changed and not depth_changed
            continue
        assert mb.any()
        if info["modality"] == "rgb":
            assert not depth_changed
        if info["modality"] == "depth":
            assert not rgb_changed
        # changes only inside the union mask
        assert np.array_equal(r_out[~mb], rgb[~mb]) and np.array_equal(h_out[~mb], h[~mb])
        # determinism
        again = synthesize(rgb, h, fg, np.random.default_rng(s), bank)
        assert all(np.array_equal(x, y) for x, y in zip(again, (r_out, h_out, m)))
    assert all(v >= 15 for v in seen.values())
    only_rgb = [synthesize(rgb, h, fg, np.random.default_rng(s), bank, modality_probs=(1, 0, 0), return_info=True)[-1]
                for s in range(10)]
    assert {i["modality"] for i in only_rgb} == {"rgb"}


def test_bad_inputs_are_named():
    rgb, h, fg = _sample()
    with pytest.raises(ValueError, match="rgb"):
        rgb_anomaly(rgb.astype(np.float32), fg, np.random.default_rng(0))
    with pytest.raises(ValueError, match="modality_probs"):
        synthesize(rgb, h, fg, np.random.default_rng(0), modality_probs=(1, 1))
    with pytest.raises(ValueError, match="beta_range"):
        AnomalyConfig(beta_range=(0.5, 0.2))
