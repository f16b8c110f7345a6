"""Pieces both trainers use."""
from __future__ import annotations

import numpy as np
import torch

from ..models.rd import MODES, PRESENT


def draw_present(n: int, modality_dropout) -> torch.Tensor:
    """Per sample, which streams are present (N x 2: rgb, depth), drawn from the mode
    probabilities (rgbd, rgb only, depth only) with numpy's global generator."""
    probs = np.asarray(modality_dropout, dtype=np.float64)
    probs = probs / probs.sum()
    modes = np.random.choice(len(MODES), size=n, p=probs)
    return torch.tensor([PRESENT[MODES[k]] for k in modes], dtype=torch.float32)
