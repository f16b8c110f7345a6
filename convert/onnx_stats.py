"""Parameter and FLOP counts of an ONNX graph (convolutions dominate these models)."""
from __future__ import annotations

import numpy as np


def _shape_map(model) -> dict[str, list[int]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def onnx_stats(path) -> dict:
    """{'params': float weights (Q/DQ graphs count their int8 weights), 'gflops': 2 x MACs of Conv/ConvTranspose/Gemm}."""
    import onnx

    model = onnx.load(str(path))
    shapes = _shape_map(model)
    inits = {i.name: i for i in model.graph.initializer}
    consumers_weight = set()
    macs = 0
    # Weights may sit behind a DequantizeLinear in Q/DQ graphs.
    dq_src = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        w = n.input[1]
        w = dq_src.get(w, w)
        consumers_weight.add(w)
        wshape = shapes.get(w) or (list(inits[w].dims) if w in inits else None)
        if n.op_type in ("Conv", "ConvTranspose"):
            out = shapes.get(n.output[0])
            inp = shapes.get(n.input[0])
            if not wshape or not out or not inp:
                continue
            if n.op_type == "Conv":
                macs += int(np.prod(out)) * int(np.prod(wshape[1:]))
            else:  # each input pixel scatters a kernel to every output channel
                macs += int(np.prod(inp)) * int(np.prod(wshape[1:]))
        elif wshape:
            out = shapes.get(n.output[0])
            if out:
                macs += int(np.prod(out)) * int(wshape[0] if n.op_type == "MatMul" else wshape[1])
    params = sum(int(np.prod(inits[w].dims)) for w in consumers_weight if w in inits)
    params += sum(int(np.prod(i.dims)) for name, i in inits.items() if name not in consumers_weight and len(i.dims) == 1
                  and name.endswith(("bias", ".bias")))
    return {"params": params, "gflops": 2 * macs / 1e9}
