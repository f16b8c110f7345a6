"""Can DBRN's ISM + discriminator segment pseudo-anomalies when the reconstruction is perfect?

Trains only the ISM and the discriminator of the edge preset on cable_gland training captures with
fresh pseudo-anomalies, feeding the *clean* image as the reconstruction, and reports the predicted
P(anomaly) inside the anomaly mask, on normal foreground and on the background (eval mode). This
separates the two halves of the model: if the mask learns here but not in full training, the
reconstruction branches are what holds it back (benchmarks/RESULTS.md, `dbrn_development_log`).

    .venv/bin/python benchmarks/dbrn_probe.py [--data DIR] [--steps N] [--set KEY=VALUE ...]
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
from calibrate.dataset import load_raw, prepare  # noqa: E402
from convert.cli import parse_overrides  # noqa: E402
from convert.models import create_model  # noqa: E402
from convert.models.dbrn import focal_loss  # noqa: E402
from convert.train import augment_samples  # noqa: E402
from convert.trainers.dbrn import DBRNTrainer  # noqa: E402
from edge.preprocess import PreprocessParams, fit_depth_normalisation  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(CABLE_GLAND))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--captures", type=int, default=40, help="training captures used (x 2 poses)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    raw = load_raw(a.data, "train", False)[: a.captures]
    params = fit_depth_normalisation([s.depth for s in raw], PreprocessParams(image_size=a.image_size))
    split = prepare(augment_samples(raw, 2, False), params, False)
    model = create_model("dbrn", config={"image_size": a.image_size, **parse_overrides(a.overrides)})
    trainer = DBRNTrainer(model, split, params)
    opt = torch.optim.Adam([*model.ism.parameters(), *model.disc.parameters()], lr=a.lr)
    rows, t0 = [], time.time()
    for it in range(a.steps):
        idx = torch.randperm(len(split))[:8].tolist()
        rng = np.random.default_rng(it)
        aug = [trainer.augment(i, rng) for i in idx]
        fed = [torch.from_numpy(np.stack([x[k] for x in aug])) for k in (0, 1)]
        mask = torch.from_numpy(np.stack([x[2] for x in aug]))[:, None]
        clean = [torch.from_numpy(split.rgb[idx]), torch.from_numpy(split.depth[idx])]
        pairs = [[(model._down(f, s), model._down(c, s)) for s in model.cfg.scales] for f, c in zip(fed, clean)]
        model.train()
        logits, _ = model._mask_logits(*pairs)
        loss = sum(focal_loss(lg, mask) for lg in logits) / len(logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (it + 1) % 50 == 0 or it == 0:
            model.eval()
            with torch.no_grad():
                p = torch.sigmoid(sum(model._mask_logits(*pairs)[0]) / len(logits))
            fg = torch.from_numpy(split.fg[idx]) > 0.5
            p_in = float(p[mask > 0].mean()) if (mask > 0).any() else float("nan")
            rows.append((it + 1, float(loss), p_in, float(p[(mask == 0) & fg].mean()), float(p[~fg].mean())))
            print("step %d  focal %.4f  p in %.3f  p fg %.3f  p bg %.3f" % rows[-1], flush=True)
    table = "\n".join(f"| {r[0]} | {r[1]:.4f} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3f} |" for r in rows)
    body = f"""## DBRN probe: ISM + discriminator with a perfect reconstruction (`dbrn_probe`)

Only the ISM and the discriminator train (Adam, lr {a.lr}, batch 8, focal loss), on {len(raw)} cable_gland
training captures x 2 poses at {a.image_size} x {a.image_size} with fresh pseudo-anomalies; the clean image is fed
as the reconstruction. P(anomaly), eval mode, on the last training batch: inside the anomaly mask, on
normal foreground, on the background. {time.time() - t0:.0f} s.

| step | focal | p in | p fg | p bg |
|---|---|---|---|---|
{table}

- Machine: {machine()}.
- Command: `{command(__file__, argv)}`
"""
    write_section("dbrn_probe", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
