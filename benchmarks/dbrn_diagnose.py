"""Where does a trained DBRN lose the defects? Real cable_gland test defects, pixel by pixel.

For each trained run: the reconstruction error |input - reconstruction| on the real defect pixels
(ground-truth masks at model resolution) against normal foreground, the predicted P(anomaly) on
defects, normal foreground and background, and the image-level I-AUROC per mode. A reconstruction
model can only find a defect the branches repair (error higher on the defect than around it) or
the discriminator recognises. "Feature distance" asks whether the reconstructions hold a defect
signal any difference detector could use: the cosine distance between frozen ImageNet features
(EfficientNet-Lite0, strides 4 and 8) of input and reconstruction, scored as the model scores its
mask. Also: mean RGB input per test class against the training split,
since a score that follows global brightness ranks classes by exposure, not by defects.

    .venv/bin/python benchmarks/dbrn_diagnose.py --run RUN_DIR[=LABEL] [--run ...] [--data DIR]

Writes RUN_DIR/diagnosis.png for each run (inputs, reconstructions, errors and mask on defective
test images) and its section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._report import command, machine, missing_data, run_probe_parser, write_section  # noqa: E402
from calibrate.dataset import load_raw, prepare  # noqa: E402
from calibrate.metrics import image_auroc_interval  # noqa: E402
from convert.models.encoders import create_encoder  # noqa: E402
from convert.models.layers import cosine_distance  # noqa: E402
from convert.models.rd import MODES  # noqa: E402
from convert.train import load_run  # noqa: E402


@torch.no_grad()
def run_model(model, split, modes=MODES, recon: bool = True, batch: int = 8) -> dict:
    """Per mode, un-normalised maps and image scores over a split; with `recon`, also the
    reconstructions (first scale) that the rgbd forward made."""
    keys = ("recon_rgb", "recon_depth") if recon else ()
    if keys and "rgbd" not in modes:
        raise ValueError("run_model: reconstructions come from the rgbd forward; include mode 'rgbd'")
    out = {**{k: [] for k in keys}, **{m: ([], []) for m in modes}}
    for i in range(0, len(split), batch):
        x = [torch.from_numpy(a[i : i + batch]) for a in (split.rgb, split.depth, split.fg)]
        for m in modes:
            _, score, raw = model(*x, m)
            out[m][0].append(raw["fused"][:, 0])
            out[m][1].append(score)
            if m == "rgbd":
                for key in keys:
                    out[key].append(raw[key])
    res = {k: torch.cat(out[k]).numpy() for k in keys}
    for m in modes:
        res[m] = (torch.cat(out[m][0]).numpy(), torch.cat(out[m][1]).numpy())
    return res


@torch.no_grad()
def feature_distance_auroc(model, split, res: dict, encoder) -> dict:
    """Per modality, image AUROC of the foreground's feature distance between input and
    reconstruction (mean over the encoder's two finest scales), pooled by the model's own image
    score, so it compares with the mask's I-AUROC."""
    size = split.rgb.shape[-1]
    fg = torch.from_numpy(split.fg[:, :1] > 0.5).float()
    out = {}
    for k, x in (("rgb", split.rgb), ("depth", split.depth)):
        fi, fr = encoder(torch.from_numpy(x)), encoder(torch.from_numpy(res[f"recon_{k}"]))
        d = sum(F.interpolate(cosine_distance(a, b), size=(size, size), mode="bilinear", align_corners=False)
                for a, b in zip(fi[:2], fr[:2])) / 2
        out[k] = float(roc_auc_score(split.labels, model.image_score(d * fg).numpy()))
    return out


@contextmanager
def test_time_dropout(model, seed: int = 0):
    """The branches' encoder dropout on (as published), seeded; the model is left in eval mode."""
    torch.manual_seed(seed)
    for d in (d for b in model.branches for d in b.drop):
        d.train()
    try:
        yield model
    finally:
        model.eval()


def test_time_dropout_auroc(model, split, passes: int) -> float:
    """rgbd I-AUROC with test-time dropout, the maps of `passes` forward passes averaged."""
    with test_time_dropout(model):
        maps = [run_model(model, split, modes=("rgbd",), recon=False)["rgbd"][0] for _ in range(passes)]
    score = model.image_score(torch.from_numpy(np.mean(maps, 0))[:, None])
    return float(roc_auc_score(split.labels, score.numpy()))


def defect_masks(split, size: int) -> np.ndarray:
    return np.stack([np.zeros((size, size), bool) if m is None
                     else cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
                     for m in split.masks])


def pixel_stats(split, res: dict, gt: np.ndarray) -> dict:
    fg = split.fg[:, 0] > 0.5
    normal = fg & ~gt
    err = {k: np.abs(x - res[f"recon_{k}"]).mean(1) for k, x in (("rgb", split.rgb), ("depth", split.depth))}
    p = res["rgbd"][0]
    return {**{f"err_{k}": (float(e[gt].mean()), float(e[normal].mean())) for k, e in err.items()},
            # does the error rank defect pixels above normal ones on the part (0.5 = no)?
            **{f"err_auroc_{k}": float(roc_auc_score(gt[fg], e[fg])) for k, e in err.items()},
            "p": (float(p[gt].mean()), float(p[normal].mean()), float(p[~fg].mean())),
            "i_auroc": {m: float(roc_auc_score(split.labels, res[m][1])) for m in MODES},
            "i_auroc_interval": image_auroc_interval(split.labels, res["rgbd"][1])}


def sheet(split, res: dict, gt: np.ndarray, params, n: int = 6) -> np.ndarray:
    """BGR rows for the n defective images with the largest defects: RGB in, RGB reconstruction,
    RGB error, depth encoding in, its reconstruction, depth error, P(anomaly) (rgbd); the ground
    truth outlined in green on each."""
    mean, std = np.asarray(params.rgb_mean, np.float32), np.asarray(params.rgb_std, np.float32)

    def rgb(chw):
        return cv2.cvtColor((255 * np.clip(chw.transpose(1, 2, 0) * std + mean, 0, 1)).astype(np.uint8),
                            cv2.COLOR_RGB2BGR)

    def depth(chw):
        return (255 * np.clip(chw.transpose(1, 2, 0) * 0.25 + 0.5, 0, 1)).astype(np.uint8)[..., ::-1].copy()

    def heat(a, vmax):
        return cv2.applyColorMap((255 * np.clip(a / vmax, 0, 1)).astype(np.uint8), cv2.COLORMAP_JET)

    order = np.argsort(-gt.reshape(len(gt), -1).sum(1))[:n]
    rows = []
    for i in order:
        er = np.abs(split.rgb[i] - res["recon_rgb"][i]).mean(0)
        ed = np.abs(split.depth[i] - res["recon_depth"][i]).mean(0)
        tiles = [rgb(split.rgb[i]), rgb(res["recon_rgb"][i]), heat(er, 0.5),
                 depth(split.depth[i]), depth(res["recon_depth"][i]), heat(ed, 0.5), heat(res["rgbd"][0][i], 1.0)]
        contours, _ = cv2.findContours(gt[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for t in tiles:
            cv2.drawContours(t, contours, -1, (0, 255, 0), 1)
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


def main(argv=None) -> int:
    ap = run_probe_parser(__doc__)
    ap.add_argument("--dropout-passes", type=int, default=4,
                    help="forward passes averaged for the test-time-dropout column (0: skip it)")
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    torch.set_num_threads(a.threads)
    encoder = create_encoder("efficientnet_lite0").eval()
    raw_test, raw_train = load_raw(a.data, "test", False), load_raw(a.data, "train", False)
    rows, bright, bright_label = [], None, ""
    for item in a.run:
        path, _, label = item.partition("=")
        model, params, run = load_run(path)
        model.eval()
        test = prepare(raw_test, params, False)
        gt = defect_masks(test, params.image_size)
        res = run_model(model, test)
        st = pixel_stats(test, res, gt)
        fd = feature_distance_auroc(model, test, res, encoder)
        ttd = f"{test_time_dropout_auroc(model, test, a.dropout_passes):.3f}" if a.dropout_passes else "-"
        log = [json.loads(x) for x in (Path(path) / "train_log.jsonl").read_text().splitlines() if x.strip()]
        # the log's count where it has one: a run cut by --minutes ends mid-epoch
        steps = log[-1].get("step", len(log) * (run["data"]["n_train_poses"] // run["train"]["batch_size"]))
        cv2.imwrite(str(Path(path) / "diagnosis.png"), sheet(test, res, gt, params))
        rows.append(
            f"| {label or Path(path).name} | {params.image_size} | {steps} | "
            + " / ".join(f"{st['i_auroc'][m]:.3f}" for m in MODES) + " | {:.2f} - {:.2f}".format(*st["i_auroc_interval"])
            + f" | {ttd} | "
            + f"{st['err_rgb'][0]:.3f} / {st['err_rgb'][1]:.3f} | {st['err_depth'][0]:.3f} / {st['err_depth'][1]:.3f} | "
            + f"{st['err_auroc_rgb']:.2f} / {st['err_auroc_depth']:.2f} | {fd['rgb']:.3f} / {fd['depth']:.3f} | "
            + " / ".join(f"{v:.3f}" for v in st["p"]) + " |")
        if bright is None:  # exposure and image score per class, for the first run
            train = prepare(raw_train, params, False)
            per_class = [(d, np.array([x == d for x in test.defects])) for d in sorted(set(test.defects), key=str)]
            bright = "\n".join([f"| train good | {float(train.rgb.mean()):+.3f} | - |"] + [
                f"| test {d} | {float(test.rgb[m].mean()):+.3f} | {float(res['rgbd'][1][m].mean()):+.2f} |"
                for d, m in per_class])
            bright_label = label or Path(path).name
        print(rows[-1], flush=True)

    body = f"""## DBRN diagnosis: what trained models do on real defects (`dbrn_diagnosis`)

Real cable_gland test split (55 images, 44 anomalous), ground-truth masks resized to model resolution.
"Error" is the mean |input - reconstruction| over channels, in the model's input units (RGB normalised
by ImageNet mean and std, the depth encoding as the runtime makes it), on defect pixels against
normal foreground; "error AUROC" ranks the part's pixels by that error (defect against normal, 0.5 = no
signal). "Feature-distance I-AUROC" scores each image by the cosine distance between frozen
ImageNet features (EfficientNet-Lite0, strides 4 and 8) of input and reconstruction on the part,
pooled as the model pools its mask: one measure of the defect signal these reconstructions hold for
a detector that reads only the difference. P(anomaly) is the rgbd mask before normalisation, on defect pixels / normal
foreground / background. "steps" are optimiser steps. The 95 % interval of the rgbd I-AUROC is a
percentile bootstrap over the test images (good and defective resampled separately, 2,000 times):
with 11 good images one of them moves I-AUROC by up to 9 points, and this says how far the figure
can be trusted. "Test-time dropout" keeps the branches'
encoder dropout on, as published, and averages the maps of {a.dropout_passes} passes (our exported graph has
dropout off).

| run | input | steps | I-AUROC rgbd / rgb / depth | rgbd I-AUROC 95 % interval | rgbd I-AUROC, test-time dropout | RGB error defect / normal | depth error defect / normal | error AUROC RGB / depth | feature-distance I-AUROC RGB / depth | P(anomaly) defect / normal fg / bg |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Exposure against score, per class (first run, `{bright_label}`): a score that follows global brightness
ranks the classes by exposure, not by defects.

| class | mean normalised RGB input | mean rgbd image score |
|---|---|---|
{bright}

- Runs: trained by the commands in `dbrn_development_log` (the earlier edge preset's by
  `benchmarks/dbrn_cable_gland.py`, which also evaluates and bundles today's edge preset run).
- Each run directory gets `diagnosis.png`: per defective image, RGB in / reconstruction / error,
  depth encoding in / reconstruction / error, and the rgbd mask, with the ground truth in green.
- Machine: {machine()}.
- Command: `{command(__file__, argv)}`
"""
    path = write_section("dbrn_diagnosis", body)
    print(body)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
