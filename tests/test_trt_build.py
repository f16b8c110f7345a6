"""convert/trt_build.py (and the cache core it imports from edge/engines/trt_cache.py) against
the fake `tensorrt` in tests/fake_tensorrt (no GPU needed).

The fake mimics the TensorRT 10 Python API subset the module uses and records calls; its
"engine" is a header + JSON with the ONNX sha256 and the builder flags. Bundles here are VALID
bundles (edge.bundle.load_bundle accepts them) whose "ONNX" files are a few bytes each: the
fake parser only hashes them.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import sys
from pathlib import Path

import pytest

import yaml

from convert import trt_build as tb
from edge.bundle import BundleError, load_bundle
from edge.engines import trt_cache as tc
from edge.preprocess import PreprocessParams

FAKE_DIR = Path(__file__).parent / "fake_tensorrt"
GPU = tb.GpuIdentity(name="Orin [NVIDIA Jetson Orin Nano Developer Kit]", compute_capability="8.7")


@pytest.fixture
def fake_trt(monkeypatch):
    """The fake tensorrt, first on sys.path; removed from sys.modules afterwards."""
    saved = sys.modules.pop("tensorrt", None)
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    try:
        trt = importlib.import_module("tensorrt")
        assert getattr(trt, "FAKE", False), "imported a real tensorrt instead of the fake"
        trt.reset()
        yield trt
    finally:
        sys.modules.pop("tensorrt", None)
        if saved is not None:
            sys.modules["tensorrt"] = saved


@pytest.fixture
def gpu(monkeypatch):
    state = {"gpu": GPU}
    monkeypatch.setattr(tb, "gpu_identity", lambda: state["gpu"])
    return state


@pytest.fixture
def no_trt(monkeypatch):
    """`import tensorrt` raises ImportError."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


INPUTS = {"rgbd": ["rgb", "depth", "foreground"], "rgb": ["rgb"], "depth": ["depth", "foreground"]}


