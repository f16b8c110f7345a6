"""`rgbd-convert check-trt`: a static lint of an ONNX graph against TensorRT 10.3's ONNX parser.

TensorRT cannot be installed on the workstation, so this module reads the graph and predicts
what the parser on the Jetson (JetPack 6 = TensorRT 10.3) would reject, or build in a way
that differs from what we exported. It is an approximation: the proof is building the
engine on the device. See docs/check-trt.md.

Sources of the rules (cited again next to each rule):
  [ops]      onnx-tensorrt docs/operators.md (the TensorRT 10.x support matrix), minus the
             operators its docs/Changelog.md says were added after 10.3 (10.4: Blackman/
             Hamming/HannWindow, tensor `axes` for Pad; 10.5: STFT; 10.7: dynamic axes for
             Squeeze/Unsqueeze; 10.8: dynamic CumSum axis; 10.12: Einsum ellipsis;
             10.14: Attention; 10.15: RMSNormalization, RotaryEmbedding, TensorScatter).
  [import]   onnx-tensorrt onnxOpImporters.cpp / importerUtils.cpp (the node importers).
  [qdq-bias] onnx-tensorrt#850, onnxruntime#17738: DequantizeLinear with int32 input (the
             quantised bias onnxruntime emits by default) fails to parse: "only activation
             types allowed as input to this layer".
  [project]  rules of this project rather than of TensorRT (marked as such in messages).

Public API: `Finding`, `TRT_OPS`, `UNSUPPORTED_OPS`, the `check_*` functions (each returns a
list of findings), `check_model`, `check_file`, `load_model`, `ModelReadError`,
`format_finding`, `add_parser`, `main`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

TRT_VERSION = "10.3"
MIN_OPSET, MAX_OPSET = 13, 20  # TensorRT 10.x parses opsets 9..20 [ops]; we require >= 13 (per-axis Q/DQ)
PROJECT_OPSET = 17             # what convert/ exports

ERROR, WARNING = "error", "warning"
DEFAULT_DOMAINS = ("", "ai.onnx")

# --------------------------------------------------------------------------------------------
# The table: default-domain ops TensorRT 10.3 parses, with the restrictions that matter for
# CNN graphs ("" = none we check). Source [ops] unless noted; check_attributes enforces the
# restrictions that have a code path below.
# --------------------------------------------------------------------------------------------
TRT_OPS: dict[str, str] = {
    "Abs": "", "Acos": "", "Acosh": "", "Add": "", "And": "bool only",
    "ArgMax": "", "ArgMin": "", "Asin": "", "Asinh": "", "Atan": "", "Atanh": "",
    "AveragePool": "1D/2D/3D pooling only; dilations must be empty or all ones",
    "BatchNormalization": "", "Cast": "", "CastLike": "", "Ceil": "", "Celu": "", "Clip": "",
    "Concat": "",
    "Constant": "sparse_value, value_string and value_strings are unsupported",
    "ConstantOfShape": "",
    "Conv": "1D (expanded to 2D), 2D or 3D only; pads must not be set with auto_pad SAME_*",
    "ConvTranspose": "1D/2D/3D only; output_padding is ignored when auto_pad is SAME_* [import]",
    "Cos": "", "Cosh": "",
    "CumSum": "`axis` must be a build-time constant (dynamic axis only from 10.8)",
    "DeformConv": "added in 10.1",
    "DepthToSpace": "4-D input",
    "DequantizeLinear": "input int8 (no int32/uint8); x_zero_point must be zero",
    "Div": "",
    "Dropout": "`training_mode` must be an initializer that evaluates to false",
    "Einsum": "no ellipsis, diagonal or broadcasting before 10.12",
    "Elu": "", "Equal": "", "Erf": "", "Exp": "", "Expand": "",
    "EyeLike": "input must have static dimensions",
    "Flatten": "", "Floor": "", "Gather": "", "GatherElements": "", "GatherND": "",
    "Gemm": "", "GlobalAveragePool": "", "GlobalLpPool": "", "GlobalMaxPool": "",
    "Greater": "", "GreaterOrEqual": "",
    "GridSample": "4-D input only",
    "GroupNormalization": "opset-18 form (the opset-21 form arrives in 10.9)",
    "GRU": "bidirectional: same activations both ways",
    "HardSigmoid": "", "HardSwish": "",
    "Hardmax": "`axis` dimension must be a build-time constant",
    "Identity": "",
    "If": "branch outputs must have the same rank",
    "ImageScaler": "", "InstanceNormalization": "", "IsInf": "", "IsNaN": "",
    "LayerNormalization": "only the first output (Y) is supported",
    "LeakyRelu": "", "Less": "", "LessOrEqual": "", "Log": "", "LogSoftmax": "",
    "Loop": "scan outputs cannot have dynamic length",
    "LRN": "",
    "LSTM": "input_forget and layout must be 0; bidirectional: same activations both ways",
    "LpNormalization": "",
    "LpPool": "dilations must be empty or all ones",
    "MatMul": "",
    "Max": "",
    "MaxPool": "1D/2D/3D pooling only; `Indices` output unsupported; dilations all ones",
    "Mean": "", "MeanVarianceNormalization": "", "Min": "", "Mod": "", "Mul": "", "Neg": "",
    "NonMaxSuppression": "", "NonZero": "", "Not": "",
    "OneHot": "`depth` must be a build-time constant",
    "Or": "",
    "Pad": "modes constant/reflect/edge/wrap; `axes` input must be constant (tensor axes from 10.4)",
    "ParametricSoftplus": "", "Pow": "", "PRelu": "",
    "QuantizeLinear": "int8 output; y_zero_point must be zero",
    "RandomNormal": "seed ignored", "RandomNormalLike": "seed ignored",
    "RandomUniform": "seed ignored", "RandomUniformLike": "seed ignored",
    "Range": "", "Reciprocal": "",
    "ReduceL1": "`axes` must be an initializer", "ReduceL2": "`axes` must be an initializer",
    "ReduceLogSum": "`axes` must be an initializer", "ReduceLogSumExp": "`axes` must be an initializer",
    "ReduceMax": "`axes` must be an initializer", "ReduceMean": "`axes` must be an initializer",
    "ReduceMin": "`axes` must be an initializer", "ReduceProd": "`axes` must be an initializer",
    "ReduceSum": "`axes` must be an initializer", "ReduceSumSquare": "`axes` must be an initializer",
    "Relu": "", "Reshape": "",
    "Resize": ("coordinate_transformation_mode half_pixel/pytorch_half_pixel/tf_half_pixel_for_nn/"
               "asymmetric/align_corners; modes nearest/linear (cubic is mapped by the importer "
               "but undocumented); nearest_mode floor/ceil/round_prefer_floor/round_prefer_ceil; "
               "keep_aspect_ratio_policy stretch; no antialias; linear resizes at most the 3 "
               "innermost axes, cubic 2; with a `scales` tensor, `axes` must be 0..rank-1"),
    "ReverseSequence": "", "RNN": "bidirectional: same activations both ways", "RoiAlign": "",
    "Round": "", "ScaledTanh": "", "Scan": "", "Scatter": "", "ScatterElements": "",
    "ScatterND": "`reduction` must be none",
    "Selu": "", "Shape": "", "Shrink": "", "Sigmoid": "", "Sign": "", "Sin": "", "Sinh": "",
    "Size": "", "Slice": "", "Softmax": "", "Softplus": "", "Softsign": "", "SpaceToDepth": "",
    "Split": "", "Sqrt": "",
    "Squeeze": "`axes` must be a build-time constant (dynamic axes only from 10.7)",
    "Sub": "", "Sum": "", "Tan": "", "Tanh": "", "ThresholdedRelu": "", "Tile": "",
    "TopK": "`sorted` must be 1",
    "Transpose": "", "Trilu": "",
    "Unsqueeze": "`axes` must be a build-time constant (dynamic axes only from 10.7)",
    "Upsample": "deprecated since opset 10: export Resize instead",
    "Where": "", "Xor": "",
}

# Listed in the 10.x support matrix but neither in the 8.x matrices nor in the changelog, so
# we cannot tell from the sources which 10.x release added them: warn, do not fail.
UNCERTAIN_OPS: dict[str, str] = {
    "Gelu": "opset-20 Gelu: present in later 10.x support matrices; not confirmed for 10.3",
    "Mish": "present in later 10.x support matrices; not confirmed for 10.3",
}

# Default-domain ops TensorRT 10.3 does not parse, with the reason or the usual fix.
_QOPERATOR = "onnxruntime QOperator-format op"
_QOPERATOR_FIX = ("quantise with quant_format=QuantFormat.QDQ so TensorRT sees "
                  "QuantizeLinear/DequantizeLinear around float ops.")
UNSUPPORTED_OPS: dict[str, str] = {
    "AffineGrid": "", "Attention": "added in TensorRT 10.14", "Bernoulli": "", "BitShift": "",
    "BitwiseAnd": "", "BitwiseNot": "", "BitwiseOr": "", "BitwiseXor": "",
    "BlackmanWindow": "added in TensorRT 10.4", "HammingWindow": "added in TensorRT 10.4",
    "HannWindow": "added in TensorRT 10.4", "STFT": "added in TensorRT 10.5", "DFT": "",
    "CenterCropPad": "", "Col2Im": "", "Compress": "data-dependent output shape",
    "ConcatFromSequence": "sequence types are unsupported",
    "ConvInteger": _QOPERATOR, "MatMulInteger": _QOPERATOR, "QLinearConv": _QOPERATOR,
    "QLinearMatMul": _QOPERATOR,
    "DynamicQuantizeLinear": "dynamic quantisation: use static QDQ (quantize_static)",
    "Det": "", "ImageDecoder": "", "MaxRoiPool": "", "MaxUnpool": "", "MelWeightMatrix": "",
    "Multinomial": "", "NegativeLogLikelihoodLoss": "training op",
    "SoftmaxCrossEntropyLoss": "training op",
    "Optional": "optional types are unsupported", "OptionalGetElement": "optional types are unsupported",
    "OptionalHasElement": "optional types are unsupported",
    "RegexFullMatch": "string op", "StringConcat": "string op", "StringNormalizer": "string op",
    "StringSplit": "string op", "TfIdfVectorizer": "string op",
    "RMSNormalization": "added in TensorRT 10.15", "RotaryEmbedding": "added in TensorRT 10.15",
    "TensorScatter": "added in TensorRT 10.15",
    "SequenceAt": "sequence types are unsupported", "SequenceConstruct": "sequence types are unsupported",
    "SequenceEmpty": "sequence types are unsupported", "SequenceErase": "sequence types are unsupported",
    "SequenceInsert": "sequence types are unsupported", "SequenceLength": "sequence types are unsupported",
    "SequenceMap": "sequence types are unsupported", "SplitToSequence": "sequence types are unsupported",
    "Unique": "data-dependent output shape",
}

_MS_FIX = ("disable onnxruntime-specific fusions on export/quantisation: quantise the plain torch "
           "export with quant_format=QuantFormat.QDQ, never save an ORT-optimised model "
           "(SessionOptions.optimized_model_filepath with ORT_ENABLE_EXTENDED/ALL), and use "
           "quant_pre_process(..., skip_optimization=True) if you pre-process at all.")

# ONNX TensorProto data types we name.
_FLOAT, _UINT8, _INT8, _INT32, _INT64 = 1, 2, 3, 6, 7
_DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
                7: "int64", 9: "bool", 10: "float16", 11: "float64", 16: "bfloat16",
                17: "float8e4m3fn", 21: "uint4", 22: "int4"}


def _dtype_name(t: int | None) -> str:
    return _DTYPE_NAMES.get(t, f"type {t}") if t is not None else "unknown type"


# --------------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------------
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


class ModelReadError(Exception):
    """The file is missing, unreadable or not an ONNX model (CLI exit code 2)."""


# --------------------------------------------------------------------------------------------
# Graph index shared by the checks
# --------------------------------------------------------------------------------------------
def _onnx():
    import onnx  # imported lazily: the edge runtime never needs it

    return onnx


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return _onnx().helper.get_attribute_value(a)
    return default


def _attr_str(node, name: str, default: str) -> str:
    v = _attr(node, name, default)
    return v.decode() if isinstance(v, bytes) else v


def _node_label(node, index: int) -> str:
    if node.name:
        return node.name
    out = next((o for o in node.output if o), "")
    return f"<unnamed #{index} -> {out}>" if out else f"<unnamed #{index}>"


def _iter_subgraphs(graph) -> Iterator:
    """`graph` and every subgraph (If/Loop/Scan bodies), depth first."""
    onnx = _onnx()
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _iter_subgraphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _iter_subgraphs(g)


class GraphIndex:
    """Producers, consumers, constants, inferred types and shapes of the main graph."""

    def __init__(self, model):
        onnx = _onnx()
        self.model = model
        self.opset = default_opset(model) or PROJECT_OPSET
        self.shape_inference_error: str | None = None
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                         data_prop=True)
        except Exception as exc:  # noqa: BLE001 - any failure just means "no inferred shapes"
            self.shape_inference_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            inferred = model
        g = inferred.graph
        self.graph = model.graph
        self.nodes = list(model.graph.node)
        self.labels = {id(n): _node_label(n, i) for i, n in enumerate(self.nodes)}
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.input_names = [v.name for v in model.graph.input if v.name not in self.initializers]
        self.output_names = [v.name for v in model.graph.output]
        self.producer: dict[str, object] = {}
        self.consumers: dict[str, list[tuple[object, int]]] = {}
        for n in self.nodes:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i, name in enumerate(n.input):
                if name:
                    self.consumers.setdefault(name, []).append((n, i))
        # types and shapes: declared I/O, inferred value_info, initializers, Constant nodes
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list | None] = {}
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            self._record(vi)
        for t in model.graph.initializer:
            self.types[t.name] = t.data_type
            self.shapes[t.name] = list(t.dims)
        self._const_cache: dict[str, np.ndarray | None] = {}
        self.input_symbols = {d for n in self.input_names for d in (self.shapes.get(n) or [])
                              if isinstance(d, str)}
        # Fold small constant/shape-only subgraphs and re-infer node by node with their values:
        # TensorRT folds such shape tensors at build time when the inputs are static, while ONNX's
        # data propagation stops at Div/Transpose/Slice & co (torch's F.pad export, for one).
        self.folded: dict[str, np.ndarray] = {}
        if self.shape_inference_error is None:
            try:
                self._propagate()
            except Exception:  # noqa: BLE001 - the pass only refines; the baseline stays valid
                pass

    # values up to this many elements are folded (shape vectors, pads, scales, small constants)
    FOLD_LIMIT = 4096

    def _propagate(self) -> None:
        _onnx()
        from onnx import defs, helper, numpy_helper, shape_inference
        from onnx.reference import ReferenceEvaluator

        types: dict[str, object] = {}
        for vi in self.model.graph.input:
            if vi.type.HasField("tensor_type"):
                types[vi.name] = vi.type
        for name, t in self.initializers.items():
            types[name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
        values: dict[str, np.ndarray] = {}
        for name in self.initializers:
            v = self.const(name)
            if v is not None and v.size <= self.FOLD_LIMIT:
                values[name] = v
        for node in self.nodes:
            if node.domain not in DEFAULT_DOMAINS:
                continue
            outs = [o for o in node.output if o]
            op = node.op_type
            inputs = [i for i in node.input if i]
            try:
                if op == "Constant":
                    v = self.const(outs[0])
                    if v is not None and v.size <= self.FOLD_LIMIT:
                        values[outs[0]] = v
                elif op in ("Shape", "Size"):
                    s = self.static_shape(inputs[0]) if inputs[0] not in types else \
                        self._static(types[inputs[0]])
                    if s is not None:
                        if op == "Size":
                            values[outs[0]] = np.asarray(int(np.prod(s)), np.int64)
                        else:
                            start, end = _attr(node, "start", 0), _attr(node, "end", None)
                            values[outs[0]] = np.asarray(s[start:end], np.int64)
                elif op in _SHAPE_OPS and inputs and all(i in values for i in inputs):
                    ev = ReferenceEvaluator(node, opsets={"": self.opset})
                    res = ev.run(None, {i: values[i] for i in inputs})
                    for o, r in zip(node.output, res):
                        if o and r is not None and np.asarray(r).size <= self.FOLD_LIMIT:
                            values[o] = np.asarray(r)
            except Exception:  # noqa: BLE001 - not foldable: leave unknown
                pass
            if all(o in values for o in outs):
                for o in outs:
                    types[o] = helper.make_tensor_type_proto(
                        helper.np_dtype_to_tensor_dtype(values[o].dtype), list(values[o].shape))
                    if o not in self.initializers:
                        self.folded[o] = values[o]
                        self.types[o] = types[o].tensor_type.elem_type
                        self.shapes[o] = list(values[o].shape)
                continue
            if op == "Constant" or not all(i in types for i in inputs):
                continue
            try:
                schema = defs.get_schema(op, self.opset, "")
                data = {i: numpy_helper.from_array(values[i], i) for i in inputs if i in values}
                inferred = shape_inference.infer_node_outputs(
                    schema, node, {i: types[i] for i in inputs}, data,
                    opset_imports=[helper.make_opsetid("", self.opset)])
            except Exception:  # noqa: BLE001 - keep the baseline for this node
                continue
            for o, tp in inferred.items():
                types[o] = tp
                vi = helper.make_value_info(o, tp)
                before = self.shapes.get(o)
                self._record(vi)
                if before is not None and self.shapes.get(o) is not None and \
                        _n_static(before) > _n_static(self.shapes[o]):
                    self.shapes[o] = before  # never make a shape less static than the baseline

    @staticmethod
    def _static(tp) -> list[int] | None:
        tt = tp.tensor_type
        if not tt.HasField("shape"):
            return None
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        return None if any(d is None for d in dims) else dims

    def _record(self, vi) -> None:
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None:
            return
        if tt.elem_type:
            self.types[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            dims = []
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param"):
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
            self.shapes[vi.name] = dims
        else:
            self.shapes.setdefault(vi.name, None)

    def label(self, node) -> str:
        return self.labels.get(id(node)) or _node_label(node, -1)

    def shape(self, name: str) -> list | None:
        return self.shapes.get(name)

    def static_shape(self, name: str) -> list[int] | None:
        s = self.shapes.get(name)
        if s is None or any(not isinstance(d, int) or d < 0 for d in s):
            return None
        return s

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type == "Constant"

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output, or None (not constant, or external)."""
        if name in self._const_cache:
            return self._const_cache[name]
        onnx = _onnx()
        value = None
        try:
            if name in self.initializers:
                t = self.initializers[name]
                if t.data_location != onnx.TensorProto.EXTERNAL:
                    value = onnx.numpy_helper.to_array(t)
            else:
                p = self.producer.get(name)
                if p is not None and p.op_type == "Constant" and p.attribute:
                    a = p.attribute[0]
                    v = onnx.helper.get_attribute_value(a)
                    if a.name == "value":
                        if v.data_location != onnx.TensorProto.EXTERNAL:
                            value = onnx.numpy_helper.to_array(v)
                    elif a.name in ("value_float", "value_floats"):
                        value = np.asarray(v, dtype=np.float32)
                    elif a.name in ("value_int", "value_ints"):
                        value = np.asarray(v, dtype=np.int64)
        except Exception:  # noqa: BLE001 - a malformed tensor is "unknown", not a crash
            value = None
        self._const_cache[name] = value
        return value

    def static_value(self, name: str) -> np.ndarray | None:
        """A constant, or a value TensorRT can fold at build time (small shape/constant subgraph)."""
        v = self.const(name)
        return v if v is not None else self.folded.get(name)

    def const_type(self, name: str) -> int | None:
        """ONNX data type of a constant (initializer or Constant node), or the inferred type."""
        if name in self.initializers:
            return self.initializers[name].data_type
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant" and p.attribute:
            a = p.attribute[0]
            if a.name == "value":
                return a.t.data_type
            if a.name in ("value_float", "value_floats"):
                return _FLOAT
            if a.name in ("value_int", "value_ints"):
                return _INT64
        return self.types.get(name)


