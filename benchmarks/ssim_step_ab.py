"""DBRN training step with the losses' SSIM as five 11 x 11 window passes (before) against the
separable pass over the five moments (convert.models.dbrn.ssim_map), alternating step by step in
one process so the machine's day-to-day speed cancels out. Edge preset, bf16, cable_gland
training captures with fresh pseudo-anomalies.

    .venv/bin/python benchmarks/ssim_step_ab.py [--data DIR] [--steps N] [--batch B ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import convert.models.dbrn as dbrn  # noqa: E402
from benchmarks._report import CABLE_GLAND, command, machine, missing_data, write_section  # noqa: E402
from benchmarks.train_step_precision import prepared, step_setup  # noqa: E402
from calibrate.dataset import load_raw  # noqa: E402
from convert.models.layers import gaussian_1d  # noqa: E402
from convert.train import optimiser_step  # noqa: E402


def ssim_map_2d(a, b, size: int = 11, sigma: float = 1.5):
    """The previous implementation: one 11 x 11 depthwise pass per local moment."""
    c = a.shape[1]
    size = min(size, a.shape[-1] - (1 - a.shape[-1] % 2))
    g = gaussian_1d(size // 2, sigma).to(a)
    win = (g[:, None] * g[None, :])[None, None].repeat(c, 1, 1, 1)
    rng = (b.amax((1, 2, 3)) - b.amin((1, 2, 3))).clamp_min(1e-3).view(-1, 1, 1, 1)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2

    def filt(x):
        return F.conv2d(x, win, padding=size // 2, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    saa, sbb, sab = filt(a * a) - mu_a ** 2, filt(b * b) - mu_b ** 2, filt(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(CABLE_GLAND))
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant and batch size")
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (default 4 and 8)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    torch.set_num_threads(a.threads)
    split, params = prepared("dbrn", load_raw(a.data, "train", False)[:4], {})
    trainer, opt, sched = step_setup("dbrn", {}, "bf16", split, params, 10_000)
    separable = dbrn.ssim_map
    variants = {"2-D window": ssim_map_2d, "separable": separable}
    rows = []
    try:
        for batch in a.batch or [4, 8]:
            times = {k: [] for k in variants}
            for it in range(2 * a.steps + 4):
                name = list(variants)[it % 2]
                dbrn.ssim_map = variants[name]
                t0 = time.perf_counter()
                optimiser_step(trainer, opt, sched, torch.randperm(len(split))[:batch])
                if it >= 4:
                    times[name].append(time.perf_counter() - t0)
            old, new = (float(np.median(times[k])) for k in variants)
            rows.append(f"| {batch} | {old:.3f} | {new:.3f} | {100 * (old - new) / old:.0f} % |")
    finally:
        dbrn.ssim_map = separable
    body = f"""## SSIM in the DBRN training step (`ssim_step_ab`)

Median seconds per optimiser step of the edge preset (bf16, {a.threads} threads, {a.steps} steps per
variant, alternating), the losses' SSIM computed with five 11 x 11 window passes or with one separable
pass over the five moments (the same values to 1e-6, `tests/test_dbrn.py`).

| batch | 2-D window s / step | separable s / step | saved |
|---|---|---|---|
{chr(10).join(rows)}

- Machine: {machine()}; PyTorch {torch.__version__}.
- Command: `{command(__file__, argv)}`
"""
    print(body)
    print(f"written to {write_section('ssim_step_ab', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
