"""Training step time, fp32 against bf16 autocast (`rgbd-convert train --precision bf16`).

Times the shared loop's step (the trainer's loss with its fresh pseudo-anomalies, backward,
optimiser step) at batch 8 on cable_gland training captures, for the reverse-distillation
student's default, DBRN's edge preset, and DBRN at patch 2 with and without inpainting passes.
Writes section `train_step_precision`. What bf16 does to accuracy takes full training runs; this
measures step time only.

    python -m benchmarks.train_step_precision [--data DIR] [--steps N] [--captures N] [--threads T]
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from benchmarks._report import add_data_option, command, machine, missing_data, parser, write_section
from calibrate.dataset import load_raw, prepare
from convert.models import create_model
from convert.train import augment_samples, optimiser_step
from convert.trainers import make_trainer, trainer_defaults
from convert.trainers.common import PRECISIONS, bf16_is_native
from edge.preprocess import PreprocessParams, fit_depth_normalisation

# (label, model family, model config overrides)
P2 = {"patch_size": 2, "scales": [1, 2]}
CONFIGS = [
    ("rd, 256 x 256 (default)", "rd", {}),
    ("dbrn, 128 x 128, patch 2, no inpainting", "dbrn", {**P2, "inpaint_cell": 0}),
    ("dbrn, 128, patch 2, inpainting passes (`inpaint_cell=8`)", "dbrn", {**P2, "inpaint_cell": 8}),
    ("dbrn edge preset: 128, patch 4, scales 1/2/4, inpainting passes", "dbrn", {}),
]
STEPS_PER_EPOCH = 160  # cable_gland: 80 captures x 16 poses, batch 8


def prepared(name: str, raw, cache: dict):
    """(split, params) at the family's default input size, prepared once per size."""
    size = trainer_defaults(name)["image_size"]
    if size not in cache:
        params = fit_depth_normalisation([s.depth for s in raw], PreprocessParams(image_size=size))
        cache[size] = prepare(augment_samples(raw, 8, True), params, False), params
    return cache[size]


def step_setup(name: str, overrides: dict, precision: str, split, params, total_steps: int = 1000):
    """(trainer, optimiser, scheduler) in training mode, as the training loop builds them, for
    timing its step (convert.train.optimiser_step); torch seeded 0 first."""
    torch.manual_seed(0)
    model = create_model(name, config={"image_size": params.image_size, **overrides})
    trainer = make_trainer(name, model, split, params, precision)
    opt, sched = trainer.optimizer(1e-3, total_steps)
    trainer.train_mode()
    return trainer, opt, sched


def step_seconds(name: str, overrides: dict, precision: str, split, params, steps: int, warmup: int = 3) -> float:
    """Median seconds of the training loop's own step (convert.train.optimiser_step)."""
    np.random.seed(0)
    trainer, opt, sched = step_setup(name, overrides, precision, split, params)
    times = []
    for it in range(warmup + steps):
        idx = torch.randperm(len(split))[:8]
        t0 = time.perf_counter()
        optimiser_step(trainer, opt, sched, idx)
        if it >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> int:
    ap = parser(__file__, __doc__)
    add_data_option(ap)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration (after 3 untimed)")
    ap.add_argument("--captures", type=int, default=10, help="training captures loaded (x 16 poses)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    torch.set_num_threads(a.threads)
    raw = load_raw(a.data, "train", False)[: a.captures]
    rows, splits = [], {}
    for label, name, overrides in tqdm(CONFIGS, desc="configurations"):
        split, params = prepared(name, raw, splits)
        s = {p: step_seconds(name, overrides, p, split, params, a.steps) for p in PRECISIONS}
        rows.append(f"| {label} | {s['fp32']:.2f} | {s['bf16']:.2f} | {s['fp32'] / s['bf16']:.2f} x "
                    f"| {s['fp32'] * STEPS_PER_EPOCH / 60:.1f} / {s['bf16'] * STEPS_PER_EPOCH / 60:.1f} |")
    body = f"""## Training step time, fp32 against bf16 autocast (`train_step_precision`)

Median seconds per optimiser step (batch 8, {a.threads} threads, {a.steps} timed steps after 3
untimed, cable_gland training captures with fresh pseudo-anomalies for DBRN): the trainer's
forward and losses, backward and the optimiser step, as `rgbd-convert train` runs them with
`--precision fp32` (rd's default) and `--precision bf16` (dbrn's, where native). Under bf16 the forward pass runs in
bfloat16 autocast; weights, gradients, optimiser state, losses and every evaluated or exported
graph stay fp32. This CPU runs bf16 natively (AVX-512 BF16): {bf16_is_native()}.

| configuration | fp32 s / step | bf16 s / step | speed-up | one cable_gland epoch, min (fp32 / bf16) |
|---|---|---|---|---|
{chr(10).join(rows)}

- Step time only: what bf16 training does to accuracy takes full training runs.
- Machine: {machine()}; PyTorch {torch.__version__}.
- Command: `{command(__file__, argv)}`
"""
    print(write_section("train_step_precision", body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