def _n_static(dims: list) -> int:
    return sum(isinstance(d, int) for d in dims)


def default_opset(model) -> int | None:
    for o in model.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            return int(o.version)
    return None


def _index(model, ctx: GraphIndex | None) -> GraphIndex:
    return ctx if ctx is not None else GraphIndex(model)


def _all_nodes(model) -> Iterator[tuple[object, str]]:
    """(node, label) for every node of the main graph, its subgraphs and local functions."""
    for gi, graph in enumerate(_iter_subgraphs(model.graph)):
        for i, n in enumerate(graph.node):
            label = _node_label(n, i)
            yield n, (label if gi == 0 else f"{graph.name or 'subgraph'}/{label}")
    for f in model.functions:
        for i, n in enumerate(f.node):
            yield n, f"{f.name}/{_node_label(n, i)}"


# --------------------------------------------------------------------------------------------
# 1. op types
# --------------------------------------------------------------------------------------------
def check_ops(model, ctx: GraphIndex | None = None) -> list[Finding]:
    """Op types outside TensorRT 10.3's parser, non-default domains, com.microsoft ops."""
    local_functions = {(f.domain, f.name) for f in model.functions}  # TRT >= 9 inlines these
    out: list[Finding] = []
    for node, label in _all_nodes(model):
        op, domain = node.op_type, node.domain
        if (domain, op) in local_functions:
            continue
        if domain in DEFAULT_DOMAINS:
            if op in TRT_OPS:
                continue
            if op in UNCERTAIN_OPS:
                out.append(Finding(WARNING, label, op, UNCERTAIN_OPS[op] + ".",
                                   "decompose it in the export, or confirm by building on the Jetson.",
                                   "ops"))
                continue
            reason = UNSUPPORTED_OPS.get(op, "")
            msg = f"{op} is not supported by the TensorRT {TRT_VERSION} ONNX parser"
            msg += f" ({reason})." if reason else "."
            fix = (_QOPERATOR_FIX if reason == _QOPERATOR else
                   "replace it in the model (or the export) with supported ops; TensorRT plugins "
                   "are not part of our bundles.")
            out.append(Finding(ERROR, label, op, msg, fix, "ops"))
        elif domain == "com.microsoft":
            out.append(Finding(ERROR, label, f"{domain}:{op}",
                               f"{op} is an onnxruntime-specific op (com.microsoft); TensorRT cannot "
                               "parse it. It appears when a model is saved after ORT graph "
                               "optimisation or quantised in QOperator format.", _MS_FIX, "ops"))
        else:
            out.append(Finding(ERROR, label, f"{domain}:{op}",
                               f"op in custom domain '{domain}' needs a TensorRT plugin; bundles ship "
                               "none [project].",
                               "export it with default-domain (ai.onnx) ops only.", "ops"))
    return out


