"""Train the reverse-distillation student on MVTec 3D-AD cable_gland (train/good)
and evaluate it on the test split: accuracy per mode, CPU latency, wall time.

    python -m benchmarks.rd_cable_gland [--data DIR] [--out RUN_DIR] [--epochs N] [--seed S]

Writes its section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._report import (REPO, add_data_option, command, fmt, machine, median_p99_ms, missing_data, parser,
                                torch_latency, write_section)
from calibrate.dataset import load_raw
from convert.evaluate import evaluate
from convert.train import TrainConfig, load_run, train
from edge.modes import MODES
from edge.preprocess import preprocess


def latency(model, params, sample, runs: int) -> dict:
    """Median / p99 ms at batch 1: preprocessing (numpy/opencv) and model per mode."""
    t = []
    for _ in range(max(runs // 4, 10)):
        t0 = time.perf_counter()
        p = preprocess(sample.rgb, sample.depth, params)
        t.append(time.perf_counter() - t0)
    out = {"preprocess": median_p99_ms(t)}
    rgb, depth = torch.from_numpy(p.rgb)[None], torch.from_numpy(p.depth)[None]
    fg = torch.from_numpy(p.foreground[None, None].astype(np.float32))
    for mode in MODES:
        out[mode] = torch_latency(model, (rgb, depth, fg), mode, runs, warmup=5)
    return out


def main(argv=None) -> int:
    ap = parser(__file__, __doc__)
    add_data_option(ap)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-rd-cable_gland"))
    ap.add_argument("--epochs", type=int, help="default: rd's (convert/trainers/rd.py)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=200, help="latency repetitions per mode")
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    cmd = command(__file__, argv)
    torch.set_num_threads(2)
    cfg = TrainConfig(epochs=a.epochs, seed=a.seed).resolved()
    t0 = time.time()
    train(a.data, a.out, cfg, progress=True)
    train_s = time.time() - t0
    results = evaluate(a.out, a.data, out=Path(a.out) / "eval.json", progress=True)
    model, params, run = load_run(a.out)
    lat = latency(model, params, load_raw(a.data, "test", False)[0], a.runs)
    n_params = sum(p.numel() for p in model.students.parameters())
    n_teacher = sum(p.numel() for p in model.teacher.parameters())

    rows = "\n".join(
        f"| {r['mode']} | {fmt(r['i_auroc'])} | {fmt(r['p_auroc'])} | {fmt(r['aupro'])} | "
        f"{lat[r['mode']][0]:.1f} / {lat[r['mode']][1]:.1f} |" for r in results
    )
    body = f"""## Reverse-distillation student on cable_gland (`rd_cable_gland`)

Trained on `train/good` ({run['data']['n_train']} captures x {cfg.rotations * (2 if cfg.flip else 1)} poses
by pose augmentation),
fusion statistics from `validation/good`, evaluated on the `test` split
({results[0]['n_images']} images, {results[0]['n_anomalous']} anomalous). Metrics at the masks' own
400 x 400 resolution; AUPRO up to 30 % FPR.

| mode | I-AUROC | P-AUROC | AUPRO | model ms, median / p99 (batch 1) |
|---|---|---|---|---|
{rows}

- Training wall time: {train_s / 60:.1f} min ({cfg.epochs} epochs, seed {cfg.seed}); preprocessing
  {lat['preprocess'][0]:.1f} ms / image (median, numpy + OpenCV).
- Model: `{run['model']}` with encoder `{run['model_config']['encoder']}`, image size
  {params.image_size}, depth encoding `{params.depth_encoding}`; {n_params / 1e6:.2f} M student
  parameters, {n_teacher / 1e6:.2f} M frozen teacher parameters.
- Latency: eager PyTorch {torch.__version__}, {torch.get_num_threads()} threads, {a.runs} runs per mode.
- Machine: {machine()}.
- Command: `{cmd}`
"""
    path = write_section("rd_cable_gland", body)
    print(body)
    print(f"written to {path}")
    (Path(a.out) / "bench.json").write_text(
        json.dumps({"results": results, "latency_ms": lat, "train_s": train_s}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
