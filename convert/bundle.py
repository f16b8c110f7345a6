"""rgbd-convert bundle: everything a Jetson needs, in one directory (and a .tar.gz).

Steps: export the FP32 graphs (with torch/ONNX Runtime parity on real
samples), lint them for TensorRT, quantise to INT8 Q/DQ (optional), derive
thresholds per mode from normal validation samples, measure FP32 and INT8 on
the labelled test split where there is one, and write bundle.yaml with the
sha256 of every graph. Then seal it (convert/package.py): manifest.sha256 over
every file, bundle.yaml included, an Ed25519 bundle.sig with ``sign``, and the
normalised BUNDLE_DIR.tar.gz. The runtime validates it with edge.bundle.load_bundle.
"""
from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import yaml

from calibrate.int8_pipeline import calibrate_int8, load_split
from calibrate.evaluation import score_split
from calibrate.onnx_eval import run_split
from calibrate.threshold_pipeline import thresholds_for_export

from edge.digest import sha256_file
from edge.modes import MODES

from .export import export_run, parity_ok
from .package import load_private_key, seal_bundle, write_archive
from .train import load_run

SCHEMA_VERSION = 1


def code_version() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"git:{rev}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"rgbd-edge {version('rgbd-edge')}"


def lint(paths) -> dict:
    from .check_trt import check_file

    out = {}
    for p in paths:
        findings = check_file(p)
        errors = [str(f) for f in findings if f.severity == "error"]
        if errors:
            raise ValueError(f"{p} would not build on TensorRT 10.3:\n  " + "\n  ".join(errors))
        out[Path(p).name] = {"errors": 0, "warnings": sum(f.severity == "warning" for f in findings)}
    return out


def make_bundle(run_dir, data, out, int8: bool = True, target_frr: float = 0.01, pixel_fpr: float = 1e-3,
                version: str | None = None, method: str = "auto", modes=MODES, tar: bool = True,
                progress: bool = True, sign: str | Path | None = None) -> Path:
    """Export, quantise, threshold and write the bundle ``out``; seal it (signed with the private key
    file ``sign``, if given) and, with ``tar``, write ``out``.tar.gz beside it."""
    out = Path(out)
    if (out / "bundle.yaml").exists():
        raise FileExistsError(f"{out} already holds a bundle: choose another --out")
    if sign is not None:
        load_private_key(sign)  # a wrong key path fails now, not after the export and calibration
    _, params, run = load_run(run_dir)
    manifest = export_run(run_dir, out, modes=modes, check_data=data, progress=progress)
    for m in manifest["modes"].values():
        if not parity_ok(m["parity"]):
            raise ValueError(f"ONNX Runtime and torch disagree on {m['onnx']}: {m['parity']}")
    graphs = [out / f"{m}.onnx" for m in modes]
    int8_reports = {}
    if int8:
        for m in modes:
            int8_reports[m] = calibrate_int8(out / f"{m}.onnx", data, out / f"{m}.int8.onnx", params,
                                             method=method, progress=progress)
            graphs.append(out / f"{m}.int8.onnx")
    lint_report = lint(graphs)
    th = thresholds_for_export(out, data, target_frr, pixel_fpr, "int8" if int8 else "fp32", progress)

    metrics = {}
    if int8:
        for m, r in int8_reports.items():
            if "test" in r:
                metrics[m] = r["test"]
    else:
        try:
            test = load_split(data, "test", params, progress)
            for m in modes:
                maps, scores = run_split(out / f"{m}.onnx", test, progress=progress, desc=f"{m} test")
                metrics[m] = {"fp32": score_split(maps, scores, test, m)}
        except (FileNotFoundError, ValueError):
            pass

    mode_entries = {}
    for m in modes:
        e = manifest["modes"][m]
        entry = {"onnx": e["onnx"], "inputs": e["inputs"], "outputs": e["outputs"]}
        if int8:
            entry["onnx_int8"] = f"{m}.int8.onnx"
        entry["threshold"] = th[m].to_bundle()
        entry["heatmap"] = {"low": th[m].heatmap_low, "high": th[m].heatmap_high}
        mode_entries[m] = entry
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": run["model"], "family": run["model"],
                  "version": version or f"{created[:10]}-{run['data']['train_fingerprint'][:8]}"},
        "input": {"image_size": params.image_size, "layout": "NCHW", "dtype": "float32"},
        "preprocess": params.to_dict(),
        "modes": mode_entries,
        "engines": {"dir": "engines"},
        "provenance": {
            "created": created,
            "code_version": code_version(),
            "training_data_fingerprint": run["data"]["train_fingerprint"],
            "training_data": run["data"]["root"],
            "model_config": run["model_config"],
            "metrics": metrics,
            "parity": {m: manifest["modes"][m]["parity"] for m in modes},
            "int8": {m: {k: r[k] for k in ("method", "candidates", "calibration_samples", "kept_fp32_patterns", "kept_fp32_nodes")}
                     for m, r in int8_reports.items()},
            "thresholds": {m: t.to_dict() for m, t in th.items()},
            "check_trt": lint_report,
        },
    }
    (out / "export.json").unlink(missing_ok=True)  # folded into bundle.yaml
    doc["files"] = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file() and p.name != "bundle.yaml"}
    (out / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    seal_bundle(out, key=sign)  # checks it as the Jetson will
    if tar:
        write_archive(out)
    return out
