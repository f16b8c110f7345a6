"""edge.engines: ONNX Runtime (real sessions) and TensorRT (fake tensorrt + fake CUDA) backends.

Every test builds a tiny VALID bundle (docs/bundle.md) from small ONNX graphs made with
onnx.helper. The graphs compute a deterministic function that numpy reproduces:

    anomaly_map = (channel-mean(rgb) + channel-mean(depth)) * foreground   (the mode's inputs only)
    score       = max(anomaly_map)

and the INT8 variants put QuantizeLinear/DequantizeLinear (scale 1/16, int8) on rgb and depth.
The fake tensorrt (tests/fake_tensorrt) computes the same function on the fake GPU of
tests/fake_pycuda (fake pycuda, fake cuda-python, shared fake device memory). The fakes are
put on sys.path only inside the tests that use them and removed from sys.modules afterwards.

The last test (marked jetson) builds and runs a real engine; it is skipped unless the REAL
tensorrt and pycuda import.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from edge.bundle import BundleError, load_bundle
from edge.engines import Engine, EngineError, choose_precision, load_engines, resolve_backend
from edge.engines import onnxruntime_engine as ort_engine
from edge.engines import tensorrt_engine as trt_engine
from edge.engines import trt_cache
from edge.preprocess import PreprocessParams
from edge.results import ModelInfo

S = 32
SCALE = 1.0 / 16
MODE_INPUTS = {"rgbd": ("rgb", "depth", "foreground"), "rgb": ("rgb",), "depth": ("depth", "foreground")}
SHAPES = {"rgb": (1, 3, S, S), "depth": (1, 3, S, S), "foreground": (1, 1, S, S)}
TESTS = Path(__file__).parent
FAKE_TRT_DIR = TESTS / "fake_tensorrt"
FAKE_CUDA_DIR = TESTS / "fake_pycuda"
FAKE_MODULES = ("tensorrt", "pycuda", "pycuda.driver", "pycuda.autoinit", "cuda", "cuda.bindings",
                "cuda.bindings.runtime", "cuda.cudart", "fake_cuda_device")


# --------------------------------------------------------------------------- graphs and bundles


def make_graph(path: Path, mode: str, size: int = S, int8: bool = False) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    names = MODE_INPUTS[mode]
    nodes, inits, means = [], [], []
    if int8:
        inits += [numpy_helper.from_array(np.array(SCALE, np.float32), "q_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "q_zero")]
    for n in names:
        if n == "foreground":
            continue
        src = n
        if int8:
            nodes += [helper.make_node("QuantizeLinear", [n, "q_scale", "q_zero"], [f"{n}_q"]),
                      helper.make_node("DequantizeLinear", [f"{n}_q", "q_scale", "q_zero"], [f"{n}_dq"])]
            src = f"{n}_dq"
        nodes.append(helper.make_node("ReduceMean", [src], [f"{n}_mean"], axes=[1], keepdims=1))
        means.append(f"{n}_mean")
    cur = means[0]
    if len(means) == 2:
        nodes.append(helper.make_node("Add", means, ["mean_sum"]))
        cur = "mean_sum"
    if "foreground" in names:
        nodes.append(helper.make_node("Mul", [cur, "foreground"], ["anomaly_map"]))
    else:
        nodes.append(helper.make_node("Identity", [cur], ["anomaly_map"]))
    nodes.append(helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0))
    shapes = {"rgb": [1, 3, size, size], "depth": [1, 3, size, size], "foreground": [1, 1, size, size]}
    graph = helper.make_graph(
        nodes, f"tiny_{mode}",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in names],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, size, size]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="rgbd-edge-test")
    model.ir_version = 8  # TensorRT 10.3's parser predates the newest IR versions
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def make_bundle(root: Path, modes=("rgbd", "rgb", "depth"), int8=("rgbd",), size: int = S,
                graph_size: dict | None = None) -> Path:
    """A valid bundle (docs/bundle.md) with real graphs; INT8 Q/DQ graphs for the modes in ``int8``."""
    root.mkdir(parents=True, exist_ok=True)
    table, files = {}, {}
    for m in modes:
        entry = {"onnx": f"{m}.onnx"}
        make_graph(root / f"{m}.onnx", m, (graph_size or {}).get(m, size))
        if m in int8:
            entry["onnx_int8"] = f"{m}.int8.onnx"
            make_graph(root / f"{m}.int8.onnx", m, (graph_size or {}).get(m, size), int8=True)
        for name in (entry["onnx"], entry.get("onnx_int8")):
            if name:
                files[name] = hashlib.sha256((root / name).read_bytes()).hexdigest()
        entry.update(inputs=list(MODE_INPUTS[m]), outputs=["anomaly_map", "score"],
                     threshold={"score": 1.5, "pixel": 1.0, "target_frr": 0.01, "expected_frr": 0.01,
                                "n_validation": 10, "precision": "int8" if m in int8 else "fp32"},
                     heatmap={"low": 0.0, "high": 2.0})
        table[m] = entry
    doc = {
        "schema_version": 1,
        "model": {"name": "tiny", "version": "2026.01.01-test", "family": "test"},
        "input": {"image_size": size, "layout": "NCHW", "dtype": "float32"},
        "preprocess": PreprocessParams(image_size=size).to_dict(),
        "modes": table,
        "engines": {"dir": "engines"},
        "provenance": {"created": "2026-01-01T00:00:00Z", "code_version": "test",
                       "training_data_fingerprint": "cd" * 32},
        "files": files,
    }
    (root / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def make_feed(mode: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for n in MODE_INPUTS[mode]:
        if n == "foreground":
            feed[n] = (rng.random(SHAPES[n]) > 0.3).astype(np.float32)
        else:
            feed[n] = rng.normal(0.0, 1.5, SHAPES[n]).astype(np.float32)
    return feed


def quantize(x: np.ndarray) -> np.ndarray:
    """QuantizeLinear + DequantizeLinear, int8, scale 1/16, zero point 0 (round half to even)."""
    return (np.clip(np.round(x / SCALE), -128, 127) * SCALE).astype(np.float32)


def reference(feed: dict[str, np.ndarray], int8: bool = False) -> tuple[np.ndarray, float]:
    q = quantize if int8 else (lambda x: x)
    amap = sum(q(v).mean(axis=1, dtype=np.float64) for k, v in feed.items() if k != "foreground")
    if "foreground" in feed:
        amap = amap * feed["foreground"][:, 0]
    amap = amap[0].astype(np.float32)
    return amap, float(amap.max())


def assert_matches(result, want, atol=1e-5):
    amap, score = result
    assert isinstance(amap, np.ndarray) and amap.dtype == np.float32 and amap.shape == (S, S)
    assert isinstance(score, float)
    np.testing.assert_allclose(amap, want[0], rtol=1e-5, atol=atol)
    assert score == pytest.approx(want[1], rel=1e-5, abs=atol)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    return make_bundle(tmp_path / "bundle")


@pytest.fixture
def no_trt(monkeypatch):
    """`import tensorrt` raises ImportError."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def close_all(engines):
    for e in engines.values():
        e.close()


