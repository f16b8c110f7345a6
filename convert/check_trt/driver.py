"""Run every check on a model: `check_model`, `check_file`, `load_model`, the `CHECKS` order."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .attributes import check_attributes
from .external_data import check_external_data
from .findings import Finding
from .graph import GraphIndex
from .int64 import check_int64
from .opset import check_opset
from .ops import check_ops
from .qdq import check_qdq
from .rules import ERROR
from .shapes import check_dynamic_shapes
from .walk import onnx_lib

CHECKS: tuple[tuple[str, Callable], ...] = (
    ("opset", check_opset), ("external-data", check_external_data), ("ops", check_ops),
    ("attributes", check_attributes), ("shapes", check_dynamic_shapes), ("int64", check_int64),
    ("qdq", check_qdq),
)


class ModelReadError(Exception):
    """The file is missing, unreadable or not an ONNX model (CLI exit code 2)."""


def check_model(model, allow_dynamic: bool = False) -> list[Finding]:
    """All checks on a loaded onnx.ModelProto; errors first, then warnings, in graph order."""
    ctx = GraphIndex(model)
    findings: list[Finding] = []
    for name, fn in CHECKS:
        if fn is check_dynamic_shapes:
            findings.extend(fn(model, ctx, allow_dynamic=allow_dynamic))
        else:
            findings.extend(fn(model, ctx))
    return sorted(findings, key=lambda f: f.severity != ERROR)


def load_model(path: str | Path):
    """Load without external data (so a missing data file is reported, not a crash)."""
    onnx = onnx_lib()
    p = Path(path)
    if not p.is_file():
        raise ModelReadError(f"{p}: no such file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelReadError(f"{p}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelReadError(f"{p}: not an ONNX model (no IR version or no graph nodes)")
    return model


def check_file(path: str | Path, allow_dynamic: bool = False) -> list[Finding]:
    return check_model(load_model(path), allow_dynamic=allow_dynamic)
