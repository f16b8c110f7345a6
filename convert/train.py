"""Training: the loop, checkpoints and run directory shared by every model family.

What a step does is model-specific (convert.trainers): reverse distillation
regresses frozen-teacher features, DBRN learns from fresh pseudo-anomalies.

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import yaml
from tqdm import tqdm

from edge.checks import load_yaml
from edge.data import open_dataset
from edge.preprocess import POSE_KEY, PreprocessParams, fit_depth_normalisation

from .ema import WeightEMA
from .models import create_model
from edge.modes import MODES
from .trainers import make_trainer, trainer_defaults
from .trainers.common import bf16_is_native, check_precision
from calibrate.dataset import PreparedSplit, load_normal_raw, load_raw, prepare


@dataclass
class TrainConfig:
    model: str = "rd"
    epochs: int | None = None  # None = the model family's default (convert.trainers)
    batch_size: int | None = None  # None = the model family's default
    lr: float | None = None  # None = the model family's default
    image_size: int | None = None  # None = the model family's default (rd 256, dbrn 128)
    seed: int = 0
    checkpoint_every: int = 5
    threads: int = 0  # 0 = torch default
    # "bf16": forward passes in bfloat16 autocast (CPUs with AVX-512 BF16 or AMX); weights,
    # optimiser, losses and every evaluated or exported graph stay fp32. None = the family's
    # default (convert.trainers), bf16 only where the CPU runs it natively.
    precision: str | None = None
    # Pose augmentation of the normal training captures: parts arrive on a line in
    # any rotation, and a student that saw 80 poses calls a 81st pose anomalous.
    rotations: int = 8  # evenly spaced angles (multiples of 90 degrees are exact)
    flip: bool = True
    model_config: dict = field(default_factory=dict)
    preset: str | None = None  # named model configuration (dbrn: "edge" or "published")
    preprocess: dict = field(default_factory=dict)
    # Wall-time budget in minutes (data loading included): training stops at the budget or at
    # `epochs`, whichever comes first, and the learning-rate schedule decays toward whichever end
    # is nearer. A step's time on one CPU model varies from day to day (load, thermals, memory),
    # so an epoch count alone cannot promise an hour. None = epochs only (reproducible step for
    # step; a budget is not, across machines).
    minutes: float | None = None
    # Decay of an exponential moving average of the weights, which model.pt then holds (the
    # last step's weights stay in checkpoint.pt). 0 = off; None = the family's default.
    ema: float | None = None

    def resolved(self) -> "TrainConfig":
        """A copy with the model family's defaults filled in (what run.yaml records)."""
        d = trainer_defaults(self.model)
        out = replace(self, **{k: d[k] for k in ("epochs", "lr", "image_size", "batch_size", "ema") if getattr(self, k) is None})
        if out.precision is None:
            wanted = d.get("precision", "fp32")
            out = replace(out, precision=wanted if wanted != "bf16" or bf16_is_native() else "fp32")
        return out


class TimeBudget:
    """Seconds spent against a wall-time budget; `fraction` is what a time-aware schedule reads."""

    def __init__(self, minutes: float, start: float, clock=time.time):
        self.seconds, self.start, self.clock = 60.0 * minutes, start, clock

    def fraction(self) -> float:
        return min((self.clock() - self.start) / self.seconds, 1.0)

    def over(self) -> bool:
        return self.fraction() >= 1.0


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
                out.append(RGBDSample(rgb=r, depth=d, label=s.label, defect=s.defect, name=f"{s.name}@r{angle:g}{'f' if f else ''}",
                                      meta={**s.meta, POSE_KEY: (s.depth.shape, angle, f)}))
    return out


@torch.no_grad()
def raw_image_scores(model, split, mode: str, batch: int = 8) -> dict[str, np.ndarray]:
    """Per-sample image scores of the un-normalised maps, for the score statistics."""
    out: dict[str, list] = {}
    model.eval()
    for i in range(0, len(split), batch):
        x = [torch.from_numpy(a[i : i + batch]) for a in (split.rgb, split.depth, split.fg)]
        _, _, raw = model(*x, mode)
        for m, s in model.score_statistic_inputs(raw).items():
            out.setdefault(m, []).append(s.numpy())
    return {m: np.concatenate(v) for m, v in out.items()}


