"""Encoder registry: name -> factory returning a frozen multi-scale feature extractor.

Every encoder returns a list of feature maps at strides (4, 8, 16) and exposes
`channels` (per scale) so decoders can be built without running it.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_ENCODERS: dict[str, Callable[..., nn.Module]] = {}


def register_encoder(name: str):
    def deco(fn):
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} registered twice")
        _ENCODERS[name] = fn
        return fn

    return deco


def load_trunk_weights(module: nn.Module, weights_path) -> None:
    """Load the tensors this truncated trunk has from a full-network state dict
    (classifier heads and unbuilt stages are simply not taken)."""
    import torch

    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise RuntimeError(f"{weights_path}: weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    module.load_state_dict({k: state[k] for k in own})


def create_encoder(name: str, **kwargs) -> nn.Module:
    # Importing the modules registers them; kept here so `registry` has no import cycle.
    from . import efficientnet_lite, resnet  # noqa: F401

    if name not in _ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; available: {sorted(_ENCODERS)}")
    return _ENCODERS[name](**kwargs)


def list_encoders() -> list[str]:
    from . import efficientnet_lite, resnet  # noqa: F401

    return sorted(_ENCODERS)