# --------------------------------------------------------------------------------------------
# 2. attributes and inputs TensorRT 10.3 rejects
# --------------------------------------------------------------------------------------------
def _f(sev: str, ctx: GraphIndex, node, msg: str, fix: str) -> Finding:
    return Finding(sev, ctx.label(node), node.op_type, msg, fix, "attributes")


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


_RESIZE_CTM = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


def _resize(node, ctx: GraphIndex) -> list[Finding]:
    # [ops] Resize row + [import] DEFINE_BUILTIN_OP_IMPORTER(Resize)
    out = []
    mode = _attr_str(node, "mode", "nearest")
    ctm = _attr_str(node, "coordinate_transformation_mode", "half_pixel")
    nearest = _attr_str(node, "nearest_mode", "round_prefer_floor")
    if ctm not in _RESIZE_CTM:
        out.append(_f(ERROR, ctx, node, f"coordinate_transformation_mode '{ctm}' is not supported "
                      f"(TensorRT supports {', '.join(sorted(_RESIZE_CTM))}).",
                      "use F.interpolate without crop/roi (half_pixel or align_corners)."))
    if mode == "cubic":
        out.append(_f(WARNING, ctx, node, "mode 'cubic' is not in the documented Resize modes "
                      "(nearest, linear); the importer maps it to cubic on at most the 2 innermost axes.",
                      "prefer mode 'linear' (bilinear), or confirm on the Jetson."))
    elif mode not in ("nearest", "linear"):
        out.append(_f(ERROR, ctx, node, f"Resize mode '{mode}' is not supported.",
                      "use 'nearest' or 'linear'."))
    if mode == "nearest" and nearest not in _NEAREST_MODES:
        out.append(_f(ERROR, ctx, node, f"nearest_mode '{nearest}' is not supported.",
                      f"use one of {', '.join(sorted(_NEAREST_MODES))}."))
    if _attr(node, "antialias", 0):
        out.append(_f(ERROR, ctx, node, "antialias=1 is not supported.",
                      "export with antialias=False."))
    policy = _attr_str(node, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        out.append(_f(ERROR, ctx, node, f"keep_aspect_ratio_policy '{policy}' is not supported "
                      "(only 'stretch').", "pass explicit sizes/scales instead."))
    # how many axes are actually resized: linear <= 3 innermost, cubic <= 2 innermost
    limit = {"linear": 3, "cubic": 2}.get(mode)
    scales = ctx.static_value(_input(node, 2)) if _input(node, 2) else None
    in_shape = ctx.static_shape(_input(node, 0))
    sizes = ctx.static_value(_input(node, 3)) if _input(node, 3) else None
    axes = _attr(node, "axes", None)
    ratios = None
    if scales is not None and scales.size:
        ratios = [float(s) for s in scales.reshape(-1)]
    elif sizes is not None and sizes.size and in_shape is not None:
        ratios = [float(s) / d if d else 1.0 for s, d in zip(sizes.reshape(-1), in_shape)] \
            if axes is None else None
    if limit and ratios is not None and axes is None:
        outer = ratios[:-limit] if len(ratios) > limit else []
        if any(abs(r - 1.0) > 1e-9 for r in outer):
            out.append(_f(ERROR, ctx, node, f"{mode} resize changes an axis outside the {limit} "
                          f"innermost ones (scales {ratios}); TensorRT cannot do that.",
                          "resize only the spatial axes (N and C scale 1)."))
    if axes is not None and list(axes) != list(range(len(axes))) and _input(node, 2) \
            and scales is None:
        out.append(_f(ERROR, ctx, node, "`axes` with a runtime `scales` tensor must be 0..rank-1.",
                      "make scales a constant or drop `axes`."))
    return out


def _upsample(node, ctx: GraphIndex) -> list[Finding]:
    return [_f(ERROR, ctx, node, "Upsample is deprecated since opset 10 and invalid in an opset-"
               f"{ctx.opset} graph.", "export Resize (F.interpolate) at opset 17.")]


def _pad(node, ctx: GraphIndex) -> list[Finding]:
    # [import] Pad importer: constant/reflect/edge/wrap (wrap since 10.0); tensor `axes` from 10.4
    out = []
    mode = _attr_str(node, "mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        out.append(_f(ERROR, ctx, node, f"pad mode '{mode}' is not supported.",
                      "use constant, reflect, edge or wrap."))
    axes = _input(node, 3)
    if axes and not ctx.is_constant(axes):
        out.append(_f(ERROR, ctx, node, "the `axes` input is a runtime tensor; TensorRT 10.3 needs "
                      "it constant (tensor axes arrive in 10.4).", "make axes an initializer."))
    pads = _input(node, 1)
    if pads and ctx.static_value(pads) is None:
        out.append(_f(WARNING, ctx, node, "`pads` depends on runtime data; TensorRT builds a "
                      "dynamic slice for it.", "compute the pads from static shapes or constants."))
    return out


