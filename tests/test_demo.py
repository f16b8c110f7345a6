"""convert.demo, the README's first command: its steps on the tiny generated data set, and what it
promises at the end: a bundle, a RealSense recording of the test split and one result per frame
in results.jsonl, from `rgbd-edge run`.

The demo reuses a step whose output exists; the end-to-end test hands it the session's tiny training
run (conftest.trained_run) so it bundles, records and runs the daemon without training at 256 px.
"""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

import convert.cli
from convert import demo
from edge.bundle import load_bundle
from edge.data import open_dataset


@pytest.fixture(autouse=True)
def no_broker_no_data_env(monkeypatch):
    """The demo reads its broker and data set from the environment: neither comes from here."""
    monkeypatch.delenv("RGBD_EDGE_MQTT", raising=False)
    monkeypatch.delenv("RGBD_EDGE_DATA", raising=False)


@pytest.mark.slow
def test_demo_end_to_end_on_generated_data(tmp_path, trained_run, capsys):
    assert trained_run.exit_code == 0
    out = tmp_path / "demo"
    shutil.copytree(trained_run.run, out / "run")
    assert demo.main(["--data", str(trained_run.data), "--out", str(out)]) == 0

    bundle = load_bundle(out / "bundle")
    assert set(bundle.modes) == {"rgbd", "rgb", "depth"}
    assert all(m.graph("int8").is_file() for m in bundle.modes.values())
    assert (out / "test.db3").stat().st_size > 0

    config = yaml.safe_load((out / "daemon.yaml").read_text())
    assert config["bundle"] == str(out / "bundle") and config["source"]["path"] == str(out / "test.db3")
    assert set(config["sinks"]) == {"console", "jsonl"}  # no broker named: no MQTT sink

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    test_split = open_dataset(trained_run.data, "test")
    assert len(rows) == len(test_split) == 9  # one result per recorded frame, none lost
    assert [r["seq"] for r in rows] == list(range(9))
    assert {r["decision"] for r in rows} <= {"pass", "reject"} and {r["mode"] for r in rows} == {"rgbd"}

    printed = capsys.readouterr().out
    assert f"9 results in {out / 'results.jsonl'}" in printed
    # frame i is test sample i, whose label is known: the demo reports how many defects it rejected
    bad = [row for row, ref in zip(rows, test_split) if ref.label == 1]
    assert f"defective parts rejected: {sum(row['decision'] == 'reject' for row in bad)}/{len(bad)}" in printed


def test_demo_generates_data_when_the_real_data_is_absent_and_stops_on_a_failed_step(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "REAL", tmp_path / "absent")
    calls = []
    monkeypatch.setattr(convert.cli, "main", lambda argv: calls.append(argv) or 3)
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--epochs", "2"]) == 3  # the training step's exit code
    argv, = calls  # nothing after the failed step
    assert argv[:3] == ["train", "--data", str(out / "data")] and argv[3:5] == ["--out", str(out / "run")]
    assert argv[argv.index("--epochs") + 1] == "2" and argv[argv.index("--image-size") + 1] == "128"
    assert len(open_dataset(out / "data", "train")) == 24 and len(open_dataset(out / "data", "test")) == 26
    assert not (out / "bundle").exists() and not (out / "results.jsonl").exists()
