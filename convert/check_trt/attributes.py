"""Check `attributes`: attributes and inputs TensorRT 10.3 rejects, one rule function per op.

The restrictions come from the TRT_OPS table (rules.py); Resize/Upsample live in resize.py,
Conv/ConvTranspose and pooling in conv_pool.py, the smaller rules here.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .conv_pool import conv_rules, pool_rules
from .findings import Finding, attribute_finding as _f
from .graph import GraphIndex, index_for
from .resize import resize_rules, upsample_rules
from .rules import DEFAULT_DOMAINS, ERROR, PAD_MODES, REDUCE_OPS, WARNING
from .walk import attr, attr_str, node_input


def _pad(node, ctx: GraphIndex) -> list[Finding]:
    # [import] Pad importer: constant/reflect/edge/wrap (wrap since 10.0); tensor `axes` from 10.4
    out = []
    mode = attr_str(node, "mode", "constant")
    if mode not in PAD_MODES:
        out.append(_f(ERROR, ctx, node, f"pad mode '{mode}' is not supported.",
                      "use constant, reflect, edge or wrap."))
    axes = node_input(node, 3)
    if axes and not ctx.is_constant(axes):
        out.append(_f(ERROR, ctx, node, "the `axes` input is a runtime tensor; TensorRT 10.3 needs "
                      "it constant (tensor axes arrive in 10.4).", "make axes an initializer."))
    pads = node_input(node, 1)
    if pads and ctx.static_value(pads) is None:
        out.append(_f(WARNING, ctx, node, "`pads` depends on runtime data; TensorRT builds a "
                      "dynamic slice for it.", "compute the pads from static shapes or constants."))
    return out


def _const_input(idx: int, what: str, since: str = "") -> Callable:
    """A rule: input `idx` (named `what`) must be a build-time constant."""
    def check(node, ctx: GraphIndex) -> list[Finding]:
        name = node_input(node, idx)
        if name and not ctx.is_constant(name):
            extra = f" ({since})" if since else ""
            return [_f(ERROR, ctx, node, f"`{what}` is a runtime tensor; TensorRT 10.3 needs a "
                       f"build-time constant{extra}.", f"make `{what}` an initializer.")]
        return []
    return check


def _dropout(node, ctx: GraphIndex) -> list[Finding]:
    name = node_input(node, 2)
    if not name:
        return []
    v = ctx.const(name)
    if v is None or bool(np.asarray(v).reshape(-1)[0]):
        return [_f(ERROR, ctx, node, "training_mode must be an initializer that is false.",
                   "export with model.eval().")]
    return []


def _layernorm(node, ctx: GraphIndex) -> list[Finding]:
    if any(o for o in node.output[1:]):
        return [_f(ERROR, ctx, node, "only the first output (Y) of LayerNormalization is supported.",
                   "do not consume Mean/InvStdDev.")]
    return []


def _lstm(node, ctx: GraphIndex) -> list[Finding]:
    bad = [a for a in ("input_forget", "layout") if attr(node, a, 0)]
    return [_f(ERROR, ctx, node, f"{', '.join(bad)} must be 0.", "export with the defaults.")] if bad else []


def _scatternd(node, ctx: GraphIndex) -> list[Finding]:
    red = attr_str(node, "reduction", "none")
    return [_f(ERROR, ctx, node, f"reduction '{red}' is unsupported (only 'none').",
               "avoid scatter-reduce.")] if red != "none" else []


def _topk(node, ctx: GraphIndex) -> list[Finding]:
    return [_f(ERROR, ctx, node, "sorted=0 is unsupported.", "use sorted=1.")] \
        if attr(node, "sorted", 1) == 0 else []


def _einsum(node, ctx: GraphIndex) -> list[Finding]:
    eq = attr_str(node, "equation", "")
    return [_f(ERROR, ctx, node, f"equation '{eq}' uses an ellipsis, unsupported before 10.12.",
               "spell out the axes, or use MatMul/Transpose.")] if "..." in eq else []


def _constant(node, ctx: GraphIndex) -> list[Finding]:
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return [_f(ERROR, ctx, node, f"Constant attribute {bad[0]} is unsupported.",
               "store a dense numeric tensor.")] if bad else []


def _gridsample(node, ctx: GraphIndex) -> list[Finding]:
    s = ctx.shape(node_input(node, 0))
    return [_f(ERROR, ctx, node, f"GridSample input has rank {len(s)}; TensorRT needs 4-D.",
               "use a 4-D NCHW input.")] if s is not None and len(s) != 4 else []


_ATTRIBUTE_CHECKS: dict[str, Callable] = {
    "Resize": resize_rules, "Upsample": upsample_rules, "Pad": _pad,
    "Conv": conv_rules, "ConvTranspose": conv_rules,
    "MaxPool": pool_rules, "AveragePool": pool_rules, "LpPool": pool_rules,
    "Squeeze": _const_input(1, "axes", "dynamic axes arrive in 10.7"),
    "Unsqueeze": _const_input(1, "axes", "dynamic axes arrive in 10.7"),
    "CumSum": _const_input(1, "axis", "dynamic axis arrives in 10.8"),
    "OneHot": _const_input(1, "depth"),
    "Dropout": _dropout, "LayerNormalization": _layernorm, "LSTM": _lstm, "ScatterND": _scatternd,
    "TopK": _topk, "Einsum": _einsum, "Constant": _constant, "GridSample": _gridsample,
    **{op: _const_input(1, "axes") for op in REDUCE_OPS},
}


def check_attributes(model, ctx: GraphIndex | None = None) -> list[Finding]:
    """Attributes/inputs TensorRT 10.3 rejects (Resize modes, Pad modes, pooling, axes inputs...)."""
    ctx = index_for(model, ctx)
    out: list[Finding] = []
    for node in ctx.nodes:
        if node.domain in DEFAULT_DOMAINS and node.op_type in _ATTRIBUTE_CHECKS:
            out.extend(_ATTRIBUTE_CHECKS[node.op_type](node, ctx))
    return out