def _conv_like(node, ctx: GraphIndex) -> list[Finding]:
    out = []
    auto_pad = _attr_str(node, "auto_pad", "NOTSET")
    # [import] getKernelParams: "Pads attribute should not be specified with SAME_LOWER or SAME_UPPER"
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and _attr(node, "pads") is not None:
        out.append(_f(ERROR, ctx, node, f"`pads` is set together with auto_pad={auto_pad}; the "
                      "parser rejects the node.", "drop one of them (exporters emit explicit pads)."))
    w_shape = ctx.shape(_input(node, 1))
    if w_shape is not None and len(w_shape) not in (3, 4, 5):
        out.append(_f(ERROR, ctx, node, f"{len(w_shape) - 2}-D {node.op_type.lower()} (weight rank "
                      f"{len(w_shape)}): TensorRT supports 1D, 2D and 3D only.",
                      "reshape to at most 3 spatial dimensions."))
    if node.op_type == "ConvTranspose":
        op = _attr(node, "output_padding", None)
        if auto_pad != "NOTSET" and op and any(op):
            # [import] ConvTranspose: output padding is only applied on the NOTSET path
            out.append(_f(ERROR, ctx, node, f"output_padding {list(op)} with auto_pad={auto_pad}: "
                          "TensorRT's importer ignores output_padding here, so the output shape "
                          "differs from ONNX.", "export explicit pads (auto_pad NOTSET)."))
        oshape = _attr(node, "output_shape", None)
        x = ctx.static_shape(_input(node, 0))
        if oshape and auto_pad == "NOTSET" and x is not None and w_shape and \
                all(isinstance(d, int) for d in w_shape):
            k = w_shape[2:]
            n_sp = len(k)
            s = list(_attr(node, "strides", None) or [1] * n_sp)
            d = list(_attr(node, "dilations", None) or [1] * n_sp)
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