def make_bundle(root: Path, modes=("rgbd", "rgb", "depth"), int8=()) -> Path:
    """A valid bundle (docs/bundle.md): a few bytes of fake ONNX per graph, with their sha256."""
    root.mkdir(parents=True, exist_ok=True)
    table, files = {}, {}
    for m in modes:
        graphs = {"onnx": f"{m}.onnx"}
        if m in int8:
            graphs["onnx_int8"] = f"{m}.int8.onnx"
        for key, name in graphs.items():
            data = f"fake {'int8 qdq ' if key == 'onnx_int8' else ''}onnx for {m}".encode()
            (root / name).write_bytes(data)
            files[name] = hashlib.sha256(data).hexdigest()
        table[m] = dict(graphs, inputs=INPUTS[m], outputs=["anomaly_map", "score"],
                        threshold={"score": 3.0, "pixel": 2.0, "target_frr": 0.01, "expected_frr": 0.008,
                                   "n_validation": 20, "precision": "int8" if m in int8 else "fp32"},
                        heatmap={"low": 0.0, "high": 3.0})
    doc = {
        "schema_version": 1,
        "model": {"name": "test", "version": "1"},
        "input": {"image_size": 64},
        "preprocess": PreprocessParams(image_size=64).to_dict(),
        "modes": table,
        "provenance": {"created": "2026-01-01T00:00:00Z", "code_version": "test",
                       "training_data_fingerprint": "ab" * 32},
        "files": files,
    }
    (root / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    load_bundle(root)  # the fixture itself must be valid
    return root


def replace_graph(bundle: Path, name: str, data: bytes) -> None:
    """A re-export: new bytes for one graph, and its new sha256 in bundle.yaml."""
    (bundle / name).write_bytes(data)
    doc = yaml.safe_load((bundle / "bundle.yaml").read_text())
    doc["files"][name] = hashlib.sha256(data).hexdigest()
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def read_fake_engine(trt, path: Path) -> dict:
    blob = path.read_bytes()
    assert blob.startswith(trt.ENGINE_MAGIC)
    return json.loads(blob[len(trt.ENGINE_MAGIC):])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- building and caching

def test_builds_every_mode_with_names_and_sidecars(tmp_path, fake_trt, gpu, caplog):
    bundle = make_bundle(tmp_path / "b")
    with caplog.at_level(logging.INFO):
        results = tb.build_bundle(bundle, fp16=True, workspace_mib=256)

    assert [r.mode for r in results] == ["rgbd", "rgb", "depth"]
    assert all(r.built for r in results)
    assert len(fake_trt.calls("build_serialized_network")) == 3
    for r in results:
        onnx = bundle / f"{r.mode}.onnx"
        key = tb.engine_key(sha(onnx), "10.3.0", GPU.name, "8.7", ["fp16"])
        assert r.engine == bundle / "engines" / f"{r.mode}-fp16-{key[:16]}.engine"
        assert r.sidecar == r.engine.with_name(r.engine.name + ".json")
        eng = read_fake_engine(fake_trt, r.engine)
        assert eng["onnx_sha256"] == sha(onnx)
        assert eng["flags"] == ["FP16"]
        assert eng["workspace"] == 256 << 20
        meta = json.loads(r.sidecar.read_text())
        assert meta["onnx_file"] == f"{r.mode}.onnx"
        assert meta["onnx_sha256"] == sha(onnx)
        assert meta["tensorrt_version"] == "10.3.0"
        assert meta["gpu_name"] == GPU.name and meta["compute_capability"] == "8.7"
        assert meta["flags"] == ["fp16"] and meta["precision"] == "fp16"
        assert meta["workspace_mib"] == 256
        assert meta["engine_sha256"] == sha(r.engine)
        assert meta["built_at"] and meta["build_seconds"] >= 0
        assert meta["key"] == key
    # TensorRT 10 API: explicit batch only -> create_network(0)
    assert all(c["flags"] == 0 for c in fake_trt.calls("create_network"))
    # the parser gets the path so external weights next to the model are found
    assert [Path(c["path"]).name for c in fake_trt.calls("parse")] == ["rgbd.onnx", "rgb.onnx", "depth.onnx"]
    text = caplog.text
    for m in ("rgbd", "rgb", "depth"):
        assert f"{m}: building fp16 engine" in text and f"{m}: built in" in text


def test_second_call_reuses_cached_engines(tmp_path, fake_trt, gpu):
    bundle = make_bundle(tmp_path / "b")
    first = tb.build_bundle(bundle, fp16=True)
    fake_trt.CALLS.clear()
    second = tb.build_bundle(bundle, fp16=True)
    assert fake_trt.calls("build_serialized_network") == []
    assert [r.engine for r in second] == [r.engine for r in first]
    assert not any(r.built for r in second)


def test_force_rebuilds(tmp_path, fake_trt, gpu):
    bundle = make_bundle(tmp_path / "b", modes=("rgb",))
    tb.build_bundle(bundle)
    fake_trt.CALLS.clear()
    (r,) = tb.build_bundle(bundle, force=True)
    assert r.built and len(fake_trt.calls("build_serialized_network")) == 1


def test_changed_onnx_forces_rebuild(tmp_path, fake_trt, gpu, caplog):
    bundle = make_bundle(tmp_path / "b", modes=("rgbd",))
    (old,) = tb.build_bundle(bundle)
    replace_graph(bundle, "rgbd.onnx", b"re-exported model, new weights")
    fake_trt.CALLS.clear()
    with caplog.at_level(logging.INFO):
        (new,) = tb.build_bundle(bundle)
    assert new.built and new.engine != old.engine
    assert read_fake_engine(fake_trt, new.engine)["onnx_sha256"] == sha(bundle / "rgbd.onnx")
    assert len(fake_trt.calls("build_serialized_network")) == 1
    assert old.engine.exists()  # left in place, and said so
    assert f"stale engine {old.engine.name}" in caplog.text and "onnx_sha256" in caplog.text


def test_changed_trt_version_forces_rebuild(tmp_path, fake_trt, gpu, monkeypatch):
    bundle = make_bundle(tmp_path / "b", modes=("rgb",))
    (old,) = tb.build_bundle(bundle)
    monkeypatch.setattr(fake_trt, "__version__", "10.3.1")
    fake_trt.CALLS.clear()
    (new,) = tb.build_bundle(bundle)
    assert new.built and new.engine != old.engine
    assert json.loads(new.sidecar.read_text())["tensorrt_version"] == "10.3.1"
    # the timing cache is keyed by TensorRT version too: a fresh one, not the 10.3.0 file
    assert fake_trt.calls("create_timing_cache") == [{"nbytes": 0}]


def test_changed_gpu_forces_rebuild(tmp_path, fake_trt, gpu):
    bundle = make_bundle(tmp_path / "b", modes=("depth",))
    (old,) = tb.build_bundle(bundle)
    gpu["gpu"] = tb.GpuIdentity(name="Orin [NVIDIA Jetson AGX Orin Developer Kit]", compute_capability="8.7")
    fake_trt.CALLS.clear()
    (new,) = tb.build_bundle(bundle)
    assert new.built and new.engine != old.engine
    gpu["gpu"] = tb.GpuIdentity(name=GPU.name, compute_capability="8.6")
    (cc,) = tb.build_bundle(bundle)
    assert cc.built and cc.engine not in (old.engine, new.engine)
    assert len(fake_trt.calls("build_serialized_network")) == 2


def test_find_engine_requires_every_field(tmp_path, fake_trt, gpu):
    bundle = make_bundle(tmp_path / "b", modes=("rgbd",))
    (r,) = tb.build_bundle(bundle, fp16=True)
    cache = bundle / "engines"
    spec = tb.EngineSpec("rgbd", "fp16", sha(bundle / "rgbd.onnx"), "10.3.0", GPU.name, "8.7")
    assert tb.find_engine(cache, spec) == r.engine

    # a sidecar edited by hand (same file name, different recorded GPU) is not trusted
    meta = json.loads(r.sidecar.read_text())
    r.sidecar.write_text(json.dumps(dict(meta, gpu_name="something else")))
    assert tb.find_engine(cache, spec) is None
    r.sidecar.write_text(json.dumps(meta))
    assert tb.find_engine(cache, spec) == r.engine

    # a truncated engine file is not reused
    r.engine.write_bytes(r.engine.read_bytes()[:10])
    assert tb.find_engine(cache, spec) is None
    fake_trt.CALLS.clear()
    (again,) = tb.build_bundle(bundle, fp16=True)
    assert again.built and again.engine == r.engine
    assert tb.find_engine(cache, spec) == r.engine

    # no sidecar: not reused
    r.sidecar.unlink()
    assert tb.find_engine(cache, spec) is None


def test_read_cached_engine_returns_the_bytes_it_verified(tmp_path, fake_trt, gpu, caplog):
    bundle = make_bundle(tmp_path / "b", modes=("rgb",))
    (r,) = tb.build_bundle(bundle)
    spec = tb.EngineSpec("rgb", "fp32", sha(bundle / "rgb.onnx"), "10.3.0", GPU.name, "8.7")
    found = tc.read_cached_engine(bundle / "engines", spec)
    assert found.engine == r.engine and found.rejected is None
    assert hashlib.sha256(found.data).hexdigest() == json.loads(r.sidecar.read_text())["engine_sha256"]

    # same size, other bytes, sidecar untouched: refused with a warning, never handed out
    blob = r.engine.read_bytes()
    r.engine.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with caplog.at_level(logging.WARNING):
        refused = tc.read_cached_engine(bundle / "engines", spec)
    assert refused.engine is None and refused.data is None and "replaced, truncated or corrupt" in refused.rejected
    assert "not loading it" in caplog.text
    again = tc.ensure_engine(bundle / "rgb.onnx", spec, bundle / "engines")  # rebuilt, and said why
    assert again.built and again.rejected == refused.rejected and again.data is None  # bytes only on request
    assert tb.find_engine(bundle / "engines", spec) == r.engine


def test_engine_key_covers_every_field():
    base = dict(onnx_sha256="a" * 64, trt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                precision_flags_=["fp16"])
    k = tb.engine_key(**base)
    assert len(k) == 64 and k == tb.engine_key(**base)
    assert tb.engine_key(**dict(base, precision_flags_=("fp16",))) == k
    assert tb.engine_key(**dict(base, compute_capability=(8, 7))) == k
    for change in (dict(onnx_sha256="b" * 64), dict(trt_version="10.3.1"), dict(gpu_name="Orin Nano"),
                   dict(compute_capability="8.6"), dict(precision_flags_=[]), dict(precision_flags_=["fp16", "int8"])):
        assert tb.engine_key(**dict(base, **change)) != k, change


def test_cache_dir_option_and_timing_cache_persisted(tmp_path, fake_trt, gpu):
    bundle = make_bundle(tmp_path / "b", modes=("rgbd", "rgb"))
    state = tmp_path / "var-lib-rgbd-edge"
    results = tb.build_bundle(bundle, cache_dir=state)
    assert all(r.engine.parent == state for r in results)
    assert not (bundle / "engines").exists()
    tc = tb.timing_cache_path(state, "10.3.0", GPU)
    assert tc.is_file()
    # first mode started an empty cache; the second loaded what the first saved
    sets = fake_trt.calls("set_timing_cache")
    assert sets[0]["entries"] == [] and sets[1]["entries"] == [sha(bundle / "rgbd.onnx")]
    assert all(s["ignore_mismatch"] is False for s in sets)
    saved = json.loads(tc.read_bytes()[len(fake_trt.TIMING_MAGIC):])
    assert saved["entries"] == [sha(bundle / "rgbd.onnx"), sha(bundle / "rgb.onnx")]
    # keyed by TRT version + GPU
    assert tb.timing_cache_path(state, "10.3.1", GPU) != tc
    assert tb.timing_cache_path(state, "10.3.0", tb.GpuIdentity("Orin [AGX]", "8.7")) != tc


def test_timing_cache_mismatch_starts_fresh(tmp_path, fake_trt):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"model")
    tc = tmp_path / "t.cache"
    tc.write_bytes(fake_trt.ITimingCache("9.9.9", ["x"]).serialize())
    tb.build_engine(onnx, "fp32", 64, tc)
    assert [c["entries"] for c in fake_trt.calls("set_timing_cache")] == [["x"], []]
    assert json.loads(tc.read_bytes()[len(fake_trt.TIMING_MAGIC):])["version"] == "10.3.0"


