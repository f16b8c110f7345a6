"""Weight average against last step: one trained run, two sets of weights, the same test split.

A run trained with `--ema DECAY` exports the exponential moving average of its weights
(model.pt) and keeps the last step's weights in checkpoint.pt. Evaluating both from the same
trajectory compares them without the seed-to-seed spread (about 3 I-AUROC points) that separate
runs would add.

    .venv/bin/python benchmarks/dbrn_ema.py --run RUN_DIR[=LABEL] [--run ...]

Writes section `dbrn_ema` of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._report import command, fmt, machine, missing_data, run_probe_parser, write_section  # noqa: E402
from benchmarks.dbrn_score_variants import pseudo_validation  # noqa: E402
from calibrate.dataset import load_raw, prepare  # noqa: E402
from calibrate.evaluation import score_split  # noqa: E402
from convert.evaluate import infer  # noqa: E402
from convert.models.rd import MODES  # noqa: E402
from convert.train import load_run  # noqa: E402


def last_step(model, path: Path):
    """The run's model with the last step's weights (checkpoint.pt) in place of the average.
    The score statistics stay the average's: each metric per mode ranks one map or score, and
    the statistics only shift and scale it."""
    ck = torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=False)
    model.load_trained_state(ck["trained"])
    return model.eval()


@torch.no_grad()
def pseudo_auroc(model, pseudo: dict, mode: str, batch: int = 8) -> float:
    scores = [model(*(torch.from_numpy(a[i : i + batch]) for a in pseudo["x"]), mode)[1].numpy()
              for i in range(0, len(pseudo["x"][0]), batch)]
    return float(roc_auc_score(pseudo["labels"][mode], np.concatenate(scores)))


def evaluate_modes(model, test, pseudo: dict) -> dict:
    out = {}
    for mode in MODES:
        maps, scores, _ = infer(model, test, mode, False)
        out[mode] = {**score_split(maps, scores, test, mode), "pseudo": pseudo_auroc(model, pseudo, mode)}
    return out


def row(label: str, weights: str, res: dict) -> str:
    return f"| {label} | {weights} | " + " | ".join(
        " / ".join(fmt(res[m][k]) for m in MODES) for k in ("i_auroc", "p_auroc", "aupro", "pseudo")) + " |"


def main(argv=None) -> int:
    a = run_probe_parser(__doc__).parse_args(argv)
    if missing_data(a.data):
        return 2
    torch.set_num_threads(a.threads)
    raw, raw_val = load_raw(a.data, "test", False), load_raw(a.data, "validation", False)
    rows = []
    for spec in tqdm(a.run, desc="runs"):
        path, _, label = spec.partition("=")
        path = Path(path)
        model, params, run = load_run(path)
        weights = run.get("trained", {}).get("weights", "last step")
        if not weights.startswith("ema"):
            raise ValueError(f"{path}: trained without --ema; model.pt already holds the last step's weights")
        test = prepare(raw, params, False)
        # The same pseudo-anomalous copies for both weight sets (the synthesis does not read the model).
        pseudo = pseudo_validation(model, params, prepare(raw_val, params, False), draws=4, seed=0)
        label = label or path.name
        rows.append(row(label, f"{weights} (model.pt)", evaluate_modes(model, test, pseudo)))
        print(rows[-1], flush=True)
        rows.append(row(label, "last step (checkpoint.pt)", evaluate_modes(last_step(model, path), test, pseudo)))
        print(rows[-1], flush=True)
    body = f"""## DBRN: weight average against last step (`dbrn_ema`)

Each run evaluated twice on cable_gland's test split ({len(raw)} images): with the exponential
moving average of its weights that it exports, and with the last optimiser step's weights,
both from the same training trajectory, and on 4 pseudo-anomalous copies of each of the
{len(raw_val)} validation images (the training synthesis, seed 0, as in `dbrn_score_variants`): the
labelled set a choice may use without the test split. Every figure is rgbd / rgb / depth.

| run | weights | I-AUROC | P-AUROC | AUPRO | AUROC on validation pseudo-anomalies |
|---|---|---|---|---|---|
{chr(10).join(rows)}

- With 11 good and 44 defective test images, I-AUROC counts 484 pairs: one pair turned is 0.2
  points, one good image moved above every defective one is 9 points; a 95 % bootstrap interval
  is about +-0.2 wide (`dbrn_diagnosis`).
- Machine: {machine()}; PyTorch {torch.__version__}, {a.threads} threads.
- Command: `{command(__file__, argv)}`
"""
    print(write_section("dbrn_ema", body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