# --------------------------------------------------------------------------- ONNX Runtime


def test_ort_runs_every_mode_like_numpy(bundle_dir):
    bundle = load_bundle(bundle_dir)
    engines = load_engines(bundle, backend="onnxruntime", precision="fp32", intra_op_num_threads=1)
    try:
        assert list(engines) == ["rgbd", "rgb", "depth"]
        for mode, e in engines.items():
            assert isinstance(e, Engine)
            assert e.mode == mode and e.inputs == MODE_INPUTS[mode]
            assert e.info == ModelInfo(name="tiny", version="2026.01.01-test", sha256=sha(bundle_dir / f"{mode}.onnx"),
                                       precision="fp32", engine="onnxruntime")
            assert e.providers == ["CPUExecutionProvider"]  # no CUDA EP in this onnxruntime build
            for seed in (0, 1):
                feed = make_feed(mode, seed)
                assert_matches(e.run(feed), reference(feed))
    finally:
        close_all(engines)


def test_ort_returned_map_is_the_callers(bundle_dir):
    (e,) = load_engines(bundle_dir, backend="onnxruntime", precision="fp32", modes=["rgb"]).values()
    a1, _ = e.run(make_feed("rgb", 0))
    keep = a1.copy()
    e.run(make_feed("rgb", 1))
    np.testing.assert_array_equal(a1, keep)
    e.close()


def test_ort_int8_uses_qdq_graph_and_falls_back_per_mode(bundle_dir, caplog):
    with caplog.at_level(logging.WARNING):
        engines = load_engines(bundle_dir, backend="onnxruntime")  # precision int8 is the default
    try:
        rgbd, rgb = engines["rgbd"], engines["rgb"]
        assert rgbd.info.precision == "int8" and rgbd.info.sha256 == sha(bundle_dir / "rgbd.int8.onnx")
        feed = make_feed("rgbd")
        assert_matches(rgbd.run(feed), reference(feed, int8=True))
        assert not np.allclose(rgbd.run(feed)[0], reference(feed)[0], atol=1e-4)  # it is the Q/DQ graph
        # rgb and depth ship no INT8 graph: fp32, each with its own warning
        assert rgb.info.precision == "fp32" and rgb.info.sha256 == sha(bundle_dir / "rgb.onnx")
        assert engines["depth"].info.precision == "fp32"
        f = make_feed("rgb")
        assert_matches(rgb.run(f), reference(f))
    finally:
        close_all(engines)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for m in ("rgb", "depth"):
        assert any(f"mode '{m}': precision int8 asked" in w and "fp32 graph" in w for w in warnings), warnings
    assert not any("mode 'rgbd'" in w for w in warnings)