# --------------------------------------------------------------------------- precision flags

@pytest.mark.parametrize("fp16,int8,want_flags,name", [
    (False, False, [], "fp32"),
    (True, False, ["FP16"], "fp16"),
    (False, True, ["INT8"], "int8"),
    (True, True, ["FP16", "INT8"], "fp16_int8"),
])
def test_precision_flags_on_config(tmp_path, fake_trt, gpu, fp16, int8, want_flags, name):
    bundle = make_bundle(tmp_path / "b", modes=("rgbd",), int8=("rgbd",))
    (r,) = tb.build_bundle(bundle, fp16=fp16, int8=int8, workspace_mib=128)
    (call,) = fake_trt.calls("build_serialized_network")
    assert call["flags"] == want_flags
    assert call["workspace"] == 128 * 1024 * 1024
    assert r.engine.name.startswith(f"rgbd-{name}-")
    onnx = bundle / ("rgbd.int8.onnx" if int8 else "rgbd.onnx")
    assert call["onnx_sha256"] == sha(onnx)
    meta = json.loads(r.sidecar.read_text())
    assert meta["onnx_file"] == onnx.name and meta["onnx_int8_variant"] is int8


def test_int8_without_int8_onnx_names_the_mode(tmp_path, fake_trt, gpu):
    bundle = make_bundle(tmp_path / "b", modes=("rgbd", "depth"), int8=("rgbd",))
    with pytest.raises(BundleError, match=r"mode 'depth'.*onnx_int8"):
        tb.build_bundle(bundle, int8=True)
    assert fake_trt.calls("build_serialized_network") == []
    (r,) = tb.build_bundle(bundle, ["rgbd"], int8=True)
    assert r.onnx.name == "rgbd.int8.onnx"


