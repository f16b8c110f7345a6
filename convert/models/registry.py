"""Model registry, timm-style: one file per architecture registers a factory."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def _import_all() -> None:
    from . import rd  # noqa: F401
    from . import dbrn  # noqa: F401


def create_model(name: str, **kwargs) -> nn.Module:
    _import_all()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; available: {sorted(_MODELS)}")
    return _MODELS[name](**kwargs)


def list_models() -> list[str]:
    _import_all()
    return sorted(_MODELS)
