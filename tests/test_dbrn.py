"""convert.models.dbrn: the dual-branch reconstruction network (shapes per mode, missing
modality placeholder, determinism, losses, config, ONNX export / parity / TensorRT lint)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convert.models import create_model, list_models  # noqa: E402
from convert.models.dbrn import DBRN, DBRNConfig, ssim_map  # noqa: E402
from convert.models.rd import MODES  # noqa: E402

S = 64
N = 2
TINY = dict(image_size=S, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4,
            patch_size=4, mlp_ratio=2.0, ism_dim=8, disc_channels=8, smooth_sigma=2.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(torch_single_thread):
    yield


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("dbrn", config=TINY).eval()


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    rgb = torch.randn(N, 3, S, S, generator=g)
    depth = torch.randn(N, 3, S, S, generator=g)
    fg = torch.zeros(N, 1, S, S)
    fg[:, :, 16:48, 16:48] = 1.0
    return rgb, depth, fg


def test_registered():
    assert "dbrn" in list_models()


@pytest.mark.parametrize("mode", MODES)
def test_shapes_every_mode(model, inputs, mode):
    rgb, depth, fg = inputs
    with torch.no_grad():
        fused, score, raw = model(rgb, depth, fg, mode)
    assert fused.shape == (N, 1, S, S) and score.shape == (N,)
    assert torch.isfinite(fused).all() and torch.isfinite(score).all()
    assert raw["fused"].shape == (N, 1, S, S)
    assert raw["ism_weights"].shape[1] == 2
    assert ("recon_rgb" in raw) == (mode != "depth") and ("recon_depth" in raw) == (mode != "rgb")
    if "recon_rgb" in raw:
        assert raw["recon_rgb"].shape == (N, 3, S, S)


def test_missing_streams_accepted(model, inputs):
    rgb, depth, fg = inputs
    with torch.no_grad():
        a = model(rgb, None, None, "rgb")
        b = model(None, depth, fg, "depth")
        c = model(rgb=rgb, mode="rgb")
    assert a[0].shape == b[0].shape == (N, 1, S, S)
    assert torch.equal(a[0], c[0])
    with pytest.raises(ValueError, match="no input stream"):
        model(None, None, None, "rgbd")
    with pytest.raises(ValueError, match="mode"):
        model(rgb, depth, fg, "ir")


def test_deterministic_in_eval(model, inputs):
    rgb, depth, fg = inputs
    with torch.no_grad():
        a, sa, _ = model(rgb, depth, fg, "rgbd")
        b, sb, _ = model(rgb, depth, fg, "rgbd")
    assert torch.equal(a, b) and torch.equal(sa, sb)


@pytest.mark.parametrize("mode,missing", [("rgb", "depth"), ("depth", "rgb")])
def test_placeholder_gives_zero_difference(model, inputs, mode, missing):
    rgb, depth, fg = inputs
    with torch.no_grad():
        _, _, raw = model(rgb, depth, fg, mode)
    for orig, recon in raw[f"ism_pairs_{missing}"]:
        assert torch.equal(orig, recon)
        assert float(orig.abs().max()) == 0.0
    present = "rgb" if missing == "depth" else "depth"
    assert any(float((o - r).abs().max()) > 0 for o, r in raw[f"ism_pairs_{present}"])


def test_training_swap_feeds_original_twice(inputs):
    torch.manual_seed(0)
    m = DBRN(DBRNConfig.from_dict(TINY)).train()
    rgb, depth, fg = inputs
    out = m.training_forward(rgb, depth, fg, rgb, depth, swap=torch.tensor([1, 2]))
    for s in range(len(m.cfg.scales)):
        o, r = out["ism_pairs"]["rgb"][s]
        assert torch.equal(o[0], r[0]) and not torch.equal(o[1], r[1])
        o, r = out["ism_pairs"]["depth"][s]
        assert torch.equal(o[1], r[1]) and not torch.equal(o[0], r[0])
    rnd = m.training_forward(rgb, depth, fg, rgb, depth)  # random swap
    assert rnd["swap"].shape == (N,) and set(rnd["swap"].tolist()) <= {0, 1, 2}


def test_losses_finite_positive_backward(inputs):
    torch.manual_seed(0)
    m = DBRN(DBRNConfig.from_dict(TINY)).train()
    rgb, depth, fg = inputs
    mask = torch.zeros(N, 1, S, S)
    mask[:, :, 20:28, 20:28] = 1.0
    rgb_aug, depth_aug = rgb + 2 * mask, depth - 2 * mask
    out = m.training_forward(rgb, depth, fg, rgb_aug, depth_aug)
    assert len(out["recon"]["rgb"]) == len(m.cfg.scales)
    assert [r.shape[-1] for r in out["recon"]["depth"]] == [S // s for s in m.cfg.scales]
    assert all(lg.shape == (N, 1, S, S) for lg in out["mask_logits"])
    parts = m.losses(out, {"rgb": rgb, "depth": depth, "fg": fg, "mask": mask})
    for k, v in parts.items():
        assert torch.isfinite(v) and float(v.detach()) > 0, k
    parts["total"].backward()
    grads = [p.grad for p in m.trainable_parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_ssim_identity():
    def ssim(a, b):  # mean per sample
        return ssim_map(a, b).flatten(1).mean(1)

    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-4)
    assert float(ssim(x, torch.rand(2, 3, 32, 32)).max()) < 0.5


def test_ssim_matches_the_2d_gaussian_window_definition():
    """The separable implementation computes SSIM with the usual 11 x 11 Gaussian window."""
    def reference(a, b, size=11, sigma=1.5):
        x = torch.arange(size, dtype=torch.float32) - size // 2
        g = torch.exp(-0.5 * (x / sigma) ** 2)
        w = (g[:, None] * g[None, :]) / g.sum() ** 2
        c = a.shape[1]
        win = w[None, None].repeat(c, 1, 1, 1)
        rng = (b.amax((1, 2, 3)) - b.amin((1, 2, 3))).clamp_min(1e-3).view(-1, 1, 1, 1)
        c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2

        def filt(t):
            return F.conv2d(t, win, padding=size // 2, groups=c)

        ma, mb = filt(a), filt(b)
        saa, sbb, sab = filt(a * a) - ma ** 2, filt(b * b) - mb ** 2, filt(a * b) - ma * mb
        return ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma ** 2 + mb ** 2 + c1) * (saa + sbb + c2))

    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 40, 40), torch.randn(2, 3, 40, 40)
    b2 = 0.7 * a + 0.3 * b
    for x, y in ((a, b), (a, b2), (b2, a)):
        assert torch.allclose(ssim_map(x, y), reference(x, y), atol=1e-5)


def test_score_stats_normalise(inputs):
    m = DBRN(DBRNConfig.from_dict(TINY)).eval()
    rgb, depth, fg = inputs
    with torch.no_grad():
        a, sa, raw = m(rgb, depth, fg, "rgbd")
        m.set_score_stats("rgbd", "fused", 0.25, 2.0)
        b, sb, _ = m(rgb, depth, fg, "rgbd")
        c, _, _ = m(rgb, depth, fg, "rgb")  # other modes untouched
    assert torch.allclose(b, (raw["fused"] - 0.25) / 2.0, atol=1e-6)
    assert torch.allclose(sb, (sa - 0.25) / 2.0, atol=1e-6)
    assert m.score_mean.shape == (len(MODES), 1)
    assert float(m.score_mean[MODES.index("rgb"), 0]) == 0.0
    with pytest.raises(ValueError, match="modality"):
        m.set_score_stats("rgbd", "ir", 0.0, 1.0)


def test_config_round_trip_and_errors():
    for cfg in (DBRNConfig(), DBRNConfig.published(), DBRNConfig.edge(), DBRNConfig.from_dict(TINY)):
        assert DBRNConfig.from_dict(cfg.to_dict()) == cfg
    assert DBRNConfig.published().depths == (2, 2, 4, 2)
    assert DBRNConfig.published().disc_stride == 1
    assert DBRNConfig.published().encoder_dropout == (0.6, 0.4, 0.2)
    with pytest.raises(ValueError, match="bogus"):
        DBRNConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="bogus"):
        create_model("dbrn", config={"bogus": 1})
    with pytest.raises(ValueError, match="num_heads"):
        DBRNConfig(depths=(1, 1), num_heads=(1, 2, 4))
    with pytest.raises(ValueError, match="scale"):
        DBRNConfig(scales=(1, 3))
    with pytest.raises(ValueError, match="divisible"):
        DBRNConfig(image_size=100)
    # 96 / patch 4 gives stage grids 24, 12, 6, 3: window 8 cannot tile 12 (a reshape error without this check)
    with pytest.raises(ValueError, match="window_size 8 must divide the rgb branch's stage-2 token grid 12 .*window_size=6"):
        DBRNConfig.edge(image_size=96)
    assert DBRNConfig.edge(image_size=96, window_size=6).window_size == 6
    with pytest.raises(ValueError, match="preset"):
        create_model("dbrn", preset="huge")


def test_published_vs_edge_params():
    n_pub = sum(p.numel() for p in DBRN(DBRNConfig.published()).parameters())
    n_edge = sum(p.numel() for p in DBRN(DBRNConfig.edge()).parameters())
    print(f"dbrn params: published {n_pub / 1e6:.2f} M, edge {n_edge / 1e6:.2f} M")
    assert n_edge * 10 < n_pub


@pytest.fixture(scope="module")
def edge64():
    torch.manual_seed(0)
    return DBRN(DBRNConfig.edge(image_size=S)).eval()


@pytest.mark.parametrize("mode", MODES)
def test_onnx_export_parity_and_trt_lint(edge64, mode, tmp_path):
    from convert.check_trt import ERROR, check_file
    from convert.export import example_inputs, export_mode, parity

    path = export_mode(edge64, mode, S, tmp_path / f"{mode}.onnx")
    res = parity(edge64, mode, path, [example_inputs(mode, S, seed=i) for i in range(2)])
    assert res["max_abs_map"] <= 1e-4 and res["max_abs_score"] <= 1e-4, res
    errors = [f for f in check_file(path) if f.severity == ERROR]
    assert not errors, "\n".join(map(str, errors))


def test_untrained_discriminator_starts_at_the_focal_prior():
    """P(anomaly) = 0.01 everywhere at initialisation (RetinaNet prior), not 0.5."""
    torch.manual_seed(0)
    m = create_model("dbrn", config=TINY).eval()
    with torch.no_grad():
        logits = m.disc(torch.zeros(1, TINY["ism_dim"], S // 2, S // 2))
    assert torch.allclose(torch.sigmoid(logits), torch.full_like(logits, 0.01), atol=1e-4)


def test_ism_difference_plane_sees_only_the_difference():
    """With ism_difference the pair embedding takes |original - reconstruction| as a third plane:
    zero its (original, reconstruction) weights and equal pairs embed to the same as zeros."""
    from convert.models.dbrn import PairEmbed

    e = PairEmbed(4, 2, difference=True).eval()
    with torch.no_grad():
        e.conv.weight[:, :2] = 0
        x = torch.randn(1, 3, 8, 8)
        same = e(x, x)
        diff = e(x, x + 1.0)
    assert torch.allclose(same, e(torch.zeros_like(x), torch.zeros_like(x)))
    assert not torch.allclose(same, diff)
    assert DBRNConfig.edge().ism_difference and not DBRNConfig.published().ism_difference


def test_inpainting_never_sees_the_pixel_it_reconstructs():
    """With inpaint_cell each pixel's reconstruction comes from the pass that hid its cell, so
    changing one cell's input leaves that cell's reconstruction unchanged (a defect cannot be
    copied), while the plain single pass copies the change."""
    from convert.models.dbrn import checkerboards

    m = checkerboards(8, 2)
    assert torch.equal(m.sum(0), torch.ones(1, 8, 8)) and m[0, 0, 0, 0] == 0 and m[0, 0, 0, 2] == 1
    with pytest.raises(ValueError, match="inpaint_cell"):
        DBRNConfig.from_dict({**TINY, "inpaint_cell": 6})
    x = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[:, :, 8:16, 0:8] += 3.0  # one 8 x 8 cell
    for cell, copied in ((8, False), (0, True)):
        torch.manual_seed(0)
        net = create_model("dbrn", config={**TINY, "inpaint_cell": cell}).eval()
        with torch.no_grad():
            rx, ry = net.reconstruct(0, x)[0], net.reconstruct(0, y)[0]
        change = (rx - ry)[:, :, 8:16, 0:8].abs().max()
        assert (change > 1e-3) == copied, (cell, float(change))


def test_inpainting_exports_with_parity(tmp_path):
    from convert.export import example_inputs, export_mode, parity

    torch.manual_seed(0)
    net = DBRN(DBRNConfig.edge(image_size=S, inpaint_cell=8)).eval()
    path = export_mode(net, "rgbd", S, tmp_path / "rgbd.onnx")
    res = parity(net, "rgbd", path, [example_inputs("rgbd", S, seed=0)])
    assert res["max_abs_map"] <= 1e-4 and res["max_abs_score"] <= 1e-4, res