def test_ort_fp16_runs_fp32_with_warning(bundle_dir, caplog):
    with caplog.at_level(logging.WARNING):
        engines = load_engines(bundle_dir, backend="onnxruntime", precision="fp16", modes=["rgb"])
    assert engines["rgb"].info.precision == "fp32"
    assert "mode 'rgb': precision fp16 is TensorRT-only" in caplog.text
    close_all(engines)


def test_threshold_calibrated_on_other_graph_warns(bundle_dir, caplog):
    with caplog.at_level(logging.WARNING):
        engines = load_engines(bundle_dir, backend="onnxruntime", precision="fp32", modes=["rgbd"])
    assert "threshold was computed with the int8 graph, but the fp32 graph runs" in caplog.text
    close_all(engines)


def test_choose_precision_table(bundle_dir):
    b = load_bundle(bundle_dir)
    rgbd, rgb = b.modes["rgbd"], b.modes["rgb"]
    got = {(m.name, backend, p): (c.graph, c.engine)
           for m in (rgbd, rgb) for backend in ("onnxruntime", "tensorrt") for p in ("int8", "fp32", "fp16")
           for c in [choose_precision(m, backend, p)]}
    assert got[("rgbd", "tensorrt", "int8")] == ("int8", "int8")
    assert got[("rgbd", "onnxruntime", "int8")] == ("int8", "int8")
    assert got[("rgb", "tensorrt", "int8")] == ("fp32", "fp32")
    assert got[("rgb", "tensorrt", "fp16")] == ("fp32", "fp16")
    assert got[("rgb", "onnxruntime", "fp16")] == ("fp32", "fp32")
    assert got[("rgbd", "tensorrt", "fp32")] == ("fp32", "fp32")
    with pytest.raises(EngineError, match="unknown precision 'bf16'"):
        choose_precision(rgb, "tensorrt", "bf16")


