"""Shared fixtures: a tiny synthetic RGB-D dataset and one tiny training run, built once per session;
the real data (tests/_data.py); and strict skips.

torch is imported lazily (inside fixtures) so the edge-only tests never pay for it.

Strict skips: with RGBD_EDGE_STRICT_SKIPS=1 (scripts/test sets it, CI runs scripts/test) a skip fails
the run unless the test is marked ``jetson`` (it needs a real TensorRT) or is marked ``realdata`` and
skipped because its data is absent (the hook checks that it is). Every package a test imports is
installed by scripts/setup, so a missing one must read as a failure, never as "N skipped".
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

import _data

pytest_plugins = ("pytester",)  # tests/test_strict_skips.py runs pytest on tiny test files

STRICT_SKIPS_ENV = "RGBD_EDGE_STRICT_SKIPS"

# Small enough that a training run takes a few seconds on the 2-core CI machine.
TINY_SIZE = 64
TINY_COUNTS = dict(n_train=6, n_validation=3, n_test_good=3, n_test_per_defect=2)
TINY_EPOCHS = 2


@pytest.fixture(autouse=True)
def _own_runtime_dir(tmp_path, monkeypatch):
    """The daemon's single-instance lock lives in each test's own directory, not /run/rgbd-edge (which
    another run on this machine, or a real service, may hold); subprocesses inherit it."""
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))


@pytest.fixture(scope="session")
def torch_single_thread():
    """One torch thread: with 2 cores, intra-op threads fighting other processes are
    orders of magnitude slower than one thread for these tiny tensors."""
    import torch

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
    from convert.cli import main

    run = tmp_path_factory.mktemp("runs") / "rd_tiny"
    argv = ("train", "--data", str(tiny_dataset), "--out", str(run), "--epochs", str(TINY_EPOCHS),
            "--image-size", str(TINY_SIZE), "--batch-size", "4", "--threads", "1", "--seed", "0", "--rotations", "4", "--quiet")
    code = main(list(argv))
    return TrainedRun(data=tiny_dataset, run=run, argv=argv, exit_code=code)


# --------------------------------------------------------------------------- real data


@pytest.fixture
def real_data(request) -> Path:
    """The path the test's ``realdata`` marker names under the data folder; skips when it is absent."""
    path = _data.marked_path(request.node)
    if not path.exists():
        pytest.skip(_data.absent_reason(path))
    return path


def pytest_collection_modifyitems(config, items):
    broken = [f"{item.nodeid}: {why}" for item in items if (why := _data.misuse(item))]
    if broken:
        raise pytest.UsageError("tests/_data.py rule broken:\n  " + "\n  ".join(broken))


# --------------------------------------------------------------------------- strict skips


def strict_skips() -> bool:
    return os.environ.get(STRICT_SKIPS_ENV, "") not in ("", "0")


def skip_reason(report) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:  # (path, line, "Skipped: reason")
        return str(lr[2]).removeprefix("Skipped: ")
    return str(lr)


def skip_allowed(item, reason: str) -> bool:
    if item.get_closest_marker("jetson") is not None:
        return True
    # A full-disk test needs a real tmpfs mount; where the machine cannot mount, it may skip, and only so.
    if "small_disk" in getattr(item, "fixturenames", ()) and reason.startswith(_data.MOUNT_SKIP_REASON):
        return True
    path = _data.marked_path(item)
    return path is not None and not path.exists() and reason == _data.absent_reason(path)


def disallowed(reason: str) -> str:
    return (f"skipped, and {STRICT_SKIPS_ENV}=1 lets only tests marked jetson, realdata tests whose data "
            f"is absent, or full-disk tests where no tmpfs can be mounted, skip: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (strict_skips() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if not skip_allowed(item, reason):
        report.outcome = "failed"
        report.longrepr = disallowed(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if strict_skips() and report.skipped:  # a module-level skip: no test in it is marked yet
        report.outcome = "failed"
        report.longrepr = disallowed(skip_reason(report))


def pytest_report_header(config):
    root = _data.data_root()
    lines = [f"real data: {root} ({'present' if root.is_dir() else 'absent'}; {_data.DATA_ENV} sets it)"]
    if strict_skips():
        lines.append(f"{STRICT_SKIPS_ENV}=1: a skip fails unless marked jetson, or realdata with its data absent")
    return lines
