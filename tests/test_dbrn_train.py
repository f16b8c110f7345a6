"""DBRN through the whole product path on generated data: the pseudo-anomaly training step,
`rgbd-convert train --model dbrn`, resume, eval, bundle (FP32 + INT8), and the edge daemon
running that bundle with no DBRN-specific code. Behaviour only: no timing or accuracy asserts
(accuracy is measured in benchmarks/dbrn_cable_gland.py).
"""
from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_SIZE  # noqa: E402
from convert.cli import main  # noqa: E402
from convert.export import parity_ok  # noqa: E402
from convert.train import TrainConfig, augment_samples, load_run, train  # noqa: E402
from convert.trainers.common import bf16_is_native  # noqa: E402
from convert.trainers.dbrn import DBRNTrainer, source_index, target_mask  # noqa: E402
from convert.models import create_model  # noqa: E402
from convert.models.dbrn import DBRNConfig  # noqa: E402
from convert.models.rd import MODES  # noqa: E402
from calibrate.dataset import load_raw, prepare  # noqa: E402
from edge.data import open_dataset  # noqa: E402
from edge.preprocess import PreprocessParams, fit_depth_normalisation  # noqa: E402

# Small enough for seconds per epoch at 64 x 64 on one thread.
TINY = {"embed_dim": 16, "num_heads": [1, 2, 2, 4], "window_size": 4, "ism_dim": 8, "disc_channels": 8,
        "smooth_sigma": 2.0, "score_pool": 5}
