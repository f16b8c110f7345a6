"""Rule tables of `rgbd-convert check-trt`: what TensorRT 10.3's ONNX parser accepts.

Data only (plus one formatter): the checks in the sibling modules read these tables.

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
"""
from __future__ import annotations

TRT_VERSION = "10.3"
MIN_OPSET, MAX_OPSET = 13, 20  # TensorRT 10.x parses opsets 9..20 [ops]; we require >= 13 (per-axis Q/DQ)
PROJECT_OPSET = 17             # what convert/ exports

ERROR, WARNING = "error", "warning"
DEFAULT_DOMAINS = ("", "ai.onnx")

# --------------------------------------------------------------------------------------------
# The table: default-domain ops TensorRT 10.3 parses, with the restrictions that matter for
# CNN graphs ("" = none we check). Source [ops] unless noted; check_attributes enforces the
# restrictions that have a code path (attributes.py, resize.py, conv_pool.py).
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
QOPERATOR = "onnxruntime QOperator-format op"
QOPERATOR_FIX = ("quantise with quant_format=QuantFormat.QDQ so TensorRT sees "
                  "QuantizeLinear/DequantizeLinear around float ops.")
UNSUPPORTED_OPS: dict[str, str] = {
    "AffineGrid": "", "Attention": "added in TensorRT 10.14", "Bernoulli": "", "BitShift": "",
    "BitwiseAnd": "", "BitwiseNot": "", "BitwiseOr": "", "BitwiseXor": "",
    "BlackmanWindow": "added in TensorRT 10.4", "HammingWindow": "added in TensorRT 10.4",
    "HannWindow": "added in TensorRT 10.4", "STFT": "added in TensorRT 10.5", "DFT": "",
    "CenterCropPad": "", "Col2Im": "", "Compress": "data-dependent output shape",
    "ConcatFromSequence": "sequence types are unsupported",
    "ConvInteger": QOPERATOR, "MatMulInteger": QOPERATOR, "QLinearConv": QOPERATOR,
    "QLinearMatMul": QOPERATOR,
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

MS_FIX = ("disable onnxruntime-specific fusions on export/quantisation: quantise the plain torch "
          "export with quant_format=QuantFormat.QDQ, never save an ORT-optimised model "
          "(SessionOptions.optimized_model_filepath with ORT_ENABLE_EXTENDED/ALL), and use "
          "quant_pre_process(..., skip_optimization=True) if you pre-process at all.")

# ONNX TensorProto data types we name.
FLOAT, UINT8, INT8, INT32, INT64 = 1, 2, 3, 6, 7
DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
               7: "int64", 9: "bool", 10: "float16", 11: "float64", 16: "bfloat16",
               17: "float8e4m3fn", 21: "uint4", 22: "int4"}


def dtype_name(t: int | None) -> str:
    return DTYPE_NAMES.get(t, f"type {t}") if t is not None else "unknown type"



# --------------------------------------------------------------------------------------------
# Op families the checks share
# --------------------------------------------------------------------------------------------
REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
              "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")

# Layers whose input 1 is a weight tensor: per-channel quantised on the output-channel axis.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

# [ops] Resize row + [import] DEFINE_BUILTIN_OP_IMPORTER(Resize)
RESIZE_CTM = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
# [import] Pad importer: constant/reflect/edge/wrap (wrap since 10.0)
PAD_MODES = ("constant", "reflect", "edge", "wrap")

# Input slots that carry shapes, indices or axes: int64 is their normal type.
SHAPE_SLOTS: dict[str, set[int]] = {
    "Reshape": {1}, "Slice": {1, 2, 3, 4}, "Unsqueeze": {1}, "Squeeze": {1}, "ConstantOfShape": {0},
    "Expand": {1}, "Resize": {1, 2, 3}, "Upsample": {1}, "Pad": {1, 3}, "Tile": {1}, "TopK": {1},
    "Gather": {1}, "GatherElements": {1}, "GatherND": {1}, "ScatterND": {1}, "ScatterElements": {1},
    "Scatter": {1}, "OneHot": {0, 1}, "CumSum": {1}, "Split": {1}, "Range": {0, 1, 2}, "Trilu": {1},
    "Shape": {0}, "Size": {0}, "CastLike": {1}, "Cast": {0}, "NonMaxSuppression": {2},
    "ReverseSequence": {1}, "RandomNormalLike": {0}, "RandomUniformLike": {0}, "EyeLike": {0},
    **{op: {1} for op in REDUCE_OPS},
}
# Ops that legitimately compute on int64 *shape* values (Shape -> Gather -> Mul -> Concat ...);
# the graph index also folds these when their inputs are known constants.
SHAPE_OPS = {
    "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Reshape", "Identity", "Cast", "Add", "Sub",
    "Mul", "Div", "Mod", "Neg", "Abs", "Max", "Min", "Sum", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "Where", "Not", "And", "Or", "Expand", "Tile", "Floor", "Ceil", "Round", "Sqrt",
    "Reciprocal", "Sign", "Clip", "Flatten", "Split", "Range", "ConstantOfShape", "ReduceProd",
    "ReduceSum", "ReduceMax", "ReduceMin", "Transpose", "Shape", "Size", "Constant", "Pow",
}
# Pure data movement: int64 passes through unchanged; whoever computes on it is judged instead.
MOVEMENT_OPS = {
    "Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice", "Split",
    "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Where", "DepthToSpace", "SpaceToDepth",
}
