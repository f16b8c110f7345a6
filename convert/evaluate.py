"""Evaluation of a torch run in MVTec 3D-AD conventions: I-AUROC, P-AUROC and
AUPRO (30 % FPR); the scoring itself lives in calibrate.evaluation."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from calibrate import plots
from calibrate.dataset import PreparedSplit, load_raw, prepare
from calibrate.evaluation import curves, gallery_items, score_split

from edge.modes import MODES
from .train import load_run


@torch.no_grad()
def infer(model, split: PreparedSplit, mode: str, progress: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Maps (N x S x S), scores (N) and median model latency per image in ms (batch 1)."""
    maps, scores, times = [], [], []
    model.eval()
    for i in tqdm(range(len(split)), desc=f"infer {mode}", disable=not progress, leave=False):
        t0 = time.perf_counter()
        x = [torch.from_numpy(a[i : i + 1]) for a in (split.rgb, split.depth, split.fg)]
        fused, score, _ = model(*x, mode)
        times.append(time.perf_counter() - t0)
        maps.append(fused[0, 0].numpy())
        scores.append(float(score[0]))
    return np.stack(maps), np.array(scores), 1000 * float(np.median(times))


def evaluate(run_dir, data, modes=MODES, out: str | Path | None = None, figures: bool = True, progress: bool = True):
    model, params, run = load_run(run_dir)
    test = prepare(load_raw(data, "test", progress), params, progress, "preprocess test")
    if not (test.labels >= 0).any():
        raise ValueError(f"{data}: the test split has no labelled images")
    results, roc, pro, outputs = [], {}, {}, {}
    for mode in modes:
        maps, scores, ms = infer(model, test, mode, progress)
        res = score_split(maps, scores, test, mode)
        res["ms_per_image"] = round(ms, 1)
        results.append(res)
        outputs[mode] = (maps, scores)
        (fpr, tpr), pro_curve = curves(maps, scores, test)
        roc[mode] = (fpr, tpr, res["i_auroc"])
        if pro_curve is not None:
            pro[mode] = (*pro_curve, res["aupro"])
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        if figures:
            stem = out.with_suffix("")
            plots.plot_roc(roc, f"{stem}_roc.png", title=f"Image ROC ({run['model']})")
            if pro:
                plots.plot_pro(pro, f"{stem}_pro.png", title=f"PRO ({run['model']})")
            for mode, (maps, scores) in outputs.items():
                plots.heatmap_gallery(gallery_items(maps, scores, test), f"{stem}_gallery_{mode}.png",
                                      title=f"{mode}: worst (left) and best test images")
    return results
