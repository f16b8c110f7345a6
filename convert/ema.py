"""Exponential moving average of the trained weights, the copy that is evaluated and exported.

The last step's weights are one noisy draw: a run's image figure can move by several
points between checkpoints a few epochs apart. The average over the last ~1/(1 - decay)
steps is a smoother one, at one lerp per tensor per step. It is off by default: late in a
cosine schedule, where the learning rate is already small, the average mostly mixes in
less-trained weights rather than smoothing noise.

Own code rather than torch.optim.swa_utils.AveragedModel: that one also averages
integer buffers through float arithmetic (Swin's relative-position index would be
rounded), and copies the whole model where only the trained state matters.
"""
from __future__ import annotations

import torch


class WeightEMA:
    """EMA of a model's trained_state(): floating-point entries (weights and batch-norm
    statistics) are averaged, the rest (counters, indices) follow the model."""

    def __init__(self, state: dict, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay!r}")
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in state.items()}

    @torch.no_grad()
    def update(self, state: dict) -> None:
        for k, avg in self.state.items():
            live = state[k].detach()
            if avg.is_floating_point():
                avg.lerp_(live, 1.0 - self.decay)
            else:
                avg.copy_(live)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "state": self.state}

    @classmethod
    def from_state_dict(cls, saved: dict) -> "WeightEMA":
        return cls(saved["state"], saved["decay"])
