"""DBRN: Dual-Branch Reconstruction Network for RGB-D anomaly detection.

After Bi, Li, Luo, "Dual-Branch Reconstruction Network for Industrial Anomaly
Detection with RGB-D Data". Plain torch.nn, written for a static ONNX graph
that TensorRT 10.3 parses (see docs/models.md, section `dbrn`):

* Two Swin-UNet branches (RGB, and the 3-channel depth encoding) reconstruct
  the anomaly-free input at several scales (full, 1/2, 1/4 resolution); their
  window attention is written for a static graph (convert.models.swin).
* The Importance Scoring Module (ISM) embeds (original, reconstruction) per
  modality (each channel embedded singly with a shared convolution, then
  averaged), and two conv-BN layers on the concatenated features give
  softmax weights W_rgb, W_d: fused = F_rgb * W_rgb + F_d * W_d.
* One UNet discriminator, shared across scales, turns the fused features
  (bilinearly upsampled to S) into mask logits; the scales are averaged.
  Map = GaussianBlur(sigmoid(logits)), score = max of a 21 x 21 average pool.

Missing modality (edge addition): the absent stream's placeholder (zeros) is
fed to the ISM as both original and reconstruction, so its difference is zero
and the evidence comes from the other stream; training teaches this by
feeding, at random, one modality's original twice (`training_forward`).

Dropout: the paper keeps encoder dropout at test time; a stochastic graph
cannot be exported or thresholded reproducibly, so eval mode (and every
exported graph) is deterministic with dropout off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..pseudo_anomaly import modality_distribution
from .layers import GaussianBlur, conv_bn_act, dilate_mask, gaussian_1d
from .swin import PatchExpand, PatchMerging, SwinStage
from edge.modes import MODES, PRESENT, STREAMS
from .config import DictConfig
from .registry import register_model

MODALITIES = STREAMS

# Options removed with their code paths (no preset used them). A config saved before then
# (run.yaml) carries each at the value below, which changed nothing, so it is dropped on loading;
# any other value trained a model this code no longer builds.
REMOVED_OPTIONS: dict[str, object] = {"depth_patch_size": None, "inpaint_train_passes": 2,
                                      "branch_only_fraction": 0.0, "lambda_dice": 0.0}


def without_removed_options(config: dict) -> dict:
    """config without the removed options it holds at their neutral value; ValueError naming the
    first one it holds at any other."""
    for key in sorted(set(config) & set(REMOVED_OPTIONS)):
        if config[key] != REMOVED_OPTIONS[key]:
            raise ValueError(f"dbrn config key {key!r} = {config[key]!r}: this option was removed; only its "
                             f"neutral value {REMOVED_OPTIONS[key]!r} still loads (and is ignored)")
    return {k: v for k, v in config.items() if k not in REMOVED_OPTIONS}


@dataclass
class DBRNConfig(DictConfig):
    config_name = "dbrn"

    image_size: int = 256
    embed_dim: int = 32
    depths: tuple[int, ...] = (1, 1, 2, 1)  # encoder stages (last = bottleneck); decoder mirrors all but the last
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    window_size: int = 8
    patch_size: int = 4
    mlp_ratio: float = 2.0
    encoder_dropout: tuple[float, ...] = (0.6, 0.4, 0.2)  # on encoder outputs / skips, stage 0 first
    scales: tuple[int, ...] = (1, 2, 4)  # reconstruction heads at S / s
    ism_dim: int = 32
    ism_patch: int = 2
    ism_difference: bool = False  # also embed |original - reconstruction| (see docs/models.md)
    # > 0: each branch reconstructs every pixel with it hidden (two passes, complementary
    # checkerboards of cells this many pixels wide), so it cannot copy a defect it never sees.
    # 0 = the paper's single pass.
    inpaint_cell: int = 0
    disc_channels: int = 16
    disc_stride: int = 1  # discriminator runs at S / disc_stride (1 = paper); logits resized to S
    smooth_sigma: float = 4.0
    score_pool: int = 21
    foreground_dilate: int = 15
    mask_maps_with_foreground: bool = True
    # losses
    lambda_bg: float = 1.0
    lambda_fg: float = 4.0
    lambda_anomaly: float = 10.0
    lambda_ssim: float = 1.0
    lambda_focal: float = 1.0
    focal_gamma: float = 2.0
    swap_prob: float = 0.3  # ISM trick: probability that one modality's original is fed twice
    # Training only: a stream fed its original twice shows no difference, so (True) its own
    # pseudo-anomaly leaves the mask target, as for an absent stream; False (the paper, as far as it
    # says) keeps the target, so the discriminator must find that anomaly from appearance alone.
    # True in the edge preset: the mask is then trained only on anomalies that some stream's
    # difference shows, the evidence the ISM has at run time.
    swap_hides_target: bool = False
    # Training draws, per sample, which streams are present (rgbd / rgb only / depth only), so the
    # zero placeholder of a missing stream is seen in training as it is at run time. A larger rgbd
    # share trains the both-streams mode more at the cost of the single-stream fallback modes.
    modality_dropout: tuple[float, float, float] = (0.6, 0.2, 0.2)
    # Training only: which streams a pseudo-anomaly edits (rgb only / depth only / both). It sets
    # which stream the fused score follows; equal shares favour neither.
    pseudo_modality_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)

    def __post_init__(self):
        try:  # the synthesis's own check, here before minutes of data loading
            modality_distribution(self.pseudo_modality_probs)
        except ValueError as exc:
            raise ValueError(f"dbrn config: pseudo_modality_probs: {exc}") from None
        if len(self.num_heads) != len(self.depths):
            raise ValueError(f"dbrn config: num_heads {list(self.num_heads)} must have one entry per stage "
                             f"of depths {list(self.depths)}")
        p = self.patch_size
        for s in self.scales:
            if p % s:
                raise ValueError(f"dbrn config: scale {s} must divide patch_size {p}")
        if self.inpaint_cell and (self.inpaint_cell % p or self.inpaint_cell % max(self.scales)
                                  or self.image_size % self.inpaint_cell):
            raise ValueError(f"dbrn config: inpaint_cell {self.inpaint_cell} must be a multiple of patch_size "
                             f"{p} and of every scale {list(self.scales)}, and divide image_size "
                             f"{self.image_size}")
        down = p * 2 ** (len(self.depths) - 1)
        if self.image_size % down or self.image_size % (4 * self.disc_stride):
            raise ValueError(f"dbrn config: image_size {self.image_size} must be divisible by {down} and by 4 * disc_stride ({4 * self.disc_stride})")
        # window partitions must tile every stage's token grid, in both branches
        grids = [(m, i, self.image_size // p // 2 ** i) for m in MODALITIES for i in range(len(self.depths))]
        for modality, stage, res in grids:
            if res % min(self.window_size, res):
                fits = next(w for w in range(self.window_size, 0, -1) if all(r % min(w, r) == 0 for *_, r in grids))
                raise ValueError(f"dbrn config: window_size {self.window_size} must divide the {modality} "
                                 f"branch's stage-{stage + 1} token grid {res} x {res} (image_size "
                                 f"{self.image_size}, patch {p}), e.g. --set window_size={fits}")

    @classmethod
    def from_dict(cls, d: dict) -> "DBRNConfig":
        return super().from_dict(without_removed_options(d))

    @classmethod
    def published(cls, **kw) -> "DBRNConfig":
        """Swin-T-like branches as in the paper (window 8 instead of 7 so 256 / 4 tiles)."""
        base = dict(embed_dim=96, depths=(2, 2, 4, 2), num_heads=(3, 6, 12, 24), window_size=8, patch_size=4,
                    mlp_ratio=4.0, encoder_dropout=(0.6, 0.4, 0.2), ism_dim=64, disc_channels=64)
        base.update(kw)
        return cls(**base)

    @classmethod
    def edge(cls, **kw) -> "DBRNConfig":
        """Small enough to train on a 2-core CPU within the hour and run fast on a Jetson. Meant for
        128 x 128 input (the trainer's default size for dbrn), patch 4 with heads at 1, 1/2 and 1/4.
        Each pixel is hidden from its own reconstruction (inpaint_cell): without that the branches
        copy real defects and the mask stays blind to them. The ISM also embeds
        |original - reconstruction| (ism_difference), so a difference does not have to be learned
        from two large, nearly equal inputs. Measured accuracy: benchmarks/RESULTS.md."""
        base = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=8, patch_size=4,
                    scales=(1, 2, 4), mlp_ratio=2.0, ism_dim=32, disc_channels=16, disc_stride=2,
                    ism_difference=True, inpaint_cell=8, swap_hides_target=True,
                    # the paper's smoothing (4), score pooling (21) and rd's mask dilation (15) are for
                    # 256 x 256: scaled to 128.
                    smooth_sigma=2.0, score_pool=11, foreground_dilate=7)
        base.update(kw)
        return cls(**base)


# ---------------------------------------------------------------------------------------------
# Reconstruction branch (Swin blocks: convert.models.swin)
# ---------------------------------------------------------------------------------------------
class SwinUNet(nn.Module):
    """One reconstruction branch: image -> reconstructions at S / s for s in cfg.scales."""

    def __init__(self, cfg: DBRNConfig, in_ch: int = 3):
        super().__init__()
        p, c0, n = cfg.patch_size, cfg.embed_dim, len(cfg.depths)
        r0 = cfg.image_size // p
        self.patch_embed = nn.Conv2d(in_ch, c0, p, p)
        self.embed_norm = nn.LayerNorm(c0)
        dims = [c0 * 2 ** i for i in range(n)]
        ress = [r0 // 2 ** i for i in range(n)]
        self.enc = nn.ModuleList(
            SwinStage(dims[i], cfg.depths[i], cfg.num_heads[i], ress[i], cfg.window_size, cfg.mlp_ratio) for i in range(n)
        )
        self.merge = nn.ModuleList(PatchMerging(dims[i]) for i in range(n - 1))
        drops = list(cfg.encoder_dropout) + [0.0] * n
        self.drop = nn.ModuleList(nn.Dropout(drops[i]) for i in range(n - 1))
        self.enc_norm = nn.LayerNorm(dims[-1])
        self.up = nn.ModuleList(PatchExpand(dims[i + 1], 2, dims[i]) for i in range(n - 1))
        self.concat = nn.ModuleList(nn.Linear(2 * dims[i], dims[i]) for i in range(n - 1))
        self.dec = nn.ModuleList(
            SwinStage(dims[i], cfg.depths[i], cfg.num_heads[i], ress[i], cfg.window_size, cfg.mlp_ratio) for i in range(n - 1)
        )
        self.dec_norm = nn.LayerNorm(c0)
        self.scales = tuple(cfg.scales)
        self.head_expand = nn.ModuleList(PatchExpand(c0, p // s, c0) for s in self.scales)
        self.head_out = nn.ModuleList(nn.Conv2d(c0, in_ch, 1) for _ in self.scales)

    def forward(self, x) -> list[torch.Tensor]:
        x = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        skips = []
        for i, stage in enumerate(self.enc):
            x = stage(x)
            if i < len(self.merge):
                x = self.drop[i](x)  # dropout on encoder outputs / skips (off in eval mode)
                skips.append(x)
                x = self.merge[i](x)
        x = self.enc_norm(x)
        for i in reversed(range(len(self.dec))):
            x = self.up[i](x)
            x = self.concat[i](torch.cat([x, skips[i]], -1))
            x = self.dec[i](x)
        x = self.dec_norm(x)
        return [out(ex(x).permute(0, 3, 1, 2)) for ex, out in zip(self.head_expand, self.head_out)]


# ---------------------------------------------------------------------------------------------
# Importance Scoring Module and discriminator
# ---------------------------------------------------------------------------------------------
class PairEmbed(nn.Module):
    """(original, reconstruction) N x C x H x W each -> N x D x H/p x W/p; channels embedded singly
    with one shared convolution and averaged. With `difference`, |original - reconstruction| is
    embedded beside the pair (a third plane)."""

    def __init__(self, dim: int, patch: int, difference: bool = False):
        super().__init__()
        self.difference = difference
        self.conv = nn.Conv2d(3 if difference else 2, dim, patch, patch, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.dim = dim

    def forward(self, orig, recon):
        _, c, h, w = orig.shape
        planes = [orig, recon, (orig - recon).abs()] if self.difference else [orig, recon]
        x = torch.stack(planes, 2).reshape(-1, len(planes), h, w)  # N*C x planes x H x W
        f = self.bn(self.conv(x))
        return F.relu(f.reshape(-1, c, self.dim, f.shape[-2], f.shape[-1]).mean(1))


class ImportanceScoring(nn.Module):
    def __init__(self, dim: int, patch: int, difference: bool = False):
        super().__init__()
        self.embed = nn.ModuleList(PairEmbed(dim, patch, difference) for _ in MODALITIES)
        self.w1 = conv_bn_act(2 * dim, dim, 3)
        self.w2 = nn.Sequential(nn.Conv2d(dim, 2, 3, 1, 1, bias=False), nn.BatchNorm2d(2))

    def forward(self, rgb_pair, depth_pair):
        f_rgb = self.embed[0](*rgb_pair)
        f_d = self.embed[1](*depth_pair)
        wts = self.w2(self.w1(torch.cat([f_rgb, f_d], 1))).softmax(1)
        return f_rgb * wts[:, 0:1] + f_d * wts[:, 1:2], wts


class UNetDiscriminator(nn.Module):
    """Three-level UNet: features N x D x S x S -> mask logits N x 1 x S x S."""

    def __init__(self, cin: int, c: int):
        super().__init__()

        def block(a, b):
            return nn.Sequential(conv_bn_act(a, b, 3), conv_bn_act(b, b, 3))

        self.e1, self.e2, self.e3 = block(cin, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.d2, self.d1 = block(4 * c + 2 * c, 2 * c), block(2 * c + c, c)
        self.out = nn.Conv2d(c, 1, 1)
        # Focal-loss prior (Lin et al., RetinaNet): start at P(anomaly) = 0.01 instead of 0.5, so the
        # first thousand steps are not spent pushing the background down.
        nn.init.constant_(self.out.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="bilinear", align_corners=False), e2], 1))
        d1 = self.d1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="bilinear", align_corners=False), e1], 1))
        return self.out(d1)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def ssim_map(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM per pixel and channel (N x C x H x W), Gaussian window. Inputs of any range: constants
    from the dynamic range of b (clamped away from zero)."""
    c = a.shape[1]
    size = min(size, a.shape[-1] - (1 - a.shape[-1] % 2))
    rng = (b.amax((1, 2, 3)) - b.amin((1, 2, 3))).clamp_min(1e-3).view(-1, 1, 1, 1)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    # The Gaussian is separable and the five local moments share it: one row and one column pass
    # over all of them instead of five 11 x 11 passes: the same SSIM to 1e-6 in half the time.
    g = gaussian_1d(size // 2, sigma).to(a)  # size is odd
    k = 5 * c
    x = torch.cat([a, b, a * a, b * b, a * b], 1)
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(k, 1, 1, size), padding=(0, size // 2), groups=k)
    x = F.conv2d(x, g.view(1, 1, size, 1).expand(k, 1, size, 1), padding=(size // 2, 0), groups=k)
    mu_a, mu_b, e_aa, e_bb, e_ab = x.split(c, 1)
    saa, sbb, sab = e_aa - mu_a ** 2, e_bb - mu_b ** 2, e_ab - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    return ((1 - pt) ** gamma * ce).mean()


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
def checkerboards(size: int, cell: int) -> torch.Tensor:
    """2 x 1 x size x size: complementary checkerboards of cell x cell squares (1 = hidden)."""
    i = torch.arange(size) // cell
    a = ((i[:, None] + i[None, :]) % 2).float()
    return torch.stack([a, 1 - a])[:, None]


class DBRN(nn.Module):
    def __init__(self, cfg: DBRNConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DBRNConfig.edge()
        self.branches = nn.ModuleList(SwinUNet(cfg) for _ in MODALITIES)
        self.ism = ImportanceScoring(cfg.ism_dim, cfg.ism_patch, cfg.ism_difference)
        self.disc = UNetDiscriminator(cfg.ism_dim, cfg.disc_channels)
        self.blur = GaussianBlur(cfg.smooth_sigma)
        # Image-score statistics on normal validation data: [mode, "fused"] -> mean, std.
        self.register_buffer("score_mean", torch.zeros(len(MODES), 1))
        self.register_buffer("score_std", torch.ones(len(MODES), 1))
        if cfg.inpaint_cell:  # not persistent: derived from the config, not learned
            self.register_buffer("inpaint_masks", checkerboards(cfg.image_size, cfg.inpaint_cell), persistent=False)

    # -- shared pieces ---------------------------------------------------------------------------
    def _down(self, x, s: int):
        return x if s == 1 else F.avg_pool2d(x, s)

    def reconstruct(self, k: int, x: torch.Tensor) -> list[torch.Tensor]:
        """Branch k's reconstructions of x, one per scale; with inpaint_cell, each pixel comes from
        the pass in which it was hidden (zero, the normalised mean)."""
        if not self.cfg.inpaint_cell:
            return self.branches[k](x)
        m = self.inpaint_masks
        n = x.shape[0]
        outs = self.branches[k](torch.cat([x * (1 - m[0]), x * (1 - m[1])], 0))
        res = []
        for s, r in zip(self.cfg.scales, outs):
            ms = self._down(m, s)
            res.append(r[:n] * ms[0] + r[n:] * ms[1])
        return res

    def _mask_logits(self, rgb_pairs, depth_pairs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per scale: ISM on the pairs at that scale, fused features to S, shared discriminator."""
        size = self.cfg.image_size
        dsize = size // self.cfg.disc_stride
        logits, weights = [], []
        for s, rp, dp in zip(self.cfg.scales, rgb_pairs, depth_pairs):
            fused, w = self.ism(rp, dp)
            if size // (s * self.cfg.ism_patch) != dsize:  # Python ints: no tracer branch
                fused = F.interpolate(fused, size=(dsize, dsize), mode="bilinear", align_corners=False)
            lg = self.disc(fused)
            if dsize != size:
                lg = F.interpolate(lg, size=(size, size), mode="bilinear", align_corners=False)
            logits.append(lg)
            weights.append(w)
        return logits, weights

    def dilate_foreground(self, fg):
        if fg is None or not self.cfg.mask_maps_with_foreground:
            return None
        return dilate_mask(fg, self.cfg.foreground_dilate)

    def image_score(self, amap, pool: int | None = None):
        """Max of the map's pool x pool average (default: the config's score_pool)."""
        k = min(pool or self.cfg.score_pool, self.cfg.image_size)
        pooled = F.avg_pool2d(amap, k, 1, k // 2, count_include_pad=False) if k > 1 else amap
        return pooled.flatten(1).amax(1)

    # -- inference -------------------------------------------------------------------------------
    def forward(self, rgb=None, depth=None, fg=None, mode: str = "rgbd"):
        """Returns (fused map N x 1 x S x S, score N, raw dict) like rd.

        A missing stream (mode without it, or None) is a zero placeholder fed to the ISM as both
        original and reconstruction."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        use_rgb, use_depth = PRESENT[mode]
        use_rgb, use_depth = use_rgb and rgb is not None, use_depth and depth is not None
        if not (use_rgb or use_depth):
            raise ValueError(f"dbrn mode {mode!r}: no input stream given")
        ref = rgb if use_rgb else depth
        raw = {}
        pairs = []
        for k, (x, use) in enumerate(((rgb, use_rgb), (depth, use_depth))):
            name = MODALITIES[k]
            if use:
                recons = self.reconstruct(k, x)
                pairs.append([(self._down(x, s), r) for s, r in zip(self.cfg.scales, recons)])
                raw[f"recon_{name}"] = recons[0]
            else:
                ph = torch.zeros_like(ref)
                pairs.append([(self._down(ph, s), self._down(ph, s)) for s in self.cfg.scales])
            raw[f"ism_pairs_{name}"] = pairs[-1]
        logits, weights = self._mask_logits(pairs[0], pairs[1])
        amap = torch.sigmoid(sum(logits) / len(logits))
        amap = self.blur(amap)
        mask = self.dilate_foreground(fg) if use_depth else None
        if mask is not None:
            amap = amap * mask
        raw["fused"] = amap
        raw["ism_weights"] = weights[0]
        mi = MODES.index(mode)
        fused = (amap - self.score_mean[mi, 0]) / self.score_std[mi, 0]
        return fused, self.image_score(fused), raw

    def set_score_stats(self, mode: str, modality: str, mean: float, std: float) -> None:
        if modality not in ("fused", *MODALITIES):
            raise ValueError(f"dbrn score stats: modality must be 'fused', 'rgb' or 'depth', got {modality!r}")
        # DBRN has one fused map per mode: every modality name sets the same statistics.
        self.score_mean[MODES.index(mode), 0] = float(mean)
        self.score_std[MODES.index(mode), 0] = max(float(std), 1e-6)

    def trainable_parameters(self):
        return self.parameters()

    def trained_state(self) -> dict:
        """What training changes, for checkpoints and model.pt (everything: nothing is pretrained)."""
        return self.state_dict()

    def load_trained_state(self, state: dict) -> None:
        self.load_state_dict(state)

    def score_statistic_inputs(self, raw: dict) -> dict:
        """Per-sample image scores of the un-normalised map, named as set_score_stats expects."""
        return {"fused": self.image_score(raw["fused"])}

    # -- training --------------------------------------------------------------------------------
    def draw_swap(self, n: int, device=None) -> torch.Tensor:
        """Per-sample swap codes for training_forward: 1 / 2 (RGB / depth original fed twice) with
        probability swap_prob / 2 each, else 0."""
        u = torch.rand(n, device=device)
        p = self.cfg.swap_prob
        return torch.where(u < p / 2, 1, torch.where(u < p, 2, 0))

    def training_forward(self, rgb, depth, fg, rgb_aug, depth_aug, swap=None, present=None) -> dict:
        """Reconstruct the clean inputs from the (synthetically) anomalous ones and predict the mask.

        swap: per-sample int tensor (N) in {0: original/reconstruction for both, 1: RGB original
        twice, 2: depth original twice}; None draws it (cfg.swap_prob, split evenly over 1 and 2).
        present: N x 2 (rgb, depth) in {0, 1}; an absent stream's ISM pair is the zero placeholder,
        exactly what forward() feeds for a missing stream at run time. None = both present.
        Both branches always reconstruct: reconstruction does not depend on the other stream.
        """
        n = rgb.shape[0]
        if swap is None:
            swap = self.draw_swap(n, rgb.device)
        swap = torch.as_tensor(swap, device=rgb.device).long().view(n)
        present = torch.ones(n, 2, device=rgb.device) if present is None else torch.as_tensor(present).float().view(n, 2)
        recons = {"rgb": self.reconstruct(0, rgb_aug), "depth": self.reconstruct(1, depth_aug)}
        pairs = {}
        for k, (name, x) in enumerate((("rgb", rgb_aug), ("depth", depth_aug))):
            twice = (swap == k + 1).float().view(n, 1, 1, 1)
            keep = present[:, k].view(n, 1, 1, 1)
            pairs[name] = []
            for s, r in zip(self.cfg.scales, recons[name]):
                xs = self._down(x, s)
                pairs[name].append((keep * xs, keep * (twice * xs + (1 - twice) * r)))
        logits, weights = self._mask_logits(pairs["rgb"], pairs["depth"])
        return {"recon": recons, "mask_logits": logits, "ism_weights": weights, "swap": swap, "present": present,
                "ism_pairs": pairs}

    def losses(self, outputs: dict, targets: dict) -> dict:
        """targets: rgb, depth (clean originals), fg (N x 1 x S x S part mask, optional) and mask
        (N x 1 x S x S synthetic-anomaly mask, optional). Returns the parts and "total"."""
        cfg = self.cfg
        ref = targets["rgb"]
        n, _, s_, _ = ref.shape
        fg = targets.get("fg")
        fg = torch.zeros(n, 1, s_, s_, device=ref.device) if fg is None else fg
        an = targets.get("mask")
        an = torch.zeros(n, 1, s_, s_, device=ref.device) if an is None else an
        out, l2_total, ssim_total = {}, 0.0, 0.0
        for name in MODALITIES:
            l2 = ss = 0.0
            for s, r in zip(cfg.scales, outputs["recon"][name]):
                t = self._down(targets[name], s)
                f, a = self._down(fg, s), self._down(an, s)
                w = cfg.lambda_bg * (1 - f) * (1 - a) + cfg.lambda_fg * f * (1 - a) + cfg.lambda_anomaly * a
                l2 = l2 + ((r - t) ** 2 * w).mean()
                ss = ss + (1 - ssim_map(r, t)).mean()
            out[f"l2_{name}"] = l2 / len(cfg.scales)
            out[f"ssim_{name}"] = ss / len(cfg.scales)
            l2_total = l2_total + out[f"l2_{name}"]
            ssim_total = ssim_total + out[f"ssim_{name}"]
        logits = outputs["mask_logits"]
        out["focal"] = sum(focal_loss(lg, an, cfg.focal_gamma) for lg in logits) / len(logits)
        out["total"] = l2_total + cfg.lambda_ssim * ssim_total + cfg.lambda_focal * out["focal"]
        return out


@register_model("dbrn")
def dbrn(config: dict | None = None, preset: str | None = "edge", pretrained: bool = True) -> DBRN:
    """config overrides the preset ("edge" or "published"); preset None takes config as a complete
    saved one (a run's run.yaml): keys it lacks were added later, so they take the field defaults,
    which keep the behaviour the run was trained with, not today's preset. pretrained is accepted
    for registry symmetry with rd (DBRN has no pretrained weights)."""
    presets = {"edge": DBRNConfig.edge, "published": DBRNConfig.published, None: DBRNConfig}
    if preset not in presets:
        raise ValueError(f"dbrn preset must be one of {sorted(k for k in presets if k)}, got {preset!r}")
    config = without_removed_options(dict(config or {}))
    unknown = sorted(set(config) - set(DBRNConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown dbrn config key(s): {unknown}")
    base = presets[preset]().to_dict()
    base.update(config)
    return DBRN(DBRNConfig.from_dict(base))
