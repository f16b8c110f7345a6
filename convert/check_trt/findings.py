"""What a check reports: `Finding`, its one-line text form, and the constructor the node checks share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .graph import GraphIndex


@dataclass(frozen=True)
class Finding:
    """One problem. `node` is the node name (or the tensor/graph name for graph-level
    findings), `op` the op type (or "graph input", "initializer", "model")."""

    severity: str  # "error" (the engine would not build, or would not match the export) | "warning"
    node: str
    op: str
    message: str   # what is wrong
    fix: str = ""  # how to fix it
    check: str = ""  # which check produced it: ops, attributes, shapes, int64, qdq, opset, external-data

    def __str__(self) -> str:
        return format_finding(self)


def format_finding(f: Finding) -> str:
    where = f"{f.node} ({f.op})" if f.op else f.node
    line = f"{f.severity.upper():<7} {where}: {f.message}"
    if f.fix:
        line += f" Fix: {f.fix}"
    return f"{line} [{f.check}]" if f.check else line


def node_finding(check: str, severity: str, ctx: GraphIndex, node, message: str, fix: str) -> Finding:
    """A finding on one node of the main graph, labelled the way the graph index names it."""
    return Finding(severity, ctx.label(node), node.op_type, message, fix, check)


def attribute_finding(severity: str, ctx: GraphIndex, node, message: str, fix: str) -> Finding:
    """A finding of the `attributes` check (the per-op rules in attributes/resize/conv_pool)."""
    return node_finding("attributes", severity, ctx, node, message, fix)


def format_shape(s) -> str:
    """A shape for a message: unknown dims as '?', an unknown shape as 'unknown'."""
    if s is None:
        return "unknown"
    return "[" + ", ".join("?" if d is None else str(d) for d in s) + "]"