def fit_score_stats(model, split) -> dict:
    stats = {}
    for mode in MODES:
        for m, s in raw_image_scores(model, split, mode).items():
            model.set_score_stats(mode, m, float(s.mean()), float(s.std()))
            stats[f"{mode}/{m}"] = {"mean": float(s.mean()), "std": float(s.std())}
    return stats


def _trained(saved: dict) -> dict:
    """The trained weights in a checkpoint or model.pt; older rd runs stored them as "students"."""
    return saved["trained"] if "trained" in saved else saved["students"]


def _create(cfg: TrainConfig, model_config: dict):
    kw = {"preset": cfg.preset} if cfg.preset else {}
    return create_model(cfg.model, config=model_config, **kw)


def _warn_if_long(elapsed_s: float, epoch_s: float, epochs_left: int, hour_s: float = 3600.0) -> None:
    """After the first epoch: say when the epoch count will take more than an hour at this pace
    (a step's time on one CPU varies from day to day: only a --minutes budget bounds the wall time)."""
    total = elapsed_s + epoch_s * epochs_left
    if total > hour_s:
        tqdm.write(f"at this pace training takes about {total / 60:.0f} min; "
                   f"--minutes 55 bounds it (the schedule then fits the budget), --epochs shortens it")


def optimiser_step(trainer, opt, sched, idx: torch.Tensor) -> tuple[float, dict]:
    """One step of the loop on the samples idx: the trainer's loss, backward, optimiser and
    scheduler. Returns (loss, the trainer's log parts)."""
    loss, extra = trainer.loss(idx)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return float(loss.detach()), extra


# ---------------------------------------------------------------------------------------------
# train(): checked config -> data (resuming what the run directory holds) -> restore -> epoch
# loop -> finalise. The loop sees the data only as a sample count and the trainer.
# ---------------------------------------------------------------------------------------------
@dataclass
class PreviousRun:
    """What an interrupted run in the output directory fixes for its resumption."""

    params: PreprocessParams
    model_config: dict  # the complete saved config: resume what was trained, even if the preset changed


@dataclass
class TrainingData:
    """The training split as the trainer sees it, and its provenance for run.yaml."""

    samples: PreparedSplit  # every pose of every capture, preprocessed
    params: PreprocessParams
    fingerprint: str
    n_captures: int
    previous: PreviousRun | None  # set when the output directory holds a run to resume


@dataclass
class LoopState:
    """Where the epoch loop stands; a checkpoint saves it."""

    start_epoch: int = 0  # the epoch this session starts at (the checkpoint's)
    step: int = 0  # optimiser steps taken, over every session
    t0: float = 0.0  # wall-clock start, moved back by the time earlier sessions took
    done: int = 0  # epochs with at least one step, counting a partial last one
    saved: int = 0  # the epoch the checkpoint on disk holds
    stopped_by: str = "epochs"  # or "time": the --minutes budget ran out


@dataclass
class TrainingLoop:
    """The optimisation side of a run: what a step updates and a checkpoint saves."""

    cfg: TrainConfig
    model: torch.nn.Module
    trainer: object
    opt: torch.optim.Optimizer
    sched: object | None
    ema: WeightEMA | None
    budget: TimeBudget | None
    clock: Callable[[], float]
    ckpt_path: Path
    n_samples: int
    steps_per_epoch: int
    state: LoopState

    def checkpoint(self, epoch_done: int) -> None:
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "epoch": epoch_done,
                "step": self.state.step,
                "trained": self.model.trained_state(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else None,
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(),
                "elapsed_s": self.clock() - self.state.t0,
                "ema": self.ema.state_dict() if self.ema is not None else None,
            },
            tmp,
        )
        os.replace(tmp, self.ckpt_path)
        self.state.saved = epoch_done