SET = [x for k, v in TINY.items() for x in ("--set", f"{k}={json.dumps(v)}")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(torch_single_thread):
    yield


def _train_argv(data, out, epochs: int) -> list[str]:
    return ["train", "--model", "dbrn", "--data", str(data), "--out", str(out), "--epochs", str(epochs),
            "--image-size", str(TINY_SIZE), "--batch-size", "4", "--threads", "1", "--rotations", "2",
            "--no-flip", "--quiet", *SET]


@pytest.fixture(scope="module")
def dbrn_run(tmp_path_factory, tiny_dataset):
    run = tmp_path_factory.mktemp("dbrn") / "run"
    assert main(_train_argv(tiny_dataset, run, 2)) == 0
    return run


@pytest.fixture(scope="module")
def dbrn_bundle(tmp_path_factory, dbrn_run, tiny_dataset):
    out = tmp_path_factory.mktemp("dbrn_bundle") / "b"
    assert main(["bundle", "--run", str(dbrn_run), "--data", str(tiny_dataset), "--out", str(out), "--quiet",
                 "--no-tar"]) == 0
    return out


@pytest.fixture(scope="module")
def split(tiny_dataset):
    raw = load_raw(tiny_dataset, "train", False)
    params = fit_depth_normalisation([s.depth for s in raw], PreprocessParams(image_size=TINY_SIZE))
    return prepare(augment_samples(raw, 2, False), params, False), params, len(raw)


# ------------------------------------------------------------------ the training step


def test_source_index_groups_poses_of_one_capture():
    assert source_index(["a", "a@r180", "b", "b@r180f", "c@r90"]) == [0, 0, 1, 1, 2]


def test_target_mask_keeps_only_what_a_present_stream_shows():
    m = torch.ones(4, 1, 2, 2)
    edited = [(True, False), (False, True), (True, True), (False, False)]  # rgb-only, depth-only, both, none
    present = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    t = target_mask(m, edited, present)
    assert t[:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0, 0.0]


def test_target_mask_hides_a_stream_fed_its_original_twice():
    m = torch.ones(5, 1, 2, 2)
    edited = [(True, False), (True, False), (True, True), (True, True), (False, True)]
    present = torch.ones(5, 2)
    swap = torch.tensor([1, 2, 1, 2, 2])  # 1: RGB original twice, 2: depth original twice
    t = target_mask(m, edited, present, swap)
    # an RGB-only anomaly fed twice shows nowhere; with both edited the other stream still shows it
    assert t[:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert target_mask(m, edited, present)[:, 0, 0, 0].tolist() == [1.0] * 5


def test_augment_encodes_edits_like_the_runtime(split):
    sp, params, n_src = split
    model = create_model("dbrn", config={"image_size": TINY_SIZE, **TINY})
    tr = DBRNTrainer(model, sp, params)
    assert len(tr.bank) == n_src  # one texture source per capture, not per pose
    seen = set()
    rng = np.random.default_rng(0)
    for k in range(40):
        i = k % len(sp)
        rgb_in, depth_in, m, edited = tr.augment(i, rng)
        seen.add(edited)
        assert rgb_in.shape == sp.rgb[i].shape and depth_in.shape == sp.depth[i].shape and m.shape == sp.height[i].shape
        if not any(edited):
            assert np.array_equal(rgb_in, sp.rgb[i]) and np.array_equal(depth_in, sp.depth[i])
            continue
        assert m.max() > 0 and not (m > 0)[sp.fg[i, 0] < 0.5].any()  # anomalies only on the part
        near = cv2.dilate((m > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # normals: 3x3 Sobel
        for x, clean, ed in ((rgb_in, sp.rgb[i], edited[0]), (depth_in, sp.depth[i], edited[1])):
            changed = np.abs(x - clean).max(0) > 1e-4
            if ed:
                assert not changed[~near].any()  # nothing changes away from the anomaly
            else:
                assert np.array_equal(x, clean)
    assert {(True, False), (False, True), (True, True), (False, False)} <= seen


def test_pseudo_modality_probs_choose_which_streams_are_edited(split):
    sp, params, _ = split
    model = create_model("dbrn", config={"image_size": TINY_SIZE, **TINY, "pseudo_modality_probs": [1, 0, 0]})
    tr = DBRNTrainer(model, sp, params)
    rng = np.random.default_rng(0)
    seen = {tr.augment(k % len(sp), rng)[3] for k in range(30)}
    assert seen <= {(True, False), (False, False)} and (True, False) in seen  # RGB-only anomalies
    with pytest.raises(ValueError, match="pseudo_modality_probs"):
        create_model("dbrn", config={"image_size": TINY_SIZE, **TINY, "pseudo_modality_probs": [0.5, 0.5]})


@pytest.mark.parametrize("hides", [True, False])
def test_training_step_hides_the_swapped_streams_anomaly_from_the_target(split, hides):
    """RGB-only anomalies, both streams present, RGB's original fed twice in every sample: with
    swap_hides_target no stream shows the anomaly, so the mask target is empty; without, it is kept."""
    sp, params, _ = split
    model = create_model("dbrn", config={"image_size": TINY_SIZE, **TINY, "pseudo_modality_probs": [1, 0, 0],
                                         "modality_dropout": [1, 0, 0], "swap_hides_target": hides})
    model.draw_swap = lambda n, device=None: torch.ones(n, dtype=torch.long)
    seen = {}
    forward, losses = model.training_forward, model.losses

    def spy_forward(*args, **kw):
        seen["swap"] = kw["swap"]
        return forward(*args, **kw)

    def spy_losses(out, targets):
        seen["mask"] = targets["mask"]
        return losses(out, targets)

    model.training_forward, model.losses = spy_forward, spy_losses
    np.random.seed(0)
    DBRNTrainer(model, sp, params).loss(torch.arange(len(sp)))
    assert seen["swap"].tolist() == [1] * len(sp)
    assert (float(seen["mask"].sum()) == 0) == hides
    assert DBRNConfig.edge().swap_hides_target and not DBRNConfig.published().swap_hides_target


def _step_loss(tr, seed: int):
    np.random.seed(seed)
    torch.manual_seed(seed)
    loss, parts = tr.loss(torch.arange(4))
    return loss, parts


def test_bf16_step_has_fp32_losses_and_gradients_close_to_fp32(split):
    sp, params, _ = split
    torch.manual_seed(0)
    model = create_model("dbrn", config={"image_size": TINY_SIZE, **TINY})
    model.eval()  # dropout off: the two precisions see the same network and the same draws
    exact, _ = _step_loss(DBRNTrainer(model, sp, params), seed=3)
    loss, parts = _step_loss(DBRNTrainer(model, sp, params, precision="bf16"), seed=3)
    value, reference = float(loss.detach()), float(exact.detach())
    assert loss.dtype == torch.float32 and math.isfinite(value)
    assert abs(value - reference) < 0.05 * abs(reference)  # bf16 products, same loss
    assert set(parts) == {"l2_rgb", "ssim_rgb", "l2_depth", "ssim_depth", "focal"}
    loss.backward()
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        if p.grad is not None:
            assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


def test_unknown_precision_is_refused_before_training(tmp_path, tiny_dataset):
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        train(tiny_dataset, tmp_path / "run", TrainConfig(model="dbrn", precision="fp16"), progress=False)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ CLI train, resume, eval


def test_each_family_has_its_own_defaults_unless_told():
    rd, dbrn = TrainConfig(model="rd").resolved(), TrainConfig(model="dbrn").resolved()
    assert (rd.image_size, rd.lr, rd.epochs, rd.batch_size) == (256, 0.005, 16, 8)
    assert (dbrn.image_size, dbrn.lr, dbrn.epochs, dbrn.batch_size) == (128, 0.0005, 44, 4)
    # bf16 steps only where the CPU runs them natively (emulated bf16 is slower than fp32)
    assert rd.precision == "fp32" and dbrn.precision == ("bf16" if bf16_is_native() else "fp32")
    assert TrainConfig(model="dbrn", precision="fp32").resolved().precision == "fp32"
    told = TrainConfig(model="dbrn", image_size=96, lr=0.1, epochs=1, batch_size=8).resolved()
    assert (told.image_size, told.lr, told.epochs, told.batch_size) == (96, 0.1, 1, 8)


def test_cli_train_writes_a_dbrn_run(dbrn_run):
    meta = yaml.safe_load((dbrn_run / "run.yaml").read_text())
    assert meta["model"] == "dbrn"
    assert meta["train"]["lr"] == 0.0005 and meta["train"]["epochs"] == 2  # dbrn's own default lr
    cfg = meta["model_config"]
    assert cfg["embed_dim"] == 16 and cfg["image_size"] == TINY_SIZE
    assert cfg["disc_stride"] == 2  # the rest comes from the edge preset
    assert set(meta["score_stats"]) >= {f"{m}/fused" for m in MODES}
    recs = [json.loads(x) for x in (dbrn_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]
    sheet = cv2.imread(str(dbrn_run / "training_samples.png"))
    assert sheet.shape[1] == 5 * TINY_SIZE and sheet.shape[0] % TINY_SIZE == 0  # rows of 5 views
    for r in recs:
        assert {"loss", "l2_rgb", "l2_depth", "ssim_rgb", "ssim_depth", "focal", "lr"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("loss", "focal", "lr"))


def test_cli_bf16_run_is_recorded_and_stays_fp32(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    assert main(_train_argv(tiny_dataset, out, 1) + ["--precision", "bf16"]) == 0
    assert yaml.safe_load((out / "run.yaml").read_text())["train"]["precision"] == "bf16"
    model, _, _ = load_run(out)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_load_run_gives_a_deterministic_model_in_every_mode(dbrn_run, tiny_dataset):
    model, params, _ = load_run(dbrn_run)
    assert not model.training and type(model).__name__ == "DBRN"
    sp = prepare(load_raw(tiny_dataset, "validation", False), params, False)
    x = [torch.from_numpy(a) for a in (sp.rgb, sp.depth, sp.fg)]
    with torch.no_grad():
        for mode in MODES:
            a, sa, _ = model(*x, mode)
            b, sb, _ = model(*x, mode)
            assert torch.equal(a, b) and torch.equal(sa, sb)
            # validation scores are standardised by the fitted statistics
            assert abs(float(sa.mean())) < 1e-3 or len(sa) < 2


def test_resume_equals_uninterrupted(tmp_path, dbrn_run, tiny_dataset):
    out = tmp_path / "run"
    assert main(_train_argv(tiny_dataset, out, 1)) == 0
    assert main(_train_argv(tiny_dataset, out, 2)) == 0
    a = torch.load(out / "model.pt", weights_only=True)["trained"]
    b = torch.load(dbrn_run / "model.pt", weights_only=True)["trained"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_preset_and_override_errors_name_the_problem(tmp_path, tiny_dataset, capsys):
    cases = [
        (["--preset", "huge"], "dbrn preset must be one of ['edge', 'published']"),
        (["--set", "embed_dims=8"], "unknown dbrn config key(s): ['embed_dims']"),
        (["--set", "embed_dim"], "--set 'embed_dim': expected KEY=VALUE"),
        (["--set", "swap_hides_target=maybe"], "dbrn config key 'swap_hides_target': expected bool, got 'maybe'"),
        (["--set", "modality_dropout=[0.5, 0.5]"], "dbrn config key 'modality_dropout': expected tuple[float, float, float]"),
    ]
    for i, (extra, msg) in enumerate(cases):
        assert main(_train_argv(tiny_dataset, tmp_path / str(i), 1) + extra) == 2
        assert msg in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "rd"), "--preset", "edge", "--quiet"]) == 2
    assert "rd has no named presets" in capsys.readouterr().err


def test_cli_eval_every_mode(tmp_path, dbrn_run, tiny_dataset):
    out = tmp_path / "eval.json"
    assert main(["eval", "--run", str(dbrn_run), "--data", str(tiny_dataset), "--out", str(out), "--quiet",
                 "--no-figures"]) == 0
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == list(MODES)
    for r in rows:
        assert all(0.0 <= r[k] <= 1.0 for k in ("i_auroc", "p_auroc", "aupro"))


# ------------------------------------------------------------------ bundle and the daemon


def test_bundle_holds_dbrn_graphs_matching_torch(dbrn_bundle):
    from edge.bundle import load_bundle

    b = load_bundle(dbrn_bundle)
    assert set(b.modes) == set(MODES)
    doc = yaml.safe_load((dbrn_bundle / "bundle.yaml").read_text())
    assert doc["model"]["family"] == "dbrn"
    for mode in MODES:
        assert parity_ok(doc["provenance"]["parity"][mode])  # exported graph = evaluated model
        assert b.modes[mode].graph("int8").is_file()
        # INT8 tried with and without the branch embeddings and heads, and the discriminator
        # decoder, in FP32 (4 sets), and kept the candidate closest to FP32 on normal validation data.
        i8 = doc["provenance"]["int8"][mode]
        assert len({tuple(c["kept_fp32_patterns"]) for c in i8["candidates"]}) == 4
        best = min(i8["candidates"], key=lambda c: c["score_max_abs_diff"])
        assert (i8["method"], i8["kept_fp32_patterns"]) == (best["method"], best["kept_fp32_patterns"])
        assert any("/branches." in n for n in i8["kept_fp32_nodes"]) == ("/branches." in "".join(best["kept_fp32_patterns"]))


def test_daemon_runs_a_dbrn_bundle_with_fallback(tmp_path, dbrn_bundle, tiny_dataset):
    """The daemon knows nothing about DBRN: same config, same results, rgbd -> rgb on a frame
    without depth, one result per frame."""
    from edge.config import load_config
    from edge.daemon import EXIT_OK, Daemon

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    refs = open_dataset(data, "test")
    no_depth = refs[1]
    d = cv2.imread(str(no_depth.depth), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(no_depth.depth), np.zeros_like(d))
    cfg_path = tmp_path / "rgbd-edge.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "device_id": "dbrn-cam", "bundle": str(dbrn_bundle),
        "engine": {"backend": "onnxruntime", "precision": "int8", "threads": 1},
        "source": {"type": "folder", "path": str(data), "split": "test"},
        "sinks": {"jsonl": {"path": "results.jsonl"}},
        "fallback": {"hold_bad": 1, "hold_good": 1},
    }))
    daemon = Daemon(load_config(cfg_path))
    assert daemon.run() == EXIT_OK
    results = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["frame_name"] for r in results] == [r.name for r in refs]
    by_name = {r["frame_name"]: r for r in results}
    r = by_name[no_depth.name]
    assert r["mode"] == "rgb" and r["model"]["sha256"] == daemon.bundle.files["rgb.int8.onnx"]
    assert r["decision"] in ("pass", "reject") and math.isfinite(r["score"])
    others = [r for n, r in by_name.items() if n != no_depth.name]
    assert all(r["mode"] == "rgbd" and r["decision"] in ("pass", "reject") for r in others)
    assert all(r["model"]["precision"] == "int8" and r["model"]["sha256"] == daemon.bundle.files["rgbd.int8.onnx"]
               for r in others)
    c = daemon.counters.snapshot()
    assert c["frames_inspected"] == len(refs) and c["engine_errors"] == 0


