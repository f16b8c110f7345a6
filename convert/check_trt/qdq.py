"""Check `qdq`: explicit quantisation TensorRT 10.3 builds as INT8 layers.

TensorRT quantises symmetrically to signed int8 (fp8/int4 too, but this project is INT8): zero
points must be int8 zeros, scales positive and finite, weights of Conv/ConvTranspose/Gemm/MatMul
per-channel on their output-channel axis, activations per-tensor, and every QuantizeLinear
paired with a DequantizeLinear. A quantised (int32) bias does not parse at all [qdq-bias].

Each Q/DQ node goes through the steps in order: int32 bias (stops the node), zero point and
data type, scale (a non-constant or empty scale stops the node), per-channel axis, Q->DQ
pairing. Then each weighted layer's weights are checked. A scale or zero point shared by many
Q/DQ nodes is reported once, with the number of nodes sharing it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .findings import Finding, node_finding
from .graph import GraphIndex, index_for
from .rules import DEFAULT_DOMAINS, ERROR, INT8, INT32, UINT8, WARNING, WEIGHTED_OPS, dtype_name
from .walk import attr, node_input


@dataclass
class _QdqReport:
    """Findings of one check_qdq run, and which shared scale/zero-point problems were reported."""

    ctx: GraphIndex
    users: dict[str, int]  # how many Q/DQ nodes read each scale / zero-point tensor
    out: list[Finding] = field(default_factory=list)
    reported: set[tuple[str, str]] = field(default_factory=set)

    def add(self, severity: str, node, message: str, fix: str) -> None:
        self.out.append(node_finding("qdq", severity, self.ctx, node, message, fix))

    def once(self, kind: str, tensor: str) -> str | None:
        """None if (kind, tensor) was reported already, else a note on how many nodes share it."""
        if (kind, tensor) in self.reported:
            return None
        self.reported.add((kind, tensor))
        k = self.users.get(tensor, 1) - 1
        return f" (shared with {k} other Q/DQ node{'s' if k > 1 else ''})" if k > 0 else ""


def check_qdq(model, ctx: GraphIndex | None = None) -> list[Finding]:
    """Symmetric int8 Q/DQ with positive scales, per-channel weights, per-tensor activations."""
    ctx = index_for(model, ctx)
    qdq_nodes = [n for n in ctx.nodes
                 if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain in DEFAULT_DOMAINS]
    report = _QdqReport(ctx, _count_users(qdq_nodes))
    weight_dq = _weight_dequantizers(ctx)
    for node in qdq_nodes:
        _check_qdq_node(report, node, weight_dq)
    for node in ctx.nodes:
        if node.op_type in WEIGHTED_OPS and node.domain in DEFAULT_DOMAINS:
            _check_layer_weights(report, node)
    return report.out


def _count_users(qdq_nodes: list) -> dict[str, int]:
    users: dict[str, int] = {}
    for n in qdq_nodes:
        for t in n.input[1:3]:
            if t:
                users[t] = users.get(t, 0) + 1
    return users


def _weight_dequantizers(ctx: GraphIndex) -> set[int]:
    """ids of the DequantizeLinear nodes that feed a weighted layer's weights from a constant."""
    weight_dq: set[int] = set()
    for node in ctx.nodes:
        if node.op_type in WEIGHTED_OPS and node.domain in DEFAULT_DOMAINS:
            p = ctx.producer.get(node_input(node, 1))
            if _is_dq(p) and _weight_source(ctx, p):
                weight_dq.add(id(p))
    return weight_dq


def _is_dq(node) -> bool:
    return node is not None and node.op_type == "DequantizeLinear"


