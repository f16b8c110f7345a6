"""Training: the loop, checkpoints and run directory shared by every model family.

What a step does is model-specific (convert.trainers): reverse distillation
regresses frozen-teacher features, DBRN learns from fresh pseudo-anomalies.

Memory stays bounded whatever the number of captures: the train split is read one capture at
a time, each pose is preprocessed and encoded by the trainer's encoder (rd: the frozen
teacher's features) once into a pose store on disk (convert.pose_store), and a step reads its
batch from there; the score statistics read the validation split a batch at a time.

A run directory holds everything needed to evaluate, export or resume:
run.yaml (model, configs, preprocessing, data provenance), checkpoint.pt
(resumable state, written every few epochs), model.pt (final weights with
normalisation statistics) and train_log.jsonl; while training, pose_cache/ (the pose store:
an interrupted run's resumption reuses it, a finished run removes it).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
import yaml
from tqdm import tqdm

from edge.checks import load_yaml
from edge.data import open_dataset
from edge.preprocess import PreprocessParams, fit_depth_normalisation

from .ema import WeightEMA
from .models import create_model
from .poses import augment_samples, capture_poses, pose_settings, rotate_capture  # noqa: F401 (public here too)
from .pose_store import build_store, cache_key, memory_store, open_cached, remove_store
from edge.modes import MODES
from .trainers import make_encoder, make_trainer, trainer_defaults
from .trainers.common import bf16_is_native, check_precision
from calibrate.dataset import PreparedSample, batched, normal_refs, prepare_sample, prepared_batches, stack_prepared


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


def prepared_poses(refs, params: PreprocessParams, rotations: int, flip: bool,
                   progress: bool = False) -> Iterator[PreparedSample]:
    """Every pose of every capture in refs (edge.data.SampleRef), preprocessed, in training
    order. One capture is read at a time and its poses are made one at a time."""
    for ref in tqdm(refs, desc="poses", disable=not progress, leave=False):
        capture = ref.load()
        for pose, _, _ in capture_poses(capture, rotations, flip):
            yield prepare_sample(pose, params)  # the pose travels in its meta: prepare_sample moves the plane


@torch.no_grad()
def raw_image_scores(model, batches) -> dict[str, dict[str, np.ndarray]]:
    """Per mode, per-sample image scores of the un-normalised maps, for the score statistics:
    one pass over the batches (PreparedSplits), every mode on each batch."""
    out: dict[str, dict[str, list]] = {mode: {} for mode in MODES}
    model.eval()
    for sp in batches:
        x = [torch.from_numpy(a) for a in (sp.rgb, sp.depth, sp.fg)]
        for mode in MODES:
            _, _, raw = model(*x, mode)
            for m, s in model.score_statistic_inputs(raw).items():
                out[mode].setdefault(m, []).append(s.numpy())
    return {mode: {m: np.concatenate(v) for m, v in per.items()} for mode, per in out.items()}


def fit_score_stats(model, batches) -> dict:
    stats = {}
    for mode, per in raw_image_scores(model, batches).items():
        for m, s in per.items():
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
# train(): checked config -> data (resuming what the run directory holds) -> pose store ->
# restore -> epoch loop -> finalise. The loop sees the data only as a pose count and the trainer.
# ---------------------------------------------------------------------------------------------
@dataclass
class PreviousRun:
    """What an interrupted run in the output directory fixes for its resumption."""

    params: PreprocessParams
    model_config: dict  # the complete saved config: resume what was trained, even if the preset changed


@dataclass
class TrainingData:
    """The training split (listed, not loaded), its preprocessing and its provenance for run.yaml."""

    refs: list  # the train split's captures (edge.data.SampleRef), read when their poses are made
    params: PreprocessParams
    fingerprint: str
    n_captures: int
    previous: PreviousRun | None  # set when the output directory holds a run to resume


@dataclass
class StoreOptions:
    """Where training keeps its encoded poses (convert.pose_store). None of it changes what is
    trained: a disk store and a memory store serve the same arrays."""

    kind: str = "disk"  # "memory": every pose in memory (grows with the data set; for comparisons)
    # The disk store's directory: None = RUN_DIR/pose_cache; a folder given here holds one store
    # per key (data, preprocessing, poses, encoder), so runs on the same data can share one.
    cache_dir: str | Path | None = None
    keep: bool = False  # keep the store after a finished run (a resumed run reuses it in any case)

    def checked(self) -> "StoreOptions":
        if self.kind not in ("disk", "memory"):
            raise ValueError(f"pose store kind must be 'disk' or 'memory', got {self.kind!r}")
        return self


@dataclass
class PoseSource:
    """The store a run trains from, where it lives (None in memory) and run.yaml's note on it."""

    store: object
    directory: Path | None
    record: dict


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
    """List the train split, create `out`, and take the resumed run's preprocessing parameters
    or fit new ones (reading one capture at a time)."""
    refs = open_dataset(data, "train")
    if not refs:
        raise ValueError(f"{data}: the train split has no samples")
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(data)
    previous = previous_run(out, cfg, data, fingerprint)
    if previous is not None:
        params = previous.params
    else:
        base = PreprocessParams(**{"image_size": cfg.image_size, **cfg.preprocess})
        depths = (r.load().depth for r in tqdm(refs, desc="fit depth normalisation", disable=not progress, leave=False))
        params = fit_depth_normalisation(depths, base)
    return TrainingData(refs=refs, params=params, fingerprint=fingerprint, n_captures=len(refs), previous=previous)