def test_a_run_loads_as_trained_when_the_preset_changes_later(tmp_path, dbrn_run):
    """run.yaml holds the complete config; a key added after the run was trained takes the field
    default (the behaviour of the code it was trained with), not today's preset value."""
    assert create_model("dbrn", config=TINY).cfg.inpaint_cell == 8  # today's edge preset
    old = tmp_path / "old_run"
    shutil.copytree(dbrn_run, old)
    run = yaml.safe_load((old / "run.yaml").read_text())
    del run["model_config"]["inpaint_cell"]
    (old / "run.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
    model, _, _ = load_run(old)
    assert model.cfg.inpaint_cell == 0
    assert load_run(dbrn_run)[0].cfg.inpaint_cell == 8


class _StepClock:
    """A wall clock that moves only when the training loop takes an optimiser step."""

    def __init__(self, seconds_per_step: float):
        self.now, self.per_step = 1000.0, seconds_per_step

    def __call__(self) -> float:
        return self.now


def _budgeted_train(monkeypatch, tiny_dataset, out, minutes, seconds_per_step, epochs=10):
    import convert.train as train_mod
    from convert.trainers.dbrn import DBRNTrainer

    clock = _StepClock(seconds_per_step)
    real_step = train_mod.optimiser_step

    def step(*a, **k):
        clock.now += clock.per_step
        return real_step(*a, **k)

    monkeypatch.setattr(train_mod, "optimiser_step", step)
    monkeypatch.setattr(DBRNTrainer, "warmup_steps", 0)  # so the decay is visible in a few steps
    cfg = TrainConfig(model="dbrn", epochs=epochs, image_size=TINY_SIZE, batch_size=4, threads=1, rotations=2,
                      flip=False, model_config=dict(TINY), minutes=minutes)
    train(tiny_dataset, out, cfg, progress=False, clock=clock)
    return yaml.safe_load((out / "run.yaml").read_text())


def test_time_budget_stops_mid_epoch_with_the_rate_decayed(monkeypatch, tmp_path, tiny_dataset):
    # 12 poses in batches of 4: 3 steps an epoch. 15 s a step against 1 minute: 4 steps.
    meta = _budgeted_train(monkeypatch, tiny_dataset, tmp_path / "run", minutes=1, seconds_per_step=15)
    assert meta["train"]["minutes"] == 1
    assert meta["trained"] == {"steps": 4, "epochs": 1.33, "stopped_by": "time", "weights": "last step"}
    recs = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in recs] == [(1, 3), (2, 4)]  # the partial epoch is logged
    lr = DBRNTrainer.defaults["lr"]
    assert recs[-1]["lr"] == pytest.approx(0.05 * lr)  # the cosine reached its floor at the budget
    # After epoch 1 the rate follows the clock (45 of 60 s), not the steps (3 of 30 planned).
    assert recs[0]["lr"] == pytest.approx(lr * (0.05 + 0.475 * (1 + math.cos(0.75 * math.pi))))
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert (ck["epoch"], ck["step"]) == (2, 4)
    load_run(tmp_path / "run")  # a finished, loadable run


