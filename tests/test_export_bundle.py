"""Export, TensorRT lint, INT8, thresholds and bundles, end to end on a tiny run.

One session-scoped bundle is built through the CLI and shared; tests that
change a bundle work on a copy.
"""
from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pytest
import yaml



@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, trained_run):
    from convert.cli import main

    out = tmp_path_factory.mktemp("bundle") / "b"
    code = main(["bundle", "--run", str(trained_run.run), "--data", str(trained_run.data), "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_bundle_holds_every_mode_in_fp32_and_int8(bundle_dir):
    from calibrate.int8 import KEEP_FP32_OPTIONAL, KEEP_FP32_PATTERNS
    from edge.bundle import load_bundle

    b = load_bundle(bundle_dir)
    assert set(b.modes) == {"rgbd", "rgb", "depth"}
    for name, m in b.modes.items():
        assert m.graph("fp32").name == f"{name}.onnx" and m.graph("int8").name == f"{name}.int8.onnx"
        assert m.threshold.precision == "int8" and np.isfinite(m.threshold.score)
        assert m.heatmap.low < m.heatmap.high
    assert (bundle_dir.parent / "b.tar.gz").is_file()
    with tarfile.open(bundle_dir.parent / "b.tar.gz") as tf:
        assert "b/bundle.yaml" in tf.getnames()
    prov = yaml.safe_load((bundle_dir / "bundle.yaml").read_text())["provenance"]
    for mode in ("rgbd", "rgb", "depth"):
        assert set(prov["metrics"][mode]) >= {"fp32", "int8", "map_max_abs_diff"}
        assert prov["parity"][mode]["max_abs_map"] <= 1e-4
        assert prov["parity"][mode]["max_abs_score"] <= 1e-4
        assert prov["int8"][mode]["method"] in ("minmax", "entropy", "percentile")
        # rd's optional group is its teacher's blocks 2-3 (DBRN's match nothing here): two FP32 sets
        blocks = KEEP_FP32_OPTIONAL["teacher blocks 2-3"]
        assert {tuple(c["kept_fp32_patterns"]) for c in prov["int8"][mode]["candidates"]} == {
            KEEP_FP32_PATTERNS, KEEP_FP32_PATTERNS + blocks}
        i8 = prov["int8"][mode]
        best = min(i8["candidates"], key=lambda c: c["score_max_abs_diff"])
        assert (i8["method"], i8["kept_fp32_patterns"]) == (best["method"], list(best["kept_fp32_patterns"]))


def test_every_exported_and_quantised_graph_passes_check_trt(bundle_dir, capsys):
    from convert.cli import main

    graphs = sorted(bundle_dir.glob("*.onnx"))
    assert len(graphs) == 6
    for g in graphs:
        assert main(["check-trt", str(g)]) == 0, capsys.readouterr().out


def test_int8_graphs_are_symmetric_per_channel_qdq(bundle_dir):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(bundle_dir / "rgb.int8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert dq
    for n in dq:
        if len(n.input) > 2 and n.input[2] in inits:
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any()
    conv_weights = {n.input[1] for n in m.graph.node if n.op_type == "Conv"}
    per_channel = [n for n in dq if n.output[0] in conv_weights]
    assert per_channel and all(inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1 for n in per_channel)


def test_tampered_bundle_is_refused(bundle_dir, tmp_path):
    from edge.bundle import BundleError, load_bundle

    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    with open(copy / "rgb.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="rgb.onnx"):
        load_bundle(copy)
    load_bundle(copy, verify_hashes=False)  # explicit opt-out still loads


def test_check_bundle_cli(bundle_dir, tmp_path, capsys):
    from edge.cli import main

    assert main(["check-bundle", str(bundle_dir)]) == 0
    assert "rgbd" in capsys.readouterr().out
    assert main(["check-bundle", str(tmp_path)]) == 2
    assert "bundle.yaml" in capsys.readouterr().err


def test_bundle_is_sealed_and_its_archive_normalised(bundle_dir):
    from edge.bundle import load_bundle
    from edge.manifest import MANIFEST_FILE, parse_manifest

    entries = parse_manifest((bundle_dir / MANIFEST_FILE).read_bytes(), MANIFEST_FILE)
    assert set(entries) == {p.name for p in bundle_dir.iterdir() if p.is_file() and p.name != MANIFEST_FILE}
    assert "bundle.yaml" in entries and load_bundle(bundle_dir).integrity == "manifest"
    with tarfile.open(bundle_dir.parent / "b.tar.gz") as tf:
        members = tf.getmembers()
    assert [m.name for m in members[:2]] == ["b", "b/manifest.sha256"]
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "root", "root")
        assert m.type in (tarfile.REGTYPE, tarfile.DIRTYPE) and m.mode == (0o755 if m.isdir() else 0o644)


def test_real_bundle_signed_then_edited_is_refused(bundle_dir, tmp_path, capsys):
    from convert.cli import main
    from edge.bundle import BundleError, load_bundle

    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    assert main(["keygen", "--out", str(tmp_path / "line")]) == 0
    assert main(["sign", str(copy), "--key", str(tmp_path / "line")]) == 0
    pub = tmp_path / "line.pub"
    assert load_bundle(copy, trusted_keys=[pub]).integrity == "signed"
    doc = yaml.safe_load((copy / "bundle.yaml").read_text())
    doc["modes"]["rgbd"]["threshold"]["score"] = 1e30
    (copy / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(BundleError, match="bundle.yaml: sha256 mismatch"):
        load_bundle(copy, trusted_keys=[pub])


def test_bundle_sign_key_is_checked_before_the_export(trained_run, tmp_path, capsys):
    from convert.cli import main

    out = tmp_path / "never"
    code = main(["bundle", "--run", str(trained_run.run), "--data", str(trained_run.data), "--out", str(out),
                 "--sign", str(tmp_path / "absent.key"), "--quiet"])
    assert code == 2 and "cannot read the signing key" in capsys.readouterr().err
    assert not out.exists()


def test_bundle_refuses_to_overwrite(bundle_dir, trained_run, capsys):
    from convert.cli import main

    code = main(["bundle", "--run", str(trained_run.run), "--data", str(trained_run.data), "--out", str(bundle_dir), "--quiet"])
    assert code == 2 and "already holds a bundle" in capsys.readouterr().err


def test_export_cli_parity_on_samples(trained_run, tmp_path, capsys):
    from convert.cli import main

    out = tmp_path / "x"
    assert main(["export", "--run", str(trained_run.run), "--out", str(out), "--check-data", str(trained_run.data),
                 "--dynamic-batch", "--quiet"]) == 0
    manifest = json.loads((out / "export.json").read_text())
    for mode, e in manifest["modes"].items():
        assert e["parity"]["max_abs_map"] <= 1e-4 and e["parity"]["max_abs_score"] <= 1e-4
        assert (out / e["onnx_dynamic_batch"]).is_file()
    assert (out / "preprocess.yaml").is_file()


def test_dynamic_batch_graph_runs_batch_of_two(trained_run, tmp_path):
    from calibrate.onnx_eval import session
    from convert.export import example_inputs, export_run

    export_run(trained_run.run, tmp_path, modes=("rgb",), dynamic_batch=True, progress=False)
    sess = session(tmp_path / "rgb.dynbatch.onnx")
    single = session(tmp_path / "rgb.onnx")
    feed = example_inputs("rgb", 64, batch=2)
    amap, score = sess.run(None, feed)
    assert amap.shape == (2, 1, 64, 64) and score.shape == (2,)
    a0, s0 = single.run(None, {"rgb": feed["rgb"][:1]})
    np.testing.assert_allclose(amap[:1], a0, atol=1e-4)


def test_calibrate_cli_int8_and_thresholds(trained_run, tmp_path, capsys):
    from calibrate.cli import main as calibrate
    from convert.export import export_run

    export_run(trained_run.run, tmp_path, modes=("depth",), progress=False)
    report = tmp_path / "r.json"
    assert calibrate(["int8", "--onnx", str(tmp_path / "depth.onnx"), "--data", str(trained_run.data),
                      "--out", str(tmp_path / "depth.int8.onnx"), "--method", "minmax", "--samples", "4",
                      "--report", str(report), "--quiet"]) == 0
    r = json.loads(report.read_text())
    assert r["method"] == "minmax" and r["calibration_samples"] == 4
    assert {"fp32", "int8", "map_max_abs_diff"} <= set(r["test"])
    capsys.readouterr()
    assert calibrate(["thresholds", "--onnx", str(tmp_path), "--data", str(trained_run.data), "--quiet"]) == 0
    th = yaml.safe_load((tmp_path / "thresholds.yaml").read_text())
    assert set(th) == {"depth"} and th["depth"]["precision"] == "int8"
    assert 0 <= th["depth"]["test_detection_rate"] <= 1


def test_calibrate_cli_errors_name_the_file(tmp_path, capsys):
    from calibrate.cli import main as calibrate

    assert calibrate(["int8", "--onnx", str(tmp_path / "nope.onnx"), "--data", str(tmp_path), "--out", str(tmp_path / "o.onnx")]) == 2
    assert "nope.onnx" in capsys.readouterr().err
    assert calibrate(["thresholds", "--onnx", str(tmp_path / "missing"), "--data", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.realdata("mvtec3d/cable_gland")
def test_parity_on_real_cable_gland_samples(tmp_path, torch_single_thread, real_data):
    """ONNX Runtime vs torch within 1e-4 on real scans through the real preprocessing."""
    from calibrate.dataset import load_raw, prepare
    from convert.export import export_mode, parity
    from convert.models import create_model
    from edge.preprocess import PreprocessParams, fit_depth_normalisation

    raw = load_raw(real_data, "test", progress=False)[::14][:4]
    params = fit_depth_normalisation([s.depth for s in raw], PreprocessParams(image_size=256))
    split = prepare(raw, params, progress=False)
    model = create_model("rd", config={"image_size": 256}).eval()
    for mode in ("rgbd", "rgb", "depth"):
        path = export_mode(model, mode, 256, tmp_path / f"{mode}.onnx")
        res = parity(model, mode, path, [split.feed(i) for i in range(len(split))])
        assert res["max_abs_map"] <= 1e-4 and res["max_abs_score"] <= 1e-4, res
