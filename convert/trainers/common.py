"""Pieces both trainers use."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from edge.modes import MODES, PRESENT


def draw_present(n: int, modality_dropout) -> torch.Tensor:
    """Per sample, which streams are present (N x 2: rgb, depth), drawn from the mode
    probabilities (rgbd, rgb only, depth only) with numpy's global generator."""
    probs = np.asarray(modality_dropout, dtype=np.float64)
    probs = probs / probs.sum()
    modes = np.random.choice(len(MODES), size=n, p=probs)
    return torch.tensor([PRESENT[MODES[k]] for k in modes], dtype=torch.float32)


PRECISIONS = ("fp32", "bf16")


def bf16_is_native() -> bool:
    """Whether oneDNN runs bf16 matrix products natively here (AVX-512 BF16 or AMX); without it
    they are emulated and a bf16 run is no faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _known(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def check_precision(precision: str) -> None:
    _known(precision)
    if precision == "bf16" and not bf16_is_native():
        warnings.warn("this CPU has no native bf16 (AVX-512 BF16 or AMX): --precision bf16 will be slow",
                      stacklevel=2)


def autocast(precision: str):
    """Context for the training forward pass. "bf16" runs matrix products and convolutions in
    bfloat16 (faster where the CPU runs bf16 natively, see bf16_is_native); weights, optimiser
    and losses stay fp32."""
    _known(precision)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def as_float(tree):
    """Forward outputs back to fp32 before the losses: SSIM's variances (E[x^2] - E[x]^2) cancel
    badly in bf16's 8-bit mantissa."""
    if isinstance(tree, torch.Tensor):
        return tree.float() if tree.is_floating_point() else tree
    if isinstance(tree, dict):
        return {k: as_float(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(as_float(v) for v in tree)
    return tree