def checked_config(cfg: TrainConfig) -> TrainConfig:
    """The resolved config, refused before minutes of data loading if it cannot run."""
    cfg = cfg.resolved()
    check_precision(cfg.precision)
    if cfg.minutes is not None and not cfg.minutes > 0:
        raise ValueError(f"--minutes must be positive, got {cfg.minutes!r}")
    if not 0.0 <= cfg.ema < 1.0:
        raise ValueError(f"--ema must be 0 (off) or a decay in (0, 1), got {cfg.ema!r}")
    return cfg


def previous_run(out: Path, cfg: TrainConfig, data, fingerprint: str) -> PreviousRun | None:
    """The interrupted run in `out` to resume (None if there is none); refused unless it is this
    run: same model and config, batch size (the schedule's length depends on it) and data."""
    run_yaml, ckpt_path = out / "run.yaml", out / "checkpoint.pt"
    if not (run_yaml.exists() and ckpt_path.exists()):
        return None
    run = load_yaml(run_yaml)
    params = PreprocessParams.from_dict(run["preprocess"])
    prev = run["train"]
    if (prev["model"], prev["model_config"], prev.get("preset")) != (cfg.model, cfg.model_config, cfg.preset):
        raise ValueError(f"{out}: holds a different run (model/config differ); choose another --out")
    if prev["batch_size"] != cfg.batch_size:
        raise ValueError(f"{out}: was trained with batch size {prev['batch_size']}, not {cfg.batch_size}; "
                         f"resume with --batch-size {prev['batch_size']} or choose another --out")
    if run["data"]["train_fingerprint"] != fingerprint:
        raise ValueError(f"{out}: was trained on different data than {data}; choose another --out")
    return PreviousRun(params=params, model_config=run["model_config"])


def load_training_data(data, out: Path, cfg: TrainConfig, progress: bool) -> TrainingData:
    """Read the train split, create `out`, and preprocess every pose with the resumed run's
    parameters or newly fitted ones."""
    train_raw = load_raw(data, "train", progress)
    if not train_raw:
        raise ValueError(f"{data}: the train split has no samples")
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(data)
    previous = previous_run(out, cfg, data, fingerprint)
    if previous is not None:
        params = previous.params
    else:
        base = PreprocessParams(**{"image_size": cfg.image_size, **cfg.preprocess})
        params = fit_depth_normalisation([s.depth for s in train_raw], base)
    samples = prepare(augment_samples(train_raw, cfg.rotations, cfg.flip), params, progress, "preprocess train")
    return TrainingData(samples=samples, params=params, fingerprint=fingerprint, n_captures=len(train_raw),
                        previous=previous)


def build_model(cfg: TrainConfig, td: TrainingData):
    if td.previous is None:
        return _create(cfg, {"image_size": td.params.image_size, **cfg.model_config})
    return create_model(cfg.model, config=td.previous.model_config, preset=None)


def run_record(cfg: TrainConfig, model, data, td: TrainingData) -> dict:
    """run.yaml as written before the first epoch; finalise_run() adds what training produced."""
    return {
        "schema": 1,
        "model": cfg.model,
        "model_config": model.cfg.to_dict(),
        "train": asdict(cfg),
        "preprocess": td.params.to_dict(),
        "data": {"root": str(Path(data).resolve()), "train_fingerprint": td.fingerprint, "n_train": td.n_captures,
                 "n_train_poses": len(td.samples)},
    }


