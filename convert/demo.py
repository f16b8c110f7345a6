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
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# The shared data folder (holding mvtec3d/ and realsense/), as benchmarks and tests read it.
DATA_ROOT = Path(os.environ.get("RGBD_EDGE_DATA") or REPO.parent / "shared" / "data")
REAL = DATA_ROOT / "mvtec3d" / "cable_gland"


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset root (default: real cable_gland if present, else generated)")
    p.add_argument("--out", default=str(REPO / "runs" / "demo"))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--mqtt", default=os.environ.get("RGBD_EDGE_MQTT"), help="broker HOST[:PORT] for results")
    return p.parse_args(argv)


@dataclass(frozen=True)
class DemoData:
    """The data set the demo trains on and the training settings that fit it."""

    root: str
    image_size: int
    epochs: int
    rotations: int


def choose_data(data: str | None, epochs: int | None, out: Path) -> DemoData:
    """The given data set; else the real cable_gland if present; else a generated one in out/data."""
    from edge.data import SyntheticConfig, make_synthetic_dataset

    if data is None and REAL.is_dir():
        _step(f"real data: {REAL}")
        return DemoData(str(REAL), 256, epochs or 4, 8)
    if data is None:
        root = out / "data"
        if not (root / "dataset.yaml").exists():
            make_synthetic_dataset(str(root), SyntheticConfig(size=128, n_train=24, n_validation=8, n_test_good=8,
                                                              n_test_per_defect=6, seed=0))
        _step(f"{REAL} not found: generated RGB-D parts in {root}")
        return DemoData(str(root), 128, epochs or 8, 4)
    return DemoData(data, 256, epochs or 8, 8)


def train_and_bundle(d: DemoData, run_dir: Path, bundle: Path) -> int:
    """The demo model and its bundle, each unless it exists; the first non-zero exit code, else 0."""
    from .cli import main as convert_main

    if not (run_dir / "model.pt").exists():
        _step(f"train a demo model ({d.epochs} epochs; the full recipe is benchmarks/rd_cable_gland.py)")
        rc = convert_main(["train", "--data", d.root, "--out", str(run_dir), "--epochs", str(d.epochs),
                           "--image-size", str(d.image_size), "--rotations", str(d.rotations)])
        if rc:
            return rc
    if not (bundle / "bundle.yaml").exists():
        _step("bundle: ONNX per mode, INT8 Q/DQ, thresholds from normal validation parts")
        return convert_main(["bundle", "--run", str(run_dir), "--data", d.root, "--out", str(bundle),
                             "--method", "minmax", "--no-tar", "--quiet"])
    return 0


def record_test_split(data: str, recording: Path) -> None:
    """The test split as a RealSense recording, unless it exists."""
    if recording.exists():
        return
    from edge.sources.recorder import record_dataset

    stale = range(20, 26)  # a burst of dropped depth frames: the fallback switches to rgb and back
    n = record_dataset(data, "test", recording, fps=30, stale_depth_at=stale)
    _step(f"recorded the test split as a RealSense recording: {recording} ({n} frames; depth frames "
          f"{stale.start}-{stale.stop - 1} re-sent stale, as after a camera drop)")


def daemon_config(out: Path, bundle: Path, recording: Path, results: Path, mqtt: str | None) -> dict:
    """The daemon's config: the recording in, console and JSONL out (and MQTT when HOST[:PORT] is given)."""
    sinks = {"console": {}, "jsonl": {"path": str(results)}}
    if mqtt:
        host, _, port = mqtt.partition(":")
        sinks["mqtt"] = {"host": host, "port": int(port or 1883), "outbox": {"path": str(out / "outbox.sqlite")}}
    return {
        "device_id": "demo",
        "bundle": str(bundle),
        "engine": {"backend": "auto", "precision": "int8"},
        # The data set's depth is already registered to colour: no re-alignment.
        "source": {"type": "recording", "path": str(recording), "align_to_color": False},
        "sinks": sinks,
        "log_level": "INFO",
    }


def report(results: Path, data: str) -> None:
    """Decisions and modes of the run and, the labels being known, how many parts of each kind
    were rejected."""
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


def main(argv=None) -> int:
    a = _parse(argv)
    out = Path(a.out)
    run_dir, bundle, recording = out / "run", out / "bundle", out / "test.db3"
    d = choose_data(a.data, a.epochs, out)
    rc = train_and_bundle(d, run_dir, bundle)
    if rc:
        return rc
    record_test_split(d.root, recording)
    results = out / "results.jsonl"
    results.unlink(missing_ok=True)
    cfg_path = out / "daemon.yaml"
    cfg_path.write_text(yaml.safe_dump(daemon_config(out, bundle, recording, results, a.mqtt), sort_keys=False))
    _step(f"rgbd-edge run --config {cfg_path}")
    rc = subprocess.call([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg_path)])
    if rc:
        print(f"rgbd-edge run exited {rc}", file=sys.stderr)
        return rc
    report(results, d.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