def _weight_axis(node, w_rank: int) -> int:
    """Output-channel axis of the weight input (input 1) of a Conv/ConvTranspose/Gemm/MatMul."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":  # [in, out/groups, k...]
        return 1
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    return max(w_rank - 1, 0)  # MatMul: B is [..., K, N]


def _weight_source(ctx: GraphIndex, dq) -> str | None:
    """The constant a weight DQ dequantises (directly, or through Q(float initializer))."""
    src = node_input(dq, 0)
    if ctx.is_constant(src):
        return src
    p = ctx.producer.get(src)
    if p is not None and p.op_type == "QuantizeLinear" and ctx.is_constant(node_input(p, 0)):
        return node_input(p, 0)
    return None


# --------------------------------------------------------------------------------------------
# one Q/DQ node
# --------------------------------------------------------------------------------------------
def _check_qdq_node(report: _QdqReport, node, weight_dq: set[int]) -> None:
    if _int32_bias(report, node):
        return
    _check_zero_point(report, node)
    s = _check_scale(report, node)
    if s is None:
        return
    if s.size > 1:
        _check_channel_axis(report, node, s, weight_dq)
    if node.op_type == "QuantizeLinear":
        _check_q_has_dq(report, node)


def _int32_bias(report: _QdqReport, node) -> bool:
    """[qdq-bias] A DequantizeLinear of int32 (a quantised bias): reported, and True."""
    if node.op_type != "DequantizeLinear":
        return False
    ctx = report.ctx
    x, zp = node_input(node, 0), node_input(node, 2)
    zp_type = ctx.const_type(zp) if zp else None
    if ctx.const_type(x) != INT32 and zp_type != INT32:
        return False
    consumer = ", ".join(ctx.label(c) for c, _ in ctx.consumers.get(node.output[0], []))
    report.add(ERROR, node, f"dequantises an int32 tensor ('{x}', a quantised bias"
               f"{' of ' + consumer if consumer else ''}); TensorRT DequantizeLinear accepts int8 "
               "input only (\"only activation types allowed as input to this layer\").",
               "keep biases float: quantize_static(..., extra_options={'QuantizeBias': False, ...}).")
    return True


def _check_zero_point(report: _QdqReport, node) -> None:
    """Zero point int8 and all zeros (symmetric); a Q without one would quantise to uint8."""
    ctx = report.ctx
    is_dq = node.op_type == "DequantizeLinear"
    x, zp = node_input(node, 0), node_input(node, 2)
    x_type = ctx.const_type(x) if is_dq else None
    zp_type = ctx.const_type(zp) if zp else None
    if zp:
        _check_zero_point_value(report, node, zp, zp_type)
    elif not is_dq:
        report.add(WARNING, node, "no zero point: ONNX (and onnxruntime) then quantise to uint8 while "
                   "TensorRT uses int8, so calibration and engine disagree.",
                   "add an int8 zero point of 0.")
    if is_dq and x_type == UINT8 and zp_type != UINT8:
        report.add(ERROR, node, f"dequantises uint8 tensor '{x}'; TensorRT quantises to int8 only.",
                   "quantise to int8 (QuantType.QInt8).")


def _check_zero_point_value(report: _QdqReport, node, zp: str, zp_type: int | None) -> None:
    if zp_type == UINT8 and (note := report.once("uint8", zp)) is not None:
        report.add(ERROR, node, f"zero point '{zp}'{note} is uint8; TensorRT quantises to int8 only "
                   "(symmetric, signed).",
                   "quantise with activation_type=QuantType.QInt8, weight_type=QuantType.QInt8.")
    elif zp_type not in (None, INT8, UINT8) and (note := report.once("dtype", zp)) is not None:
        report.add(ERROR, node, f"zero point '{zp}'{note} is {dtype_name(zp_type)}; this project "
                   "builds INT8 engines [project].", "quantise to int8 (QuantType.QInt8).")
    v = report.ctx.const(zp)
    if v is None:
        report.add(WARNING, node, f"zero point '{zp}' is not a constant; cannot check it is 0.",
                   "store zero points as initializers.")
    elif np.any(v != 0) and (note := report.once("nonzero", zp)) is not None:
        nz = np.unique(v[v != 0])[:4].tolist()
        report.add(ERROR, node, f"zero point '{zp}'{note} is non-zero ({nz}); TensorRT supports "
                   "symmetric quantisation only (zero point must be all zeros).",
                   "quantize_static(..., extra_options={'ActivationSymmetric': True, "
                   "'WeightSymmetric': True}).")


def _scale_problem(s: np.ndarray) -> tuple[str, str] | None:
    """(what is wrong, fix) for scale values TensorRT rejects, or None."""
    if not np.all(np.isfinite(s)):
        return ("has non-finite values; TensorRT needs positive, finite scales.",
                "re-run calibration (a tensor saw inf/nan).")
    if np.any(s == 0):
        return ("has zero entries (a Q/DQ pair on a constant-zero tensor or an empty channel); the "
                "parser requires all scales > 0.",
                "drop the Q/DQ on that tensor or clamp the scale to a small positive value.")
    if np.any(s < 0):
        return "has negative entries; scales must be positive.", "re-run calibration."
    return None


def _check_scale(report: _QdqReport, node) -> np.ndarray | None:
    """The scale as float64, or None when it cannot be judged (not constant, or empty)."""
    scale = node_input(node, 1)
    s = report.ctx.const(scale) if scale else None
    if s is None:
        report.add(WARNING, node, f"scale '{scale}' is not a constant; cannot check it statically.",
                   "store scales as initializers.")
        return None
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0:
        report.add(ERROR, node, f"scale '{scale}' is empty.", "re-run calibration.")
        return None
    problem = _scale_problem(s)
    if problem is not None and (note := report.once("scale", scale)) is not None:
        report.add(ERROR, node, f"scale '{scale}'{note} {problem[0]}", problem[1])
    return s


def _check_channel_axis(report: _QdqReport, node, s: np.ndarray, weight_dq: set[int]) -> None:
    """Per-channel scales: 1-D, one per channel of the axis; on weights, not activations."""
    ctx = report.ctx
    x, scale = node_input(node, 0), node_input(node, 1)
    x_shape = ctx.shape(x)
    rank = len(x_shape) if x_shape is not None else None
    axis = int(attr(node, "axis", 1))
    if rank:
        axis = axis + rank if axis < 0 else axis
    if s.ndim != 1:
        report.add(ERROR, node, f"scale '{scale}' has rank {s.ndim}; per-axis scales must be 1-D "
                   "(blocked quantisation is not used here).", "use a 1-D per-channel scale.")
    elif x_shape is not None and rank and 0 <= axis < rank and isinstance(x_shape[axis], int) \
            and x_shape[axis] != s.size:
        report.add(ERROR, node, f"{s.size} scales but '{x}' has {x_shape[axis]} channels on axis "
                   f"{axis}; TensorRT requires one scale per channel.", "fix the quantisation axis.")
    if id(node) not in weight_dq and not ctx.is_constant(x) and _weight_source(ctx, node) is None:
        report.add(WARNING, node, f"per-channel ({s.size} scales) quantisation of activation '{x}'; "
                   "TensorRT expects per-tensor activations (per-axis Q/DQ is for weights).",
                   "use a scalar activation scale (quantize_static does this by default).")


def _check_q_has_dq(report: _QdqReport, node) -> None:
    cons = report.ctx.consumers.get(node.output[0], [])
    if not any(c.op_type == "DequantizeLinear" for c, _ in cons):
        report.add(WARNING, node, f"output '{node.output[0]}' is quantised but no DequantizeLinear "
                   "consumes it; TensorRT needs Q->DQ pairs to place INT8 layers.",
                   "remove the QuantizeLinear or add the matching DequantizeLinear.")


# --------------------------------------------------------------------------------------------
# weights of Conv/ConvTranspose/Gemm/MatMul: per-channel on the output-channel axis
# --------------------------------------------------------------------------------------------
def _check_layer_weights(report: _QdqReport, node) -> None:
    ctx = report.ctx
    w = node_input(node, 1)
    dq = ctx.producer.get(w)
    x_is_dq = _is_dq(ctx.producer.get(node_input(node, 0)))
    if not _is_dq(dq):
        if x_is_dq and ctx.is_constant(w):
            report.add(WARNING, node, f"the input is quantised (DequantizeLinear) but weight '{w}' is "
                       "not; TensorRT will run this layer in float.", "quantise its weights (per-channel).")
        return
    src = _weight_source(ctx, dq)
    if src is None:
        return
    w_shape = ctx.shape(src) or []
    scale = ctx.const(node_input(dq, 1))
    if scale is None or not _check_weight_scales(report, node, dq, src, w_shape, np.asarray(scale)):
        return
    if not x_is_dq:
        report.add(WARNING, node, f"weights '{src}' are quantised but input '{node_input(node, 0)}' has "
                   "no DequantizeLinear; TensorRT needs Q/DQ on both to run this layer in INT8.",
                   "quantise the activation too (Q/DQ pair before the layer).")


def _check_weight_scales(report: _QdqReport, node, dq, src: str, w_shape: list,
                         scale: np.ndarray) -> bool:
    """Per-channel weight scales on the output-channel axis; False when the check stops here."""
    dq_label = report.ctx.label(dq)
    want = _weight_axis(node, len(w_shape))
    one_channel = want < len(w_shape) and w_shape[want] == 1
    if scale.size == 1 and not one_channel:
        report.add(ERROR, node, f"weights '{src}' are quantised per-tensor (one scale, DQ '{dq_label}'); "
                   "this project requires per-channel weights [project].",
                   "quantize_static(..., per_channel=True)" + (
                       ", extra_options={'QDQOpTypePerChannelSupportToAxis': {'MatMul': 1}, ...}"
                       if node.op_type == "MatMul" else "") + ".")
        return False
    if want >= len(w_shape) or not isinstance(w_shape[want], int):
        return False
    axis = int(attr(dq, "axis", 1))
    axis = axis + len(w_shape) if axis < 0 else axis
    n = scale.size
    if n > 1 and axis != want:
        what = {"Conv": "0 (output channels)", "ConvTranspose": "1 (weights are [in, out/groups, k...])",
                "Gemm": f"{want} (output features with transB={attr(node, 'transB', 0)})",
                "MatMul": f"{want} (the N axis of B)"}[node.op_type]
        report.add(ERROR, node, f"weight DQ '{dq_label}' quantises axis {axis}; per-channel weights must "
                   f"use axis {what}.", f"set axis={want} on the weight DequantizeLinear.")
    elif n != w_shape[want]:
        report.add(ERROR, node, f"weight DQ '{dq_label}' has {n} scales for {w_shape[want]} output "
                   "channels.", "one scale per output channel.")
    return True
