"""Training peak memory and wall time per epoch against the data set's size (`train_memory`).

Trains the reverse-distillation student at its defaults for --epochs on:

- the real cable_gland training captures (80), streamed: `rgbd-convert train` as it ships
  (every pose encoded once into the disk pose store, read back a batch at a time);
- the same with every pose's encoded arrays held in memory (`StoreOptions(kind="memory")`:
  what a step reads, without the raw and preprocessed copies the old training also held);
- with --baseline-ref REF, the same with the code of git revision REF (e.g. the last commit
  before streaming), exported by `git archive` into the work folder and run from there;
- a data set --scale times larger (default 4: 320 captures), streamed: the 80 captures and,
  for each, scale - 1 variants made from it, rotated by an angle the pose augmentation never
  makes (VARIANTS: 15, -15, 30 ... degrees) and shifted by a few pixels; uncovered depth is
  missing (0), as in a pose. Built in the work folder (train/good: symlinks to the originals
  plus the variants; validation and test: symlinks to the real splits).

Each run is a process of its own; its peak resident memory is the kernel's ru_maxrss of that
process (os.wait4), which counts every page it touched (not the page cache behind the pose
store's file reads). Wall time per epoch is the last epoch's (train_log.jsonl), after the
pose store was made. The 80-capture runs are evaluated on the test split (I-AUROC, P-AUROC,
AUPRO per mode), and their weights compared: the disk store serves the in-memory arrays bit
for bit, so streamed and in-memory training give the same weights.

    python -m benchmarks.train_memory [--data DIR] [--epochs 2] [--scale 4] [--baseline-ref REF]
        [--captures N] [--image-size S] [--threads 2] [--work DIR] [--keep]

Writes section `train_memory` of benchmarks/RESULTS.md (not with --captures or --image-size,
which make small trial runs). About 30 minutes on a 2-core CPU at the defaults with a baseline.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import tifffile
import torch
import yaml

from benchmarks._report import REPO, add_data_option, command, fmt, machine, missing_data, parser, write_section
from convert.evaluate import evaluate
from edge.data import open_dataset

# (angle in degrees, shift in pixels) of the k-th variant of a capture
VARIANTS = [(15.0, (6, 0)), (-15.0, (0, 6)), (30.0, (-6, -6)), (-30.0, (6, -6)), (7.5, (-6, 6)), (-7.5, (0, -6)),
            (37.5, (6, 6))]
GIB = 2**30
METRICS = ("i_auroc", "p_auroc", "aupro")
MEMORY_CHILD = """import sys, json
from convert.train import StoreOptions, TrainConfig, train
a = json.loads(sys.argv[1])
train(a["data"], a["out"], TrainConfig(**a["cfg"]), progress=False, store=StoreOptions(kind="memory"))
"""


@dataclass
class Run:
    label: str
    data: Path
    out: Path
    code: Path  # the source tree it runs from
    memory: bool = False  # every pose in memory (StoreOptions(kind="memory"))


def variant(rgb_bgr, xyz, angle: float, shift: tuple[int, int]):
    """A capture rotated about its centre by `angle` degrees and shifted; uncovered xyz is 0."""
    h, w = xyz.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    m[:, 2] += shift
    rgb = cv2.warpAffine(rgb_bgr, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    xyz = cv2.warpAffine(xyz, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return rgb, xyz


def make_dataset(src: Path, dst: Path, captures: int, scale: int) -> Path:
    """An MVTec 3D-AD folder: `captures` train captures of src (symlinked) and scale - 1
    variants of each (written, one capture at a time); validation and test linked to src's."""
    if scale - 1 > len(VARIANTS):
        raise ValueError(f"--scale at most {len(VARIANTS) + 1}")
    refs = open_dataset(src, "train")[:captures]
    good = dst / "train" / "good"
    for sub in ("rgb", "xyz"):
        (good / sub).mkdir(parents=True, exist_ok=True)
    for split in ("validation", "test"):
        if not (dst / split).exists():
            (dst / split).symlink_to((src / split).resolve(), target_is_directory=True)
    for ref in refs:
        for sub, path in (("rgb", ref.rgb), ("xyz", ref.depth)):
            link = good / sub / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
        rgb, xyz = cv2.imread(str(ref.rgb), cv2.IMREAD_COLOR), tifffile.imread(ref.depth)
        for k, (angle, shift) in enumerate(VARIANTS[: scale - 1], 1):
            r, x = variant(rgb, xyz, angle, shift)
            cv2.imwrite(str(good / "rgb" / f"{ref.rgb.stem}_v{k}.png"), r)
            tifffile.imwrite(good / "xyz" / f"{ref.depth.stem}_v{k}.tiff", x)
    return dst


