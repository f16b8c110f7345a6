"""Real TensorRT build of a tiny conv net (FP32 and FP16). Runs only where the REAL tensorrt
imports (a Jetson with JetPack 6, or a CUDA workstation with TensorRT 10); skipped elsewhere.

    python -m pytest tests/test_trt_jetson.py -m jetson -v
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.jetson


@pytest.fixture
def real_trt():
    """The real tensorrt, never the fake from tests/fake_tensorrt."""
    mod = sys.modules.get("tensorrt")
    if mod is not None and getattr(mod, "FAKE", False):
        del sys.modules["tensorrt"]
    fake_dir = str(Path(__file__).parent / "fake_tensorrt")
    if fake_dir in sys.path:
        pytest.skip("tests/fake_tensorrt is on sys.path")
    importlib.invalidate_caches()
    trt = pytest.importorskip("tensorrt")
    if getattr(trt, "FAKE", False):
        pytest.skip("only the fake tensorrt is importable")
    return trt


def tiny_conv_onnx(path: Path) -> Path:
    """x[1,4,32,32] -> Conv 3x3 (8 ch) -> Relu -> Conv 1x1 (1 ch) -> y[1,1,32,32]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (8, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (1, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(1, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 32, 32])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="rgbd-edge-test")
    model.ir_version = 8  # TensorRT 10.3's parser predates the newest IR versions
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def write_valid_bundle_yaml(bundle: Path) -> None:
    """The builder reads bundles through edge.bundle.load_bundle, which wants the full schema;
    the graph itself is only built, never fed, so its tensor names need not match the mode's."""
    import hashlib

    import yaml

    from edge.bundle import load_bundle
    from edge.preprocess import PreprocessParams

    doc = {
        "schema_version": 1,
        "model": {"name": "tiny", "version": "1"},
        "input": {"image_size": 32},
        "preprocess": PreprocessParams(image_size=32).to_dict(),
        "modes": {"rgbd": {
            "onnx": "rgbd.onnx", "inputs": ["rgb", "depth", "foreground"], "outputs": ["anomaly_map", "score"],
            "threshold": {"score": 1.0, "pixel": 1.0, "target_frr": 0.01, "expected_frr": 0.01,
                          "n_validation": 2, "precision": "fp32"},
            "heatmap": {"low": 0.0, "high": 1.0}}},
        "provenance": {"created": "2026-01-01T00:00:00Z", "code_version": "test",
                       "training_data_fingerprint": "ab" * 32},
        "files": {"rgbd.onnx": hashlib.sha256((bundle / "rgbd.onnx").read_bytes()).hexdigest()},
    }
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    load_bundle(bundle)


def test_real_build_fp32_and_fp16(tmp_path, real_trt):
    from convert import trt_build as tb

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    tiny_conv_onnx(bundle / "rgbd.onnx")
    write_valid_bundle_yaml(bundle)

    gpu = tb.gpu_identity()
    runtime = real_trt.Runtime(real_trt.Logger(real_trt.Logger.WARNING))
    for fp16 in (False, True):
        (r,) = tb.build_bundle(bundle, fp16=fp16, workspace_mib=256)
        assert r.built and r.engine.is_file()
        meta = json.loads(r.sidecar.read_text())
        assert meta["tensorrt_version"] == real_trt.__version__
        assert meta["gpu_name"] == gpu.name and meta["flags"] == (["fp16"] if fp16 else [])
        engine = runtime.deserialize_cuda_engine(r.engine.read_bytes())
        assert engine is not None
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        assert names == {"x", "y"}
        assert tuple(engine.get_tensor_shape("y")) == (1, 1, 32, 32)
        # second call: cached
        (again,) = tb.build_bundle(bundle, fp16=fp16, workspace_mib=256)
        assert not again.built and again.engine == r.engine
    assert list((bundle / "engines").glob("timing-*.cache"))
