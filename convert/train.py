"""Training: frozen teacher features are computed once, students train on them.

A run directory holds everything needed to evaluate, export or resume:
run.yaml (model, configs, preprocessing, data provenance), checkpoint.pt
(resumable state, written every few epochs), model.pt (final weights with
normalisation statistics) and train_log.jsonl.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from tqdm import tqdm

from edge.data import open_dataset
from edge.preprocess import PreprocessParams, fit_depth_normalisation

from .models import create_model
from .models.rd import MODALITIES, MODES, PRESENT
from calibrate.dataset import load_raw, prepare


@dataclass
class TrainConfig:
    model: str = "rd"
    epochs: int = 16
    batch_size: int = 8
    lr: float = 0.005
    image_size: int = 256
    seed: int = 0
    checkpoint_every: int = 5
    threads: int = 0  # 0 = torch default
    # Pose augmentation of the normal training captures: parts arrive on a line in
    # any rotation, and a student that saw 80 poses calls a 81st pose anomalous.
    rotations: int = 8  # evenly spaced angles (multiples of 90 degrees are exact)
    flip: bool = True
    model_config: dict = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)


def data_fingerprint(root, split: str = "train") -> str:
    """sha256 over names and sizes of the training files: cheap provenance, not a content hash."""
    h = hashlib.sha256()
    for ref in open_dataset(root, split):
        for p in (ref.rgb, ref.depth):
            h.update(f"{ref.name}:{p.name}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rotate_capture(rgb: np.ndarray, depth: np.ndarray, angle: float, flip: bool):
    """Rotate a raw capture about its centre; uncovered depth becomes missing (0)."""
    if flip:
        rgb, depth = rgb[:, ::-1], depth[:, ::-1]
    k = angle / 90.0
    if abs(k - round(k)) < 1e-9:  # exact, no resampling
        return np.ascontiguousarray(np.rot90(rgb, int(round(k)))), np.ascontiguousarray(np.rot90(depth, int(round(k))))
    h, w = depth.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    r = cv2.warpAffine(np.ascontiguousarray(rgb), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    d = cv2.warpAffine(np.ascontiguousarray(depth), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    return r, d


def augment_samples(samples, rotations: int, flip: bool):
    from edge.frames import RGBDSample

    out = []
    for s in samples:
        for f in ([False, True] if flip else [False]):
            for j in range(max(rotations, 1)):
                angle = 360.0 * j / max(rotations, 1)
                if angle == 0 and not f:
                    out.append(s)
                    continue
                r, d = rotate_capture(s.rgb, s.depth, angle, f)
                out.append(RGBDSample(rgb=r, depth=d, label=s.label, defect=s.defect, name=f"{s.name}@r{angle:g}{'f' if f else ''}"))
    return out


def _batches(feats: list[torch.Tensor], idx: torch.Tensor):
    return [f[idx] for f in feats]


@torch.no_grad()
def teacher_bank(model, x: torch.Tensor, batch: int = 16) -> list[torch.Tensor]:
    outs = [model.teacher_features(x[i : i + batch]) for i in range(0, len(x), batch)]
    return [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))]


@torch.no_grad()
def raw_image_scores(model, split, mode: str, batch: int = 8) -> dict[str, np.ndarray]:
    """Per-modality max of the raw (un-normalised) maps, for the fusion statistics."""
    out = {m: [] for m in MODALITIES}
    model.eval()
    for i in range(0, len(split), batch):
        x = [torch.from_numpy(a[i : i + batch]) for a in (split.rgb, split.depth, split.fg)]
        _, _, raw = model(*x, mode)
        for m, r in raw.items():
            out[m].append(r.flatten(1).amax(1).numpy())
    return {m: np.concatenate(v) for m, v in out.items() if v}


def fit_score_stats(model, split) -> dict:
    stats = {}
    for mode in MODES:
        for m, s in raw_image_scores(model, split, mode).items():
            model.set_score_stats(mode, m, float(s.mean()), float(s.std()))
            stats[f"{mode}/{m}"] = {"mean": float(s.mean()), "std": float(s.std())}
    return stats


def train(data: str | Path, out: str | Path, cfg: TrainConfig, progress: bool = True) -> Path:
    out = Path(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    ckpt_path = out / "checkpoint.pt"
    run_yaml = out / "run.yaml"
    t0 = time.time()

    train_raw = load_raw(data, "train", progress)
    if not train_raw:
        raise ValueError(f"{data}: the train split has no samples")
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(data)
    if run_yaml.exists() and ckpt_path.exists():
        run = yaml.safe_load(run_yaml.read_text())
        params = PreprocessParams.from_dict(run["preprocess"])
        if run["train"]["model"] != cfg.model or run["train"]["model_config"] != cfg.model_config:
            raise ValueError(f"{out}: holds a different run (model/config differ); choose another --out")
        if run["data"]["train_fingerprint"] != fingerprint:
            raise ValueError(f"{out}: was trained on different data than {data}; choose another --out")
    else:
        base = PreprocessParams(**{"image_size": cfg.image_size, **cfg.preprocess})
        params = fit_depth_normalisation([s.depth for s in train_raw], base)
    train_set = prepare(augment_samples(train_raw, cfg.rotations, cfg.flip), params, progress, "preprocess train")
    model_config = {"image_size": params.image_size, **cfg.model_config}
    model = create_model(cfg.model, config=model_config)

    run = {
        "schema": 1,
        "model": cfg.model,
        "model_config": model.cfg.to_dict(),
        "train": asdict(cfg),
        "preprocess": params.to_dict(),
        "data": {"root": str(Path(data).resolve()), "train_fingerprint": fingerprint, "n_train": len(train_raw),
                 "n_train_poses": len(train_set)},
    }
    run_yaml.write_text(yaml.safe_dump(run, sort_keys=False))

    opt = torch.optim.Adam(model.trainable_parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    start_epoch = 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.students.load_state_dict(ck["students"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch = ck["epoch"]
        torch.set_rng_state(ck["torch_rng"])
        np.random.set_state(ck["numpy_rng"])

    # The teacher is frozen and inputs are not augmented: compute its features once.
    bank = {m: teacher_bank(model, torch.from_numpy(getattr(train_set, m))) for m in MODALITIES}
    fg = torch.from_numpy(train_set.fg)
    n = len(train_set)
    probs = np.array(model.cfg.modality_dropout, dtype=np.float64)
    probs = probs / probs.sum()
    # Epochs past the checkpoint were lost with the interruption: so are their log lines.
    log_path = out / "train_log.jsonl"
    kept = []
    if log_path.exists():
        kept = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= start_epoch]
    log_path.write_text("".join(ln + "\n" for ln in kept))
    log = open(log_path, "a")
    bar = tqdm(range(start_epoch, cfg.epochs), desc="train", disable=not progress, initial=start_epoch, total=cfg.epochs)
    for epoch in bar:
        model.students.train()
        perm = torch.randperm(n)
        losses = []
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            modes = np.random.choice(len(MODES), size=len(idx), p=probs)
            present = torch.tensor([PRESENT[MODES[k]] for k in modes], dtype=torch.float32)
            t = {m: _batches(bank[m], idx) for m in MODALITIES}
            s_feats = model.student_features(t["rgb"], t["depth"], present)
            loss = 0.0
            for k, m in enumerate(MODALITIES):
                per_sample = model.distillation_loss(t[m], s_feats[k], fg[idx])
                w = present[:, k]
                loss = loss + (per_sample * w).sum() / w.sum().clamp_min(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "elapsed_s": round(time.time() - t0, 1)}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{rec['loss']:.4f}")
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(
                {
                    "epoch": epoch + 1,
                    "students": model.students.state_dict(),
                    "optimizer": opt.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "numpy_rng": np.random.get_state(),
                },
                tmp,
            )
            os.replace(tmp, ckpt_path)
    log.close()

    # Fusion statistics from normal validation data (the train split if there is none).
    model.eval()
    try:
        val_raw = load_raw(data, "validation", progress)
        stats_source = "validation"
    except (FileNotFoundError, ValueError):
        val_raw, stats_source = train_raw, "train (no validation split: scores are optimistic)"
    val_set = prepare(val_raw, params, progress, "preprocess validation")
    stats = fit_score_stats(model, val_set)
    torch.save({"students": model.students.state_dict(), "score_mean": model.score_mean, "score_std": model.score_std}, out / "model.pt")
    run["score_stats"] = {"source": stats_source, "n": len(val_set), **stats}
    run["train_time_s"] = round(time.time() - t0, 1)
    run_yaml.write_text(yaml.safe_dump(run, sort_keys=False))
    return out


def load_run(run_dir: str | Path):
    """(model in eval mode, PreprocessParams, run dict) from a finished run directory."""
    run_dir = Path(run_dir)
    run_yaml = run_dir / "run.yaml"
    weights = run_dir / "model.pt"
    for p in (run_yaml, weights):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: is {run_dir} a finished training run?")
    run = yaml.safe_load(run_yaml.read_text())
    model = create_model(run["model"], config=run["model_config"])
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.students.load_state_dict(state["students"])
    model.score_mean.copy_(state["score_mean"])
    model.score_std.copy_(state["score_std"])
    model.eval()
    return model, PreprocessParams.from_dict(run["preprocess"]), run
