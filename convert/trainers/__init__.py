"""Model-specific training steps; convert.train runs the shared loop around them.

A trainer reads its training poses from a pose store (convert.pose_store): each pose's arrays
are encoded once, before the first epoch, by the trainer's encoder, and a step reads the poses
of its batch. A trainer class exposes:

    defaults: dict              epochs, lr, image_size, batch_size, ema (weight-average decay,
                                0 = off) this family trains with unless told
    encoder(model, params)      (static) -> the family's PoseEncoder: `chunk` (poses encoded
                                together), `key()` (what the arrays depend on besides the poses,
                                for the cache key) and `encode(poses)` (a
                                calibrate.dataset.PreparedSplit of preprocessed poses ->
                                {field: array, one row per pose}); rd stores the frozen teacher's
                                features, dbrn the preprocessed inputs it edits

and is built once per run as Trainer(model, store, params, precision), where store serves
`batch(idx)` -> {field: array of those poses}, `names` and `len()` (a PreparedSplit is accepted
too and encoded in memory: small splits in tests and step benchmarks). An instance exposes:

    optimizer(lr, total_steps, progress=None)
                                -> (torch optimizer, per-step LR scheduler or None); progress,
                                when given, returns the fraction of a time budget spent, and a
                                decaying schedule ends at whichever of it and total_steps is first
    train_mode()                put the trained modules in training mode (once per epoch)
    loss(idx)                   -> (loss tensor to back-propagate, {name: float} for the log);
                                reads only the poses idx from the store; its forward pass runs
                                under common.autocast(precision)
    preview() (optional)        BGR sheet of training inputs, saved as RUN_DIR/training_samples.png

Randomness comes from numpy's and torch's global generators, which the shared
loop checkpoints, so an interrupted run resumes exactly.
"""
from __future__ import annotations

from .dbrn import DBRNTrainer
from .rd import RDTrainer

TRAINERS = {"rd": RDTrainer, "dbrn": DBRNTrainer}


def _trainer_class(model_name: str):
    if model_name not in TRAINERS:
        raise ValueError(f"no trainer for model {model_name!r}; trainable models: {sorted(TRAINERS)}")
    return TRAINERS[model_name]


def make_trainer(model_name: str, model, train_set, params, precision: str = "fp32"):
    return _trainer_class(model_name)(model, train_set, params, precision=precision)


def make_encoder(model_name: str, model, params):
    """The family's PoseEncoder: what its store holds per pose."""
    return _trainer_class(model_name).encoder(model, params)


def trainer_defaults(model_name: str) -> dict:
    return dict(_trainer_class(model_name).defaults)
