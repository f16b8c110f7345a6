"""DBRN training step time of edge-preset variants that make a step cheaper, alternated step by step
in one process so the machine's day-to-day speed cancels out: the discriminator at a quarter of the
input (`disc_stride=4`), reconstruction heads at 1 and 1/2 only (`scales=[1, 2]`), both, and a
step of the branches alone (the first phase of `branch_only_fraction`). bf16,
batch 4 (the preset's), cable_gland training captures with fresh pseudo-anomalies. What these
variants do to accuracy is a full run each (`dbrn_development_log`), not this script.

    .venv/bin/python benchmarks/dbrn_step_variants.py [--data DIR] [--steps N] [--batch B]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._report import CABLE_GLAND, command, machine, missing_data, write_section  # noqa: E402
from benchmarks.train_step_precision import prepared, step_setup  # noqa: E402
from calibrate.dataset import load_raw  # noqa: E402
from convert.train import optimiser_step  # noqa: E402

VARIANTS = {
    "edge preset (discriminator at 1/2, heads at 1, 1/2, 1/4)": {},
    "`disc_stride=4`": {"disc_stride": 4},
    "`scales=[1, 2]`": {"scales": [1, 2]},
    "`disc_stride=4`, `scales=[1, 2]`": {"disc_stride": 4, "scales": [1, 2]},
    # the steps timed here are all early in the schedule, before the ISM and discriminator join
    "`branch_only_fraction`, a step of its branches-only phase": {"branch_only_fraction": 0.5},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(CABLE_GLAND))
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (after 2 untimed)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    torch.set_num_threads(a.threads)
    split, params = prepared("dbrn", load_raw(a.data, "train", False)[:10], {})
    setups = {name: step_setup("dbrn", over, "bf16", split, params, 10_000) for name, over in VARIANTS.items()}
    times = {k: [] for k in VARIANTS}
    np.random.seed(0)
    for it in range(a.steps + 2):
        for name, (trainer, opt, sched) in setups.items():
            idx = torch.randperm(len(split))[: a.batch]
            t0 = time.perf_counter()
            optimiser_step(trainer, opt, sched, idx)
            if it >= 2:
                times[name].append(time.perf_counter() - t0)
    base = float(np.median(next(iter(times.values()))))
    rows = [f"| {k} | {np.median(v):.3f} | {100 * (base - np.median(v)) / base:.0f} % |" for k, v in times.items()]
    body = f"""## DBRN training step of cheaper edge variants (`dbrn_step_variants`)

Median seconds per optimiser step (batch {a.batch}, bf16, {a.threads} threads, {a.steps} steps per variant,
alternated step by step in one process). Their accuracy in a 55-minute run is in `dbrn_development_log`.

| variant | s / step | saved |
|---|---|---|
{chr(10).join(rows)}

- Machine: {machine()}; PyTorch {torch.__version__}.
- Command: `{command(__file__, argv)}`
"""
    print(body)
    print(f"written to {write_section('dbrn_step_variants', body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
