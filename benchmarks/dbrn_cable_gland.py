"""DBRN (edge preset) on MVTec 3D-AD cable_gland: train, evaluate per mode in torch, build the
bundle (ONNX export, INT8, thresholds), compare with the reverse-distillation student, and
measure size and CPU latency of the published and edge configurations.

    python -m benchmarks.dbrn_cable_gland [--data DIR] [--out RUN_DIR] [--epochs N | --minutes M]
        [--precision fp32|bf16] [--set KEY=VALUE ...]

Re-running resumes (or reuses) the run directory. The rd rows come from the rd bundle that
`python -m benchmarks.int8_cable_gland` builds (runs/bundle-rd-cable_gland). Writes its section of
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks._report import (REPO, add_data_option, command, fmt, machine, missing_data, optional_fp32, parser, rel,
                                torch_latency, within_points, write_section)
from calibrate.dataset import load_raw, prepare
from calibrate.onnx_eval import latency as ort_latency
from convert.bundle import make_bundle
from convert.cli import parse_overrides
from convert.evaluate import evaluate
from convert.export import export_mode
from convert.models import create_model
from convert.onnx_stats import onnx_stats
from convert.train import TrainConfig, load_run, train
from convert.trainers.common import PRECISIONS
from edge.modes import MODES
from edge.preprocess import PreprocessParams

PUBLISHED_I_AUROC = 0.836  # DBRN paper, cable_gland
METRICS = ("i_auroc", "p_auroc", "aupro")


def eager_ms(model, feed: dict, mode: str, runs: int) -> tuple[float, float]:
    """Median / p99 ms of eager torch at batch 1."""
    x = [torch.from_numpy(feed[k]) for k in ("rgb", "depth", "foreground")]
    return torch_latency(model, x, mode, runs, warmup=2)


def size_and_speed(preset: str, model, feed: dict, runs: int, threads: int) -> dict:
    """Parameters, GFLOPs of the exported rgbd graph, torch and ONNX Runtime latency (rgbd)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rgbd.onnx"
        export_mode(model, "rgbd", model.cfg.image_size, path)
        st = onnx_stats(path)
        lat_ort = ort_latency(path, feed, runs, threads, warmup=min(10, runs))
    return {"preset": preset, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops": st["gflops"], "torch_ms": eager_ms(model, feed, "rgbd", runs),
            "ort_ms": (lat_ort["median_ms"], lat_ort["p99_ms"])}


def rd_rows(bundle: Path) -> dict | None:
    if not (bundle / "bundle.yaml").is_file():
        return None
    return yaml.safe_load((bundle / "bundle.yaml").read_text())["provenance"]["metrics"]


def inpainting(mc: dict) -> str:
    cell = mc.get("inpaint_cell", 0)
    if not cell:
        return "no inpainting passes"
    return f"inpainting passes with {cell}-pixel cells (both passes in training too)"


def pts(a: float, b: float) -> str:
    return f"{100 * (b - a):+.1f}"