def build_model(cfg: TrainConfig, td: TrainingData):
    if td.previous is None:
        return _create(cfg, {"image_size": td.params.image_size, **cfg.model_config})
    return create_model(cfg.model, config=td.previous.model_config, preset=None)


def encoded_chunks(poses: Iterator[PreparedSample], encoder) -> Iterator[tuple[dict, list[str]]]:
    """(encoded arrays, pose names) for consecutive chunks of encoder.chunk poses."""
    for rows in batched(poses, encoder.chunk):
        chunk = stack_prepared(rows)
        yield encoder.encode(chunk), chunk.names


def store_directory(out: Path, opts: StoreOptions, key: str) -> Path:
    return out / "pose_cache" if opts.cache_dir is None else Path(opts.cache_dir) / f"poses-{key[:16]}"


def open_pose_store(td: TrainingData, cfg: TrainConfig, model, out: Path, opts: StoreOptions,
                    progress: bool) -> PoseSource:
    """Every pose encoded by the family's encoder: a disk store reused when it was made from the
    same data, preprocessing, poses and encoder (a resumed run), else written pose by pose."""
    t0 = time.perf_counter()
    encoder = make_encoder(cfg.model, model, td.params)
    poses = prepared_poses(td.refs, td.params, cfg.rotations, cfg.flip, progress)
    if opts.kind == "memory":
        store = memory_store(encoded_chunks(poses, encoder))
        return PoseSource(store, None, {"kind": "memory", "bytes": store.nbytes,
                                        "seconds": round(time.perf_counter() - t0, 1)})
    key = cache_key({"data": td.fingerprint, "preprocess": td.params.to_dict(),
                     "poses": pose_settings(cfg.rotations, cfg.flip), "encoder": encoder.key()})
    directory = store_directory(out, opts, key)
    store = open_cached(directory, key)
    reused = store is not None
    if store is None:
        store = build_store(directory, key, encoded_chunks(poses, encoder))
    return PoseSource(store, directory, {"kind": "disk", "bytes": store.nbytes, "reused": reused,
                                         "seconds": round(time.perf_counter() - t0, 1)})


def run_record(cfg: TrainConfig, model, data, td: TrainingData, source: PoseSource) -> dict:
    """run.yaml as written before the first epoch; finalise_run() adds what training produced."""
    return {
        "schema": 1,
        "model": cfg.model,
        "model_config": model.cfg.to_dict(),
        "train": asdict(cfg),
        "preprocess": td.params.to_dict(),
        "data": {"root": str(Path(data).resolve()), "train_fingerprint": td.fingerprint, "n_train": td.n_captures,
                 "n_train_poses": len(source.store), "pose_store": source.record},
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


def epoch_record(loop: TrainingLoop, losses: list[float], parts: dict[str, list[float]], started: float) -> dict:
    """The train_log.jsonl line of the epoch just done (which began at clock time `started`):
    elapsed_s counts from the run's start, epoch_s this epoch's steps alone."""
    now = loop.clock()
    rec = {"epoch": loop.state.done, "loss": float(np.mean(losses)),
           "elapsed_s": round(now - loop.state.t0, 1), "epoch_s": round(now - started, 1), "step": loop.state.step,
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
        started = loop.clock()
        losses, parts = run_epoch(loop, epoch, progress)
        if not losses:  # the budget ran out before this epoch's first step
            break
        state.done = epoch + 1
        if loop.budget and loop.budget.over():
            state.stopped_by = "time"
        rec = epoch_record(loop, losses, parts, started)
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
    none), read and preprocessed a batch at a time; returns run.yaml's score_stats entry."""
    model.eval()
    refs, source = normal_refs(data)
    if source == "train":
        source = "train (no validation split: scores are optimistic)"
    stats = fit_score_stats(model, prepared_batches(refs, params, 8, progress, "score statistics"))
    return {"source": source, "n": len(refs), **stats}


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


def train(data: str | Path, out: str | Path, cfg: TrainConfig, progress: bool = True, clock=time.time,
          store: StoreOptions | None = None) -> Path:
    """Train (or resume) the run in `out`. `clock` is the wall clock the time budget and the
    logged times read (tests pass a fake one); `store` says where the encoded poses live (by
    default a disk store in RUN_DIR/pose_cache, removed when the run has finished)."""
    out = Path(out)
    cfg = checked_config(cfg)
    opts = (store or StoreOptions()).checked()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    t0 = clock()
    td = load_training_data(data, out, cfg, progress)
    model = build_model(cfg, td)
    source = open_pose_store(td, cfg, model, out, opts, progress)
    try:
        run = run_record(cfg, model, data, td, source)
        (out / "run.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
        trainer = make_trainer(cfg.model, model, source.store, td.params, cfg.precision)
        if hasattr(trainer, "preview"):  # synthetic training inputs, to look at (own generator: no effect on the run)
            cv2.imwrite(str(out / "training_samples.png"), trainer.preview())
        loop = restore_loop(out / "checkpoint.pt", cfg, model, trainer, len(source.store), t0, clock)
        with open_epoch_log(out / "train_log.jsonl", loop.state.start_epoch) as log:
            epoch_loop(loop, log, progress)
        finalise_run(loop, out, data, run, td.params, progress)
    finally:
        source.store.close()  # an interrupted run keeps its store on disk for the resumption
    if source.directory is not None and not opts.keep:
        remove_store(source.directory)
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