def _pool(node, ctx: GraphIndex) -> list[Finding]:
    # [ops] 1D/2D/3D pooling, dilations all ones, no Indices; [import] poolingHelper
    out = []
    k = list(_attr(node, "kernel_shape", None) or [])
    if k and len(k) not in (1, 2, 3):
        out.append(_f(ERROR, ctx, node, f"{len(k)}-D pooling: TensorRT supports 1D/2D/3D only.",
                      "pool at most 3 spatial axes."))
    dil = _attr(node, "dilations", None)
    if dil and any(v != 1 for v in dil):
        out.append(_f(ERROR, ctx, node, f"dilations {list(dil)}: TensorRT pooling has no dilation "
                      "(the importer ignores it).", "use dilation 1."))
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        out.append(_f(ERROR, ctx, node, "the `Indices` output of MaxPool is unsupported.",
                      "do not use return_indices=True / MaxUnpool."))
    auto_pad = _attr_str(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and _attr(node, "pads") is not None:
        out.append(_f(ERROR, ctx, node, f"`pads` is set together with auto_pad={auto_pad}.",
                      "drop one of them."))
    if _attr(node, "ceil_mode", 0) and auto_pad == "NOTSET" and k:
        x = ctx.static_shape(_input(node, 0))
        if x is not None and len(x) == len(k) + 2:
            n = len(k)
            s = list(_attr(node, "strides", None) or [1] * n)
            p = list(_attr(node, "pads", None) or [0] * (2 * n))
            d = list(dil or [1] * n)
            for i in range(n):
                span = x[2 + i] + p[i] + p[n + i] - ((k[i] - 1) * d[i] + 1)
                if span < 0:
                    continue
                o = math.ceil(span / s[i]) + 1
                if (o - 1) * s[i] >= x[2 + i] + p[i]:
                    # TRT kEXPLICIT_ROUND_UP keeps the last window; PyTorch and onnxruntime drop a
                    # window that starts in the end padding (ORT gives o-1 here).
                    out.append(_f(WARNING, ctx, node, f"ceil_mode=1: on axis {2 + i} the last window "
                                  "starts inside the end padding; TensorRT outputs "
                                  f"{o} there, PyTorch/onnxruntime {o - 1}.",
                                  "use ceil_mode=0 with explicit pads, or make the input size "
                                  "divisible by the stride."))
                    break
    return out


def _const_input(idx: int, what: str, since: str = "") -> Callable:
    def check(node, ctx: GraphIndex) -> list[Finding]:
        name = _input(node, idx)
        if name and not ctx.is_constant(name):
            extra = f" ({since})" if since else ""
            return [_f(ERROR, ctx, node, f"`{what}` is a runtime tensor; TensorRT 10.3 needs a "
                       f"build-time constant{extra}.", f"make `{what}` an initializer.")]
        return []
    return check


def _dropout(node, ctx: GraphIndex) -> list[Finding]:
    name = _input(node, 2)
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
    bad = [a for a in ("input_forget", "layout") if _attr(node, a, 0)]
    return [_f(ERROR, ctx, node, f"{', '.join(bad)} must be 0.", "export with the defaults.")] if bad else []


def _scatternd(node, ctx: GraphIndex) -> list[Finding]:
    red = _attr_str(node, "reduction", "none")
    return [_f(ERROR, ctx, node, f"reduction '{red}' is unsupported (only 'none').",
               "avoid scatter-reduce.")] if red != "none" else []


def _topk(node, ctx: GraphIndex) -> list[Finding]:
    return [_f(ERROR, ctx, node, "sorted=0 is unsupported.", "use sorted=1.")] \
        if _attr(node, "sorted", 1) == 0 else []


def _einsum(node, ctx: GraphIndex) -> list[Finding]:
    eq = _attr_str(node, "equation", "")
    return [_f(ERROR, ctx, node, f"equation '{eq}' uses an ellipsis, unsupported before 10.12.",
               "spell out the axes, or use MatMul/Transpose.")] if "..." in eq else []


def _constant(node, ctx: GraphIndex) -> list[Finding]:
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return [_f(ERROR, ctx, node, f"Constant attribute {bad[0]} is unsupported.",
               "store a dense numeric tensor.")] if bad else []


def _gridsample(node, ctx: GraphIndex) -> list[Finding]:
    s = ctx.shape(_input(node, 0))
    return [_f(ERROR, ctx, node, f"GridSample input has rank {len(s)}; TensorRT needs 4-D.",
               "use a 4-D NCHW input.")] if s is not None and len(s) != 4 else []


_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
               "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")

_ATTRIBUTE_CHECKS: dict[str, Callable] = {
    "Resize": _resize, "Upsample": _upsample, "Pad": _pad,
    "Conv": _conv_like, "ConvTranspose": _conv_like,
    "MaxPool": _pool, "AveragePool": _pool, "LpPool": _pool,
    "Squeeze": _const_input(1, "axes", "dynamic axes arrive in 10.7"),
    "Unsqueeze": _const_input(1, "axes", "dynamic axes arrive in 10.7"),
    "CumSum": _const_input(1, "axis", "dynamic axis arrives in 10.8"),
    "OneHot": _const_input(1, "depth"),
    "Dropout": _dropout, "LayerNormalization": _layernorm, "LSTM": _lstm, "ScatterND": _scatternd,
    "TopK": _topk, "Einsum": _einsum, "Constant": _constant, "GridSample": _gridsample,
    **{op: _const_input(1, "axes") for op in _REDUCE_OPS},
}


def check_attributes(model, ctx: GraphIndex | None = None) -> list[Finding]:
    """Attributes/inputs TensorRT 10.3 rejects (Resize modes, Pad modes, pooling, axes inputs...)."""
    ctx = _index(model, ctx)
    out: list[Finding] = []
    for node in ctx.nodes:
        if node.domain in DEFAULT_DOMAINS and node.op_type in _ATTRIBUTE_CHECKS:
            out.extend(_ATTRIBUTE_CHECKS[node.op_type](node, ctx))
    return out


# --------------------------------------------------------------------------------------------
# 3. dynamic shapes
# --------------------------------------------------------------------------------------------
def _fmt_shape(s) -> str:
    if s is None:
        return "unknown"
    return "[" + ", ".join("?" if d is None else str(d) for d in s) + "]"