def main(argv=None) -> int:
    ap = parser(__file__, __doc__)
    add_data_option(ap)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-dbrn-cable_gland"))
    ap.add_argument("--bundle", default=str(REPO / "runs" / "bundle-dbrn-cable_gland"))
    ap.add_argument("--rd-bundle", default=str(REPO / "runs" / "bundle-rd-cable_gland"))
    ap.add_argument("--epochs", type=int, help="default: dbrn's (convert/trainers/dbrn.py)")
    ap.add_argument("--minutes", type=float, help="training wall-time budget (rgbd-convert train --minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=list(PRECISIONS),
                    help="training steps; default: dbrn's (bf16 where the CPU runs it natively)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="edge preset override, as rgbd-convert train --set (a run directory trained with the "
                         "same overrides is reused)")
    ap.add_argument("--runs", type=int, default=50, help="latency repetitions (edge); the published model gets 5")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    if missing_data(a.data):
        return 2
    cmd = command(__file__, argv)
    torch.set_num_threads(a.threads)

    cfg = TrainConfig(model="dbrn", epochs=a.epochs, seed=a.seed, checkpoint_every=1, precision=a.precision,
                      minutes=a.minutes,
                      model_config=parse_overrides(a.overrides)).resolved()
    train(a.data, a.out, cfg, progress=True)
    run = yaml.safe_load((Path(a.out) / "run.yaml").read_text())
    log = [json.loads(x) for x in (Path(a.out) / "train_log.jsonl").read_text().splitlines()]
    results = {r["mode"]: r for r in evaluate(a.out, a.data, out=Path(a.out) / "eval.json", progress=True)}

    bundle = Path(a.bundle)
    if bundle.exists():
        shutil.rmtree(bundle)
    t0 = time.time()
    make_bundle(a.out, a.data, bundle, int8=True, progress=True, tar=False)
    bundle_s = time.time() - t0
    prov = yaml.safe_load((bundle / "bundle.yaml").read_text())["provenance"]
    rd = rd_rows(Path(a.rd_bundle))

    # Accuracy: torch (the evaluation), exported ONNX FP32 and INT8, and rd beside it.
    acc, match = [], []
    for m in MODES:
        t, f, q = results[m], prov["metrics"][m]["fp32"], prov["metrics"][m]["int8"]
        acc.append(f"| {m} | " + " | ".join(f"{fmt(f[k])} / {fmt(q[k])} ({pts(f[k], q[k])})" for k in METRICS)
                   + f" | {within_points([100 * (q[k] - f[k]) for k in METRICS])} |")
        match.append(f"| {m} | " + " | ".join(f"{fmt(t[k], 4)} / {fmt(f[k], 4)}" for k in METRICS)
                     + f" | {prov['parity'][m]['max_abs_score']:.1e} | {prov['parity'][m]['max_abs_map']:.1e} |")
    if rd is not None:
        side = [f"| {m} | " + " | ".join(
            f"{fmt(rd[m]['fp32'][k])} / {fmt(prov['metrics'][m]['fp32'][k])}" for k in METRICS) + " |" for m in MODES]
        rd_table = ("| mode | I-AUROC rd / dbrn | P-AUROC rd / dbrn | AUPRO rd / dbrn |\n|---|---|---|---|\n"
                    + "\n".join(side))
    else:
        rd_table = (f"(no rd bundle at `{rel(a.rd_bundle)}`: run `python -m benchmarks.rd_cable_gland`, then "
                    "`python -m benchmarks.int8_cable_gland`)")
    rgbd_i = prov["metrics"]["rgbd"]["fp32"]["i_auroc"]

    # Size and speed: the trained edge model and an untrained published one (weights do not matter).
    model, params, _ = load_run(a.out)
    first = load_raw(a.data, "test", False)[:1]
    feed = prepare(first, params, False).feed(0)
    edge = size_and_speed("edge", model, feed, a.runs, a.threads)
    # The published configuration at the paper's 256 x 256 (untrained: weights do not change speed).
    p256 = PreprocessParams.from_dict({**params.to_dict(), "image_size": 256})
    feed256 = prepare(first, p256, False).feed(0)
    published = create_model("dbrn", config={"image_size": 256}, preset="published").eval()
    pub = size_and_speed("published", published, feed256, 5, a.threads)
    pub["size"], edge["size"] = 256, params.image_size
    lat_modes = {m: eager_ms(model, feed, m, a.runs) for m in MODES}
    size_rows = "\n".join(
        f"| {s['preset']} | {s['size']} | {s['params_m']:.1f} M | {s['gflops']:.1f} | {s['torch_ms'][0]:.0f} / {s['torch_ms'][1]:.0f} | "
        f"{s['ort_ms'][0]:.0f} / {s['ort_ms'][1]:.0f} |" for s in (pub, edge))
    mc = run["model_config"]
    tc = run["train"]  # what the run was trained with, also when this reused an existing run
    schedule = f"{tc['epochs']} epochs"
    if tc.get("minutes"):  # a time budget: how far it got on this machine
        done = run["trained"]
        stop = f"the {tc['minutes']:g}-minute budget" if done["stopped_by"] == "time" else "the epoch count"
        schedule = f"{done['epochs']:g} of at most {tc['epochs']} epochs ({done['steps']:,} steps, stopped by {stop})"

    body = f"""## DBRN on cable_gland (`dbrn_cable_gland`)

DBRN, edge preset at {params.image_size} x {params.image_size} (patch {mc['patch_size']}, embed {mc['embed_dim']},
depths {mc['depths']}, window {mc['window_size']}, reconstruction scales {mc['scales']}, ISM with the
difference plane: {mc['ism_difference']}, discriminator {mc['disc_channels']} channels at 1/{mc['disc_stride']}
resolution), trained from scratch on
`train/good` ({run['data']['n_train']} captures x {run['data']['n_train_poses'] // run['data']['n_train']} poses)
with fresh Perlin pseudo-anomalies every step, {schedule}, batch {tc['batch_size']}, AdamW lr {tc['lr']}
(warm-up then cosine), {tc['precision']} training steps, {inpainting(mc)}. Score statistics from `validation/good`; test split of {results['rgbd']['n_images']} images ({results['rgbd']['n_anomalous']} anomalous),
metrics at the masks' 400 x 400 resolution, AUPRO to 30 % FPR.

**RGB-D I-AUROC {fmt(rgbd_i)}** against the published {PUBLISHED_I_AUROC} on this category
({'met' if rgbd_i >= PUBLISHED_I_AUROC else '**not met**'}).

Exported ONNX, FP32 / INT8 (change in points):

| mode | I-AUROC | P-AUROC | AUPRO | INT8 within 1.0 pt |
|---|---|---|---|---|
{chr(10).join(acc)}

Beside the reverse-distillation student (FP32, same split):

{rd_table}

The exported graph is the evaluated model: torch evaluation / ONNX Runtime FP32 on the test split,
and the largest score and map differences on real samples. Dropout is off in evaluation and in every
exported graph (the paper's test-time dropout is not reproducible, so it cannot carry a threshold).

| mode | I-AUROC torch / onnx | P-AUROC torch / onnx | AUPRO torch / onnx | max score diff | max map diff |
|---|---|---|---|---|---|
{chr(10).join(match)}

Size and CPU speed, rgbd graph, batch 1, {a.threads} threads, median / p99 ms (published: the paper's
configuration at its 256 x 256, untrained, 5 runs; edge: the trained model at its input size, {a.runs}
runs). GFLOPs count convolutions and matrix products (2 x MACs; attention's products are counted
approximately).

| config | input | parameters | GFLOPs | eager torch ms | ONNX Runtime ms |
|---|---|---|---|---|---|
{size_rows}

Edge model per mode, eager torch ms (median / p99): {', '.join(f"{m} {v[0]:.0f} / {v[1]:.0f}" for m, v in lat_modes.items())}.

- Training wall time: {run['train_time_s'] / 60:.1f} min on this CPU (final loss {log[-1]['loss']:.3f},
  focal {log[-1].get('focal', float('nan')):.4f}); bundle (export, INT8 calibration with method choice,
  thresholds) {bundle_s / 60:.1f} min.
- INT8 calibration methods kept: {', '.join(f"{m} {prov['int8'][m]['method']}" for m in MODES)}; optional
  groups left in FP32 (chosen on validation data): {'; '.join(f"{m} {optional_fp32(prov['int8'][m])}" for m in MODES)}.
- Machine: {machine()}; PyTorch {torch.__version__}, ONNX Runtime {__import__('onnxruntime').__version__}.
- Command: `{cmd}`
"""
    path = write_section("dbrn_cable_gland", body)
    print(body)
    print(f"written to {path}")
    (Path(a.out) / "bench.json").write_text(json.dumps(
        {"torch": results, "bundle": prov, "edge": edge, "published": pub, "latency_modes": lat_modes},
        indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
