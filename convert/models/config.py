"""Model configs: dataclasses that round-trip through YAML (run.yaml, bundle provenance)."""
from __future__ import annotations

import types
import typing
from dataclasses import asdict


def fits(value, hint) -> bool:
    """Whether a YAML-loaded value (lists for tuples) matches a config field's type hint. An int is a
    float; a bool is neither (YAML reads "yes"/"true" as bool, and bool subclasses int)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, h) for h in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(fits(v, h) for v, h in zip(value, args))
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if hint is float else hint)


class DictConfig:
    """Mixin for config dataclasses: tuples become lists in YAML and back; unknown keys are errors."""

    config_name = "model"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown {cls.config_name} config key(s): {unknown}")
        hints = typing.get_type_hints(cls)
        for k, v in d.items():
            if not fits(v, hints[k]):
                want = getattr(hints[k], "__name__", None) if isinstance(hints[k], type) else str(hints[k])
                raise ValueError(f"{cls.config_name} config key {k!r}: expected {want}, got {v!r}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
