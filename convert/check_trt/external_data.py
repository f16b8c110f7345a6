"""Check `external-data`: bundles carry one self-contained .onnx file [project]."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from .findings import Finding
from .rules import ERROR
from .walk import iter_subgraphs, onnx_lib

if TYPE_CHECKING:
    from .graph import GraphIndex


def check_external_data(model, ctx: GraphIndex | None = None) -> list[Finding]:
    """Bundles carry one self-contained .onnx file: no tensor may live in external data."""
    onnx = onnx_lib()
    out: list[Finding] = []
    for t, kind in _tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.append(Finding(ERROR, t.name or "<unnamed tensor>", kind,
                               f"stored as external data in '{_location(t)}'; bundles want a single "
                               "self-contained .onnx file [project].",
                               "onnx.save_model(onnx.load(path), out, save_as_external_data=False) "
                               "(models must stay < 2 GB).", "external-data"))
    return out


def _location(t) -> str:
    for e in t.external_data:
        if e.key == "location":
            return e.value
    return "?"


def _tensors(model) -> Iterable[tuple[object, str]]:
    """Every tensor of the model and its subgraphs, with what holds it."""
    onnx = onnx_lib()
    for g in iter_subgraphs(model.graph):
        for t in g.initializer:
            yield t, "initializer"
        for st in g.sparse_initializer:
            yield st.values, "sparse initializer"
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t, f"{n.op_type} attribute"
