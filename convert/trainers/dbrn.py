"""DBRN: reconstruct clean inputs from pseudo-anomalous ones and segment the anomaly.

The pose store (convert.pose_store) holds each pose's preprocessed inputs, normalised height
and model-resolution RGB. Every step draws fresh pseudo-anomalies (convert.pseudo_anomaly) on the RGB view
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

from ..pose_store import as_store
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


class DBRNPoseEncoder:
    """Per pose: the preprocessed inputs ("rgb", "depth" float32), the foreground ("fg", uint8
    0/1), the normalised height ("height", float32) and the RGB at model resolution ("thumb",
    uint8): pseudo-anomalies are drawn afresh each step on height and thumb."""

    chunk = 16

    def key(self) -> dict:
        return {"family": "dbrn"}

    def encode(self, poses) -> dict[str, np.ndarray]:
        return {"rgb": poses.rgb, "depth": poses.depth, "fg": poses.fg.astype(np.uint8), "height": poses.height,
                "thumb": np.stack(poses.thumbs)}


class DBRNTrainer:
    # Sized for the edge preset at 128 x 128 on a 2-core CPU: batch 4 for 44 epochs is about an
    # hour in bf16 (more, smaller steps in the hour than batch 8; fp32 would not fit it). DBRN's
    # bf16 losses follow fp32's epoch by epoch, so bf16 is its default where the CPU runs it
    # natively. lr 5e-4: in a one-hour budget the larger rates (1e-3, 2e-3) ended lower in every
    # mode. benchmarks/RESULTS.md holds the measurements.
    defaults = {"epochs": 44, "lr": 0.0005, "image_size": 128, "precision": "bf16", "batch_size": 4, "ema": 0.0}
    warmup_steps = 100

    @staticmethod
    def encoder(model, params) -> DBRNPoseEncoder:
        return DBRNPoseEncoder()

    def __init__(self, model, train_set, params, precision: str = "fp32"):
        self.model, self.params, self.precision = model, params, precision
        self.store = as_store(train_set, self.encoder(model, params))
        self.src = source_index(self.store.names)
        # Textures cut from other captures: one thumbnail per original capture (poses of the
        # same capture would only cut the part from itself).
        first: dict[int, int] = {}  # capture index -> its first pose; captures are numbered in order
        for i, s in enumerate(self.src):
            first.setdefault(s, i)
        self.bank = TextureBank(list(self.store.batch(list(first.values()))["thumb"]))
        self.scale = params.height_scale_m or 1.0

    def optimizer(self, lr: float, total_steps: int, progress=None):
        warm = self.warmup_steps

        def factor(step: int) -> float:  # linear warm-up (attention is unstable early), then cosine to 5 %
            if step < warm:
                return (step + 1) / warm
            t = min((step - warm) / max(total_steps - warm, 1), 1.0)
            if progress is not None:  # a time budget: decay toward whichever end is nearer
                t = max(t, progress())
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

        opt = torch.optim.AdamW(self.model.trainable_parameters(), lr=lr, weight_decay=0.01)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def train_mode(self) -> None:
        self.model.train()

    def augment(self, i: int, rng: np.random.Generator):
        """Sample i with a fresh pseudo-anomaly -> (rgb in, depth in, mask, edited (rgb, depth))."""
        return self.augment_pose({k: v[0] for k, v in self.store.batch([i]).items()}, i, rng)

    def augment_pose(self, pose: dict, i: int, rng: np.random.Generator):
        """augment() of sample i whose stored arrays are `pose` (one row of a store batch)."""
        fg = pose["fg"][0] > 0
        h = pose["height"]
        rgb_u8, h_aug, m, info = synthesize(pose["thumb"], h, fg, rng, self.bank, exclude_index=self.src[i],
                                            modality_probs=self.model.cfg.pseudo_modality_probs, return_info=True)
        rgb_in, depth_in = pose["rgb"], pose["depth"]
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
        b = self.store.batch(ids)
        rgb_aug, depth_aug, masks, edited = zip(*(self.augment_pose({k: v[j] for k, v in b.items()}, i, rng)
                                                  for j, i in enumerate(ids)))
        rgb, depth, fg = torch.from_numpy(b["rgb"]), torch.from_numpy(b["depth"]), torch.from_numpy(
            b["fg"].astype(np.float32))
        present = draw_present(len(ids), model.cfg.modality_dropout)
        swap = model.draw_swap(len(ids))
        mask = target_mask(torch.from_numpy(np.stack(masks))[:, None], edited, present,
                           swap if model.cfg.swap_hides_target else None)
        with autocast(self.precision):
            out = model.training_forward(rgb, depth, fg, torch.from_numpy(np.stack(rgb_aug)),
                                         torch.from_numpy(np.stack(depth_aug)), swap=swap, present=present)
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
            i = int(rng.integers(len(self.store)))
            tries += 1
            pose = {k: v[0] for k, v in self.store.batch([i]).items()}
            rgb_in, depth_in, m, edited = self.augment_pose(pose, i, rng)
            if not any(edited):
                continue
            mask = cv2.cvtColor((255 * m).astype(np.uint8), cv2.COLOR_GRAY2BGR)
            rows.append(np.hstack([img(pose["rgb"]), img(rgb_in), img(pose["depth"]), img(depth_in), mask]))
        return np.vstack(rows)
