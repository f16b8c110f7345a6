"""Where does a DBRN run's RGB-D score lose to RGB alone? Per good test image of cable_gland and
per mode, how many defective images score no higher than it (the good-defective pairs ranked
wrong, what I-AUROC counts), how the RGB-D image score correlates with each single stream's, and
the importance scoring module's mean RGB weight on the part in rgbd mode.

    .venv/bin/python benchmarks/dbrn_mode_pairs.py --run RUN_DIR[=LABEL] [--run ...]

Writes section `dbrn_mode_pairs` of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._report import command, machine, missing_data, run_probe_parser, write_section  # noqa: E402
from calibrate.dataset import load_raw, prepare  # noqa: E402
from convert.evaluate import infer  # noqa: E402
from convert.models.rd import MODES  # noqa: E402
from convert.train import load_run  # noqa: E402


def pairs_lost(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per good image: the defective images scoring no higher (ties count as lost, as half in AUROC)."""
    good, bad = scores[labels == 0], scores[labels == 1]
    return (good[:, None] >= bad[None, :]).sum(1)


@torch.no_grad()
def mean_rgb_weight(model, split) -> float:
    """Mean over the test images of the ISM's RGB weight (finest scale, rgbd mode) on the part."""
    model.eval()
    means = []
    for i in range(len(split)):
        rgb, depth, fg = (torch.from_numpy(a[i : i + 1]) for a in (split.rgb, split.depth, split.fg))
        w = model(rgb, depth, fg, "rgbd")[2]["ism_weights"][0, 0]
        on_part = torch.nn.functional.interpolate(fg.float(), size=tuple(w.shape), mode="area")[0, 0] > 0.5
        means.append(float(w[on_part].mean()))
    return float(np.mean(means))


def main(argv=None) -> int:
    a = run_probe_parser(__doc__).parse_args(argv)
    if missing_data(a.data):
        return 2
    torch.set_num_threads(a.threads)
    raw = load_raw(a.data, "test", False)
    tables = []
    for spec in a.run:
        path, _, label = spec.partition("=")
        model, params, _ = load_run(path)
        test = prepare(raw, params, False)
        scores = {m: infer(model, test, m, False)[1] for m in MODES}
        lost = {m: pairs_lost(s, test.labels) for m, s in scores.items()}
        goods = [Path(n).name for n, y in zip(test.names, test.labels) if y == 0]
        n_pairs = int((test.labels == 0).sum() * (test.labels == 1).sum())
        rows = [f"| {m} | " + " | ".join(str(v) for v in lost[m]) + f" | {lost[m].sum()} of {n_pairs} |" for m in MODES]
        corr = {m: float(np.corrcoef(scores["rgbd"], scores[m])[0, 1]) for m in ("rgb", "depth")}
        tables.append(f"""**{label or path}**: pairs ranked wrong per good test image; RGB-D score correlation over the
test split with RGB's {corr['rgb']:.2f}, with depth's {corr['depth']:.2f}; mean RGB importance weight on the part
{mean_rgb_weight(model, test):.2f} (depth's is 1 minus it).

| mode | {' | '.join(goods)} | total |
|---|{'---|' * len(goods)}---|
{chr(10).join(rows)}
""")
        print(tables[-1], flush=True)
    body = f"""## DBRN: which good images cost the RGB-D score (`dbrn_mode_pairs`)

Torch evaluation of each run on cable_gland's test split ({len(raw)} images). A good image
"loses" a pair to each defective image that scores no higher in that mode; without tied scores,
I-AUROC is 1 minus the lost share of the pairs.

{chr(10).join(tables)}
- Machine: {machine()}; PyTorch {torch.__version__}, {a.threads} threads.
- Command: `{command(__file__, argv)}`
"""
    print(write_section("dbrn_mode_pairs", body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
