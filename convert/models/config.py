"""Model configs: dataclasses that round-trip through YAML (run.yaml, bundle provenance)."""
from __future__ import annotations

import typing
from dataclasses import asdict

from edge.bundle import expected_type, type_ok


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
            if not type_ok(v, hints[k]):
                raise ValueError(f"{cls.config_name} config key {k!r}: expected {expected_type(hints[k], v)}, got {v!r}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