def check_dynamic_shapes(model, ctx: GraphIndex | None = None, allow_dynamic: bool = False) -> list[Finding]:
    """Graph inputs must be fully static (symbolic / <= 0 dims are errors unless allow_dynamic);
    intermediate tensors whose shape onnx shape inference cannot pin down are warnings."""
    ctx = _index(model, ctx)
    out: list[Finding] = []
    sev = WARNING if allow_dynamic else ERROR
    for name in ctx.input_names:
        s = ctx.shape(name)
        if s is None:
            out.append(Finding(sev, name, "graph input", "the input has no declared shape.",
                               "export with a fixed input shape (our engines are static).", "shapes"))
            continue
        bad = [i for i, d in enumerate(s) if not isinstance(d, int) or d <= 0]
        if bad:
            dims = ", ".join(f"dim {i}={s[i] if s[i] is not None else '?'}" for i in bad)
            fix = ("build with an optimisation profile (min/opt/max) on the Jetson." if allow_dynamic
                   else "export without dynamic_axes (fixed batch 1 and image size), or pass "
                        "--allow-dynamic and give trtexec/the builder an optimisation profile.")
            out.append(Finding(sev, name, "graph input", f"dynamic shape {_fmt_shape(s)} ({dims}).",
                               fix, "shapes"))
    if ctx.shape_inference_error:
        out.append(Finding(WARNING, ctx.graph.name or "<graph>", "model",
                           f"onnx shape inference failed ({ctx.shape_inference_error}); shapes were "
                           "not checked.", "run onnx.checker.check_model and fix the graph.", "shapes"))
        return out
    def unstatic(name: str) -> bool:
        s = ctx.shape(name)
        return s is None or any(d is None or (isinstance(d, str) and d not in ctx.input_symbols)
                                for d in s)

    bad = {o for n in ctx.nodes if n.domain in DEFAULT_DOMAINS for o in n.output
           if o and o not in ctx.input_names and unstatic(o)}
    for node in ctx.nodes:
        if node.domain not in DEFAULT_DOMAINS or node.op_type == "Constant":
            continue
        if any(i in bad or (i in ctx.producer and ctx.producer[i].domain not in DEFAULT_DOMAINS)
               for i in node.input if i):
            continue  # not where the shape got lost: an input was already unknown
        for o in node.output:
            if o not in bad:
                continue
            s = ctx.shape(o)
            why = ("its shape could not be inferred statically" if s is None
                   else f"its shape {_fmt_shape(s)} has dimensions that are not static")
            downstream = _count_downstream(ctx, o, bad)
            more = f"; {downstream} tensor(s) downstream inherit it" if downstream else ""
            out.append(Finding(WARNING, ctx.label(node), node.op_type, f"output '{o}': {why}{more}.",
                               "make shapes static at export (constant-fold shape arithmetic, e.g. "
                               "polygraphy surgeon sanitize --fold-constants).", "shapes"))
    return out


def _count_downstream(ctx: GraphIndex, start: str, bad: set[str]) -> int:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for node, _ in ctx.consumers.get(stack.pop(), []):
            for o in node.output:
                if o in bad and o not in seen:
                    seen.add(o)
                    stack.append(o)
    return len(seen)


# --------------------------------------------------------------------------------------------
# 4. int64 beyond shape plumbing
# --------------------------------------------------------------------------------------------
# Input slots that carry shapes, indices or axes: int64 is their normal type.
_SHAPE_SLOTS: dict[str, set[int]] = {
    "Reshape": {1}, "Slice": {1, 2, 3, 4}, "Unsqueeze": {1}, "Squeeze": {1}, "ConstantOfShape": {0},
    "Expand": {1}, "Resize": {1, 2, 3}, "Upsample": {1}, "Pad": {1, 3}, "Tile": {1}, "TopK": {1},
    "Gather": {1}, "GatherElements": {1}, "GatherND": {1}, "ScatterND": {1}, "ScatterElements": {1},
    "Scatter": {1}, "OneHot": {0, 1}, "CumSum": {1}, "Split": {1}, "Range": {0, 1, 2}, "Trilu": {1},
    "Shape": {0}, "Size": {0}, "CastLike": {1}, "Cast": {0}, "NonMaxSuppression": {2},
    "ReverseSequence": {1}, "RandomNormalLike": {0}, "RandomUniformLike": {0}, "EyeLike": {0},
    **{op: {1} for op in _REDUCE_OPS},
}
# Ops that legitimately compute on int64 *shape* values (Shape -> Gather -> Mul -> Concat ...).
_SHAPE_OPS = {
    "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Reshape", "Identity", "Cast", "Add", "Sub",
    "Mul", "Div", "Mod", "Neg", "Abs", "Max", "Min", "Sum", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "Where", "Not", "And", "Or", "Expand", "Tile", "Floor", "Ceil", "Round", "Sqrt",
    "Reciprocal", "Sign", "Clip", "Flatten", "Split", "Range", "ConstantOfShape", "ReduceProd",
    "ReduceSum", "ReduceMax", "ReduceMin", "Transpose", "Shape", "Size", "Constant", "Pow",
}


# Pure data movement: int64 passes through unchanged; whoever computes on it is judged instead.
_MOVEMENT_OPS = {
    "Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice", "Split",
    "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Where", "DepthToSpace", "SpaceToDepth",
}


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
        elif op in _SHAPE_OPS:
            slots = _SHAPE_SLOTS.get(op, set())
            data = [n for i, n in enumerate(node.input) if n and i not in slots]
            if all(n in derived for n in data):
                derived.update(o for o in node.output if o)
    return derived


def check_int64(model, ctx: GraphIndex | None = None) -> list[Finding]:
    """int64 is fine as shape plumbing; an error as graph I/O or when it reaches compute."""
    ctx = _index(model, ctx)
    out: list[Finding] = []
    for name in ctx.input_names:
        if ctx.types.get(name) == _INT64:
            out.append(Finding(ERROR, name, "graph input", "int64 graph input: the Jetson runtime binds "
                               "float32 tensors and TensorRT would need an int64 binding [project].",
                               "feed float32 (cast inside the model if an index is needed).", "int64"))
    for name in ctx.output_names:
        if ctx.types.get(name) == _INT64:
            out.append(Finding(ERROR, name, "graph output", "int64 graph output: usually shape or index "
                               "plumbing leaking out of the model [project].",
                               "return float32 maps/scores (Cast before the output).", "int64"))
    derived = _shape_derived(ctx)
    for node in ctx.nodes:
        if node.domain not in DEFAULT_DOMAINS:
            continue
        op = node.op_type
        slots = _SHAPE_SLOTS.get(op, set())
        if op in _MOVEMENT_OPS:
            continue
        bad = [(i, name) for i, name in enumerate(node.input)
               if name and i not in slots and ctx.types.get(name) == _INT64
               and not (op in _SHAPE_OPS and name in derived)]
        if not bad:
            continue
        names = ", ".join(f"'{n}' {_fmt_shape(ctx.shape(n))}" for _, n in bad)
        if op in _SHAPE_OPS:  # TensorRT has int64 kernels for these; int64 *data* is still wrong here
            what = (f"int64 data (not shape plumbing) flows into {op}: {names}; an int64 feature map "
                    "cannot be quantised and keeps the data path in int64 [project].")
        else:
            what = (f"int64 tensor {names} flows into input {bad[0][0]} of {op}, a compute op: TensorRT "
                    f"has no int64 {op} (int64 is only for shape/index plumbing).")
        out.append(Finding(ERROR, ctx.label(node), op, what,
                           "keep the data path float32: Cast to float where the int64 tensor is "
                           "produced (e.g. after ArgMax) or fix the export.", "int64"))
    return out


