"""The README's first command: train a small model and print its metrics.

Uses the real MVTec 3D-AD cable_gland in ../shared/data when present, else a
generated RGB-D data set, so it works on any fresh machine.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "mvtec3d" / "cable_gland"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="demo", description=__doc__)
    p.add_argument("--data", help="dataset root (default: real cable_gland if present, else generated)")
    p.add_argument("--out", default=str(REPO / "runs" / "demo"))
    p.add_argument("--epochs", type=int, default=None)
    a = p.parse_args(argv)

    from edge.data import SyntheticConfig, make_synthetic_dataset

    from .cli import main as convert_main

    data = a.data or os.environ.get("RGBD_EDGE_DATA")
    if data is None and REAL.is_dir():
        data, epochs = str(REAL), a.epochs or 8
        print(f"demo: real data {data}")
    elif data is None:
        data = str(REPO / "runs" / "demo-data")
        if not (Path(data) / "dataset.yaml").exists():
            make_synthetic_dataset(data, SyntheticConfig(size=128, n_train=24, n_validation=8,
                                                         n_test_good=8, n_test_per_defect=6, seed=0))
        epochs = a.epochs or 15
        print(f"demo: {REAL} not found, generated data in {data}")
    else:
        epochs = a.epochs or 8
    size = "128" if "demo-data" in data else "256"
    rc = convert_main(["train", "--data", data, "--out", a.out, "--epochs", str(epochs), "--image-size", size])
    if rc:
        return rc
    return convert_main(["eval", "--run", a.out, "--data", data, "--out", str(Path(a.out) / "eval.json")])


if __name__ == "__main__":
    sys.exit(main())