def exported_tree(ref: str, work: Path) -> Path:
    """The repository at git revision `ref`, exported (no checkout, no git state) into work."""
    dst = work / f"code-{ref}"
    if not dst.exists():
        dst.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
    return dst


def run_process(run: Run, cfg: dict) -> dict:
    """Train `run` in a process of its own -> its peak resident memory and wall time."""
    if run.memory:
        args = {"data": str(run.data), "out": str(run.out), "cfg": cfg}
        argv = [sys.executable, "-c", MEMORY_CHILD, json.dumps(args)]
    else:
        argv = [sys.executable, "-m", "convert.cli", "train", "--data", str(run.data), "--out", str(run.out), "--quiet",
                "--epochs", str(cfg["epochs"]), "--threads", str(cfg["threads"])]
        if cfg.get("image_size"):
            argv += ["--image-size", str(cfg["image_size"])]
    env = {**os.environ, "PYTHONPATH": str(run.code)}
    t0 = time.time()
    proc = subprocess.Popen(argv, cwd=run.code, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{run.label}: training exited with {proc.returncode}")
    return {"peak_gib": usage.ru_maxrss * 1024 / GIB, "wall_s": time.time() - t0}


def run_figures(run: Run) -> dict:
    """Poses, pose store, the last epoch's seconds and the preparation time from the run's files."""
    meta = yaml.safe_load((run.out / "run.yaml").read_text())
    log = [json.loads(x) for x in (run.out / "train_log.jsonl").read_text().splitlines()]
    last = log[-1]
    epoch_s = last.get("epoch_s")
    if epoch_s is None and len(log) > 1:  # code from before epoch_s was logged
        epoch_s = last["elapsed_s"] - log[-2]["elapsed_s"]
    store = meta["data"].get("pose_store", {})
    return {"captures": meta["data"]["n_train"], "poses": meta["data"]["n_train_poses"], "epoch_s": epoch_s,
            "epochs": last["epoch"], "store": store}


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = (torch.load(p / "model.pt", map_location="cpu", weights_only=True) for p in (a, b))
    return sa["trained"].keys() == sb["trained"].keys() and all(
        torch.equal(sa["trained"][k], sb["trained"][k]) for k in sa["trained"])


def store_text(store: dict) -> str:
    if not store:
        return "in memory (before streaming)"
    if store["kind"] == "memory":
        return f"in memory, {store['bytes'] / GIB:.2f} GiB"
    return f"disk, {store['bytes'] / GIB:.2f} GiB"


def slowdown(f: dict, ref: dict | None) -> float | None:
    """Epoch time of run figures f against ref's, on the same captures (None if not comparable)."""
    if ref is None or f is ref or not (f["epoch_s"] and ref["epoch_s"]) or f["captures"] != ref["captures"]:
        return None
    return f["epoch_s"] / ref["epoch_s"] - 1


def report(rows: list[tuple[Run, dict]], evals: dict, identical: dict, a, argv) -> str:
    base = next((f for r, f in rows if r.memory), None)
    before = next((f for r, f in rows if r.code != REPO), None)
    n = rows[0][1]["captures"]
    lines = []
    for run, f in rows:
        slower = slowdown(f, base)
        epoch = fmt(f["epoch_s"], 1) + ("" if slower is None else f" ({100 * slower:+.0f} %)")
        lines.append(f"| {run.label} | {f['captures']} | {f['poses']} | {store_text(f['store'])} | "
                     f"**{f['peak_gib']:.2f}** | {epoch} | {fmt(f['store'].get('seconds'), 0)} | "
                     f"{f['wall_s'] / 60:.1f} |")
    acc = [f"| {label} | {r['mode']} | {' | '.join(fmt(r[k]) for k in METRICS)} |"
           for label, res in evals.items() for r in res]
    same = "; ".join(f"{k}: {'identical' if v else '**different**'}" for k, v in identical.items())
    streamed = [f for r, f in rows if r.code == REPO and not r.memory]
    refs = (("the in-memory run's", base), ("the code before streaming", before))
    against = [f"{name} {100 * x:+.0f} %" for name, ref in refs if (x := slowdown(streamed[0], ref)) is not None]
    epochs = f"{a.epochs} epoch{'s' if a.epochs != 1 else ''}"
    return f"""## Training peak memory against data-set size (`train_memory`)

`rgbd-convert train --model rd` at its defaults ({epochs} here), each run a process of
its own. Peak RSS: the kernel's ru_maxrss of the training process. Epoch s: the last epoch's
wall time (the slowdown is against the in-memory run on the same captures). Store s: encoding
every pose into the pose store (reading, pose augmentation, preprocessing, the teacher's
features). The {a.scale}x data set is the {n} captures plus {a.scale - 1} variant(s) of each
(rotated by {', '.join(f'{v[0]:g}' for v in VARIANTS[: a.scale - 1])} degrees and shifted by up to 6 px; uncovered depth
missing).

| run | captures | poses | pose store | peak RSS GiB | epoch s | store s | total min |
|---|---|---|---|---|---|---|---|
{chr(10).join(lines)}

Test split accuracy of the {n}-capture runs after {epochs} (not a fully trained model's
accuracy, see `rd_cable_gland` for that: the comparison is the point; identical weights give
identical figures after any number of epochs):

| run | mode | I-AUROC | P-AUROC | AUPRO |
|---|---|---|---|---|
{chr(10).join(acc)}

- Streamed training's peak: at most {max(f['peak_gib'] for f in streamed):.2f} GiB over
  {' and '.join(str(f['captures']) for f in streamed)} captures (target: at most 4 GiB whatever the number of
  captures). Its epoch time against {', against '.join(against) or 'n/a'} (target: at most +20 %).
- Weights against the in-memory run: {same}.
- Machine: {machine()}; PyTorch {torch.__version__}, {a.threads} threads.
- Command: `{command(__file__, argv)}`
"""


def plan(a, work: Path) -> list[Run]:
    small = make_dataset(Path(a.data), work / "data-1x", a.captures or 10**9, 1)
    large = make_dataset(Path(a.data), work / f"data-{a.scale}x", a.captures or 10**9, a.scale)
    runs = [Run("streamed (disk pose store)", small, work / "run-stream", REPO),
            Run("every pose in memory", small, work / "run-memory", REPO, memory=True)]
    if a.baseline_ref:
        runs.append(Run(f"before streaming (`{a.baseline_ref}`)", small, work / "run-baseline",
                        exported_tree(a.baseline_ref, work)))
    runs.append(Run(f"streamed, {a.scale}x data set", large, work / f"run-stream-{a.scale}x", REPO))
    return runs


def main(argv=None) -> int:
    ap = parser(__file__, __doc__)
    add_data_option(ap)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--scale", type=int, default=4, help="the larger data set, in multiples of the captures")
    ap.add_argument("--baseline-ref", help="git revision whose training runs as the before-streaming row")
    ap.add_argument("--captures", type=int, help="use the first N training captures (trial runs)")
    ap.add_argument("--image-size", type=int, help="default: rd's (trial runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", help="folder for the data sets and runs (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="train_memory-"))
    cfg = {"model": "rd", "epochs": a.epochs, "threads": a.threads, "image_size": a.image_size}
    try:
        rows = []
        for run in plan(a, work):
            shutil.rmtree(run.out, ignore_errors=True)
            rows.append((run, {**run_process(run, cfg), **run_figures(run)}))
            print(f"{run.label}: {rows[-1][1]}", flush=True)
        small = [r for r, _ in rows if r.data == rows[0][0].data]
        evals = {r.label: evaluate(r.out, r.data, figures=False, progress=False) for r in small}
        memory = next(r for r in small if r.memory)
        identical = {r.label: same_weights(r.out, memory.out) for r in small if not r.memory}
        body = report(rows, evals, identical, a, argv)
    finally:
        if not a.keep and not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print(body)
    if a.captures or a.image_size:
        print("trial run (--captures / --image-size): RESULTS.md not written")
    else:
        print(f"written to {write_section('train_memory', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
