"""Check `int64`: int64 is fine as shape plumbing; an error as graph I/O or when it reaches compute.

The Jetson runtime binds float32 tensors, and an int64 feature map cannot be quantised, so int64
may only carry shapes, indices and axes (the slots in SHAPE_SLOTS, values derived from Shape).
"""
from __future__ import annotations

from .findings import Finding, format_shape
from .graph import GraphIndex, index_for
from .rules import DEFAULT_DOMAINS, ERROR, INT64, MOVEMENT_OPS, SHAPE_OPS, SHAPE_SLOTS


def check_int64(model, ctx: GraphIndex | None = None) -> list[Finding]:
    """int64 is fine as shape plumbing; an error as graph I/O or when it reaches compute."""
    ctx = index_for(model, ctx)
    out = _graph_io_findings(ctx)
    derived = _shape_derived(ctx)
    for node in ctx.nodes:
        if node.domain not in DEFAULT_DOMAINS or node.op_type in MOVEMENT_OPS:
            continue
        finding = _int64_data_finding(ctx, node, derived)
        if finding is not None:
            out.append(finding)
    return out


def _graph_io_findings(ctx: GraphIndex) -> list[Finding]:
    out: list[Finding] = []
    for name in ctx.input_names:
        if ctx.types.get(name) == INT64:
            out.append(Finding(ERROR, name, "graph input", "int64 graph input: the Jetson runtime binds "
                               "float32 tensors and TensorRT would need an int64 binding [project].",
                               "feed float32 (cast inside the model if an index is needed).", "int64"))
    for name in ctx.output_names:
        if ctx.types.get(name) == INT64:
            out.append(Finding(ERROR, name, "graph output", "int64 graph output: usually shape or index "
                               "plumbing leaking out of the model [project].",
                               "return float32 maps/scores (Cast before the output).", "int64"))
    return out


def _shape_derived(ctx: GraphIndex) -> set[str]:
    """Tensors computed only from shapes and small (rank <= 1) constants."""
    derived: set[str] = set()
    for name, t in ctx.initializers.items():
        if len(t.dims) <= 1:
            derived.add(name)
    for node in ctx.nodes:
        op = node.op_type
        if op in ("Shape", "Size"):
            derived.update(o for o in node.output if o)
        elif op == "Constant":
            s = ctx.shape(node.output[0])
            v = ctx.const(node.output[0])
            if (v is not None and v.ndim <= 1) or (s is not None and len(s) <= 1):
                derived.add(node.output[0])
        elif op in SHAPE_OPS:
            slots = SHAPE_SLOTS.get(op, set())
            data = [n for i, n in enumerate(node.input) if n and i not in slots]
            if all(n in derived for n in data):
                derived.update(o for o in node.output if o)
    return derived


def _int64_data_finding(ctx: GraphIndex, node, derived: set[str]) -> Finding | None:
    """An error if int64 data (not a shape slot, not shape-derived) reaches `node`."""
    op = node.op_type
    slots = SHAPE_SLOTS.get(op, set())
    bad = [(i, name) for i, name in enumerate(node.input)
           if name and i not in slots and ctx.types.get(name) == INT64
           and not (op in SHAPE_OPS and name in derived)]
    if not bad:
        return None
    names = ", ".join(f"'{n}' {format_shape(ctx.shape(n))}" for _, n in bad)
    if op in SHAPE_OPS:  # TensorRT has int64 kernels for these; int64 *data* is still wrong here
        what = (f"int64 data (not shape plumbing) flows into {op}: {names}; an int64 feature map "
                "cannot be quantised and keeps the data path in int64 [project].")
    else:
        what = (f"int64 tensor {names} flows into input {bad[0][0]} of {op}, a compute op: TensorRT "
                f"has no int64 {op} (int64 is only for shape/index plumbing).")
    return Finding(ERROR, ctx.label(node), op, what,
                   "keep the data path float32: Cast to float where the int64 tensor is "
                   "produced (e.g. after ArgMax) or fix the export.", "int64")
