"""Why does RGB-D score below RGB alone in DBRN runs bounded to the CPU hour? Per trained run:
I-AUROC per mode on the cable_gland test split with the depth foreground mask on (as evaluated) and
off, and the ISM's mean depth weight (full scale) on good and on defective test images.

    .venv/bin/python benchmarks/dbrn_fusion_probe.py --run RUN_DIR[=LABEL] [--run ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._report import command, machine, missing_data, run_probe_parser, write_section  # noqa: E402
from calibrate.dataset import load_raw, prepare  # noqa: E402
from convert.train import load_run  # noqa: E402


def scores_and_depth_weight(model, split, mode: str, foreground_mask: bool, batch: int = 8):
    """Image scores and the mean ISM depth weight per test image, the foreground mask on or off."""
    keep = model.cfg.mask_maps_with_foreground
    model.cfg.mask_maps_with_foreground = foreground_mask
    scores, weights = [], []
    try:
        with torch.no_grad():
            for i in range(0, len(split), batch):
                rgb, depth, fg = (torch.from_numpy(a[i:i + batch]) for a in (split.rgb, split.depth, split.fg))
                _, s, raw = model(rgb, depth, fg, mode)
                scores.append(s.numpy())
                weights.append(raw["ism_weights"][:, 1].mean((1, 2)).numpy())
    finally:
        model.cfg.mask_maps_with_foreground = keep
    return np.concatenate(scores), np.concatenate(weights)


def main(argv=None) -> int:
    ap = run_probe_parser(__doc__)
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    torch.set_num_threads(a.threads)
    raw = load_raw(a.data, "test", False)
    y = np.array([float(s.mask is not None and s.mask.max() > 0) for s in raw])
    rows = []
    for spec in a.run:
        run, _, label = spec.partition("=")
        model, params, _ = load_run(run)
        model.eval()
        split = prepare(raw, params, False)
        for mode in ("rgbd", "rgb"):
            cells = []
            for fgm in (True, False):
                s, w = scores_and_depth_weight(model, split, mode, fgm)
                cells.append(f"{roc_auc_score(y, s):.3f}")
            rows.append(f"| {label or Path(run).name} | {mode} | {cells[0]} | {cells[1]} | "
                        f"{w[y == 0].mean():.3f} / {w[y == 1].mean():.3f} |")
    body = f"""## DBRN fusion in runs bounded to the hour (`dbrn_fusion_probe`)

I-AUROC on the cable_gland test split ({int((y == 0).sum())} good, {int(y.sum())} defective) with the
depth foreground mask on the map (as evaluated and exported) and off, and the ISM's mean depth weight
at full scale on good / defective images. In `rgb` mode the depth pair is the zero placeholder.

| run | mode | I-AUROC, mask on | I-AUROC, mask off | ISM depth weight good / defective |
|---|---|---|---|---|
{chr(10).join(rows)}

- Machine: {machine()}; PyTorch {torch.__version__}.
- Command: `{command(__file__, argv)}`
"""
    print(body)
    print(f"written to {write_section('dbrn_fusion_probe', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
