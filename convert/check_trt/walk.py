"""Reading ONNX nodes and walking graphs: attributes, inputs, labels, subgraphs, opset.

onnx is imported lazily (`onnx_lib`): the edge runtime never needs it.
"""
from __future__ import annotations

from typing import Iterator

from .rules import DEFAULT_DOMAINS


def onnx_lib():
    import onnx  # imported lazily: the edge runtime never needs it

    return onnx


def attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx_lib().helper.get_attribute_value(a)
    return default


def attr_str(node, name: str, default: str) -> str:
    v = attr(node, name, default)
    return v.decode() if isinstance(v, bytes) else v


def node_input(node, i: int) -> str:
    """Name of input `i`, or "" when the node has fewer inputs (an omitted optional input)."""
    return node.input[i] if len(node.input) > i else ""


def node_label(node, index: int) -> str:
    if node.name:
        return node.name
    out = next((o for o in node.output if o), "")
    return f"<unnamed #{index} -> {out}>" if out else f"<unnamed #{index}>"


def iter_subgraphs(graph) -> Iterator:
    """`graph` and every subgraph (If/Loop/Scan bodies), depth first."""
    onnx = onnx_lib()
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from iter_subgraphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from iter_subgraphs(g)


def all_nodes(model) -> Iterator[tuple[object, str]]:
    """(node, label) for every node of the main graph, its subgraphs and local functions."""
    for gi, graph in enumerate(iter_subgraphs(model.graph)):
        for i, n in enumerate(graph.node):
            label = node_label(n, i)
            yield n, (label if gi == 0 else f"{graph.name or 'subgraph'}/{label}")
    for f in model.functions:
        for i, n in enumerate(f.node):
            yield n, f"{f.name}/{node_label(n, i)}"


def default_opset(model) -> int | None:
    for o in model.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            return int(o.version)
    return None