def test_precision_helpers():
    assert tb.precision_flags("fp32") == ()
    assert tb.precision_flags("int8_fp16") == ("fp16", "int8")
    assert tb.precision_name(["int8", "fp16"]) == "fp16_int8"
    assert tb.precision_from_args(False, False) == "fp32"
    with pytest.raises(ValueError, match="bf16"):
        tb.precision_flags("bf16")


# --------------------------------------------------------------------------- failures

def test_parser_errors_surface_with_messages(tmp_path, fake_trt, gpu):
    bundle = make_bundle(tmp_path / "b", modes=("rgbd",))
    fake_trt.PARSE_ERRORS[:] = [(3, "GridSample", "no importer for op GridSample"),
                                (7, "Einsum", "unsupported equation 'bij,bjk->bik'")]
    with pytest.raises(tb.OnnxParseError) as ei:
        tb.build_bundle(bundle)
    msg = str(ei.value)
    assert "rgbd.onnx" in msg and "2 error(s)" in msg
    assert "no importer for op GridSample" in msg and "GridSample" in msg
    assert "unsupported equation 'bij,bjk->bik'" in msg
    assert len(ei.value.errors) == 2
    assert fake_trt.calls("build_serialized_network") == []
    assert not list((bundle / "engines").glob("*.engine"))


