"""Constant folding and node-by-node shape re-inference for `GraphIndex`.

TensorRT folds small constant and shape-only subgraphs at build time when the inputs are static,
while ONNX's data propagation stops at Div/Transpose/Slice & co (torch's F.pad export, for one).
This pass evaluates such subgraphs with onnx's reference evaluator and re-runs per-node shape
inference with the folded values, so the shape check does not flag tensors TensorRT would pin
down. It only refines the index: a shape is never made less static than onnx's own inference.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .rules import DEFAULT_DOMAINS, SHAPE_OPS
from .walk import attr

if TYPE_CHECKING:
    from .graph import GraphIndex


def propagate_constants(ix: GraphIndex) -> None:
    """Fill `ix.folded` and refine `ix.types` / `ix.shapes` in graph order."""
    types, values = _seed(ix)
    for node in ix.nodes:
        if node.domain not in DEFAULT_DOMAINS:
            continue
        try:
            _fold_node(ix, node, types, values)
        except Exception:  # noqa: BLE001 - not foldable: leave unknown
            pass
        outs = [o for o in node.output if o]
        if all(o in values for o in outs):
            _record_folded(ix, outs, types, values)
            continue
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or not all(i in types for i in inputs):
            continue
        _infer_node(ix, node, inputs, types, values)


def _small(ix: GraphIndex, v) -> bool:
    return v is not None and np.asarray(v).size <= ix.FOLD_LIMIT


def _seed(ix: GraphIndex) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Type protos of the graph inputs and initializers; values of the small initializers."""
    from onnx import helper

    types: dict[str, object] = {}
    for vi in ix.model.graph.input:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type
    for name, t in ix.initializers.items():
        types[name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
    values: dict[str, np.ndarray] = {}
    for name in ix.initializers:
        v = ix.const(name)
        if _small(ix, v):
            values[name] = v
    return types, values


def _fold_node(ix: GraphIndex, node, types: dict, values: dict) -> None:
    """Evaluate `node` into `values` when its result is known at build time."""
    outs = [o for o in node.output if o]
    inputs = [i for i in node.input if i]
    op = node.op_type
    if op == "Constant":
        v = ix.const(outs[0])
        if _small(ix, v):
            values[outs[0]] = v
    elif op in ("Shape", "Size"):
        s = ix.static_shape(inputs[0]) if inputs[0] not in types else _static_dims(types[inputs[0]])
        if s is not None:
            if op == "Size":
                values[outs[0]] = np.asarray(int(np.prod(s)), np.int64)
            else:
                start, end = attr(node, "start", 0), attr(node, "end", None)
                values[outs[0]] = np.asarray(s[start:end], np.int64)
    elif op in SHAPE_OPS and inputs and all(i in values for i in inputs):
        from onnx.reference import ReferenceEvaluator

        ev = ReferenceEvaluator(node, opsets={"": ix.opset})
        res = ev.run(None, {i: values[i] for i in inputs})
        for o, r in zip(node.output, res):
            if o and r is not None and _small(ix, r):
                values[o] = np.asarray(r)


def _record_folded(ix: GraphIndex, outs: list[str], types: dict, values: dict) -> None:
    from onnx import helper

    for o in outs:
        types[o] = helper.make_tensor_type_proto(
            helper.np_dtype_to_tensor_dtype(values[o].dtype), list(values[o].shape))
        if o not in ix.initializers:
            ix.folded[o] = values[o]
            ix.types[o] = types[o].tensor_type.elem_type
            ix.shapes[o] = list(values[o].shape)


def _infer_node(ix: GraphIndex, node, inputs: list[str], types: dict, values: dict) -> None:
    """Re-run onnx shape inference on one node with the folded values of its inputs."""
    from onnx import defs, helper, numpy_helper, shape_inference

    try:
        schema = defs.get_schema(node.op_type, ix.opset, "")
        data = {i: numpy_helper.from_array(values[i], i) for i in inputs if i in values}
        inferred = shape_inference.infer_node_outputs(
            schema, node, {i: types[i] for i in inputs}, data,
            opset_imports=[helper.make_opsetid("", ix.opset)])
    except Exception:  # noqa: BLE001 - keep the baseline for this node
        return
    for o, tp in inferred.items():
        types[o] = tp
        vi = helper.make_value_info(o, tp)
        before = ix.shapes.get(o)
        ix.record(vi)
        if before is not None and ix.shapes.get(o) is not None and \
                _n_static(before) > _n_static(ix.shapes[o]):
            ix.shapes[o] = before  # never make a shape less static than the baseline


def _static_dims(tp) -> list[int] | None:
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return None if any(d is None for d in dims) else dims


def _n_static(dims: list) -> int:
    return sum(isinstance(d, int) for d in dims)