@pytest.mark.parametrize("case,match,name", [
    (lambda f: f.pop("depth"), r"missing input 'depth' \(mode 'rgbd' takes rgb, depth, foreground\)", "depth"),
    (lambda f: f.update(thermal=np.zeros((1, 1, S, S), np.float32)), r"unexpected input 'thermal'", "thermal"),
    (lambda f: f.update(rgb=np.zeros((1, 3, 64, 64), np.float32)),
     r"input 'rgb' has shape \(1, 3, 64, 64\), expected \(1, 3, 32, 32\)", "rgb"),
    (lambda f: f.update(foreground=np.zeros((1, 3, S, S), np.float32)),
     r"input 'foreground' has shape \(1, 3, 32, 32\), expected \(1, 1, 32, 32\)", "foreground"),
    (lambda f: f.update(depth=np.zeros((3, S, S), np.float32)), r"input 'depth' has shape \(3, 32, 32\)", "depth"),
    (lambda f: f.update(rgb=f["rgb"].astype(np.float64)), r"input 'rgb' has dtype float64, expected float32", "rgb"),
    (lambda f: f.update(rgb=f["rgb"].tolist()), r"input 'rgb' must be a numpy array, got list", "rgb"),
])
def test_run_validates_feed(bundle_dir, case, match, name):
    (e,) = load_engines(bundle_dir, backend="onnxruntime", precision="fp32", modes=["rgbd"]).values()
    feed = make_feed("rgbd")
    case(feed)
    with pytest.raises(EngineError, match=match) as ei:
        e.run(feed)
    assert ei.value.input == name and ei.value.mode == "rgbd"
    assert str(ei.value).startswith("rgbd engine: ")
    with pytest.raises(EngineError, match="feed must be a dict"):
        e.run([make_feed("rgbd")["rgb"]])
    # a non-contiguous view of the right shape is fine
    ok = make_feed("rgbd")
    ok["rgb"] = np.ascontiguousarray(ok["rgb"].transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not ok["rgb"].flags.c_contiguous
    assert_matches(e.run(ok), reference(ok))
    e.close()


def test_backend_auto_picks_onnxruntime_without_tensorrt(bundle_dir, no_trt, caplog):
    with caplog.at_level(logging.INFO, logger="edge.engines"):
        assert resolve_backend("auto") == "onnxruntime"
        engines = load_engines(bundle_dir)  # backend auto
    assert {e.info.engine for e in engines.values()} == {"onnxruntime"}
    assert "backend auto: TensorRT is not importable" in caplog.text and "using ONNX Runtime" in caplog.text
    close_all(engines)


def test_bad_arguments(bundle_dir):
    with pytest.raises(EngineError, match="unknown backend 'trt'"):
        load_engines(bundle_dir, backend="trt")
    with pytest.raises(EngineError, match="unknown precision 'int4'"):
        load_engines(bundle_dir, backend="onnxruntime", precision="int4")
    with pytest.raises(EngineError, match=r"mode\(s\) thermal not in this bundle \(available: rgbd, rgb, depth\)"):
        load_engines(bundle_dir, backend="onnxruntime", modes=["rgb", "thermal"])
    with pytest.raises(BundleError, match="bundle directory not found"):
        load_engines(bundle_dir / "nope", backend="onnxruntime")
    with pytest.raises(EngineError, match="intra_op_num_threads must be >= 0"):
        load_engines(bundle_dir, backend="onnxruntime", modes=["rgb"], intra_op_num_threads=-1)


def test_modes_subset_in_given_order_and_threads(bundle_dir):
    engines = load_engines(bundle_dir, backend="onnxruntime", modes=["depth", "rgb"], intra_op_num_threads=1)
    assert list(engines) == ["depth", "rgb"]
    assert engines["rgb"]._session.get_session_options().intra_op_num_threads == 1
    close_all(engines)


def test_ort_refuses_graph_that_differs_from_bundle_digest(bundle_dir):
    bundle = load_bundle(bundle_dir)  # verified now...
    make_graph(bundle_dir / "rgb.onnx", "rgb", int8=True)  # ...replaced afterwards
    with pytest.raises(EngineError, match=r"files\.rgb\.onnx: sha256 mismatch") as ei:
        load_engines(bundle, backend="onnxruntime", precision="fp32", modes=["rgb"])
    assert str(bundle.manifest) in str(ei.value)
    # also when the bundle was loaded without hashing
    unverified = load_bundle(bundle_dir, verify_hashes=False)
    with pytest.raises(EngineError, match="sha256 mismatch"):
        load_engines(unverified, backend="onnxruntime", precision="fp32", modes=["rgb"])


def test_graph_that_disagrees_with_bundle_is_rejected(tmp_path):
    b = make_bundle(tmp_path / "b", modes=("rgbd", "rgb"), int8=(), graph_size={"rgb": 64})
    closed = []
    orig = ort_engine.OnnxRuntimeEngine.close

    def spy(self):
        closed.append(self.mode)
        orig(self)

    mp = pytest.MonkeyPatch()
    mp.setattr(ort_engine.OnnxRuntimeEngine, "close", spy)
    try:
        with pytest.raises(EngineError, match=r"rgb\.onnx: input 'rgb' is 64x64, but the bundle's input\.image_size "
                                              r"is 32") as ei:
            load_engines(b, backend="onnxruntime", precision="fp32")
    finally:
        mp.undo()
    assert ei.value.mode == "rgb" and ei.value.input == "rgb"
    assert closed == ["rgbd"]  # the engine loaded before the failure was closed


def test_close_is_idempotent_and_final(bundle_dir):
    (e,) = load_engines(bundle_dir, backend="onnxruntime", modes=["rgb"]).values()
    e.close()
    e.close()
    with pytest.raises(EngineError, match=r"run\(\) after close\(\)"):
        e.run(make_feed("rgb"))


def test_choose_providers():
    assert ort_engine.choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert ort_engine.choose_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                        "CPUExecutionProvider"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_edge_engines_import_nothing_heavy_and_never_convert():
    code = ("import sys, edge.engines, edge.engines.base, edge.engines.trt_cache, edge.engines.onnxruntime_engine, "
            "edge.engines.tensorrt_engine\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('convert', 'calibrate', 'torch', 'onnxruntime', 'onnx', 'tensorrt', 'pycuda', 'cuda'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=TESTS.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    for f in (TESTS.parent / "edge" / "engines").glob("*.py"):
        text = f.read_text()
        assert "import convert" not in text and "from convert" not in text, f


# --------------------------------------------------------------------------- TensorRT (fakes)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Fake tensorrt + fake pycuda + fake cuda-python, first on sys.path; gone afterwards."""
    saved = {m: sys.modules.pop(m) for m in FAKE_MODULES if m in sys.modules}
    monkeypatch.syspath_prepend(str(FAKE_CUDA_DIR))
    monkeypatch.syspath_prepend(str(FAKE_TRT_DIR))
    monkeypatch.setattr(trt_cache, "DEVICE_TREE_MODEL", str(tmp_path / "no-device-tree-model"))
    importlib.invalidate_caches()
    try:
        trt = importlib.import_module("tensorrt")
        dev = importlib.import_module("fake_cuda_device")
        assert getattr(trt, "FAKE", False), "imported a real tensorrt instead of the fake"
        trt.reset()
        dev.reset()
        yield SimpleNamespace(trt=trt, dev=dev)
    finally:
        for m in FAKE_MODULES:
            sys.modules.pop(m, None)
        sys.modules.update(saved)


def trt_calls(fake, name):
    return fake.trt.calls(name)


def test_trt_builds_missing_engine_then_uses_cache(bundle_dir, fake_gpu, caplog):
    cache = bundle_dir / "engines"
    with caplog.at_level(logging.INFO):
        engines = load_engines(bundle_dir, backend="tensorrt", precision="fp32", cuda="pycuda")
    try:
        builds = trt_calls(fake_gpu, "build_serialized_network")
        assert [b["onnx_sha256"] for b in builds] == [sha(bundle_dir / f"{m}.onnx") for m in ("rgbd", "rgb", "depth")]
        assert all(b["flags"] == [] for b in builds)
        for mode, e in engines.items():
            assert e.info == ModelInfo("tiny", "2026.01.01-test", sha(bundle_dir / f"{mode}.onnx"), "fp32", "tensorrt")
            assert e.built and e.engine_file.parent == cache and e.cuda_api == "pycuda"
            meta = json.loads(trt_cache.sidecar_path(e.engine_file).read_text())
            assert meta["onnx_sha256"] == e.info.sha256 and meta["tensorrt_version"] == "10.3.0"
            assert meta["gpu_name"] == "Orin (fake)" and meta["compute_capability"] == "8.7"
            assert meta["built_by"] == "rgbd-edge runtime"
            for seed in (0, 1):
                feed = make_feed(mode, seed)
                assert_matches(e.run(feed), reference(feed))
        building = [r for r in caplog.records if "building fp32 engine" in r.getMessage()]
        assert len(building) == 3 and all(r.levelno == logging.WARNING for r in building)
        assert "takes minutes on a Jetson" in building[0].getMessage()
        files = sorted(p.name for p in cache.glob("*.engine"))
    finally:
        close_all(engines)

    fake_gpu.trt.CALLS.clear()
    again = load_engines(bundle_dir, backend="tensorrt", precision="fp32", cuda="pycuda")
    try:
        assert trt_calls(fake_gpu, "build_serialized_network") == []
        assert len(trt_calls(fake_gpu, "deserialize_cuda_engine")) == 3
        assert sorted(e.engine_file.name for e in again.values()) == files
        assert not any(e.built for e in again.values())
        feed = make_feed("rgbd", 5)
        assert_matches(again["rgbd"].run(feed), reference(feed))
    finally:
        close_all(again)


def test_trt_without_build_missing_raises_and_builds_nothing(bundle_dir, fake_gpu):
    with pytest.raises(trt_cache.EngineNotCachedError, match=r"no cached fp32 engine for mode 'rgbd'.*rgbd-convert "
                                                              r"build") as ei:
        load_engines(bundle_dir, backend="tensorrt", precision="fp32", build_missing=False)
    assert isinstance(ei.value, EngineError)
    assert trt_calls(fake_gpu, "build_serialized_network") == []
    assert fake_gpu.dev.allocated() == {}


def test_trt_version_change_rebuilds_and_never_reuses(bundle_dir, fake_gpu, monkeypatch):
    close_all(load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgb"]))
    cache = bundle_dir / "engines"
    (old,) = cache.glob("rgb-fp32-*.engine")
    monkeypatch.setattr(fake_gpu.trt, "__version__", "10.3.1")
    fake_gpu.trt.CALLS.clear()
    engines = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgb"])
    e = engines["rgb"]
    assert e.built and e.engine_file != old and old.exists()
    assert [c["version"] for c in trt_calls(fake_gpu, "deserialize_cuda_engine")] == ["10.3.1"]
    feed = make_feed("rgb")
    assert_matches(e.run(feed), reference(feed))
    close_all(engines)

    # An engine for 10.3.0 planted under the 10.3.1 name, with its (10.3.0) sidecar: rejected, rebuilt.
    new = e.engine_file
    new.write_bytes(old.read_bytes())
    trt_cache.sidecar_path(new).write_text(trt_cache.sidecar_path(old).read_text())
    fake_gpu.trt.CALLS.clear()
    engines = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgb"])
    assert engines["rgb"].built and len(trt_calls(fake_gpu, "build_serialized_network")) == 1
    assert [c["version"] for c in trt_calls(fake_gpu, "deserialize_cuda_engine")] == ["10.3.1"]
    close_all(engines)


def test_gpu_change_rebuilds(bundle_dir, fake_gpu):
    close_all(load_engines(bundle_dir, backend="tensorrt", precision="fp16", modes=["depth"]))
    fake_gpu.dev.GPU.update(name="Orin (fake) AGX")
    fake_gpu.trt.CALLS.clear()
    engines = load_engines(bundle_dir, backend="tensorrt", precision="fp16", modes=["depth"])
    assert engines["depth"].built and len(trt_calls(fake_gpu, "build_serialized_network")) == 1
    assert json.loads(trt_cache.sidecar_path(engines["depth"].engine_file).read_text())["gpu_name"] == "Orin (fake) AGX"
    close_all(engines)
    fake_gpu.dev.GPU.update(cc=(8, 6))
    engines = load_engines(bundle_dir, backend="tensorrt", precision="fp16", modes=["depth"])
    assert engines["depth"].built and len(list((bundle_dir / "engines").glob("depth-fp16-*.engine"))) == 3
    close_all(engines)


def test_trt_sets_every_tensor_address_before_execute(bundle_dir, fake_gpu):
    (e,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgbd"], cuda="pycuda").values()
    dev = fake_gpu.dev
    io = ["rgb", "depth", "foreground", "anomaly_map", "score"]
    dev.CALLS.clear()
    fake_gpu.trt.CALLS.clear()
    feed = make_feed("rgbd")
    assert_matches(e.run(feed), reference(feed))
    e.run(make_feed("rgbd", 1))
    names = [n for n, _ in fake_gpu.trt.CALLS]
    assert names.count("execute_async_v3") == 2
    (first, _) = trt_calls(fake_gpu, "execute_async_v3")
    assert sorted(first["addresses"]) == sorted(io)  # every IO tensor has its device address
    assert set(first["addresses"].values()) <= set(dev.allocated())
    assert len(set(first["addresses"].values())) == 5
    # order on the device: inputs copied in, execute, outputs copied out, stream synchronized
    seq = [n for n, _ in dev.CALLS if n in ("memcpy_htod", "execute_async_v3", "memcpy_dtoh", "stream_synchronize")]
    assert seq[:6] == ["memcpy_htod"] * 3 + ["execute_async_v3"] + ["memcpy_dtoh"] * 2
    assert seq[6] == "stream_synchronize"
    streams = {kw["stream"] for n, kw in dev.CALLS if n in ("memcpy_htod", "memcpy_dtoh", "execute_async_v3")}
    assert len(streams) == 1 and dev.stream_exists(streams.pop())
    e.close()
    assert dev.allocated() == {}


def test_trt_addresses_set_at_load_time_before_any_execute(bundle_dir, fake_gpu):
    (e,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["depth"]).values()
    order = [(n, kw.get("name")) for n, kw in fake_gpu.trt.CALLS if n in ("set_tensor_address", "execute_async_v3")]
    assert sorted(name for _, name in order) == ["anomaly_map", "depth", "foreground", "score"]
    e.run(make_feed("depth"))
    order = [n for n, _ in fake_gpu.trt.CALLS if n in ("set_tensor_address", "execute_async_v3")]
    assert order == ["set_tensor_address"] * 4 + ["execute_async_v3"]
    e.close()


def test_pycuda_context_pushed_and_popped_runs_from_another_thread(bundle_dir, fake_gpu):
    dev = fake_gpu.dev
    (e,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgb"], cuda="pycuda").values()
    assert dev.stack_depth() == 0  # nothing left pushed on the loading thread
    assert "pycuda.autoinit" not in sys.modules
    assert dev.calls("retain_primary_context") == [{"ordinal": 0}]
    feed, out, errors = make_feed("rgb"), {}, []

    def worker():
        try:
            out["r"] = e.run(feed)
            out["depth"] = dev.stack_depth()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    dev.CALLS.clear()
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors, errors
    assert_matches(out["r"], reference(feed))
    assert out["depth"] == 0
    pushes = [kw["thread"] for n, kw in dev.CALLS if n == "ctx_push"]
    pops = [kw["thread"] for n, kw in dev.CALLS if n == "ctx_pop"]
    assert pushes == pops == [t.ident]  # pushed and popped on the inference thread
    e.close()
    assert dev.calls("detach") == [{"primary": True}]
    assert dev.allocated() == {}


def test_execute_without_pushed_context_fails_in_the_fake(bundle_dir, fake_gpu):
    """The fake is strict: without the push, execute_async_v3 returns False -> EngineError."""
    (e,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgb"], cuda="pycuda").values()
    from contextlib import nullcontext

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(e._cuda, "activate", lambda: nullcontext())
        with pytest.raises(EngineError, match="invalid device context|execute_async_v3 failed"):
            e.run(make_feed("rgb"))
    e.close()


def test_cuda_python_backend(bundle_dir, fake_gpu):
    engines = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgbd", "depth"],
                           cuda="cuda-python")
    dev = fake_gpu.dev
    try:
        assert {e.cuda_api for e in engines.values()} == {"cuda-python"}
        assert "pycuda.driver" not in sys.modules
        for mode, e in engines.items():
            feed = make_feed(mode, 3)
            assert_matches(e.run(feed), reference(feed))
        assert dev.calls("set_device")  # the runtime API binds the device on the calling thread
    finally:
        close_all(engines)
    assert dev.allocated() == {}
    assert len(dev.calls("cudaMallocHost")) == len(dev.calls("cudaFreeHost")) == 9  # 5 + 4 IO tensors


def test_cuda_auto_selection(bundle_dir, fake_gpu, caplog):
    api = trt_engine.open_cuda("auto")
    assert api.name == "pycuda"
    api.close()
    # (a local MonkeyPatch: undone before the fixture removes the fakes from sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "pycuda", None)
        mp.setitem(sys.modules, "pycuda.driver", None)
        with caplog.at_level(logging.INFO):
            (e,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgb"]).values()
        assert e.cuda_api == "cuda-python" and "device buffers through cuda-python" in caplog.text
        e.close()
        for m in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
            mp.setitem(sys.modules, m, None)
        with pytest.raises(EngineError, match=r"needs pycuda or cuda-python.*neither imports"):
            load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgb"])
    with pytest.raises(EngineError, match="unknown cuda API 'cupy'"):
        trt_engine.open_cuda("cupy")


def test_trt_precisions(bundle_dir, fake_gpu, caplog):
    with caplog.at_level(logging.WARNING):
        engines = load_engines(bundle_dir, backend="tensorrt", modes=["rgbd", "rgb"])  # int8 default
    try:
        by_sha = {b["onnx_sha256"]: b["flags"] for b in trt_calls(fake_gpu, "build_serialized_network")}
        assert by_sha == {sha(bundle_dir / "rgbd.int8.onnx"): ["INT8"], sha(bundle_dir / "rgb.onnx"): []}
        assert engines["rgbd"].info.precision == "int8" and engines["rgbd"].engine_file.name.startswith("rgbd-int8-")
        assert engines["rgbd"].info.sha256 == sha(bundle_dir / "rgbd.int8.onnx")
        assert engines["rgb"].info.precision == "fp32"
        meta = json.loads(trt_cache.sidecar_path(engines["rgbd"].engine_file).read_text())
        assert meta["onnx_int8_variant"] is True and meta["onnx_file"] == "rgbd.int8.onnx"
        assert "mode 'rgb': precision int8 asked" in caplog.text
    finally:
        close_all(engines)
    fake_gpu.trt.CALLS.clear()
    engines = load_engines(bundle_dir, backend="tensorrt", precision="fp16", modes=["rgb"])
    assert engines["rgb"].info.precision == "fp16"
    assert [b["flags"] for b in trt_calls(fake_gpu, "build_serialized_network")] == [["FP16"]]
    close_all(engines)


def test_backend_auto_picks_tensorrt_when_it_imports(bundle_dir, fake_gpu):
    assert resolve_backend("auto") == "tensorrt"
    engines = load_engines(bundle_dir, modes=["rgb"], precision="fp32")
    assert engines["rgb"].info.engine == "tensorrt"
    close_all(engines)


def test_undeserializable_engine_is_an_error_naming_it(bundle_dir, fake_gpu):
    """A plan the runtime refuses (here: a sidecar-consistent plan from another TensorRT version)."""
    (e,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgb"]).values()
    path = e.engine_file
    e.close()
    blob = path.read_bytes().replace(b'"version": "10.3.0"', b'"version": "9.9.9"')
    path.write_bytes(blob)
    meta = json.loads(trt_cache.sidecar_path(path).read_text())
    meta.update(engine_bytes=len(blob), engine_sha256=hashlib.sha256(blob).hexdigest())
    trt_cache.sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(EngineError, match=rf"rgb engine \({path.name}\): TensorRT could not deserialize"):
        load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgb"])
    assert fake_gpu.dev.allocated() == {}
    assert fake_gpu.dev.calls("detach") == [{"primary": True}] * 2  # both loads released the context


def test_trt_run_validates_feed_and_close(bundle_dir, fake_gpu):
    (e,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgbd"]).values()
    feed = make_feed("rgbd")
    feed["foreground"] = feed["foreground"][:, :, :16]
    with pytest.raises(EngineError, match=r"input 'foreground' has shape \(1, 1, 16, 32\)") as ei:
        e.run(feed)
    assert ei.value.input == "foreground"
    assert trt_calls(fake_gpu, "execute_async_v3") == []
    e.close()
    e.close()
    with pytest.raises(EngineError, match=r"run\(\) after close\(\)"):
        e.run(make_feed("rgbd"))


def test_trt_unverified_bundle_checks_the_graph_it_keys_by(bundle_dir, fake_gpu):
    make_graph(bundle_dir / "rgb.onnx", "rgb", int8=True)
    b = load_bundle(bundle_dir, verify_hashes=False)
    with pytest.raises(EngineError, match=r"files\.rgb\.onnx: sha256 mismatch"):
        load_engines(b, backend="tensorrt", precision="fp32", modes=["rgb"])
    assert trt_calls(fake_gpu, "build_serialized_network") == []


def _attacker_plan(fake, good: bytes) -> bytes:
    """A different engine that the fake runtime WOULD deserialize (same TensorRT version, IO intact)."""
    record = json.loads(good[len(fake.trt.ENGINE_MAGIC):])
    record["planted"] = "by someone with write access to the cache"
    return fake.trt.ENGINE_MAGIC + json.dumps(record, sort_keys=True).encode()


def test_swapped_engine_file_is_never_deserialized_and_is_rebuilt(bundle_dir, fake_gpu, caplog):
    (e,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgb"]).values()
    path, sidecar = e.engine_file, trt_cache.sidecar_path(e.engine_file)
    assert e.cache_rejected is None
    e.close()
    evil = _attacker_plan(fake_gpu, path.read_bytes())
    path.write_bytes(evil)  # the sidecar is left untouched
    fake_gpu.trt.CALLS.clear()
    with caplog.at_level(logging.WARNING):
        (again,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgb"]).values()
    try:
        received = [c["sha256"] for c in trt_calls(fake_gpu, "deserialize_cuda_engine")]
        assert hashlib.sha256(evil).hexdigest() not in received
        assert received == [json.loads(sidecar.read_text())["engine_sha256"]]
        assert again.built and len(trt_calls(fake_gpu, "build_serialized_network")) == 1
        assert "replaced, truncated or corrupt" in again.cache_rejected
        assert any(r.levelno == logging.WARNING and "not loading it" in r.getMessage() for r in caplog.records)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == received[0]  # rebuilt in place
        feed = make_feed("rgb")
        assert_matches(again.run(feed), reference(feed))
    finally:
        again.close()


def test_swapped_engine_without_build_missing_is_refused(bundle_dir, fake_gpu):
    (e,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgbd"]).values()
    path = e.engine_file
    e.close()
    path.write_bytes(_attacker_plan(fake_gpu, path.read_bytes()))
    fake_gpu.trt.CALLS.clear()
    with pytest.raises(trt_cache.EngineNotCachedError, match=r"the cached file was refused: .*replaced"):
        load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["rgbd"], build_missing=False)
    assert trt_calls(fake_gpu, "deserialize_cuda_engine") == []


def test_engine_swapped_after_the_check_is_not_what_tensorrt_gets(bundle_dir, fake_gpu, monkeypatch):
    """The file is read once: swapping it right after the cache verified it changes nothing."""
    (e,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["depth"]).values()
    path = e.engine_file
    e.close()
    verified_sha = json.loads(trt_cache.sidecar_path(path).read_text())["engine_sha256"]
    evil = _attacker_plan(fake_gpu, path.read_bytes())
    real = trt_cache.read_cached_engine

    def then_swap(cache_dir, spec):
        found = real(cache_dir, spec)
        path.write_bytes(evil)  # the race an attacker would try
        return found

    monkeypatch.setattr(trt_cache, "read_cached_engine", then_swap)
    fake_gpu.trt.CALLS.clear()
    (again,) = load_engines(bundle_dir, backend="tensorrt", precision="fp32", modes=["depth"]).values()
    try:
        assert not again.built
        assert [c["sha256"] for c in trt_calls(fake_gpu, "deserialize_cuda_engine")] == [verified_sha]
    finally:
        again.close()


def test_fakes_do_not_leak():
    """Runs after the fixture-using tests in this file: no fake module is left behind."""
    for m in FAKE_MODULES:
        mod = sys.modules.get(m)
        assert mod is None or not getattr(mod, "FAKE", False), m
    assert str(FAKE_TRT_DIR) not in sys.path and str(FAKE_CUDA_DIR) not in sys.path


# --------------------------------------------------------------------------- real TensorRT (Jetson)


@pytest.fixture
def real_gpu():
    """The REAL tensorrt and pycuda (never the fakes); skip where they do not import."""
    for d in (FAKE_TRT_DIR, FAKE_CUDA_DIR):
        if str(d) in sys.path:
            pytest.skip(f"{d} is on sys.path")
    for m in FAKE_MODULES:
        mod = sys.modules.get(m)
        if mod is not None and getattr(mod, "FAKE", False):
            del sys.modules[m]
    importlib.invalidate_caches()
    trt = pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda.driver")
    if getattr(trt, "FAKE", False):
        pytest.skip("only the fake tensorrt is importable")
    return trt


@pytest.mark.jetson
def test_real_tensorrt_builds_and_runs(tmp_path, real_gpu):
    bundle = make_bundle(tmp_path / "bundle", modes=("rgbd", "rgb"), int8=("rgbd",))
    cache = tmp_path / "cache"
    apis = ["pycuda"]
    try:
        trt_engine._import_cudart()
        apis.append("cuda-python")
    except ImportError:
        pass
    for precision, atol in (("fp32", 1e-4), ("fp16", 2e-2)):
        engines = load_engines(bundle, backend="tensorrt", precision=precision, cache_dir=cache, cuda="pycuda")
        try:
            for mode, e in engines.items():
                assert e.built and e.info.precision == precision
                feed = make_feed(mode)
                assert_matches(e.run(feed), reference(feed), atol=atol)
        finally:
            close_all(engines)
    for api in apis:  # cached now; both CUDA APIs run the same engine
        engines = load_engines(bundle, backend="tensorrt", precision="fp32", cache_dir=cache, cuda=api)
        try:
            assert not any(e.built for e in engines.values())
            for mode, e in engines.items():
                feed = make_feed(mode, 7)
                # from another thread, as the daemon does
                out = {}
                t = threading.Thread(target=lambda: out.update(r=e.run(feed)))
                t.start()
                t.join()
                assert_matches(out["r"], reference(feed), atol=1e-4)
        finally:
            close_all(engines)
    engines = load_engines(bundle, backend="tensorrt", precision="int8", cache_dir=cache, modes=["rgbd"])
    try:
        feed = make_feed("rgbd", 3)
        assert engines["rgbd"].info.precision == "int8"
        assert_matches(engines["rgbd"].run(feed), reference(feed, int8=True), atol=2e-3)
    finally:
        close_all(engines)