def test_build_failure_raises_with_hint(tmp_path, fake_trt, gpu, monkeypatch):
    bundle = make_bundle(tmp_path / "b", modes=("rgb",))
    monkeypatch.setattr(fake_trt, "BUILD_FAILS", True)
    with pytest.raises(RuntimeError, match=r"returned None.*--verbose.*trtexec") as ei:
        tb.build_bundle(bundle, fp16=True)
    assert isinstance(ei.value, tb.EngineBuildError)
    assert not list((bundle / "engines").glob("*.engine"))
    # and through the CLI: a clear message, exit code 1, no traceback
    assert tb.main(["--bundle", str(bundle)]) == 1


def test_dynamic_batch_gets_batch1_profile_other_dynamic_dims_error(tmp_path, fake_trt):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"model")
    fake_trt.INPUTS[:] = [("x", (-1, 4, 64, 64))]
    tb.build_engine(onnx, "fp16", 64, None)
    (call,) = fake_trt.calls("build_serialized_network")
    assert call["profiles"] == [{"x": ((1, 4, 64, 64),) * 3}]
    fake_trt.INPUTS[:] = [("x", (1, 4, -1, -1))]
    with pytest.raises(tb.EngineBuildError, match=r"'x'.*dynamic"):
        tb.build_engine(onnx, "fp16", 64, None)


def test_without_tensorrt_says_jetson_and_suggests_print_trtexec(tmp_path, no_trt, gpu, capsys):
    bundle = make_bundle(tmp_path / "b", modes=("rgbd",))
    with pytest.raises(tb.TensorRTUnavailableError) as ei:
        tb.build_bundle(bundle)
    msg = str(ei.value)
    assert "Jetson" in msg and "TensorRT 10.3" in msg and "--print-trtexec" in msg
    assert tb.main(["--bundle", str(bundle), "--fp16"]) == 2
    err = capsys.readouterr().err
    assert "Jetson" in err and "--print-trtexec" in err


# --------------------------------------------------------------------------- bundle errors

def test_missing_bundle_names_path(tmp_path, fake_trt, gpu, capsys):
    with pytest.raises(BundleError, match="bundle directory not found: " + str(tmp_path / "nobundle")):
        tb.build_bundle(tmp_path / "nobundle")
    assert tb.main(["--bundle", str(tmp_path / "nobundle"), "--print-trtexec"]) == 2
    assert str(tmp_path / "nobundle") in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"no bundle\.yaml in this directory") as ei:
        tb.build_bundle(tmp_path / "empty")
    assert ei.value.file == tmp_path.resolve() / "empty" / "bundle.yaml"
    assert fake_trt.calls("build_serialized_network") == []


