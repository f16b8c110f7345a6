"""INT8 calibration ranges on a tiny real ONNX graph: each method measures what it says."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime  # noqa: F401  (calibration runs the graph in it)
import pytest


def _conv_graph(path):
    """x (1x1x16x16) -> Conv 3x3 -> Relu -> Conv 1x1 -> y."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (1, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="/c1/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="/relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="/c2/Conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _feeds():
    """Unit-normal inputs with 1 % outliers twenty times wider: a long, thin tail worth clipping."""
    rng = np.random.default_rng(1)
    shape = (1, 1, 16, 16)
    return [{"x": np.where(rng.random(shape) < 0.01, rng.normal(0, 20, shape), rng.normal(0, 1, shape))
             .astype(np.float32)} for _ in range(32)]


def _x_range(ranges):
    lo, hi = ranges.tensors["x"].range_value
    return float(np.min(lo)), float(np.max(hi))  # per-tensor: one value, kept in an array


def test_minmax_spans_the_extremes_and_entropy_clips_the_tail(tmp_path):
    from calibrate.int8 import calibration_ranges

    graph, feeds = _conv_graph(tmp_path / "g.onnx"), _feeds()
    peak = max(float(np.abs(f["x"]).max()) for f in feeds)
    mm = _x_range(calibration_ranges(graph, feeds, "minmax"))
    ent = _x_range(calibration_ranges(graph, feeds, "entropy"))
    pct = _x_range(calibration_ranges(graph, feeds, "percentile"))
    assert mm == pytest.approx((-peak, peak))  # symmetric
    # ORT's default 128-bin entropy search had a single candidate, the whole range: entropy was minmax.
    assert max(abs(v) for v in ent) < 0.9 * peak
    assert 0 < pct[1] <= peak


def test_quantize_int8_writes_the_measured_ranges(tmp_path):
    from onnx import numpy_helper

    from calibrate.int8 import calibration_ranges, quantize_int8

    graph, feeds = _conv_graph(tmp_path / "g.onnx"), _feeds()
    scales = {}
    for method in ("minmax", "entropy"):
        ranges = calibration_ranges(graph, feeds, method)
        res = quantize_int8(graph, tmp_path / f"{method}.onnx", ranges, keep_fp32=())
        assert res.method == method and res.n_calibration == len(feeds) and res.quantized_nodes > 0
        m = onnx.load(str(res.path))
        scales[method] = float(next(numpy_helper.to_array(i) for i in m.graph.initializer if i.name == "x_scale"))
        assert scales[method] == pytest.approx(max(abs(v) for v in _x_range(ranges)) / 127, rel=1e-5)
    assert scales["entropy"] < scales["minmax"]


def test_unknown_method_and_empty_feeds_are_refused(tmp_path):
    from calibrate.int8 import calibration_ranges

    graph = _conv_graph(tmp_path / "g.onnx")
    with pytest.raises(ValueError, match="kl"):
        calibration_ranges(graph, _feeds(), "kl")
    with pytest.raises(ValueError, match="no calibration samples"):
        calibration_ranges(graph, [], "minmax")


def test_an_onnxruntime_without_the_calibration_cache_is_named(tmp_path, monkeypatch):
    import onnxruntime.quantization as q

    from calibrate.int8 import calibration_ranges, quantize_int8

    graph = _conv_graph(tmp_path / "g.onnx")
    ranges = calibration_ranges(graph, _feeds(), "minmax")

    def old_quantize_static(model_input, model_output, calibration_data_reader, **kw):  # ORT < 1.27's signature
        raise AssertionError("not to be called")

    monkeypatch.setattr(q, "quantize_static", old_quantize_static)
    with pytest.raises(RuntimeError, match="onnxruntime >= 1.27"):
        quantize_int8(graph, tmp_path / "q.onnx", ranges)
