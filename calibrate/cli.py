"""`rgbd-calibrate`: INT8 quantisation and decision thresholds from normal samples."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from edge.modes import MODES


def find_preprocess(onnx_path: Path, explicit: str | None):
    from edge.checks import load_yaml
    from edge.preprocess import PreprocessParams

    path = Path(explicit) if explicit else onnx_path.parent / "preprocess.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --preprocess (written by rgbd-convert export)")
    return PreprocessParams.from_dict(load_yaml(path))


def mode_of(onnx_path: Path) -> str:
    stem = onnx_path.name.split(".")[0]
    if stem not in MODES:
        raise ValueError(f"{onnx_path}: cannot tell the mode from the file name (expected rgbd/rgb/depth.onnx)")
    return stem


def _cmd_int8(a) -> int:
    from .int8_pipeline import calibrate_int8

    onnx_path = Path(a.onnx)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} not found")
    params = find_preprocess(onnx_path, a.preprocess)
    report = calibrate_int8(onnx_path, a.data, Path(a.out), params, method=a.method, n_samples=a.samples,
                            keep_fp32=a.keep_fp32, progress=not a.quiet)
    text = json.dumps(report, indent=2)
    if a.report:
        Path(a.report).write_text(text)
    print(text)
    return 0


def _cmd_thresholds(a) -> int:
    from .threshold_pipeline import thresholds_for_export

    export_dir = Path(a.onnx) if a.onnx else Path(a.run) / "export"
    if export_dir.is_file():
        export_dir = export_dir.parent
    if not export_dir.is_dir():
        raise FileNotFoundError(f"{export_dir} not found: run rgbd-convert export first (or pass --onnx DIR)")
    result = thresholds_for_export(export_dir, a.data, target_frr=a.frr, pixel_fpr=a.pixel_fpr,
                                   precision=a.precision, progress=not a.quiet)
    out = Path(a.out) if a.out else export_dir / "thresholds.yaml"
    out.write_text(yaml.safe_dump({m: t.to_dict() for m, t in result.items()}, sort_keys=False))
    for m, t in result.items():
        det = "" if t.test_detection_rate is None else (
            f", test: detection {t.test_detection_rate:.1%} / false rejects {t.test_frr:.1%}")
        print(f"{m:>5} ({t.precision}): score > {t.score:.3f}  expected FRR {t.expected_frr:.2%} "
              f"(target {t.target_frr:.1%}, validation n={t.n_validation}){det}")
    print(f"written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rgbd-calibrate", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("int8", help="explicit INT8 (Q/DQ) ONNX calibrated on normal training samples")
    q.add_argument("--onnx", required=True, help="FP32 mode graph from rgbd-convert export")
    q.add_argument("--data", required=True, help="dataset root: train/good for calibration, validation and test for the report")
    q.add_argument("--out", required=True, help="M.int8.onnx")
    q.add_argument("--method", default="auto", choices=["auto", "minmax", "entropy", "percentile"],
                   help="auto tries each and keeps the one closest to FP32 on validation data")
    q.add_argument("--samples", type=int, default=64, help="calibration samples from the train split")
    q.add_argument("--keep-fp32", nargs="*", default=None, help="node-name patterns kept in FP32 (default: the measured sensitive layers, tried "
                        "with and without the optional groups the graph has: rd's teacher blocks 2-3, dbrn's branch "
                        "embeddings and heads and its discriminator decoder; the set closest to FP32 on validation "
                        "data is kept)")
    q.add_argument("--preprocess", help="preprocess.yaml (default: beside the ONNX)")
    q.add_argument("--report", help="write the JSON report here too")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_cmd_int8)

    t = sub.add_parser("thresholds", help="per-mode decision thresholds from normal validation samples")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory (uses RUN_DIR/export)")
    src.add_argument("--onnx", help="export directory with <mode>.onnx and preprocess.yaml")
    t.add_argument("--data", required=True)
    t.add_argument("--frr", type=float, default=0.01, help="target false-reject rate (default 1 %%)")
    t.add_argument("--pixel-fpr", type=float, default=1e-3, help="share of normal pixels above the pixel threshold")
    t.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"],
                   help="graph to threshold (auto: INT8 where <mode>.int8.onnx exists)")
    t.add_argument("--out", help="thresholds.yaml (default: in the export directory)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_thresholds)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"rgbd-calibrate {a.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
