"""Model configs: dataclasses that round-trip through YAML (run.yaml, bundle provenance)."""
from __future__ import annotations

import typing
from dataclasses import asdict

from edge.checks import CheckError, did_you_mean, type_ok, type_problem


class DictConfig:
    """Mixin for config dataclasses: tuples become lists in YAML and back; unknown keys are errors.

    Errors are edge.checks.CheckError (a ValueError) whose ``key`` is the config key at fault.
    """

    config_name = "model"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        known = tuple(cls.__dataclass_fields__)
        unknown = sorted(set(d) - set(known))
        if unknown:
            close = did_you_mean(unknown[0], known)
            hint = f"; did you mean '{close}'?" if close else ""
            raise CheckError(f"unknown {cls.config_name} config key(s): {unknown}{hint}", key=str(unknown[0]))
        hints = typing.get_type_hints(cls)
        for k, v in d.items():
            if not type_ok(v, hints[k]):
                problem = type_problem(v, hints[k])
                raise CheckError(f"{cls.config_name} config key {k!r}: {problem}", key=k, problem=problem)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