# --------------------------------------------------------------------------------------------
# 5. explicit quantisation (Q/DQ)
# --------------------------------------------------------------------------------------------
def _weight_axis(node, w_rank: int) -> int:
    """Output-channel axis of the weight input (input 1) of a Conv/ConvTranspose/Gemm/MatMul."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":  # [in, out/groups, k...]
        return 1
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return max(w_rank - 1, 0)  # MatMul: B is [..., K, N]


def _weight_source(ctx: GraphIndex, dq) -> str | None:
    """The constant a weight DQ dequantises (directly, or through Q(float initializer))."""
    src = _input(dq, 0)
    if ctx.is_constant(src):
        return src
    p = ctx.producer.get(src)
    if p is not None and p.op_type == "QuantizeLinear" and ctx.is_constant(_input(p, 0)):
        return _input(p, 0)
    return None


def check_qdq(model, ctx: GraphIndex | None = None) -> list[Finding]:
    """Symmetric int8 Q/DQ with positive scales, per-channel weights, per-tensor activations."""
    ctx = _index(model, ctx)
    out: list[Finding] = []

    def add(sev, node, msg, fix):
        out.append(Finding(sev, ctx.label(node), node.op_type, msg, fix, "qdq"))

    weight_dq: set[int] = set()
    for node in ctx.nodes:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and node.domain in DEFAULT_DOMAINS:
            p = ctx.producer.get(_input(node, 1))
            if p is not None and p.op_type == "DequantizeLinear" and _weight_source(ctx, p):
                weight_dq.add(id(p))

    qdq_nodes = [n for n in ctx.nodes
                 if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain in DEFAULT_DOMAINS]
    users: dict[str, int] = {}
    for n in qdq_nodes:
        for t in n.input[1:3]:
            if t:
                users[t] = users.get(t, 0) + 1
    reported: set[tuple[str, str]] = set()

    def once(kind: str, tensor: str) -> str | None:
        """None if (kind, tensor) was reported already, else a note on how many nodes share it."""
        if (kind, tensor) in reported:
            return None
        reported.add((kind, tensor))
        k = users.get(tensor, 1) - 1
        return f" (shared with {k} other Q/DQ node{'s' if k > 1 else ''})" if k > 0 else ""

    for node in qdq_nodes:
        is_dq = node.op_type == "DequantizeLinear"
        x, scale, zp = _input(node, 0), _input(node, 1), _input(node, 2)
        x_type = ctx.const_type(x) if is_dq else None
        zp_type = ctx.const_type(zp) if zp else None
        # ---- data type: TensorRT quantises to int8 (fp8/int4 too, but this project is INT8)
        if is_dq and (x_type == _INT32 or zp_type == _INT32):
            # [qdq-bias]
            consumer = ", ".join(ctx.label(c) for c, _ in ctx.consumers.get(node.output[0], []))
            add(ERROR, node, f"dequantises an int32 tensor ('{x}', a quantised bias"
                f"{' of ' + consumer if consumer else ''}); TensorRT DequantizeLinear accepts int8 "
                "input only (\"only activation types allowed as input to this layer\").",
                "keep biases float: quantize_static(..., extra_options={'QuantizeBias': False, ...}).")
            continue
        if zp:
            if zp_type == _UINT8 and (note := once("uint8", zp)) is not None:
                add(ERROR, node, f"zero point '{zp}'{note} is uint8; TensorRT quantises to int8 only "
                    "(symmetric, signed).",
                    "quantise with activation_type=QuantType.QInt8, weight_type=QuantType.QInt8.")
            elif zp_type not in (None, _INT8, _UINT8) and (note := once("dtype", zp)) is not None:
                add(ERROR, node, f"zero point '{zp}'{note} is {_dtype_name(zp_type)}; this project "
                    "builds INT8 engines [project].", "quantise to int8 (QuantType.QInt8).")
            v = ctx.const(zp)
            if v is None:
                add(WARNING, node, f"zero point '{zp}' is not a constant; cannot check it is 0.",
                    "store zero points as initializers.")
            elif np.any(v != 0) and (note := once("nonzero", zp)) is not None:
                nz = np.unique(v[v != 0])[:4].tolist()
                add(ERROR, node, f"zero point '{zp}'{note} is non-zero ({nz}); TensorRT supports "
                    "symmetric quantisation only (zero point must be all zeros).",
                    "quantize_static(..., extra_options={'ActivationSymmetric': True, "
                    "'WeightSymmetric': True}).")
        elif not is_dq:
            add(WARNING, node, "no zero point: ONNX (and onnxruntime) then quantise to uint8 while "
                "TensorRT uses int8, so calibration and engine disagree.",
                "add an int8 zero point of 0.")
        if is_dq and x_type == _UINT8 and zp_type != _UINT8:
            add(ERROR, node, f"dequantises uint8 tensor '{x}'; TensorRT quantises to int8 only.",
                "quantise to int8 (QuantType.QInt8).")
        # ---- scale
        s = ctx.const(scale) if scale else None
        if s is None:
            add(WARNING, node, f"scale '{scale}' is not a constant; cannot check it statically.",
                "store scales as initializers.")
            continue
        s = np.asarray(s, dtype=np.float64)
        if s.size == 0:
            add(ERROR, node, f"scale '{scale}' is empty.", "re-run calibration.")
            continue
        if not np.all(np.isfinite(s)):
            if (note := once("scale", scale)) is not None:
                add(ERROR, node, f"scale '{scale}'{note} has non-finite values; TensorRT needs "
                    "positive, finite scales.", "re-run calibration (a tensor saw inf/nan).")
        elif np.any(s == 0):
            if (note := once("scale", scale)) is not None:
                add(ERROR, node, f"scale '{scale}'{note} has zero entries (a Q/DQ pair on a "
                    "constant-zero tensor or an empty channel); the parser requires all scales > 0.",
                    "drop the Q/DQ on that tensor or clamp the scale to a small positive value.")
        elif np.any(s < 0):
            if (note := once("scale", scale)) is not None:
                add(ERROR, node, f"scale '{scale}'{note} has negative entries; scales must be "
                    "positive.", "re-run calibration.")
        # ---- per-channel vs per-tensor
        if s.size > 1:
            x_shape = ctx.shape(x)
            rank = len(x_shape) if x_shape is not None else None
            axis = int(_attr(node, "axis", 1))
            if rank:
                axis = axis + rank if axis < 0 else axis
            if s.ndim != 1:
                add(ERROR, node, f"scale '{scale}' has rank {s.ndim}; per-axis scales must be 1-D "
                    "(blocked quantisation is not used here).", "use a 1-D per-channel scale.")
            elif x_shape is not None and rank and 0 <= axis < rank and isinstance(x_shape[axis], int) \
                    and x_shape[axis] != s.size:
                add(ERROR, node, f"{s.size} scales but '{x}' has {x_shape[axis]} channels on axis "
                    f"{axis}; TensorRT requires one scale per channel.", "fix the quantisation axis.")
            if id(node) not in weight_dq and not ctx.is_constant(x) and _weight_source(ctx, node) is None:
                add(WARNING, node, f"per-channel ({s.size} scales) quantisation of activation '{x}'; "
                    "TensorRT expects per-tensor activations (per-axis Q/DQ is for weights).",
                    "use a scalar activation scale (quantize_static does this by default).")
        # ---- Q with nothing to dequantise it
        if not is_dq:
            cons = ctx.consumers.get(node.output[0], [])
            if not any(c.op_type == "DequantizeLinear" for c, _ in cons):
                add(WARNING, node, f"output '{node.output[0]}' is quantised but no DequantizeLinear "
                    "consumes it; TensorRT needs Q->DQ pairs to place INT8 layers.",
                    "remove the QuantizeLinear or add the matching DequantizeLinear.")

    # ---- weights of Conv/ConvTranspose/Gemm/MatMul: per-channel on the output-channel axis
    for node in ctx.nodes:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or node.domain not in DEFAULT_DOMAINS:
            continue
        w = _input(node, 1)
        p = ctx.producer.get(w)
        x_p = ctx.producer.get(_input(node, 0))
        x_is_dq = x_p is not None and x_p.op_type == "DequantizeLinear"
        if p is None or p.op_type != "DequantizeLinear":
            if x_is_dq and ctx.is_constant(w):
                add(WARNING, node, f"the input is quantised (DequantizeLinear) but weight '{w}' is not; "
                    "TensorRT will run this layer in float.", "quantise its weights (per-channel).")
            continue
        src = _weight_source(ctx, p)
        if src is None:
            continue
        w_shape = ctx.shape(src) or []
        scale = ctx.const(_input(p, 1))
        if scale is None:
            continue
        dq_label = ctx.label(p)
        want = _weight_axis(node, len(w_shape))
        one_channel = want < len(w_shape) and w_shape[want] == 1
        if np.asarray(scale).size == 1 and not one_channel:
            add(ERROR, node, f"weights '{src}' are quantised per-tensor (one scale, DQ '{dq_label}'); "
                "this project requires per-channel weights [project].",
                "quantize_static(..., per_channel=True)" + (
                    ", extra_options={'QDQOpTypePerChannelSupportToAxis': {'MatMul': 1}, ...}"
                    if node.op_type == "MatMul" else "") + ".")
            continue
        want = _weight_axis(node, len(w_shape))
        if want >= len(w_shape) or not isinstance(w_shape[want], int):
            continue
        axis = int(_attr(p, "axis", 1))
        axis = axis + len(w_shape) if axis < 0 else axis
        n = np.asarray(scale).size
        if np.asarray(scale).size > 1 and axis != want:
            what = {"Conv": "0 (output channels)", "ConvTranspose": "1 (weights are [in, out/groups, k...])",
                    "Gemm": f"{want} (output features with transB={_attr(node, 'transB', 0)})",
                    "MatMul": f"{want} (the N axis of B)"}[node.op_type]
            add(ERROR, node, f"weight DQ '{dq_label}' quantises axis {axis}; per-channel weights must use "
                f"axis {what}.", f"set axis={want} on the weight DequantizeLinear.")
        elif n != w_shape[want]:
            add(ERROR, node, f"weight DQ '{dq_label}' has {n} scales for {w_shape[want]} output channels.",
                "one scale per output channel.")
        if not x_is_dq:
            add(WARNING, node, f"weights '{src}' are quantised but input '{_input(node, 0)}' has no "
                "DequantizeLinear; TensorRT needs Q/DQ on both to run this layer in INT8.",
                "quantise the activation too (Q/DQ pair before the layer).")
    return out


# --------------------------------------------------------------------------------------------
# 6. opset
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# 7. external data
# --------------------------------------------------------------------------------------------
def check_external_data(model, ctx: GraphIndex | None = None) -> list[Finding]:
    """Bundles carry one self-contained .onnx file: no tensor may live in external data."""
    onnx = _onnx()
    out: list[Finding] = []

    def location(t) -> str:
        for e in t.external_data:
            if e.key == "location":
                return e.value
        return "?"

    def tensors() -> Iterable[tuple[object, str]]:
        for g in _iter_subgraphs(model.graph):
            for t in g.initializer:
                yield t, "initializer"
            for st in g.sparse_initializer:
                yield st.values, "sparse initializer"
            for n in g.node:
                for a in n.attribute:
                    if a.type == onnx.AttributeProto.TENSOR:
                        yield a.t, f"{n.op_type} attribute"

    for t, kind in tensors():
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.append(Finding(ERROR, t.name or "<unnamed tensor>", kind,
                               f"stored as external data in '{location(t)}'; bundles want a single "
                               "self-contained .onnx file [project].",
                               "onnx.save_model(onnx.load(path), out, save_as_external_data=False) "
                               "(models must stay < 2 GB).", "external-data"))
    return out


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
CHECKS: tuple[tuple[str, Callable], ...] = (
    ("opset", check_opset), ("external-data", check_external_data), ("ops", check_ops),
    ("attributes", check_attributes), ("shapes", check_dynamic_shapes), ("int64", check_int64),
    ("qdq", check_qdq),
)


def check_model(model, allow_dynamic: bool = False) -> list[Finding]:
    """All checks on a loaded onnx.ModelProto; errors first, then warnings, in graph order."""
    ctx = GraphIndex(model)
    findings: list[Finding] = []
    for name, fn in CHECKS:
        if fn is check_dynamic_shapes:
            findings.extend(fn(model, ctx, allow_dynamic=allow_dynamic))
        else:
            findings.extend(fn(model, ctx))
    return sorted(findings, key=lambda f: f.severity != ERROR)


def load_model(path: str | Path):
    """Load without external data (so a missing data file is reported, not a crash)."""
    onnx = _onnx()
    p = Path(path)
    if not p.is_file():
        raise ModelReadError(f"{p}: no such file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelReadError(f"{p}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelReadError(f"{p}: not an ONNX model (no IR version or no graph nodes)")
    return model


def check_file(path: str | Path, allow_dynamic: bool = False) -> list[Finding]:
    return check_model(load_model(path), allow_dynamic=allow_dynamic)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="ONNX model (fp32 export or INT8 Q/DQ)")
    p.add_argument("--allow-dynamic", action="store_true",
                   help="dynamic input dimensions are warnings instead of errors")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text")


_DESCRIPTION = (f"Static lint of an ONNX graph against the TensorRT {TRT_VERSION} ONNX parser "
                "(JetPack 6). Exit 0: no errors; 1: the graph would not build (or not as exported); "
                "2: unreadable input. The real proof is building the engine on the Jetson.")


def _cmd(a) -> int:
    try:
        findings = check_file(a.model, allow_dynamic=a.allow_dynamic)
    except ModelReadError as exc:
        if a.json:
            print(json.dumps({"model": str(a.model), "ok": False, "error": str(exc)}, indent=2))
        print(f"rgbd-convert check-trt: error: {exc}", file=sys.stderr)
        return 2
    errors = sum(f.severity == ERROR for f in findings)
    warnings = len(findings) - errors
    if a.json:
        print(json.dumps({"model": str(a.model), "tensorrt": TRT_VERSION, "ok": errors == 0,
                          "errors": errors, "warnings": warnings,
                          "findings": [asdict(f) for f in findings]}, indent=2))
    else:
        for f in findings:
            print(format_finding(f))
        verdict = (f"would not build on TensorRT {TRT_VERSION}" if errors
                   else f"no blocking problems found for TensorRT {TRT_VERSION} (static check)")
        print(f"{a.model}: {errors} error(s), {warnings} warning(s): {verdict}")
    return 1 if errors else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `check-trt` on an argparse subparsers object (sets `func`)."""
    p = subparsers.add_parser("check-trt", help="static TensorRT 10.3 compatibility lint of an ONNX model",
                              description=_DESCRIPTION)
    _add_arguments(p)
    p.set_defaults(func=_cmd)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rgbd-convert check-trt", description=_DESCRIPTION)
    _add_arguments(p)
    return _cmd(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
