"""rgbd-calibrate thresholds: run each exported mode on normal validation data."""
from __future__ import annotations

from pathlib import Path

from edge.modes import MODES

from .int8_pipeline import validation_split, load_split
from .onnx_eval import run_split
from .thresholds import ModeThreshold, detection_report, mode_threshold


def graph_for(export_dir: Path, mode: str, precision: str) -> tuple[Path, str] | None:
    fp32, int8 = export_dir / f"{mode}.onnx", export_dir / f"{mode}.int8.onnx"
    if precision == "int8" or (precision == "auto" and int8.is_file()):
        if not int8.is_file():
            raise FileNotFoundError(f"{int8} not found: run rgbd-calibrate int8 first or use --precision fp32")
        return int8, "int8"
    return (fp32, "fp32") if fp32.is_file() else None


def thresholds_for_export(export_dir, data, target_frr=0.01, pixel_fpr=1e-3, precision="auto",
                          progress=True) -> dict[str, ModeThreshold]:
    from edge.checks import load_yaml
    from edge.preprocess import PreprocessParams

    export_dir = Path(export_dir)
    pre = export_dir / "preprocess.yaml"
    if not pre.is_file():
        raise FileNotFoundError(f"{pre} not found: is {export_dir} an rgbd-convert export?")
    params = PreprocessParams.from_dict(load_yaml(pre))
    val, _ = validation_split(data, params, progress)
    try:
        test = load_split(data, "test", params, progress)
    except (FileNotFoundError, ValueError):
        test = None
    out = {}
    for mode in MODES:
        g = graph_for(export_dir, mode, precision)
        if g is None:
            continue
        maps, scores = run_split(g[0], val, progress=progress, desc=f"{mode} validation")
        th = mode_threshold(mode, maps, scores, target_frr, pixel_fpr, precision=g[1])
        if test is not None and (test.labels >= 0).any():
            _, t_scores = run_split(g[0], test, progress=progress, desc=f"{mode} test")
            th = detection_report(th, t_scores, test.labels)
        out[mode] = th
    if not out:
        raise FileNotFoundError(f"{export_dir}: no <mode>.onnx found")
    return out
