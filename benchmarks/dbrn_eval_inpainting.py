"""Inpainting passes at evaluation only: the same trained DBRN weights evaluated with and without
them (`inpaint_cell` changed after training), on cable_gland's test split.

The branches learn to fill the zeroed regions of the "masked out" pseudo-anomalies, so a run
trained with the plain single pass can still inpaint the checkerboard cells; this measures what
that does to each mode.

    .venv/bin/python benchmarks/dbrn_eval_inpainting.py --run RUN_DIR[=LABEL] [--run ...] [--cell 8]

Writes section `dbrn_eval_inpainting` of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._report import command, fmt, machine, missing_data, run_probe_parser, write_section  # noqa: E402
from calibrate.dataset import load_raw, prepare  # noqa: E402
from calibrate.evaluation import score_split  # noqa: E402
from convert.evaluate import infer  # noqa: E402
from convert.models import create_model  # noqa: E402
from convert.models.rd import MODES  # noqa: E402
from convert.train import load_run  # noqa: E402


# Scores are normalised by the normal validation spread (std 1 there): a spread this small on the
# test split means the map has saturated and the AUROC ranks rounding noise.
FLAT = 0.01


def with_cell(model, run: dict, cell: int):
    """The same weights and score statistics, inpainting passes set to `cell` (0 = off)."""
    other = create_model("dbrn", config={**run["model_config"], "inpaint_cell": cell}, preset=None)
    other.load_state_dict(model.state_dict())
    return other.eval()


def main(argv=None) -> int:
    ap = run_probe_parser(__doc__)
    ap.add_argument("--cell", type=int, default=8, help="inpainting cell in pixels when switched on")
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    torch.set_num_threads(a.threads)
    raw = load_raw(a.data, "test", False)
    rows = []
    for spec in tqdm(a.run, desc="runs"):
        path, _, label = spec.partition("=")
        model, params, run = load_run(path)
        if run["model"] != "dbrn":
            raise ValueError(f"{path}: a {run['model']} run; this compares DBRN's inpainting passes")
        test = prepare(raw, params, False)
        trained = model.cfg.inpaint_cell
        for cell in (trained, a.cell if trained == 0 else 0):
            m = model if cell == trained else with_cell(model, run, cell)
            res, flat = {}, {}
            for mode in MODES:
                maps, scores, _ = infer(m, test, mode, False)
                res[mode] = score_split(maps, scores, test, mode)
                flat[mode] = float(scores.std()) < FLAT
            rows.append(f"| {label or path} | {trained or 'off'} | {cell or 'off'} | "
                        + " / ".join(fmt(res[mode]["i_auroc"]) + ("*" if flat[mode] else "") for mode in MODES)
                        + f" | {fmt(res['rgbd']['p_auroc'])} | {fmt(res['rgbd']['aupro'])} |")
            print(rows[-1], flush=True)
    body = f"""## DBRN: inpainting passes at evaluation only (`dbrn_eval_inpainting`)

Each trained run evaluated twice on cable_gland's test split ({len(raw)} images): as trained, and
with the inpainting passes switched (`inpaint_cell` {a.cell} if it was trained without them, off
if it was trained with them); same weights, same score statistics (I-AUROC per mode does not
depend on them). P-AUROC and AUPRO are rgbd's, at the masks' 400 x 400 resolution.

| run | cell in training | cell at evaluation | I-AUROC rgbd / rgb / depth | P-AUROC | AUPRO |
|---|---|---|---|---|---|
{chr(10).join(rows)}

- \* the mode's test scores are flat (standard deviation under {FLAT} in units of the normal
  validation spread): the mask has saturated and that AUROC ranks rounding noise, not defects.
- With 11 good test images each I-AUROC is uncertain by about +-0.2 (`dbrn_diagnosis`).
- Machine: {machine()}; PyTorch {torch.__version__}, {a.threads} threads.
- Command: `{command(__file__, argv)}`
"""
    print(write_section("dbrn_eval_inpainting", body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
