"""Check `attributes`, Conv/ConvTranspose and pooling: rank, padding and window rules.

Sources: [ops] (1D/2D/3D only, pooling dilations all ones, no MaxPool Indices) and [import]
(getKernelParams, the ConvTranspose importer, poolingHelper); see rules.py.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .findings import Finding, attribute_finding as _f
from .rules import ERROR, WARNING
from .walk import attr, attr_str, node_input

if TYPE_CHECKING:
    from .graph import GraphIndex


def _pads_with_same_auto_pad(node, auto_pad: str) -> bool:
    # [import] getKernelParams: "Pads attribute should not be specified with SAME_LOWER or SAME_UPPER"
    return auto_pad in ("SAME_UPPER", "SAME_LOWER") and attr(node, "pads") is not None


def conv_rules(node, ctx: GraphIndex) -> list[Finding]:
    out = []
    auto_pad = attr_str(node, "auto_pad", "NOTSET")
    if _pads_with_same_auto_pad(node, auto_pad):
        out.append(_f(ERROR, ctx, node, f"`pads` is set together with auto_pad={auto_pad}; the "
                      "parser rejects the node.", "drop one of them (exporters emit explicit pads)."))
    w_shape = ctx.shape(node_input(node, 1))
    if w_shape is not None and len(w_shape) not in (3, 4, 5):
        out.append(_f(ERROR, ctx, node, f"{len(w_shape) - 2}-D {node.op_type.lower()} (weight rank "
                      f"{len(w_shape)}): TensorRT supports 1D, 2D and 3D only.",
                      "reshape to at most 3 spatial dimensions."))
    if node.op_type == "ConvTranspose":
        out.extend(_conv_transpose_output(node, ctx, auto_pad, w_shape))
    return out


def _conv_transpose_output(node, ctx: GraphIndex, auto_pad: str, w_shape) -> list[Finding]:
    """output_padding under SAME_*, and an output_shape that implies negative padding."""
    out = []
    op = attr(node, "output_padding", None)
    if auto_pad != "NOTSET" and op and any(op):
        # [import] ConvTranspose: output padding is only applied on the NOTSET path
        out.append(_f(ERROR, ctx, node, f"output_padding {list(op)} with auto_pad={auto_pad}: "
                      "TensorRT's importer ignores output_padding here, so the output shape "
                      "differs from ONNX.", "export explicit pads (auto_pad NOTSET)."))
    oshape = attr(node, "output_shape", None)
    x = ctx.static_shape(node_input(node, 0))
    if oshape and auto_pad == "NOTSET" and x is not None and w_shape and \
            all(isinstance(d, int) for d in w_shape):
        k = w_shape[2:]
        n_sp = len(k)
        s = list(attr(node, "strides", None) or [1] * n_sp)
        d = list(attr(node, "dilations", None) or [1] * n_sp)
        opad = list(op or [0] * n_sp)
        spatial_out = list(oshape)[-n_sp:]
        for i in range(n_sp):
            total = s[i] * (x[2 + i] - 1) + opad[i] + ((k[i] - 1) * d[i] + 1) - spatial_out[i]
            if total < 0:
                out.append(_f(WARNING, ctx, node, f"output_shape {list(oshape)} implies negative "
                              "padding; TensorRT rejects negative pre-padding in ConvTranspose.",
                              "export with pads/output_padding instead of output_shape."))
                break
    return out


def pool_rules(node, ctx: GraphIndex) -> list[Finding]:
    # [ops] 1D/2D/3D pooling, dilations all ones, no Indices; [import] poolingHelper
    out = []
    k = list(attr(node, "kernel_shape", None) or [])
    if k and len(k) not in (1, 2, 3):
        out.append(_f(ERROR, ctx, node, f"{len(k)}-D pooling: TensorRT supports 1D/2D/3D only.",
                      "pool at most 3 spatial axes."))
    dil = attr(node, "dilations", None)
    if dil and any(v != 1 for v in dil):
        out.append(_f(ERROR, ctx, node, f"dilations {list(dil)}: TensorRT pooling has no dilation "
                      "(the importer ignores it).", "use dilation 1."))
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        out.append(_f(ERROR, ctx, node, "the `Indices` output of MaxPool is unsupported.",
                      "do not use return_indices=True / MaxUnpool."))
    auto_pad = attr_str(node, "auto_pad", "NOTSET")
    if _pads_with_same_auto_pad(node, auto_pad):
        out.append(_f(ERROR, ctx, node, f"`pads` is set together with auto_pad={auto_pad}.",
                      "drop one of them."))
    if attr(node, "ceil_mode", 0) and auto_pad == "NOTSET" and k:
        out.extend(_ceil_mode_last_window(node, ctx, k, dil))
    return out


def _ceil_mode_last_window(node, ctx: GraphIndex, k: list, dil) -> list[Finding]:
    """ceil_mode=1 where the last window starts inside the end padding."""
    x = ctx.static_shape(node_input(node, 0))
    if x is None or len(x) != len(k) + 2:
        return []
    n = len(k)
    s = list(attr(node, "strides", None) or [1] * n)
    p = list(attr(node, "pads", None) or [0] * (2 * n))
    d = list(dil or [1] * n)
    for i in range(n):
        span = x[2 + i] + p[i] + p[n + i] - ((k[i] - 1) * d[i] + 1)
        if span < 0:
            continue
        o = math.ceil(span / s[i]) + 1
        if (o - 1) * s[i] >= x[2 + i] + p[i]:
            # TRT kEXPLICIT_ROUND_UP keeps the last window; PyTorch and onnxruntime drop a
            # window that starts in the end padding (ORT gives o-1 here).
            return [_f(WARNING, ctx, node, f"ceil_mode=1: on axis {2 + i} the last window "
                       "starts inside the end padding; TensorRT outputs "
                       f"{o} there, PyTorch/onnxruntime {o - 1}.",
                       "use ceil_mode=0 with explicit pads, or make the input size "
                       "divisible by the stride.")]
    return []
