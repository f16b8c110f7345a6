"""The maintained benchmarks import as `benchmarks.NAME`, answer --help before touching data, and
write reproducible, machine-independent text (commands as `python -m benchmarks.NAME`, paths
relative to the repository). Nothing here trains or times anything."""
from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest

import benchmarks
from benchmarks import _report

REPO = Path(__file__).resolve().parents[1]
# What a benchmark must not reach when it is only asked for --help.
WORK = ("load_raw", "train", "make_bundle", "make_synthetic_dataset", "missing_data", "graph_dir", "write_section")


def test_maintained_list_is_every_benchmark_script():
    scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(benchmarks.MAINTAINED)


@pytest.mark.parametrize("name", benchmarks.MAINTAINED)
def test_benchmark_imports_and_answers_help(name, monkeypatch, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(module.main)

    def untouched(*args, **kwargs):
        raise AssertionError(f"benchmarks.{name} --help reached its work")

    for attr in WORK:
        if hasattr(module, attr):
            monkeypatch.setattr(module, attr, untouched)
    results = _report.RESULTS.read_bytes() if _report.RESULTS.exists() else None

    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])

    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m benchmarks.{name}")
    assert (_report.RESULTS.read_bytes() if _report.RESULTS.exists() else None) == results


def test_command_is_a_module_invocation_with_repository_relative_paths(tmp_path):
    script = str(REPO / "benchmarks" / "int8_cable_gland.py")
    argv = ["--run", str(REPO / "runs" / "bench-rd-cable_gland"), f"--bundle={REPO / 'runs' / 'b x'}",
            "--data", str(tmp_path), "--threads", "2"]

    cmd = _report.command(script, argv)

    assert shlex.split(cmd) == ["python", "-m", "benchmarks.int8_cable_gland", "--run", "runs/bench-rd-cable_gland",
                                "--bundle=runs/b x", "--data", str(tmp_path), "--threads", "2"]


def test_rel_names_paths_inside_the_repository_relative_to_it(tmp_path, monkeypatch):
    assert _report.rel(REPO / "runs" / "bundle-rd-cable_gland") == "runs/bundle-rd-cable_gland"
    assert _report.rel(str(REPO / "runs" / ".." / "runs" / "x")) == "runs/x"
    assert _report.rel(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")
    monkeypatch.chdir(REPO)
    assert _report.rel("runs/x") == "runs/x"


def test_data_root_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(_report.DATA_ENV, str(tmp_path))
    assert _report.data_root() == tmp_path
    monkeypatch.delenv(_report.DATA_ENV)
    assert _report.data_root() == REPO.parent / "shared" / "data"
