"""rgbd-calibrate int8: calibrate, pick the method, report FP32 vs INT8."""
from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .dataset import load_normal_raw, load_raw, prepare
from .evaluation import score_split
from .int8 import KEEP_FP32_OPTIONAL, KEEP_FP32_PATTERNS, METHODS, calibration_ranges, fp32_nodes, quantize_int8
from .onnx_eval import run_split, session


def _evenly(items: list, n: int) -> list:
    if n <= 0 or n >= len(items):
        return items
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def load_split(data, split: str, params, progress: bool, limit: int = 0):
    return prepare(_evenly(load_raw(data, split, progress), limit), params, progress, f"preprocess {split}")


def validation_split(data, params, progress):
    """The normal held-out split (validation, else train), prepared, and its name."""
    raw, name = load_normal_raw(data, progress)
    return prepare(raw, params, progress, f"preprocess {name}"), name


def keep_candidates(onnx_path, keep_fp32=None) -> list[tuple[str, ...]]:
    """FP32 pattern sets to try: the given patterns (plus the smoothing) alone, or by default the
    measured sensitive layers, then those plus each combination of the KEEP_FP32_OPTIONAL groups
    that keeps more nodes in this graph, fewest FP32 nodes first."""
    if keep_fp32 is not None:
        return [("/blur", *keep_fp32)]
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    groups = [g for g in KEEP_FP32_OPTIONAL.values() if fp32_nodes(model, g)]
    sets = [KEEP_FP32_PATTERNS + sum(combo, ()) for r in range(len(groups) + 1)
            for combo in itertools.combinations(groups, r)]
    return sorted(sets, key=lambda s: len(fp32_nodes(model, s)))  # stable: the default stays first


def calibrate_int8(onnx_path, data, out, params, method: str = "auto", n_samples: int = 64,
                   keep_fp32=None, progress: bool = True) -> dict:
    onnx_path, out = Path(onnx_path), Path(out)
    keep_sets = keep_candidates(onnx_path, keep_fp32)
    names = [i.name for i in session(onnx_path).get_inputs()]
    mode = onnx_path.name.split(".")[0]
    calib = load_split(data, "train", params, progress, n_samples)
    feeds = [calib.feed(i, names) for i in range(len(calib))]
    val, val_name = validation_split(data, params, progress)
    ref_maps, ref_scores = run_split(onnx_path, val, progress=progress, desc="fp32 validation")

    methods = METHODS if method == "auto" else (method,)
    # One calibration pass a method: the FP32 graph, and so its ranges, are the same for every keep set.
    ranges = {m: calibration_ranges(onnx_path, feeds, m) for m in methods}
    candidates, best = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for ki, keep in enumerate(keep_sets):  # fewest FP32 nodes first: ties keep the smaller set
            for m in methods:
                path = Path(tmp) / f"{m}-{ki}.onnx"
                res = quantize_int8(onnx_path, path, ranges[m], keep_fp32=keep)
                maps, scores = run_split(path, val, progress=progress, desc=f"int8 {m} validation")
                c = {"method": m, "kept_fp32_patterns": list(keep),
                     "score_max_abs_diff": float(np.abs(scores - ref_scores).max()),
                     "map_mean_abs_diff": float(np.abs(maps - ref_maps).mean()),
                     "map_max_abs_diff": float(np.abs(maps - ref_maps).max())}
                candidates.append(c)
                # Closest to FP32 on normal data: no defects are needed to choose.
                if best is None or c["score_max_abs_diff"] < best[0]["score_max_abs_diff"]:
                    best = (c, res, path)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best[2], out)

    report = {
        "mode": mode, "fp32": str(onnx_path), "int8": str(out), "method": best[0]["method"],
        "selected_on": f"{val_name} ({len(val)} normal samples)", "candidates": candidates,
        "calibration_samples": len(feeds), "quantized_tensors": best[1].quantized_nodes,
        "kept_fp32_patterns": best[0]["kept_fp32_patterns"], "kept_fp32_nodes": best[1].fp32_nodes,
    }
    try:
        test = load_split(data, "test", params, progress)
    except (FileNotFoundError, ValueError):
        test = None
    if test is not None and (test.labels >= 0).any() and len(set(test.labels[test.labels >= 0])) == 2:
        f_maps, f_scores = run_split(onnx_path, test, progress=progress, desc="fp32 test")
        q_maps, q_scores = run_split(out, test, progress=progress, desc="int8 test")
        report["test"] = {
            "fp32": score_split(f_maps, f_scores, test, mode),
            "int8": score_split(q_maps, q_scores, test, mode),
            "map_max_abs_diff": float(np.abs(q_maps - f_maps).max()),
            "score_max_abs_diff": float(np.abs(q_scores - f_scores).max()),
        }
    return report
