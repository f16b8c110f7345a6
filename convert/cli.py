"""`rgbd-convert`: train, evaluate (later: export, build, bundle) on the workstation."""
from __future__ import annotations

import argparse
import json
import sys

from .models import list_models


def _cmd_train(a) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig(model=a.model, epochs=a.epochs, image_size=a.image_size, seed=a.seed,
                      batch_size=a.batch_size, lr=a.lr, threads=a.threads)
    out = train(a.data, a.out, cfg, progress=not a.quiet)
    print(f"run written to {out}")
    return 0


def _cmd_eval(a) -> int:
    from .evaluate import evaluate
    from .models.rd import MODES

    modes = [a.mode] if a.mode else list(MODES)
    results = evaluate(a.run, a.data, modes=modes, out=a.out, figures=not a.no_figures, progress=not a.quiet)
    for r in results:
        fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{r['mode']:>5}  I-AUROC {fmt(r['i_auroc'])}  P-AUROC {fmt(r['p_auroc'])}  "
              f"AUPRO {fmt(r['aupro'])}  {r['ms_per_image']:.1f} ms/img  (n={r['n_images']})")
    if a.out is None:
        print(json.dumps(results, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rgbd-convert", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train an anomaly model on normal RGB-D samples")
    t.add_argument("--data", required=True, help="dataset root (MVTec 3D-AD layout or rgbd-folder)")
    t.add_argument("--model", default="rd", choices=list_models())
    t.add_argument("--out", required=True, help="run directory (re-running resumes from its checkpoint)")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--image-size", type=int, default=256)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=0.005)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="I-AUROC, P-AUROC, AUPRO on a labelled test split")
    e.add_argument("--run", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--mode", choices=["rgbd", "rgb", "depth"], help="one mode (default: all three)")
    e.add_argument("--out", help="FILE.json; ROC/PRO plots and heatmap galleries are written beside it")
    e.add_argument("--no-figures", action="store_true")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_cmd_eval)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"rgbd-convert {a.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
