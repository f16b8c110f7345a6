"""Dual-channel reverse distillation (RD4AD-style) for RGB-D.

A frozen ImageNet encoder (the teacher) sees RGB and an image-like depth
encoding. Per modality, an OCBE-style bottleneck fuses the teacher's
multi-scale features of *both* modalities into a compact embedding, and a
student decoder reconstructs that modality's teacher features from it. The
student only learns normal appearance, so where teacher and student disagree
(1 - cosine similarity) the part is anomalous.

Missing modality: the absent stream's bottleneck input is zero. Training
drops a stream at random (modality dropout), so each student also learns to
reconstruct from one stream alone and a missing camera stream still yields a
map from the other.

Fusion (documented in docs/models.md): each modality's map is divided out by
the statistics of its image scores on normal validation data, per mode, and
the fused map is the pixel-wise maximum, so a defect seen by one modality is
never averaged away by the other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.modes import MODES, PRESENT, STREAMS

from .encoders import create_encoder
from .layers import GaussianBlur, conv_bn_act, cosine_distance, dilate_mask
from .config import DictConfig
from .registry import register_model

MODALITIES = STREAMS


@dataclass
class RDConfig(DictConfig):
    config_name = "rd"

    encoder: str = "efficientnet_lite0"
    encoder_weights: str | None = None
    image_size: int = 256
    mff_channels: int = 64
    bottleneck_channels: int = 256
    decoder_channels: tuple[int, int, int] = (128, 64, 48)  # strides 16, 8, 4
    loss_pools: tuple[int, ...] = (1, 2, 4)  # extra coarser scales by average pooling
    smooth_sigma: float = 4.0
    foreground_dilate: int = 15  # px at model resolution; maps are zeroed outside
    mask_maps_with_foreground: bool = True
    modality_dropout: tuple[float, float, float] = (0.4, 0.3, 0.3)  # both / rgb only / depth only
    # The loss is mostly about the part, but the background must be learnt too:
    # without a depth stream there is no foreground mask to hide it at test time.
    background_weight: float = 0.1


class MultiScaleFusion(nn.Module):
    """Brings strides 4, 8 and 16 to stride 16 (the MFF half of OCBE)."""

    def __init__(self, channels: list[int], c: int):
        super().__init__()
        self.s4 = nn.Sequential(conv_bn_act(channels[0], c, 3, 2), conv_bn_act(c, c, 3, 2))
        self.s8 = conv_bn_act(channels[1], c, 3, 2)
        self.s16 = conv_bn_act(channels[2], c, 1)

    def forward(self, feats):
        return torch.cat([self.s4(feats[0]), self.s8(feats[1]), self.s16(feats[2])], 1)


class Student(nn.Module):
    """OCBE bottleneck over both modalities + decoder for one modality."""

    def __init__(self, teacher_channels: list[int], cfg: RDConfig):
        super().__init__()
        c, b = cfg.mff_channels, cfg.bottleneck_channels
        self.mff = nn.ModuleList([MultiScaleFusion(teacher_channels, c) for _ in MODALITIES])
        self.embed = conv_bn_act(2 * 3 * c, b, 3, 2)  # one-class embedding at stride 32
        self.embed_res = nn.Sequential(nn.Conv2d(b, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b))
        ups, heads, cin = [], [], b
        for d, tc in zip(cfg.decoder_channels, reversed(teacher_channels)):
            ups.append(
                nn.Sequential(
                    nn.ConvTranspose2d(cin, d, 2, 2, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True),
                    conv_bn_act(d, d, 3),
                )
            )
            heads.append(nn.Conv2d(d, tc, 1))
            cin = d
        self.ups, self.heads = nn.ModuleList(ups), nn.ModuleList(heads)

    def forward(self, t_rgb, t_depth, present: torch.Tensor | None = None):
        """Features at strides 4, 8, 16. A missing modality is None; in training,
        present (N x 2 float, rgb/depth in {0, 1}) drops streams per sample instead."""
        parts = []
        for i, feats in enumerate((t_rgb, t_depth)):
            if feats is None:
                continue
            f = self.mff[i](feats)
            parts.append((i, f if present is None else f * present[:, i].view(-1, 1, 1, 1)))
        ref = parts[0][1]
        z = [torch.zeros_like(ref), torch.zeros_like(ref)]
        for i, p in parts:
            z[i] = p
        x = self.embed(torch.cat(z, 1))
        x = F.relu(x + self.embed_res(x))
        outs = []
        for up, head in zip(self.ups, self.heads):
            x = up(x)
            outs.append(head(x))
        return outs[::-1]  # strides 4, 8, 16


class ReverseDistillationRGBD(nn.Module):
    def __init__(self, cfg: RDConfig | None = None, pretrained: bool = True):
        super().__init__()
        self.cfg = cfg or RDConfig()
        self.teacher = create_encoder(self.cfg.encoder, weights_path=self.cfg.encoder_weights, pretrained=pretrained)
        ch = list(self.teacher.channels)
        self.students = nn.ModuleList([Student(ch, self.cfg) for _ in MODALITIES])
        self.blur = GaussianBlur(self.cfg.smooth_sigma)
        # Image-score statistics on normal validation data: [mode, modality] -> mean, std.
        self.register_buffer("score_mean", torch.zeros(len(MODES), 2))
        self.register_buffer("score_std", torch.ones(len(MODES), 2))

    # -- training ------------------------------------------------------------------
    def teacher_features(self, x):
        with torch.no_grad():
            return [f.detach() for f in self.teacher(x)]

    def student_features(self, t_rgb, t_depth, present):
        return [s(t_rgb, t_depth, present) for s in self.students]

    def distillation_loss(self, t_feats, s_feats, fg: torch.Tensor) -> torch.Tensor:
        """Cosine distance averaged over foreground, per scale and per pooled scale. N-vector."""
        total, n = 0.0, 0
        bw = self.cfg.background_weight
        for t, s in zip(t_feats, s_feats):
            w = bw + (1 - bw) * F.adaptive_avg_pool2d(fg, t.shape[-2:])
            for p in self.cfg.loss_pools:
                if p > 1:
                    tp, sp, wp = F.avg_pool2d(t, p), F.avg_pool2d(s, p), F.avg_pool2d(w, p)
                else:
                    tp, sp, wp = t, s, w
                d = cosine_distance(tp, sp)
                total = total + (d * wp).sum((1, 2, 3)) / wp.sum((1, 2, 3)).clamp_min(1e-6)
                n += 1
        return total / n

    # -- inference -----------------------------------------------------------------
    def modality_map(self, t_feats, s_feats, fg=None) -> torch.Tensor:
        size = self.cfg.image_size
        amap = 0
        for t, s in zip(t_feats, s_feats):
            amap = amap + F.interpolate(cosine_distance(t, s), size=(size, size), mode="bilinear", align_corners=False)
        amap = self.blur(amap)
        if fg is not None:
            amap = amap * fg
        return amap

    def dilate_foreground(self, fg):
        """Grow the part's mask so defects at its rim stay in."""
        if fg is None or not self.cfg.mask_maps_with_foreground:
            return None
        return dilate_mask(fg, self.cfg.foreground_dilate)

    def forward(self, rgb=None, depth=None, fg=None, mode: str = "rgbd"):
        """Maps for one mode. Returns (fused map N x 1 x S x S, score N, raw maps per modality).

        fg: N x 1 x S x S foreground mask from preprocessing (only meaningful with depth).
        """
        use_rgb, use_depth = PRESENT[mode]
        t_rgb = self.teacher(rgb) if use_rgb else None
        t_depth = self.teacher(depth) if use_depth else None
        mask = self.dilate_foreground(fg) if use_depth else None
        mi = MODES.index(mode)
        raw, normed = {}, []
        for k, name in enumerate(MODALITIES):
            t = (t_rgb, t_depth)[k]
            if t is None:
                continue
            s = self.students[k](t_rgb, t_depth)
            raw[name] = self.modality_map(t, s, mask)
            normed.append((raw[name] - self.score_mean[mi, k]) / self.score_std[mi, k])
        fused = normed[0] if len(normed) == 1 else torch.maximum(normed[0], normed[1])
        score = fused.flatten(1).amax(1)
        return fused, score, raw

    def set_score_stats(self, mode: str, modality: str, mean: float, std: float) -> None:
        self.score_mean[MODES.index(mode), MODALITIES.index(modality)] = float(mean)
        self.score_std[MODES.index(mode), MODALITIES.index(modality)] = max(float(std), 1e-6)

    def trainable_parameters(self):
        return self.students.parameters()

    def trained_state(self) -> dict:
        """What training changes, for checkpoints and model.pt: the students (the teacher is pretrained)."""
        return self.students.state_dict()

    def load_trained_state(self, state: dict) -> None:
        self.students.load_state_dict(state)

    def score_statistic_inputs(self, raw: dict) -> dict:
        """Per-sample max of each raw (un-normalised) modality map, named as set_score_stats expects."""
        return {m: r.flatten(1).amax(1) for m, r in raw.items()}


@register_model("rd")
def rd(config: dict | None = None, pretrained: bool = True, preset: str | None = "default") -> ReverseDistillationRGBD:
    # None: a complete saved config (run.yaml); rd has no presets, so it is the same as "default".
    if preset not in ("default", None):
        raise ValueError(f"rd has no named presets (got {preset!r}); set its config keys instead")
    return ReverseDistillationRGBD(RDConfig.from_dict(config or {}), pretrained=pretrained)
