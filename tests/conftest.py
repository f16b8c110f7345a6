"""Shared fixtures: a tiny synthetic RGB-D dataset and one tiny training run, built once per session.

torch is imported lazily (inside fixtures) so the edge-only tests never pay for it, and a
machine without the `train` extra still runs them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

# Small enough that a training run takes a few seconds on the 2-core CI machine.
TINY_SIZE = 64
TINY_COUNTS = dict(n_train=6, n_validation=3, n_test_good=3, n_test_per_defect=2)
TINY_EPOCHS = 2


@pytest.fixture(scope="session")
def torch_single_thread():
    """One torch thread: with 2 cores, intra-op threads fighting other processes are
    orders of magnitude slower than one thread for these tiny tensors."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """rgbd-folder dataset: train 6, validation 3, test 3 good + 2 per defect (x3), 64 x 64. Read-only."""
    from edge.data import SyntheticConfig, make_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    return make_synthetic_dataset(root, SyntheticConfig(size=TINY_SIZE, seed=0, **TINY_COUNTS))


@dataclass(frozen=True)
class TrainedRun:
    data: Path
    run: Path
    argv: tuple
    exit_code: int


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_dataset, torch_single_thread) -> TrainedRun:
    """One run of `rgbd-convert train` (CLI defaults for augmentation), shared by the CLI,
    load_run and eval tests. Treat the run directory as read-only."""
    pytest.importorskip("convert.train")
    from convert.cli import main

    run = tmp_path_factory.mktemp("runs") / "rd_tiny"
    argv = ("train", "--data", str(tiny_dataset), "--out", str(run), "--epochs", str(TINY_EPOCHS),
            "--image-size", str(TINY_SIZE), "--batch-size", "4", "--threads", "1", "--seed", "0", "--rotations", "4", "--quiet")
    code = main(list(argv))
    return TrainedRun(data=tiny_dataset, run=run, argv=argv, exit_code=code)
