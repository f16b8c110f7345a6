"""The README's first command: the edge daemon on an embedded default.

1. A demo model: trained quickly on the real MVTec 3D-AD cable_gland in
   ../shared/data when present, else on a generated RGB-D data set.
2. A bundle: ONNX per mode, INT8 Q/DQ, thresholds from normal validation parts.
3. A RealSense recording (.db3) of the test split, written with librealsense's
   software device, with a few depth frames re-sent stale as a camera drop
   would (so the missing-modality fallback shows).
4. `rgbd-edge run` on it: results on the console and in a JSONL file, and to
   MQTT when --mqtt HOST[:PORT] (or RGBD_EDGE_MQTT) names a broker.

Steps whose output already exists are reused (delete runs/demo to start over).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "mvtec3d" / "cable_gland"


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset root (default: real cable_gland if present, else generated)")
    p.add_argument("--out", default=str(REPO / "runs" / "demo"))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--mqtt", default=os.environ.get("RGBD_EDGE_MQTT"), help="broker HOST[:PORT] for results")
    a = p.parse_args(argv)

    from edge.data import SyntheticConfig, make_synthetic_dataset

    from .cli import main as convert_main

    out = Path(a.out)
    run_dir, bundle, recording = out / "run", out / "bundle", out / "test.db3"
    data = a.data or os.environ.get("RGBD_EDGE_DATA")
    if data is None and REAL.is_dir():
        data, size, epochs, rotations = str(REAL), 256, a.epochs or 4, 8
        _step(f"real data: {data}")
    elif data is None:
        data, size, epochs, rotations = str(out / "data"), 128, a.epochs or 8, 4
        if not (Path(data) / "dataset.yaml").exists():
            make_synthetic_dataset(data, SyntheticConfig(size=128, n_train=24, n_validation=8, n_test_good=8,
                                                         n_test_per_defect=6, seed=0))
        _step(f"{REAL} not found: generated RGB-D parts in {data}")
    else:
        size, epochs, rotations = 256, a.epochs or 8, 8

    if not (run_dir / "model.pt").exists():
        _step(f"train a demo model ({epochs} epochs; the full recipe is benchmarks/rd_cable_gland.py)")
        rc = convert_main(["train", "--data", data, "--out", str(run_dir), "--epochs", str(epochs),
                           "--image-size", str(size), "--rotations", str(rotations)])
        if rc:
            return rc
    if not (bundle / "bundle.yaml").exists():
        _step("bundle: ONNX per mode, INT8 Q/DQ, thresholds from normal validation parts")
        rc = convert_main(["bundle", "--run", str(run_dir), "--data", data, "--out", str(bundle),
                           "--method", "minmax", "--no-tar", "--quiet"])
        if rc:
            return rc
    if not recording.exists():
        from edge.sources.recorder import record_dataset

        stale = range(20, 26)  # a burst of dropped depth frames: the fallback switches to rgb and back
        n = record_dataset(data, "test", recording, fps=30, stale_depth_at=stale)
        _step(f"recorded the test split as a RealSense recording: {recording} ({n} frames; depth frames "
              f"{stale.start}-{stale.stop - 1} re-sent stale, as after a camera drop)")

    results = out / "results.jsonl"
    results.unlink(missing_ok=True)
    sinks = {"console": {}, "jsonl": {"path": str(results)}}
    if a.mqtt:
        host, _, port = a.mqtt.partition(":")
        sinks["mqtt"] = {"host": host, "port": int(port or 1883), "outbox": {"path": str(out / "outbox.sqlite")}}
    config = {
        "device_id": "demo",
        "bundle": str(bundle),
        "engine": {"backend": "auto", "precision": "int8"},
        # The data set's depth is already registered to colour: no re-alignment.
        "source": {"type": "recording", "path": str(recording), "align_to_color": False},
        "sinks": sinks,
        "log_level": "INFO",
    }
    cfg_path = out / "daemon.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    _step(f"rgbd-edge run --config {cfg_path}")
    rc = subprocess.call([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg_path)])
    if rc:
        print(f"rgbd-edge run exited {rc}", file=sys.stderr)
        return rc
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    decisions = Counter(r["decision"] for r in rows)
    modes = Counter(r["mode"] for r in rows)
    _step(f"{len(rows)} results in {results}: " + ", ".join(f"{k} {v}" for k, v in sorted(decisions.items()))
          + "; modes " + ", ".join(f"{k} {v}" for k, v in sorted(modes.items(), key=str)))
    from edge.data import open_dataset

    # The recording holds the test split in order: frame i is sample i, whose label is known.
    labels = [r.label for r in open_dataset(data, "test")]
    if len(labels) == len(rows):
        bad = [r for r, lab in zip(rows, labels) if lab == 1]
        good = [r for r, lab in zip(rows, labels) if lab == 0]
        print(f"   defective parts rejected: {sum(r['decision'] == 'reject' for r in bad)}/{len(bad)}; "
              f"good parts rejected: {sum(r['decision'] == 'reject' for r in good)}/{len(good)} "
              f"(thresholds are set for a 1 % false-reject rate on normal parts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
