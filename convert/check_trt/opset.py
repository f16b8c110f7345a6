"""Check `opset`: the default-domain opset TensorRT 10.3 parses, and the one this project exports."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .findings import Finding
from .rules import ERROR, MAX_OPSET, MIN_OPSET, PROJECT_OPSET, TRT_VERSION, WARNING
from .walk import default_opset

if TYPE_CHECKING:
    from .graph import GraphIndex


def check_opset(model, ctx: GraphIndex | None = None) -> list[Finding]:
    v = default_opset(model)
    name = model.graph.name or "<graph>"
    if v is None:
        return [Finding(ERROR, name, "model", "no default-domain (ai.onnx) opset import.",
                        f"export with opset_version={PROJECT_OPSET}.", "opset")]
    if not MIN_OPSET <= v <= MAX_OPSET:
        return [Finding(ERROR, name, "model", f"default-domain opset {v} is outside {MIN_OPSET}..{MAX_OPSET} "
                        f"(TensorRT {TRT_VERSION} parses up to 20; per-channel Q/DQ needs >= 13).",
                        f"re-export with opset_version={PROJECT_OPSET}.", "opset")]
    if v != PROJECT_OPSET:
        return [Finding(WARNING, name, "model", f"default-domain opset {v}; the project exports "
                        f"opset {PROJECT_OPSET} [project].",
                        f"re-export with opset_version={PROJECT_OPSET} unless this is deliberate.", "opset")]
    return []