def restore_loop(ckpt_path: Path, cfg: TrainConfig, model, trainer, n_samples: int, t0: float, clock) -> TrainingLoop:
    """Optimiser, schedule, time budget and weight average; from the checkpoint if there is one
    (weights, optimiser, schedule, step, random state and the time already spent)."""
    steps_per_epoch = sum(1 for i in range(0, n_samples, cfg.batch_size) if min(cfg.batch_size, n_samples - i) >= 2)
    budget = None
    if cfg.minutes is not None:
        # The schedule reads the budget's clock; its start moves back below if a checkpoint is read.
        budget = TimeBudget(cfg.minutes, t0, clock)
    opt, sched = trainer.optimizer(cfg.lr, steps_per_epoch * cfg.epochs,
                                   progress=budget.fraction if budget else None)
    state = LoopState(t0=t0)
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
    if ck is not None:
        model.load_trained_state(_trained(ck))
        opt.load_state_dict(ck["optimizer"])
        if sched is not None and ck.get("scheduler"):
            sched.load_state_dict(ck["scheduler"])
        state.start_epoch = ck["epoch"]
        state.step = ck.get("step", state.start_epoch * steps_per_epoch)  # older checkpoints: whole epochs only
        state.t0 = t0 - ck.get("elapsed_s", 0.0)  # wall time is cumulative over interruptions
        if budget:
            budget.start = state.t0
        torch.set_rng_state(ck["torch_rng"])
        np.random.set_state(ck["numpy_rng"])
    state.done = state.saved = state.start_epoch
    return TrainingLoop(cfg=cfg, model=model, trainer=trainer, opt=opt, sched=sched,
                        ema=_weight_average(cfg, model, ck), budget=budget, clock=clock, ckpt_path=ckpt_path,
                        n_samples=n_samples, steps_per_epoch=steps_per_epoch, state=state)


def _weight_average(cfg: TrainConfig, model, ck: dict | None) -> WeightEMA | None:
    if not cfg.ema:
        return None
    saved = ck.get("ema") if ck is not None else None
    # A checkpoint written without an average (or with another decay) starts one from its weights.
    if saved and saved["decay"] == cfg.ema:
        return WeightEMA.from_state_dict(saved)
    return WeightEMA(model.trained_state(), cfg.ema)


def open_epoch_log(log_path: Path, start_epoch: int):
    """The epoch log, opened to append after the checkpoint's epoch: epochs past the checkpoint
    were lost with the interruption, so are their log lines."""
    kept = []
    if log_path.exists():
        kept = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= start_epoch]
    log_path.write_text("".join(ln + "\n" for ln in kept))
    return open(log_path, "a")


def run_epoch(loop: TrainingLoop, epoch: int, progress: bool) -> tuple[list[float], dict[str, list[float]]]:
    """One pass over a fresh permutation in batches (a batch of one is skipped: batch norm needs
    two). Stops early when the budget runs out, also mid-epoch. Returns the step losses and the
    trainer's log parts per step."""
    cfg, state, budget = loop.cfg, loop.state, loop.budget
    loop.trainer.train_mode()
    perm = torch.randperm(loop.n_samples)
    losses, parts = [], {}
    steps = tqdm(range(0, loop.n_samples, cfg.batch_size), desc=f"epoch {epoch + 1}", disable=not progress,
                 leave=False)
    for i in steps:
        idx = perm[i : i + cfg.batch_size]
        if len(idx) < 2:
            continue
        if budget and budget.over():  # a partial epoch is logged and checkpointed
            state.stopped_by = "time"
            break
        loss, extra = optimiser_step(loop.trainer, loop.opt, loop.sched, idx)
        if loop.ema is not None:
            loop.ema.update(loop.model.trained_state())
        state.step += 1
        losses.append(loss)
        for k, v in extra.items():
            parts.setdefault(k, []).append(v)
        steps.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses, parts


def epoch_record(loop: TrainingLoop, losses: list[float], parts: dict[str, list[float]]) -> dict:
    """The train_log.jsonl line of the epoch just done."""
    rec = {"epoch": loop.state.done, "loss": float(np.mean(losses)),
           "elapsed_s": round(loop.clock() - loop.state.t0, 1), "step": loop.state.step,
           **{k: round(float(np.mean(v)), 6) for k, v in parts.items()}}
    if loop.sched is not None:
        rec["lr"] = float(loop.sched.get_last_lr()[0])
    return rec


