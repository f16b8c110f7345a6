"""DBRN: reconstruct clean inputs from pseudo-anomalous ones and segment the anomaly.

Every step draws fresh pseudo-anomalies (convert.pseudo_anomaly) on the RGB view
at model resolution and on the normalised height map, then encodes the edited
views with the runtime's own edge.preprocess rgb_input and depth_input, so the network trains
on exactly the kind of input the Jetson feeds it.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from edge.preprocess import depth_input, rgb_input

from ..pseudo_anomaly import TextureBank, synthesize
from .common import as_float, autocast, draw_present


def source_index(names: list[str]) -> list[int]:
    """Index of the original capture behind each pose-augmented sample ("name@r45f" -> name)."""
    order: dict[str, int] = {}
    return [order.setdefault(n.split("@")[0], len(order)) for n in names]


def target_mask(masks: torch.Tensor, edited, present: torch.Tensor, swap: torch.Tensor | None = None) -> torch.Tensor:
    """The anomaly as far as a present stream shows it: an RGB-only defect is invisible in
    depth-only mode, so there its target is zero. masks N x 1 x S x S; edited N x (rgb, depth)
    bools; present N x 2. swap (N codes as DBRN.training_forward takes them), if given, also hides
    the stream fed its original twice (cfg.swap_hides_target)."""
    shows = present.float()
    if swap is not None:
        shows = shows * torch.stack([swap != 1, swap != 2], 1).float()
    seen = (torch.tensor(edited, dtype=torch.float32).view(-1, 2) * shows).amax(1)
    return masks * seen.view(-1, 1, 1, 1)


class DBRNTrainer:
    # Batch 4 for 44 epochs: 53 min on the 2-core CPU in bf16 (edge preset, cable_gland), 14,080
    # steps; batch 8 for 50 epochs took as long for 8,000 steps and scored lower
    # (dbrn_development_log). In fp32 they would not fit the hour. Its bf16 losses follow fp32's
    # epoch by epoch; rd stays fp32, where bf16 cost 1.4-2.9 I-AUROC points (development_log).
    # lr 5e-4: in the 55-minute budget RGB-D I-AUROC went 0.527 / about 0.72 / 0.762 for lr 2e-3 /
    # 1e-3 / 5e-4, with RGB and depth alone and the pixel metrics rising too (dbrn_development_log).
    defaults = {"epochs": 44, "lr": 0.0005, "image_size": 128, "precision": "bf16", "batch_size": 4, "ema": 0.0}
    warmup_steps = 100

    def __init__(self, model, train_set, params, precision: str = "fp32"):
        self.model, self.split, self.params, self.precision = model, train_set, params, precision
        self.src = source_index(train_set.names)
        # Textures cut from other captures: one thumbnail per original capture (poses of the
        # same capture would only cut the part from itself).
        first: dict[int, int] = {}  # capture index -> its first pose; captures are numbered in order
        for i, s in enumerate(self.src):
            first.setdefault(s, i)
        self.bank = TextureBank([train_set.thumbs[i] for i in first.values()])
        self.scale = params.height_scale_m or 1.0
        self.joint = lambda: True  # optimizer() sets it from cfg.branch_only_fraction

    def optimizer(self, lr: float, total_steps: int, progress=None):
        warm = self.warmup_steps

        def schedule_t(step: int) -> float:  # how far the run is: steps, or the time budget if further
            t = min(step / max(total_steps, 1), 1.0)
            return max(t, progress()) if progress is not None else t

        def cosine(t: float) -> float:
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

        def factor(step: int) -> float:  # linear warm-up (attention is unstable early), then cosine
            if step < warm:
                return (step + 1) / warm
            t = min((step - warm) / max(total_steps - warm, 1), 1.0)
            if progress is not None:  # a time budget: decay toward whichever end is nearer
                t = max(t, progress())
            return cosine(t)

        first = self.model.cfg.branch_only_fraction
        if not first:
            opt = torch.optim.AdamW(self.model.trainable_parameters(), lr=lr, weight_decay=0.01)
            return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

        def factor_heads(step: int) -> float:  # ISM + discriminator: zero, then warm-up and cosine
            t = (schedule_t(step) - first) / (1 - first)
            return 0.0 if t < 0 else min(1.0, t / 0.03) * cosine(t)

        branches = list(self.model.branches.parameters())
        mine = {id(p) for p in branches}
        heads = [p for p in self.model.trainable_parameters() if id(p) not in mine]
        opt = torch.optim.AdamW([{"params": branches}, {"params": heads}], lr=lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [factor, factor_heads])
        self.joint = lambda: schedule_t(sched.last_epoch) >= first
        return opt, sched

    def train_mode(self) -> None:
        self.model.train()

    def augment(self, i: int, rng: np.random.Generator):
        """Sample i with a fresh pseudo-anomaly -> (rgb in, depth in, mask, edited (rgb, depth))."""
        sp = self.split
        fg = sp.fg[i, 0] > 0.5
        h = sp.height[i]
        rgb_u8, h_aug, m, info = synthesize(sp.thumbs[i], h, fg, rng, self.bank, exclude_index=self.src[i],
                                            modality_probs=self.model.cfg.pseudo_modality_probs, return_info=True)
        rgb_in, depth_in = sp.rgb[i], sp.depth[i]
        edited = (False, False)
        if info["case"] != "unchanged":
            edited = (info["modality"] in ("rgb", "both"), info["modality"] in ("depth", "both"))
        if edited[1]:
            # Only masked pixels change: the runtime's height may leave [0, 1], which synthesize clips.
            h_new = np.where(m > 0, h_aug, h).astype(np.float32)
            depth_in, _ = depth_input(h_new * self.scale, fg, self.params)
        if edited[0]:
            rgb_in = rgb_input(rgb_u8, self.params)
        return rgb_in, depth_in, m, edited

    def loss(self, idx: torch.Tensor):
        model = self.model
        # One generator per step, seeded from numpy's global state: resumable, reproducible.
        rng = np.random.default_rng(np.random.randint(2**31))
        ids = idx.tolist()
        joint = self.joint()
        rgb_aug, depth_aug, masks, edited = zip(*(self.augment(i, rng) for i in ids))
        sp = self.split
        rgb, depth, fg = (torch.from_numpy(a[ids]) for a in (sp.rgb, sp.depth, sp.fg))
        present = draw_present(len(ids), model.cfg.modality_dropout)
        swap = model.draw_swap(len(ids))
        mask = target_mask(torch.from_numpy(np.stack(masks))[:, None], edited, present,
                           swap if model.cfg.swap_hides_target else None)
        with autocast(self.precision):
            out = model.training_forward(rgb, depth, fg, torch.from_numpy(np.stack(rgb_aug)),
                                         torch.from_numpy(np.stack(depth_aug)), swap=swap, present=present,
                                         reconstruct_only=not joint)
        parts = model.losses(as_float(out), {"rgb": rgb, "depth": depth, "fg": fg, "mask": mask})
        return parts["total"], {k: float(v.detach()) for k, v in parts.items() if k != "total"}

    def preview(self, n: int = 6, seed: int = 0) -> np.ndarray:
        """BGR uint8 sheet of n training samples with pseudo-anomalies, one row each:
        RGB, RGB fed, depth encoding, depth encoding fed, mask. What training sees."""
        rng = np.random.default_rng(seed)
        mean, std = np.asarray(self.params.rgb_mean, np.float32), np.asarray(self.params.rgb_std, np.float32)

        def img(chw):
            x = np.clip(chw.transpose(1, 2, 0) * std + mean, 0, 1)
            return cv2.cvtColor((255 * x).astype(np.uint8), cv2.COLOR_RGB2BGR)

        rows, tries = [], 0
        while len(rows) < n and tries < 20 * n:  # show samples that carry an anomaly
            i = int(rng.integers(len(self.split)))
            tries += 1
            rgb_in, depth_in, m, edited = self.augment(i, rng)
            if not any(edited):
                continue
            mask = cv2.cvtColor((255 * m).astype(np.uint8), cv2.COLOR_GRAY2BGR)
            rows.append(np.hstack([img(self.split.rgb[i]), img(rgb_in), img(self.split.depth[i]), img(depth_in), mask]))
        return np.vstack(rows)
