"""Explicit INT8 quantisation: a Q/DQ ONNX graph that TensorRT builds as INT8.

TensorRT 10 deprecates implicit calibrators, so the precision decisions are
baked into the graph: symmetric int8 (zero point 0) activations per tensor and
weights per output channel, calibrated with ONNX Runtime on real normal
samples passed through the same edge preprocessing as training.

Only the convolutions of the teacher and the students are quantised. The
anomaly-map head (cosine distance, resize, the Gaussian smoothing
convolution, normalisation, fusion, max) stays FP32: it is cheap, and its
small differences are what the score is made of.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METHODS = ("minmax", "entropy", "percentile")
QUANT_OPS = ("Conv", "ConvTranspose")
# Nodes kept in FP32 by name. The fixed Gaussian smoothing is a Conv too. The rd teacher's stem
# and blocks 0-1 (all at stride 2; about 10 % of the graph's convolution MACs) are what INT8
# breaks: per-tensor int8 of their inputs and outputs is too coarse for features the students must
# match to within a small cosine distance (the INT8 sensitivity sections of
# benchmarks/RESULTS.md show where the error comes from).
KEEP_FP32_PATTERNS = ("/blur", "/teacher/_conv_stem", "/teacher/_blocks.0/", "/teacher/_blocks.1/")
# Named groups tried beside the default, alone and together, and kept only where that brings INT8
# closer to FP32 on normal validation data (calibrate.int8_pipeline). Each matches nodes of one
# family only. rd: the teacher's blocks 2-3 (stride 4-8, 9 % of the convolution MACs), the next
# features the students match; whether keeping them brings a given student closer to FP32 depends
# on the trained weights, so it is decided per graph. DBRN: the branch patch embeddings and
# reconstruction heads, the convolutions that read the input and write the reconstruction whose
# difference the score is made of (the Swin blocks between them are MatMul, which stays FP32
# anyway), and the discriminator's decoder (0.45 of the edge model's 2.5 GFLOPs), which writes the
# mask. Which of them drifts most differs between trained models, so each graph gets the set
# closest to FP32 on its own validation data, chosen without defects.
KEEP_FP32_OPTIONAL = {
    "teacher blocks 2-3": ("/teacher/_blocks.2/", "/teacher/_blocks.3/"),
    "branch embeddings and heads": ("/branches.",),
    "discriminator decoder": ("/disc/d2/", "/disc/d1/", "/disc/out"),
}


@dataclass
class Int8Result:
    path: Path
    method: str
    n_calibration: int
    quantized_nodes: int
    fp32_nodes: list


class FeedReader:
    """onnxruntime CalibrationDataReader over a list of input dicts."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0


def _reader(feeds):
    from onnxruntime.quantization import CalibrationDataReader

    class _R(FeedReader, CalibrationDataReader):
        pass

    return _R(feeds)


def fp32_nodes(model, keep_fp32: tuple[str, ...]) -> list[str]:
    """Names of the quantisable nodes of an onnx.ModelProto that the patterns keep in FP32."""
    return [n.name for n in model.graph.node if n.op_type in QUANT_OPS and any(p in n.name for p in keep_fp32)]


# ONNX Runtime's entropy calibrator defaults to a 128-bin histogram and 128 quantised bins, which
# leaves its KL search one candidate, the whole range: entropy was minmax under another name. 255
# quantised bins are the levels of symmetric int8, and 512 histogram bins let the search clip to
# anywhere from half the largest value to all of it, in steps of 1/256. Its pure-Python search then
# takes seconds a graph, where 2048 bins (clipping down to 1/8) would take minutes.
ENTROPY_BINS = 512
INT8_LEVELS = 255


@contextlib.contextmanager
def _quiet_ort():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT nags about its pre-processing; export() already simplified the graph
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its histogram calibrators print()
            yield
    finally:
        root.setLevel(level)


@dataclass
class Ranges:
    """Activation ranges of one FP32 graph, measured once and shared by every FP32 keep-set:
    which nodes stay FP32 changes what is quantised, not what the FP32 graph computes."""
    method: str
    tensors: object  # onnxruntime.quantization.calibrate.TensorsData
    n_calibration: int


def calibration_ranges(onnx_in, feeds: list[dict], method: str = "minmax", percentile: float = 99.999) -> Ranges:
    """Run the FP32 graph on the calibration feeds and measure symmetric activation ranges."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    if not feeds:
        raise ValueError("no calibration samples")
    options = {"symmetric": True}
    if method == "entropy":
        options.update(num_bins=ENTROPY_BINS, num_quantized_bins=INT8_LEVELS)
    elif method == "percentile":
        options.update(percentile=percentile)
    cal_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(prefix="rgbd-calib-") as tmp, _quiet_ort():
        calibrator = create_calibrator(Path(onnx_in), list(QUANT_OPS),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=cal_method, extra_options=options)
        calibrator.collect_data(_reader(feeds))
        tensors = calibrator.compute_data()
    return Ranges(method, tensors, len(feeds))


def quantize_int8(onnx_in, onnx_out, ranges: Ranges, keep_fp32: tuple[str, ...] = KEEP_FP32_PATTERNS) -> Int8Result:
    """Write the Q/DQ graph of onnx_in with the measured ranges, the keep_fp32 nodes left FP32."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    model = onnx.load(str(onnx_in))
    keep = fp32_nodes(model, keep_fp32)
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        # With symmetric ranges a ReLU cannot be folded into the quantiser's range:
        # keep every activation op so the graph computes what the FP32 one does.
        "QDQKeepRemovableActivations": True,
        # TensorRT rejects int32 bias DequantizeLinear nodes: biases stay float, TRT
        # quantises them itself when it fuses the Conv.
        "QuantizeBias": False,
    }
    # quantize_static takes measured ranges only through its calibration cache (ORT >= 1.27).
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise RuntimeError(f"INT8 calibration needs onnxruntime >= 1.27 on the workstation, found "
                           f"{onnxruntime.__version__}: pip install 'onnxruntime>=1.27'")
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rgbd-calib-") as tmp, _quiet_ort():
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges.tensors, cache)
        quantize_static(
            str(onnx_in), str(onnx_out), None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS), per_channel=True, reduce_range=False,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep,
            calibrate_method=ranges.tensors.calibration_method, extra_options=extra,
            calibration_cache_path=cache,
        )
    q = onnx.load(str(onnx_out))
    n_q = sum(1 for n in q.graph.node if n.op_type == "DequantizeLinear")
    return Int8Result(onnx_out, ranges.method, ranges.n_calibration, n_q, keep)


def map_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())