def epoch_loop(loop: TrainingLoop, log, progress: bool) -> None:
    """Epochs from the checkpoint's to cfg.epochs or the budget: each logged once, a checkpoint
    every cfg.checkpoint_every epochs and after the last one (whole or cut by the budget), so a
    re-run resumes from there."""
    cfg, state = loop.cfg, loop.state
    desc = f"train (stops at {cfg.minutes:g} min)" if loop.budget else "train"
    bar = tqdm(range(state.start_epoch, cfg.epochs), desc=desc, disable=not progress, initial=state.start_epoch,
               total=cfg.epochs)
    t_loop = loop.clock()
    for epoch in bar:
        losses, parts = run_epoch(loop, epoch, progress)
        if not losses:  # the budget ran out before this epoch's first step
            break
        state.done = epoch + 1
        if loop.budget and loop.budget.over():
            state.stopped_by = "time"
        rec = epoch_record(loop, losses, parts)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{rec['loss']:.4f}")
        if epoch == state.start_epoch and not loop.budget:
            _warn_if_long(rec["elapsed_s"], loop.clock() - t_loop, cfg.epochs - state.done)
        if state.done % cfg.checkpoint_every == 0:
            loop.checkpoint(state.done)
        if state.stopped_by == "time":
            break
    if state.saved < state.done:
        loop.checkpoint(state.done)


def score_statistics(model, data, params: PreprocessParams, progress: bool) -> dict:
    """Fit the model's score statistics on normal validation data (the train split if there is
    none); returns run.yaml's score_stats entry."""
    model.eval()
    val_raw, source = load_normal_raw(data, progress)
    if source == "train":
        source = "train (no validation split: scores are optimistic)"
    val_set = prepare(val_raw, params, progress, "preprocess validation")
    stats = fit_score_stats(model, val_set)
    return {"source": source, "n": len(val_set), **stats}


def finalise_run(loop: TrainingLoop, out: Path, data, run: dict, params: PreprocessParams, progress: bool) -> None:
    """model.pt (the weight average if there is one: that is what gets evaluated and exported)
    with its score statistics, and run.yaml completed with them and what the budget allowed."""
    model, cfg, state = loop.model, loop.cfg, loop.state
    if loop.ema is not None:
        model.load_trained_state(loop.ema.state)
    run["score_stats"] = score_statistics(model, data, params, progress)
    torch.save({"trained": model.trained_state(), "score_mean": model.score_mean, "score_std": model.score_std},
               out / "model.pt")
    run["train_time_s"] = round(loop.clock() - state.t0, 1)
    # With --minutes the step count depends on the machine's speed.
    run["trained"] = {"steps": state.step, "epochs": round(state.step / loop.steps_per_epoch, 2),
                      "stopped_by": state.stopped_by,
                      "weights": f"ema {cfg.ema:g}" if loop.ema is not None else "last step"}
    (out / "run.yaml").write_text(yaml.safe_dump(run, sort_keys=False))


def train(data: str | Path, out: str | Path, cfg: TrainConfig, progress: bool = True, clock=time.time) -> Path:
    """Train (or resume) the run in `out`. `clock` is the wall clock the time budget and the
    logged times read (tests pass a fake one)."""
    out = Path(out)
    cfg = checked_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    t0 = clock()
    td = load_training_data(data, out, cfg, progress)
    model = build_model(cfg, td)
    run = run_record(cfg, model, data, td)
    (out / "run.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
    trainer = make_trainer(cfg.model, model, td.samples, td.params, cfg.precision)
    if hasattr(trainer, "preview"):  # synthetic training inputs, to look at (own generator: no effect on the run)
        cv2.imwrite(str(out / "training_samples.png"), trainer.preview())
    loop = restore_loop(out / "checkpoint.pt", cfg, model, trainer, len(td.samples), t0, clock)
    with open_epoch_log(out / "train_log.jsonl", loop.state.start_epoch) as log:
        epoch_loop(loop, log, progress)
    finalise_run(loop, out, data, run, td.params, progress)
    return out


def load_run(run_dir: str | Path):
    """(model in eval mode, PreprocessParams, run dict) from a finished run directory."""
    run_dir = Path(run_dir)
    run_yaml = run_dir / "run.yaml"
    weights = run_dir / "model.pt"
    for p in (run_yaml, weights):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: is {run_dir} a finished training run?")
    run = load_yaml(run_yaml)
    model = create_model(run["model"], config=run["model_config"], preset=None)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_trained_state(_trained(state))
    model.score_mean.copy_(state["score_mean"])
    model.score_std.copy_(state["score_std"])
    model.eval()
    return model, PreprocessParams.from_dict(run["preprocess"]), run