def test_time_budget_longer_than_the_epochs_ends_with_them(monkeypatch, tmp_path, tiny_dataset):
    meta = _budgeted_train(monkeypatch, tiny_dataset, tmp_path / "run", minutes=60, seconds_per_step=1, epochs=2)
    assert meta["trained"] == {"steps": 6, "epochs": 2.0, "stopped_by": "epochs", "weights": "last step"}
    recs = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert recs[-1]["lr"] == pytest.approx(0.05 * DBRNTrainer.defaults["lr"])  # the epoch schedule's end came first


def test_a_run_stopped_by_its_budget_resumes_as_finished(monkeypatch, tmp_path, tiny_dataset):
    out = tmp_path / "run"
    _budgeted_train(monkeypatch, tiny_dataset, out, minutes=1, seconds_per_step=15)
    before = torch.load(out / "model.pt", weights_only=True)["trained"]
    meta = _budgeted_train(monkeypatch, tiny_dataset, out, minutes=1, seconds_per_step=15)
    assert meta["trained"]["steps"] == 4  # no step past the budget on a re-run
    after = torch.load(out / "model.pt", weights_only=True)["trained"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cli_refuses_a_non_positive_budget(tmp_path, tiny_dataset, capsys):
    assert main(_train_argv(tiny_dataset, tmp_path / "run", 1) + ["--minutes", "0"]) == 2
    assert "--minutes must be positive" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_a_schedule_longer_than_an_hour_says_how_to_bound_it(capsys):
    from convert.train import _warn_if_long

    _warn_if_long(elapsed_s=200, epoch_s=150, epochs_left=43)  # 200 + 43 x 150 s = 111 min
    assert "about 111 min; --minutes 55 bounds it" in capsys.readouterr().out
    _warn_if_long(elapsed_s=100, epoch_s=60, epochs_left=43)  # 45 min: nothing to say
    assert capsys.readouterr().out == ""


REMOVED = [("depth_patch_size", None, 2), ("inpaint_train_passes", 2, 1), ("branch_only_fraction", 0.0, 0.6),
           ("lambda_dice", 0.0, 1.0)]


@pytest.mark.parametrize("key, neutral, other", REMOVED)
def test_a_run_saved_with_a_removed_option_loads_only_at_its_neutral_value(tmp_path, dbrn_run, dbrn_bundle, key,
                                                                            neutral, other):
    """Options no preset used were removed with their code. A run.yaml written before carries them
    at their neutral value: the key is dropped with no effect. Any other value names the key."""
    old = tmp_path / "old_run"
    shutil.copytree(dbrn_run, old)
    run = yaml.safe_load((old / "run.yaml").read_text())
    run["model_config"][key] = neutral
    (old / "run.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
    model, _, _ = load_run(old)
    assert model.cfg == load_run(dbrn_run)[0].cfg and key not in model.cfg.to_dict()
    run["model_config"][key] = other
    (old / "run.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
    with pytest.raises(ValueError, match=rf"dbrn config key '{key}' = {other!r}: this option was removed"):
        load_run(old)
    with pytest.raises(ValueError, match=f"'{key}'.*removed"):
        create_model("dbrn", config={"image_size": TINY_SIZE, **TINY, key: other})
    # A bundle records the config as provenance only: it loads whatever the key's value.
    from convert.package import seal_bundle
    from edge.bundle import load_bundle

    b = tmp_path / "bundle"
    shutil.copytree(dbrn_bundle, b)
    doc = yaml.safe_load((b / "bundle.yaml").read_text())
    doc["provenance"]["model_config"][key] = other
    (b / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    seal_bundle(b)  # as the writer would have sealed a bundle made with that value
    assert set(load_bundle(b).modes) == set(MODES)


def test_dbrn_run_with_weight_average_evaluates_the_average(tmp_path, tiny_dataset):
    run = tmp_path / "run"
    assert main(_train_argv(tiny_dataset, run, 1) + ["--ema", "0.9"]) == 0
    model, _, meta = load_run(run)
    assert meta["trained"]["weights"] == "ema 0.9"
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    state = model.trained_state()
    for k, v in ck["ema"]["state"].items():
        if not k.startswith("score_"):  # the score statistics are fitted after training
            assert torch.equal(state[k], v), k
    # averaged weights, the last step's integer entries (batch-norm counters) unchanged
    assert any(not torch.equal(state[k], ck["trained"][k]) for k in state if state[k].is_floating_point())
    assert all(torch.equal(state[k], ck["trained"][k]) for k in state if not state[k].is_floating_point())
    with torch.no_grad():
        x = [torch.zeros(1, 3, TINY_SIZE, TINY_SIZE), torch.zeros(1, 3, TINY_SIZE, TINY_SIZE),
             torch.ones(1, 1, TINY_SIZE, TINY_SIZE)]
        assert torch.isfinite(model(*x, "rgbd")[1]).all()
