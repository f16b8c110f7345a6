"""Reverse distillation: students regress frozen-teacher features of normal samples.

The teacher is frozen and the inputs are fixed (pose augmentation happens before),
so its features are computed once per pose: the pose store (convert.pose_store) holds
them, with the foreground, and a step reads its batch from there.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..models.rd import MODALITIES
from ..pose_store import as_store
from .common import as_float, autocast, draw_present


@torch.no_grad()
def teacher_bank(model, x: torch.Tensor, batch: int = 16) -> list[torch.Tensor]:
    outs = [model.teacher_features(x[i : i + batch]) for i in range(0, len(x), batch)]
    return [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))]


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RDPoseEncoder:
    """Per pose: the teacher's features at each scale for each stream ("rgb.0" .. "depth.2",
    float32, so training reads exactly what it computed) and the foreground ("fg", uint8 0/1)."""

    chunk = 16  # the teacher's batch

    def __init__(self, model):
        self.model = model

    def key(self) -> dict:
        return {"family": "rd", "teacher": weights_digest(self.model.teacher)}

    def encode(self, poses) -> dict[str, np.ndarray]:
        out = {"fg": poses.fg.astype(np.uint8)}  # exactly 0 or 1
        for m in MODALITIES:
            for k, f in enumerate(teacher_bank(self.model, torch.from_numpy(getattr(poses, m)), self.chunk)):
                out[f"{m}.{k}"] = f.numpy()
        return out


class RDTrainer:
    defaults = {"epochs": 16, "lr": 0.005, "image_size": 256, "batch_size": 8, "ema": 0.0}

    @staticmethod
    def encoder(model, params) -> RDPoseEncoder:
        return RDPoseEncoder(model)

    def __init__(self, model, train_set, params, precision: str = "fp32"):
        self.model, self.precision = model, precision
        self.store = as_store(train_set, self.encoder(model, params))
        self.scales = sum(1 for f in self.store.fields if f.name.startswith(f"{MODALITIES[0]}."))

    def optimizer(self, lr: float, total_steps: int, progress=None):
        # RD4AD's optimiser settings: a constant rate, so a time budget only stops it.
        return torch.optim.Adam(self.model.trainable_parameters(), lr=lr, betas=(0.5, 0.999)), None

    def train_mode(self) -> None:
        self.model.students.train()

    def loss(self, idx: torch.Tensor):
        model = self.model
        present = draw_present(len(idx), model.cfg.modality_dropout)
        b = self.store.batch(idx.numpy())
        t = {m: [torch.from_numpy(b[f"{m}.{k}"]) for k in range(self.scales)] for m in MODALITIES}
        fg = torch.from_numpy(b["fg"].astype(np.float32))
        with autocast(self.precision):
            s_feats = as_float(model.student_features(t["rgb"], t["depth"], present))
        loss = 0.0
        for k, m in enumerate(MODALITIES):
            per_sample = model.distillation_loss(t[m], s_feats[k], fg)
            w = present[:, k]
            loss = loss + (per_sample * w).sum() / w.sum().clamp_min(1.0)
        return loss, {}