def test_missing_onnx_names_key_and_path(tmp_path, fake_trt, gpu, capsys):
    bundle = make_bundle(tmp_path / "b", modes=("rgbd", "rgb"))
    (bundle / "rgb.onnx").unlink()
    with pytest.raises(BundleError, match=r"modes\.rgb\.onnx: file not found: " + str(bundle.resolve() / "rgb.onnx")):
        tb.build_bundle(bundle, ["rgbd"])  # the whole bundle is checked before anything is built
    assert fake_trt.calls("build_serialized_network") == []
    assert tb.main(["--bundle", str(bundle)]) == 2
    assert "modes.rgb.onnx" in capsys.readouterr().err


def test_corrupt_onnx_is_never_built(tmp_path, fake_trt, gpu):
    """The bundle's sha256 check runs before the build: a truncated copy never becomes an engine."""
    bundle = make_bundle(tmp_path / "b", modes=("rgbd",))
    (bundle / "rgbd.onnx").write_bytes(b"fake onnx for")
    with pytest.raises(BundleError, match=r"files\.rgbd\.onnx: sha256 mismatch"):
        tb.build_bundle(bundle)
    assert fake_trt.calls("build_serialized_network") == []
    assert not (bundle / "engines").exists()


def test_engine_keyed_by_bundle_digest_and_bytes_rechecked(tmp_path, fake_trt, gpu):
    bundle = make_bundle(tmp_path / "b", modes=("rgb",))
    b = load_bundle(bundle)
    (src,) = tb.resolve_mode_sources(b, None, int8=False)
    assert src.sha256 == b.files["rgb.onnx"] == sha(bundle / "rgb.onnx")
    # the file changes after the bundle was checked: build_engine refuses the other bytes
    (bundle / "rgb.onnx").write_bytes(b"swapped after the check")
    with pytest.raises(tb.EngineBuildError, match="sha256"):
        tb.build_bundle(b)
    assert fake_trt.calls("build_serialized_network") == []


