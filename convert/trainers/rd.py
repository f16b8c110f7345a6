"""Reverse distillation: students regress frozen-teacher features of normal samples.

The teacher is frozen and the inputs are fixed (pose augmentation happens before),
so its features are computed once for the whole split.
"""
from __future__ import annotations

import torch

from ..models.rd import MODALITIES
from .common import as_float, autocast, draw_present


@torch.no_grad()
def teacher_bank(model, x: torch.Tensor, batch: int = 16) -> list[torch.Tensor]:
    outs = [model.teacher_features(x[i : i + batch]) for i in range(0, len(x), batch)]
    return [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))]


class RDTrainer:
    defaults = {"epochs": 16, "lr": 0.005, "image_size": 256, "batch_size": 8, "ema": 0.0}

    def __init__(self, model, train_set, params, precision: str = "fp32"):
        self.model, self.precision = model, precision
        self.bank = {m: teacher_bank(model, torch.from_numpy(getattr(train_set, m))) for m in MODALITIES}
        self.fg = torch.from_numpy(train_set.fg)

    def optimizer(self, lr: float, total_steps: int, progress=None):
        # RD4AD's optimiser settings: a constant rate, so a time budget only stops it.
        return torch.optim.Adam(self.model.trainable_parameters(), lr=lr, betas=(0.5, 0.999)), None

    def train_mode(self) -> None:
        self.model.students.train()

    def loss(self, idx: torch.Tensor):
        model = self.model
        present = draw_present(len(idx), model.cfg.modality_dropout)
        t = {m: [f[idx] for f in self.bank[m]] for m in MODALITIES}
        with autocast(self.precision):
            s_feats = as_float(model.student_features(t["rgb"], t["depth"], present))
        loss = 0.0
        for k, m in enumerate(MODALITIES):
            per_sample = model.distillation_loss(t[m], s_feats[k], self.fg[idx])
            w = present[:, k]
            loss = loss + (per_sample * w).sum() / w.sum().clamp_min(1.0)
        return loss, {}
