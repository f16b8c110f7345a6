"""Is DBRN's image score its weak link? Post-hoc scoring variants of trained runs.

The trained maps separate real defects only a little (P(anomaly) about 1.2 x normal foreground in
`dbrn_diagnosis`) while the image figure swings from run to run; if the aggregation (max of an
average pool) were the fragile part, another read-out of the same maps could lift it without
retraining. Each variant is scored on the test split (what the issue measures) and on
pseudo-anomalies drawn on the *validation* images by the training synthesis (the only labelled set
a choice may use without looking at the test split); per mode, the variant a rule would pick is the
one best on the validation pseudo-anomalies.

Variants, all on the same trained weights, none of them exported (the bundle scores with the
preset's pooling):
- pooling: max of a k x k average of the map (k = the preset's, and others), mean of the top q
  of its pixels;
- reconstruction errors: for rgbd, the pooled |input - reconstruction| of RGB and depth on the
  part, z-scored on validation/good and added to the mask's z-score;
- flips: the mean map over identity and horizontal, vertical and both flips of the inputs (normal
  components of the depth encoding negated to match);
- inpainting grid shifted by half a cell, averaged with the unshifted pass;
- test-time dropout (as published): the mean map of N passes with the branches' dropout on.

    .venv/bin/python benchmarks/dbrn_score_variants.py --run RUN_DIR[=LABEL] [--run ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._report import command, machine, missing_data, run_probe_parser, write_section  # noqa: E402
from benchmarks.dbrn_diagnose import test_time_dropout  # noqa: E402
from calibrate.dataset import load_raw, prepare  # noqa: E402
from convert.models.rd import MODES, PRESENT  # noqa: E402
from convert.train import load_run  # noqa: E402
from convert.trainers.dbrn import DBRNTrainer  # noqa: E402

FLIPS = ((), (-1,), (-2,), (-1, -2))


def pseudo_validation(model, params, val, draws: int, seed: int) -> dict:
    """`draws` pseudo-anomalous copies of each validation image (the training synthesis), with per
    mode labels: anomalous when an edited stream is one the mode sees and the mask is not empty."""
    trainer = DBRNTrainer(model, val, params)
    rng = np.random.default_rng(seed)
    rgb, depth, fg, edits = [], [], [], []
    for _ in range(draws):
        for i in range(len(val)):
            r, d, m, edited = trainer.augment(i, rng)
            rgb.append(r)
            depth.append(d)
            fg.append(val.fg[i])
            edits.append(edited if m.sum() > 0 else (False, False))
    labels = {mode: np.array([(e[0] and PRESENT[mode][0]) or (e[1] and PRESENT[mode][1]) for e in edits], int)
              for mode in MODES}
    return {"x": (np.stack(rgb), np.stack(depth), np.stack(fg)), "labels": labels}


def flip_input(x: torch.Tensor, dims: tuple, params, depth: bool) -> torch.Tensor:
    """Flip a model input; for the normals encodings also negate the normal component across the
    flipped axis (channel 0 = x, 1 = y, each normalised like RGB), so the flipped input is what the
    preprocessing makes of a flipped capture."""
    if not dims:
        return x
    x = x.flip(dims)
    if depth and params.depth_encoding != "height":
        x = x.clone()
        for d in dims:
            c = 0 if d == -1 else 1
            m, s = params.rgb_mean[c], params.rgb_std[c]
            x[:, c] = (1 - 2 * m) / s - x[:, c]  # normalised (1 - v) for v = (n + 1) / 2
    return x


@torch.no_grad()
def maps(model, params, x, mode: str, flip=(), batch: int = 8) -> dict:
    """Unnormalised mask map (N x 1 x S x S) of one view; for rgbd also the reconstruction errors
    on the part."""
    out = {"mask": [], "err_rgb": [], "err_depth": []}
    for i in range(0, len(x[0]), batch):
        rgb, depth, fg = (torch.from_numpy(np.ascontiguousarray(a[i : i + batch])) for a in x)
        _, _, raw = model(flip_input(rgb, flip, params, False), flip_input(depth, flip, params, True),
                          fg.flip(flip) if flip else fg, mode)
        out["mask"].append(raw["fused"].flip(flip) if flip else raw["fused"])
        if mode == "rgbd" and not flip:
            for k, inp in (("rgb", rgb), ("depth", depth)):
                out[f"err_{k}"].append((inp - raw[f"recon_{k}"]).abs().mean(1, keepdim=True) * fg)
    return {k: torch.cat(v) for k, v in out.items() if v}


def shifted_grid_map(model, params, x, mode: str) -> torch.Tensor:
    base = model.inpaint_masks
    half = model.cfg.inpaint_cell // 2
    model.inpaint_masks = base.roll((half, half), (-2, -1))
    try:
        return maps(model, params, x, mode)["mask"]
    finally:
        model.inpaint_masks = base


def dropout_maps(model, params, x, mode: str, passes: int) -> list:
    with test_time_dropout(model):
        return [maps(model, params, x, mode)["mask"] for _ in range(passes)]


def top_mean(a: torch.Tensor, q: float) -> np.ndarray:
    f = a.flatten(1)
    return f.topk(max(1, int(q * f.shape[1])), 1).values.mean(1).numpy()


def variant_scores(model, params, x, mode: str, normal: dict | None, dropout_passes: int) -> dict:
    """Variant name -> per-image scores on inputs x. `normal`: the rgbd base maps of
    validation/good, for the error z-scores."""
    base = maps(model, params, x, mode)
    k0 = model.cfg.score_pool
    out = {f"max of {k0} x {k0} mean (preset)": model.image_score(base["mask"]).numpy()}
    for k in sorted({1, 5, 21} - {k0}):
        out[f"max of {k} x {k} mean"] = model.image_score(base["mask"], k).numpy()
    for q in (0.002, 0.01, 0.05):
        out[f"mean of top {100 * q:g} %"] = top_mean(base["mask"], q)
    if mode == "rgbd" and normal is not None:
        def z(name, a):
            ref = model.image_score(normal[name]).numpy()
            return (model.image_score(a).numpy() - ref.mean()) / (ref.std() + 1e-9)

        mask_z = z("mask", base["mask"])
        out["+ RGB and depth errors (z-scores)"] = mask_z + z("err_rgb", base["err_rgb"]) + z("err_depth", base["err_depth"])
        out["+ depth error (z-scores)"] = mask_z + z("err_depth", base["err_depth"])
    flips = [base["mask"]] + [maps(model, params, x, mode, f)["mask"] for f in FLIPS[1:]]
    out["mean map of 4 flips"] = model.image_score(sum(flips) / 4).numpy()
    if model.cfg.inpaint_cell:
        out["mean map, grid shifted half a cell"] = model.image_score(
            (base["mask"] + shifted_grid_map(model, params, x, mode)) / 2).numpy()
    if dropout_passes:
        drop = dropout_maps(model, params, x, mode, dropout_passes)
        out[f"test-time dropout, mean of {dropout_passes} maps"] = model.image_score(sum(drop) / len(drop)).numpy()
    return out


def evaluate_run(path: str, raw_test, raw_val, draws: int, dropout_passes: int) -> dict:
    """mode -> variant -> (test I-AUROC, validation pseudo-anomaly AUROC)."""
    model, params, _ = load_run(path)
    model.eval()
    test, val = prepare(raw_test, params, False), prepare(raw_val, params, False)
    pseudo = pseudo_validation(model, params, val, draws, seed=0)
    normal = maps(model, params, (val.rgb, val.depth, val.fg), "rgbd")
    res = {}
    for mode in MODES:
        on_test = variant_scores(model, params, (test.rgb, test.depth, test.fg), mode, normal, dropout_passes)
        on_pseudo = variant_scores(model, params, pseudo["x"], mode, normal, dropout_passes)
        res[mode] = {v: (float(roc_auc_score(test.labels, on_test[v])),
                         float(roc_auc_score(pseudo["labels"][mode], on_pseudo[v]))) for v in on_test}
    return res


def table(label: str, res: dict) -> str:
    variants = list(res["rgbd"])
    lines = [f"**{label}**: I-AUROC on the test split / AUROC on validation pseudo-anomalies; "
             "**bold**: the variant best on the pseudo-anomalies (what a rule may pick).", "",
             "| variant | " + " | ".join(MODES) + " |", "|---" * (len(MODES) + 1) + "|"]
    best = {m: max(res[m], key=lambda v: res[m][v][1]) for m in MODES}
    for v in variants:
        cells = []
        for m in MODES:
            if v not in res[m]:
                cells.append("-")
                continue
            t, p = res[m][v]
            cell = f"{t:.3f} / {p:.3f}"
            cells.append(f"**{cell}**" if v == best[m] else cell)
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = run_probe_parser(__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=4, help="pseudo-anomalous copies of each validation image")
    ap.add_argument("--dropout-passes", type=int, default=8, help="passes averaged for test-time dropout (0: skip)")
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    torch.set_num_threads(a.threads)
    raw_test, raw_val = load_raw(a.data, "test", False), load_raw(a.data, "validation", False)
    tables = []
    for item in a.run:
        path, _, label = item.partition("=")
        tables.append(table(label or Path(path).name, evaluate_run(path, raw_test, raw_val, a.draws, a.dropout_passes)))
        print(tables[-1], flush=True)
    body = f"""## DBRN: is the image score the weak link? (`dbrn_score_variants`)

Post-hoc read-outs of trained DBRN runs, same weights, nothing retrained or exported: other poolings
of the mask, the reconstruction errors added to it, the mean map over flipped inputs or over a
shifted inpainting grid, and the published test-time dropout. Each is scored on the cable_gland
test split (55 images, 44 anomalous) and on {a.draws} pseudo-anomalous copies of each of the 23
validation images (the training synthesis, seed 0; a copy counts as anomalous in a mode when an
edited stream is one the mode sees), the only labelled set a choice may use without the test split.

{chr(10).join(t + chr(10) for t in tables)}
- Machine: {machine()}.
- Command: `{command(__file__, argv)}`
"""
    path = write_section("dbrn_score_variants", body)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