def test_bundle_yaml_key_errors(tmp_path):
    b = make_bundle(tmp_path / "b", modes=("rgbd",))
    doc = yaml.safe_load((b / "bundle.yaml").read_text())
    del doc["modes"]
    (b / "bundle.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(BundleError, match=r"modes: missing required key") as ei:
        tb.resolve_mode_sources(b, None, int8=False)
    assert ei.value.key == "modes"
    make_bundle(b, modes=("rgbd",))
    doc = yaml.safe_load((b / "bundle.yaml").read_text())
    del doc["modes"]["rgbd"]["onnx"]
    (b / "bundle.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(BundleError, match=r"modes\.rgbd\.onnx: missing required key"):
        tb.resolve_mode_sources(b, None, int8=False)
    make_bundle(b, modes=("rgbd",))
    with pytest.raises(BundleError, match="mode 'depth' is not in 'modes'"):
        tb.resolve_mode_sources(b, ["depth"], int8=False)
    assert tb.BundleError is BundleError  # one BundleError: edge.bundle's


def test_cache_dir_defaults_to_bundle_engines_dir(tmp_path, fake_trt, gpu):
    bundle = make_bundle(tmp_path / "b", modes=("rgb",))
    doc = yaml.safe_load((bundle / "bundle.yaml").read_text())
    doc["engines"] = {"dir": "cache/trt"}
    (bundle / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (r,) = tb.build_bundle(bundle)
    assert r.engine.parent == bundle.resolve() / "cache" / "trt"


# --------------------------------------------------------------------------- trtexec

def test_trtexec_command_flags():
    cmd = tb.trtexec_command("/b/rgbd.int8.onnx", "/c/rgbd.engine", "fp16_int8", 512, "/c/t.cache", program="trtexec")
    assert cmd.split() == ["trtexec", "--onnx=/b/rgbd.int8.onnx", "--saveEngine=/c/rgbd.engine", "--fp16", "--int8",
                           "--memPoolSize=workspace:512M", "--timingCacheFile=/c/t.cache", "--skipInference"]
    plain = tb.trtexec_command("a b.onnx", "e.engine", "fp32", 64, None, program="trtexec")
    assert "--fp16" not in plain and "--int8" not in plain and "--calib" not in plain
    assert "--workspace" not in plain  # removed in TensorRT 10
    assert "'--onnx=a b.onnx'" in plain  # shell-quoted


def test_print_trtexec_works_without_tensorrt(tmp_path, no_trt, capsys):
    bundle = make_bundle(tmp_path / "b", int8=("rgbd", "rgb", "depth"))
    assert tb.main(["--bundle", str(bundle), "--print-trtexec", "--fp16", "--int8", "--workspace-mib", "2048",
                    "--mode", "rgbd", "depth"]) == 0
    out = capsys.readouterr().out
    cmds = [line for line in out.splitlines() if not line.startswith("#")]
    assert len(cmds) == 2
    assert f"--onnx={bundle / 'rgbd.int8.onnx'}" in cmds[0] and f"--onnx={bundle / 'depth.int8.onnx'}" in cmds[1]
    for c in cmds:
        assert "trtexec" in c and "--fp16" in c and "--int8" in c and "--calib" not in c
        assert "--memPoolSize=workspace:2048M" in c and "--timingCacheFile=" in c and "--saveEngine=" in c
    assert "tensorrt" not in sys.modules or sys.modules["tensorrt"] is None
    assert not (bundle / "engines").exists()  # nothing built


def test_cli_build_prints_engines(tmp_path, fake_trt, gpu, capsys):
    bundle = make_bundle(tmp_path / "b", modes=("rgbd", "rgb"))
    assert tb.main(["--bundle", str(bundle), "--fp16", "--mode", "rgb"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].split()[:3] == ["rgb", "fp16", "built"]
    assert tb.main(["--bundle", str(bundle), "--fp16", "--mode", "rgb"]) == 0
    assert capsys.readouterr().out.split()[:3] == ["rgb", "fp16", "cached"]


def test_add_parser_registers_build_subcommand(tmp_path):
    import argparse

    p = argparse.ArgumentParser(prog="rgbd-convert")
    sub = p.add_subparsers(dest="cmd", required=True)
    tb.add_parser(sub)
    a = p.parse_args(["build", "--bundle", "B", "--fp16", "--int8", "--workspace-mib", "64", "--mode", "rgbd",
                      "--mode", "rgb", "--print-trtexec", "--force", "--cache-dir", "C"])
    assert a.func is tb._cmd_build
    assert (a.bundle, a.fp16, a.int8, a.workspace_mib, a.mode, a.print_trtexec, a.force, a.cache_dir) == \
        ("B", True, True, 64, ["rgbd", "rgb"], True, True, "C")


def test_fake_does_not_leak():
    """Runs after the fixture-using tests in this file: the fake is gone from sys.modules."""
    mod = sys.modules.get("tensorrt")
    assert mod is None or not getattr(mod, "FAKE", False)
    assert str(FAKE_DIR) not in sys.path


# --------------------------------------------------------------------------- GPU identity

def test_gpu_identity_tries_probes_in_order(monkeypatch, tmp_path):
    def fail():
        raise RuntimeError("nope")

    # the probes live in edge.engines.trt_cache; convert.trt_build re-exports gpu_identity
    assert tb.gpu_identity is tc.gpu_identity
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    monkeypatch.setattr(tc, "DEVICE_TREE_MODEL", str(model))
    monkeypatch.setattr(tc, "_GPU_PROBES", (("a", fail), ("b", lambda: ("Orin", (8, 7))), ("c", fail)))
    g = tb.gpu_identity()
    assert g == tb.GpuIdentity("Orin [NVIDIA Jetson Orin Nano Developer Kit]", "8.7")

    monkeypatch.setattr(tc, "_GPU_PROBES", (("a", fail), ("c", fail)))
    with pytest.raises(tb.EngineBuildError, match=r"a: RuntimeError: nope"):
        tb.gpu_identity()
