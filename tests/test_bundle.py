"""edge.bundle: loading and checking model bundles (bundle.yaml, schema_version 1).

Bundles are built here in tmp_path from small dummy "ONNX" files (a few bytes each) with correct
sha256 digests; each test then breaks one thing and checks that the BundleError names it.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.bundle import (
    BUNDLE_FILE,
    Bundle,
    BundleError,
    HeatmapNorm,
    ModeSpec,
    Threshold,
    add_parser,
    bundle_summary,
    load_bundle,
    main,
)
from edge.digest import sha256_file as file_sha256
from edge.preprocess import PreprocessParams

SIZE = 64
INPUTS = {"rgbd": ["rgb", "depth", "foreground"], "rgb": ["rgb"], "depth": ["depth", "foreground"]}
SCORES = {"rgbd": 3.2, "rgb": 2.75, "depth": 4.5}
FINGERPRINT = "ab" * 32


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_bundle(root: Path, modes=("rgbd", "rgb", "depth"), int8=("rgbd",)) -> Path:
    """A valid bundle: one fake fp32 graph per mode, an INT8 graph for the modes in ``int8``."""
    root.mkdir(parents=True, exist_ok=True)
    files, table = {}, {}
    for m in modes:
        entry = {"onnx": f"{m}.onnx"}
        blobs = {f"{m}.onnx": f"fake fp32 onnx for {m}".encode()}
        if m in int8:
            entry["onnx_int8"] = f"{m}.int8.onnx"
            blobs[f"{m}.int8.onnx"] = f"fake int8 qdq onnx for {m}".encode()
        for name, data in blobs.items():
            (root / name).write_bytes(data)
            files[name] = sha(data)
        entry.update(
            inputs=INPUTS[m],
            outputs=["anomaly_map", "score"],
            threshold={"score": SCORES[m], "pixel": 2.1, "target_frr": 0.01, "expected_frr": 0.008,
                       "n_validation": 23, "precision": "int8" if m in int8 else "fp32"},
            heatmap={"low": 0.0, "high": SCORES[m]},
        )
        table[m] = entry
    doc = {
        "schema_version": 1,
        "model": {"name": "rd", "version": "2026.11.24-abc123", "family": "rd"},
        "input": {"image_size": SIZE, "layout": "NCHW", "dtype": "float32"},
        "preprocess": PreprocessParams(image_size=SIZE, height_scale_m=0.02, normal_gain=3.0).to_dict(),
        "modes": table,
        "engines": {"dir": "engines"},
        "provenance": {"created": "2026-11-24T06:00:00Z", "code_version": "git:abc123",
                       "training_data_fingerprint": FINGERPRINT,
                       "metrics": {"fp32": {"i_auroc": 0.91}, "int8": {"i_auroc": 0.9}}},
        "files": files,
    }
    write_doc(root, doc)
    return root


def read_doc(root: Path) -> dict:
    return yaml.safe_load((root / BUNDLE_FILE).read_text())


def write_doc(root: Path, doc: dict) -> None:
    (root / BUNDLE_FILE).write_text(yaml.safe_dump(doc, sort_keys=False))


def edit(root: Path, fn) -> Path:
    doc = read_doc(root)
    fn(doc)
    write_doc(root, doc)
    return root


def _walk(doc: dict, dotted: str):
    *parents, last = dotted.split(".")
    for p in parents:
        doc = doc[p]
    return doc, last


def setk(dotted: str, value):
    def fn(doc):
        d, k = _walk(doc, dotted)
        d[k] = value
    return fn


def delk(dotted: str):
    def fn(doc):
        d, k = _walk(doc, dotted)
        del d[k]
    return fn


def load_error(root: Path, **kw) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(root, **kw)
    return str(info.value)


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    return make_bundle(tmp_path / "bundle")


# --------------------------------------------------------------------------- loading a valid bundle


def test_loads_a_valid_bundle(bundle_dir):
    b = load_bundle(bundle_dir)
    assert isinstance(b, Bundle)
    assert b.root == bundle_dir.resolve()
    assert (b.schema_version, b.model_name, b.model_version, b.model_family) == (1, "rd", "2026.11.24-abc123", "rd")
    assert b.image_size == SIZE
    assert b.preprocess == PreprocessParams(image_size=SIZE, height_scale_m=0.02, normal_gain=3.0)
    assert list(b.modes) == ["rgbd", "rgb", "depth"]  # bundle.yaml order
    rgbd = b.modes["rgbd"]
    assert isinstance(rgbd, ModeSpec)
    assert rgbd.onnx == b.root / "rgbd.onnx" and rgbd.onnx_int8 == b.root / "rgbd.int8.onnx"
    assert rgbd.inputs == ("rgb", "depth", "foreground") and rgbd.outputs == ("anomaly_map", "score")
    assert rgbd.threshold == Threshold(score=3.2, pixel=2.1, target_frr=0.01, expected_frr=0.008,
                                       n_validation=23, precision="int8")
    assert rgbd.heatmap == HeatmapNorm(low=0.0, high=3.2)
    assert b.modes["rgb"].onnx_int8 is None and b.modes["rgb"].threshold.precision == "fp32"
    assert b.modes["depth"].inputs == ("depth", "foreground")
    assert b.engines_dir == b.root / "engines"
    assert b.provenance["code_version"] == "git:abc123"
    assert b.files["rgbd.onnx"] == file_sha256(bundle_dir / "rgbd.onnx")
    assert b.raw == read_doc(bundle_dir)
    assert b.hashes_verified


def test_single_mode_bundle_and_optional_keys(tmp_path):
    root = make_bundle(tmp_path / "b", modes=("rgb",), int8=())

    def strip(doc):
        del doc["engines"], doc["modes"]["rgb"]["outputs"], doc["provenance"]["metrics"]
        del doc["input"]["layout"], doc["input"]["dtype"], doc["model"]["family"]
    b = load_bundle(edit(root, strip))
    assert list(b.modes) == ["rgb"]
    assert b.engines_dir is None and b.model_family is None
    assert b.modes["rgb"].outputs == ("anomaly_map", "score")


def test_unquoted_yaml_timestamp_is_accepted(bundle_dir):
    text = (bundle_dir / BUNDLE_FILE).read_text().replace("'2026-11-24T06:00:00Z'", "2026-11-24T06:00:00Z")
    (bundle_dir / BUNDLE_FILE).write_text(text)
    assert load_bundle(bundle_dir).provenance["created"].year == 2026


def test_file_sha256(tmp_path):
    p = tmp_path / "x.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    p.write_bytes(data)
    assert file_sha256(p) == sha(data)


def test_bundle_error_is_a_value_error_with_key(bundle_dir):
    edit(bundle_dir, setk("modes.rgb.threshold.score", "high"))
    with pytest.raises(ValueError) as info:
        load_bundle(bundle_dir)
    assert isinstance(info.value, BundleError)
    assert info.value.key == "modes.rgb.threshold.score"


# --------------------------------------------------------------------------- the directory and the YAML


def test_missing_directory_is_named(tmp_path):
    assert str(tmp_path / "nope") in load_error(tmp_path / "nope")


def test_file_instead_of_directory_is_named(tmp_path):
    f = tmp_path / "bundle.tar"
    f.write_bytes(b"x")
    msg = load_error(f)
    assert str(f) in msg and "not a bundle directory" in msg


def test_directory_without_manifest(tmp_path):
    msg = load_error(tmp_path)
    assert str(tmp_path) in msg and "bundle.yaml" in msg


def test_unparsable_yaml_names_file_and_line(bundle_dir):
    (bundle_dir / BUNDLE_FILE).write_text("schema_version: 1\nmodel: {name: rd\ninput: [\n")
    msg = load_error(bundle_dir)
    assert "bundle.yaml" in msg and "line 3" in msg and "not valid YAML" in msg


def test_duplicate_key_is_an_error_with_its_line(bundle_dir):
    text = (bundle_dir / BUNDLE_FILE).read_text().replace("      score: 2.75\n",
                                                          "      score: 2.75\n      score: 9.0\n")
    (bundle_dir / BUNDLE_FILE).write_text(text)
    msg = load_error(bundle_dir)
    line = text.splitlines().index("      score: 9.0") + 1
    assert "duplicate key 'score'" in msg and f"line {line}" in msg


@pytest.mark.parametrize("content", ["", "- a\n- b\n", "just text\n"])
def test_manifest_must_be_a_mapping(bundle_dir, content):
    (bundle_dir / BUNDLE_FILE).write_text(content)
    assert "bundle.yaml" in load_error(bundle_dir)


# --------------------------------------------------------------------------- schema errors

CASES = [
    # (id, edit, substrings the message must contain)
    ("schema-missing", delk("schema_version"), ["schema_version", "missing"]),
    ("schema-2", setk("schema_version", 2), ["unknown schema version 2; this runtime reads 1"]),
    ("schema-str", setk("schema_version", "1"), ["schema_version", "integer"]),
    ("unknown-top-key", setk("thresholds", {}), ["thresholds", "unknown key"]),
    ("model-missing", delk("model"), ["model", "missing required key"]),
    ("input-missing", delk("input"), ["input", "missing required key"]),
    ("preprocess-missing", delk("preprocess"), ["preprocess", "missing required key"]),
    ("modes-missing", delk("modes"), ["modes", "missing required key"]),
    ("provenance-missing", delk("provenance"), ["provenance", "missing required key"]),
    ("files-missing", delk("files"), ["files", "missing required key"]),
    ("model-not-mapping", setk("model", "rd"), ["model", "mapping"]),
    ("model-name-missing", delk("model.name"), ["model.name", "missing"]),
    ("model-version-float", setk("model.version", 2026.11), ["model.version", "string", "quote"]),
    ("image-size-missing", delk("input.image_size"), ["input.image_size", "missing"]),
    ("image-size-not-32", setk("input.image_size", 100), ["input.image_size", "multiple of 32"]),
    ("image-size-str", setk("input.image_size", "256"), ["input.image_size", "integer"]),
    ("layout", setk("input.layout", "NHWC"), ["input.layout", "NCHW"]),
    ("dtype", setk("input.dtype", "float16"), ["input.dtype", "float32"]),
    ("preprocess-invalid", setk("preprocess.depth_encoding", "bogus"), ["preprocess", "depth_encoding"]),
    ("preprocess-unknown", setk("preprocess.gamma", 2.0), ["preprocess", "gamma"]),
    ("preprocess-type", setk("preprocess.ransac_iters", "many"), ["preprocess.ransac_iters", "int"]),
    ("preprocess-nan", setk("preprocess.plane_inlier_m", float("nan")), ["preprocess.plane_inlier_m", "finite"]),
    ("preprocess-roi", setk("preprocess.roi", [0.5, 0.0, 0.2, 1.0]), ["preprocess", "roi"]),
    ("preprocess-version", setk("preprocess.version", 7), ["preprocess", "version"]),
    ("image-size-mismatch", setk("preprocess.image_size", 128),
     ["preprocess.image_size", "128", "input.image_size", str(SIZE)]),
    ("modes-empty", setk("modes", {}), ["modes", "at least one"]),
    ("modes-list", setk("modes", ["rgb"]), ["modes", "mapping"]),
    ("unknown-mode", setk("modes.thermal", {"onnx": "rgb.onnx"}), ["modes.thermal", "unknown mode"]),
    ("mode-unknown-key", setk("modes.rgb.onnx_fp16", "rgb.onnx"), ["modes.rgb.onnx_fp16", "unknown key"]),
    ("onnx-missing", delk("modes.rgb.onnx"), ["modes.rgb.onnx", "missing"]),
    ("no-threshold", delk("modes.rgb.threshold"), ["modes.rgb.threshold", "missing"]),
    ("threshold-null", setk("modes.depth.threshold", None), ["modes.depth.threshold", "missing"]),
    ("threshold-score-missing", delk("modes.rgb.threshold.score"), ["modes.rgb.threshold.score", "missing"]),
    ("threshold-nan", setk("modes.rgb.threshold.score", float("nan")), ["modes.rgb.threshold.score", "finite"]),
    ("threshold-inf", setk("modes.rgbd.threshold.pixel", float("inf")), ["modes.rgbd.threshold.pixel", "finite"]),
    ("threshold-str", setk("modes.rgb.threshold.score", "3.2"), ["modes.rgb.threshold.score", "number"]),
    ("threshold-bool", setk("modes.rgb.threshold.pixel", True), ["modes.rgb.threshold.pixel", "number"]),
    ("target-frr-0", setk("modes.rgb.threshold.target_frr", 0.0), ["modes.rgb.threshold.target_frr", "(0, 1)"]),
    ("target-frr-1", setk("modes.rgb.threshold.target_frr", 1), ["modes.rgb.threshold.target_frr", "(0, 1)"]),
    ("expected-frr", setk("modes.rgb.threshold.expected_frr", 1.5), ["modes.rgb.threshold.expected_frr", "[0, 1]"]),
    ("n-validation-0", setk("modes.rgb.threshold.n_validation", 0), ["modes.rgb.threshold.n_validation", ">= 1"]),
    ("n-validation-float", setk("modes.rgb.threshold.n_validation", 23.0),
     ["modes.rgb.threshold.n_validation", "integer"]),
    ("precision", setk("modes.rgb.threshold.precision", "fp16"), ["modes.rgb.threshold.precision", "fp32, int8"]),
    ("int8-threshold-without-int8-graph", setk("modes.rgb.threshold.precision", "int8"),
     ["modes.rgb.threshold.precision", "modes.rgb.onnx_int8"]),
    ("threshold-unknown-key", setk("modes.rgb.threshold.image", 1.0), ["modes.rgb.threshold.image", "unknown key"]),
    ("inputs-missing", delk("modes.rgb.inputs"), ["modes.rgb.inputs", "missing"]),
    ("inputs-wrong", setk("modes.rgb.inputs", ["rgb", "depth"]), ["modes.rgb.inputs", "[rgb]"]),
    ("inputs-order", setk("modes.depth.inputs", ["foreground", "depth"]),
     ["modes.depth.inputs", "[depth, foreground]"]),
    ("inputs-str", setk("modes.rgb.inputs", "rgb"), ["modes.rgb.inputs", "list"]),
    ("outputs-wrong", setk("modes.rgb.outputs", ["score"]), ["modes.rgb.outputs", "anomaly_map"]),
    ("heatmap-missing", delk("modes.rgb.heatmap"), ["modes.rgb.heatmap", "missing"]),
    ("heatmap-order", setk("modes.rgb.heatmap.low", 5.0), ["modes.rgb.heatmap", "low must be below high"]),
    ("heatmap-nan", setk("modes.rgb.heatmap.high", float("nan")), ["modes.rgb.heatmap.high", "finite"]),
    ("engines-dir-missing", setk("engines", {}), ["engines.dir", "missing"]),
    ("engines-escape", setk("engines.dir", "../engines"), ["engines.dir", "outside the bundle"]),
    ("provenance-created", delk("provenance.created"), ["provenance.created", "missing"]),
    ("provenance-code", delk("provenance.code_version"), ["provenance.code_version", "missing"]),
    ("provenance-fingerprint", delk("provenance.training_data_fingerprint"),
     ["provenance.training_data_fingerprint", "missing"]),
    ("provenance-fingerprint-bad", setk("provenance.training_data_fingerprint", "abc"),
     ["provenance.training_data_fingerprint", "sha256"]),
    ("provenance-metrics", setk("provenance.metrics", [1, 2]), ["provenance.metrics", "mapping"]),
    ("files-bad-digest", lambda d: d["files"].update({"rgb.onnx": "xyz"}), ["files.rgb.onnx", "sha256"]),
    ("files-not-mapping", setk("files", ["rgb.onnx"]), ["files", "mapping"]),
]


@pytest.mark.parametrize("mutate,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_schema_errors_name_the_key(bundle_dir, mutate, expected):
    msg = load_error(edit(bundle_dir, mutate))
    assert "bundle.yaml" in msg
    for s in expected:
        assert s in msg, f"{s!r} not in {msg!r}"


# --------------------------------------------------------------------------- files and hashes


def test_referenced_file_missing_is_named(bundle_dir):
    (bundle_dir / "depth.onnx").unlink()
    msg = load_error(bundle_dir, verify_hashes=False)  # existence is checked even without hashes
    assert "depth.onnx" in msg and "modes.depth.onnx" in msg and "not found" in msg


def test_int8_file_missing_is_named(bundle_dir):
    (bundle_dir / "rgbd.int8.onnx").unlink()
    msg = load_error(bundle_dir)
    assert "rgbd.int8.onnx" in msg and "modes.rgbd.onnx_int8" in msg


def test_file_not_listed_in_files(bundle_dir):
    msg = load_error(edit(bundle_dir, lambda d: d["files"].pop("rgb.onnx")))
    assert "rgb.onnx" in msg and "not listed in 'files'" in msg


def test_listed_file_missing(bundle_dir):
    (bundle_dir / "calib.npz").write_bytes(b"c")
    edit(bundle_dir, lambda d: d["files"].update({"calib.npz": sha(b"c")}))
    assert load_bundle(bundle_dir).files["calib.npz"] == sha(b"c")  # extra listed files are fine (and verified)
    (bundle_dir / "calib.npz").unlink()
    msg = load_error(bundle_dir)
    assert "files.calib.npz" in msg and "not found" in msg


def test_sha256_mismatch_names_file_and_both_hashes(bundle_dir):
    listed = read_doc(bundle_dir)["files"]["rgb.onnx"]
    (bundle_dir / "rgb.onnx").write_bytes(b"truncated")
    msg = load_error(bundle_dir)
    assert "rgb.onnx" in msg and "sha256 mismatch" in msg
    assert listed[:12] in msg and sha(b"truncated")[:12] in msg
    assert listed not in msg  # shortened


def test_verify_hashes_false_skips_the_hash_check(bundle_dir):
    (bundle_dir / "rgbd.int8.onnx").write_bytes(b"changed")
    b = load_bundle(bundle_dir, verify_hashes=False)
    assert not b.hashes_verified and "rgbd" in b.modes
    with pytest.raises(BundleError, match="rgbd.int8.onnx"):
        load_bundle(bundle_dir)


def test_uppercase_digest_and_dot_slash_paths_are_normalised(bundle_dir):
    def fn(doc):
        doc["files"] = {f"./{k}": v.upper() for k, v in doc["files"].items()}
        doc["modes"]["rgb"]["onnx"] = "./rgb.onnx"
    b = load_bundle(edit(bundle_dir, fn))
    assert b.modes["rgb"].onnx == b.root / "rgb.onnx"
    assert b.files["rgb.onnx"] == file_sha256(bundle_dir / "rgb.onnx")


def test_file_listed_twice(bundle_dir):
    def fn(doc):
        doc["files"]["./rgb.onnx"] = doc["files"]["rgb.onnx"]
    msg = load_error(edit(bundle_dir, fn))
    assert "rgb.onnx" in msg and "listed twice" in msg


@pytest.mark.parametrize("bad", ["../rgb.onnx", "sub/../../rgb.onnx", "/tmp/rgb.onnx", "..\\rgb.onnx"])
def test_paths_escaping_the_bundle_are_errors(bundle_dir, bad):
    msg = load_error(edit(bundle_dir, setk("modes.rgb.onnx", bad)))
    assert "modes.rgb.onnx" in msg and bad in msg


def test_files_key_escaping_the_bundle(bundle_dir):
    msg = load_error(edit(bundle_dir, lambda d: d["files"].update({"../x.onnx": "0" * 64})))
    assert "../x.onnx" in msg and "outside the bundle" in msg


def test_symlink_out_of_the_bundle_is_an_error(tmp_path):
    root = make_bundle(tmp_path / "b")
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(b"fake fp32 onnx for rgb")
    (root / "rgb.onnx").unlink()
    try:
        (root / "rgb.onnx").symlink_to(outside)
    except OSError:
        pytest.skip("no symlinks here")
    msg = load_error(root)
    assert "modes.rgb.onnx" in msg and "outside the bundle" in msg


def test_symlink_inside_the_bundle_is_fine(tmp_path):
    root = make_bundle(tmp_path / "b")
    (root / "store").mkdir()
    (root / "rgb.onnx").rename(root / "store" / "rgb.onnx")
    try:
        (root / "rgb.onnx").symlink_to(root / "store" / "rgb.onnx")
    except OSError:
        pytest.skip("no symlinks here")
    assert load_bundle(root).modes["rgb"].onnx.read_bytes() == b"fake fp32 onnx for rgb"


# --------------------------------------------------------------------------- ModeSpec.graph and Bundle.mode


def test_graph_by_precision(bundle_dir):
    b = load_bundle(bundle_dir)
    assert b.modes["rgbd"].graph("fp32") == b.root / "rgbd.onnx"
    assert b.modes["rgbd"].graph("int8") == b.root / "rgbd.int8.onnx"
    assert b.modes["rgbd"].precisions == ("fp32", "int8")
    assert b.modes["rgb"].graph("fp32") == b.root / "rgb.onnx"
    assert b.modes["rgb"].precisions == ("fp32",)
    with pytest.raises(BundleError, match=r"mode 'rgb' has no INT8 graph") as info:
        b.modes["rgb"].graph("int8")
    assert info.value.key == "modes.rgb.onnx_int8"
    with pytest.raises(BundleError, match=r"unknown precision 'fp16'.*'rgbd'"):
        b.modes["rgbd"].graph("fp16")


def test_mode_lookup_lists_available_modes(tmp_path):
    b = load_bundle(make_bundle(tmp_path / "b", modes=("rgbd", "rgb"), int8=()))
    assert b.mode("rgb") is b.modes["rgb"]
    with pytest.raises(BundleError, match=r"mode 'depth' is not in this bundle \(available: rgbd, rgb\)"):
        b.mode("depth")


# --------------------------------------------------------------------------- summary and CLI


def test_summary_mentions_modes_files_precisions_and_thresholds(bundle_dir):
    b = load_bundle(bundle_dir)
    text = bundle_summary(b)
    assert len(text.splitlines()) > 5
    assert "rd" in text and "2026.11.24-abc123" in text
    for m, score in SCORES.items():
        assert f"  {m}:" in text
        assert f"{m}.onnx" in text
        assert f"score > {score:g}" in text
    assert "rgbd.int8.onnx" in text
    assert "precision available: fp32, int8" in text and "precision available: fp32\n" in text
    assert "pixel > 2.1" in text and "threshold (int8)" in text and "threshold (fp32)" in text
    assert "sha256 verified" in text
    assert "NOT verified" in bundle_summary(load_bundle(bundle_dir, verify_hashes=False))


def _cli():
    p = argparse.ArgumentParser(prog="rgbd-edge")
    add_parser(p.add_subparsers(dest="cmd", required=True))
    return p


def test_cli_check_bundle_ok(bundle_dir, capsys):
    a = _cli().parse_args(["check-bundle", str(bundle_dir)])
    assert a.func(a) == 0
    out, err = capsys.readouterr()
    assert "rgbd" in out and "score > 3.2" in out and "sha256 verified" in out and err == ""


def test_cli_check_bundle_error_returns_2(bundle_dir, capsys):
    (bundle_dir / "rgb.onnx").write_bytes(b"corrupt")
    a = _cli().parse_args(["check-bundle", str(bundle_dir)])
    assert a.func(a) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("rgbd-edge check-bundle: error: ") and "rgb.onnx" in err

    a = _cli().parse_args(["check-bundle", str(bundle_dir), "--no-verify"])
    assert a.func(a) == 0
    assert "NOT verified" in capsys.readouterr().out


def test_cli_missing_directory_returns_2(tmp_path, capsys):
    assert main([str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err


def test_bundle_module_imports_nothing_heavy():
    code = ("import sys, edge.bundle; bad = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
