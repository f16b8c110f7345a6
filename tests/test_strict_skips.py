"""Strict skips (tests/conftest.py): under RGBD_EDGE_STRICT_SKIPS=1 a skip fails the run unless the
test is marked jetson, or marked realdata and skipped because its data is absent.

Each case runs pytest in a subprocess on a few tiny test files, with this suite's conftest.py and
_data.py copied next to them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from _data import DATA_ENV
from conftest import STRICT_SKIPS_ENV

TESTS = Path(__file__).parent

CASES = '''
import pytest


def test_passes():
    pass


def test_unmarked_skip():
    pytest.skip("a package is missing")


@pytest.mark.skipif(True, reason="not here")
def test_unmarked_skipif():
    pass


def test_unmarked_fixture_skip(needs_missing_tool):
    pass


@pytest.fixture
def needs_missing_tool():
    pytest.skip("tool missing")


@pytest.mark.jetson
def test_jetson_skip():
    pytest.importorskip("rgbd_edge_no_such_module")


@pytest.mark.realdata("mvtec3d/cable_gland")
def test_realdata(real_data):
    assert real_data.is_dir()


@pytest.mark.realdata("mvtec3d/cable_gland")
def test_realdata_other_reason(real_data):
    pytest.skip("flaky today")


@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False
'''


@pytest.fixture
def project(pytester, monkeypatch, tmp_path):
    for name in ("conftest.py", "_data.py"):
        shutil.copy(TESTS / name, pytester.path / name)
    pytester.makeini("[pytest]\nmarkers =\n    realdata(path): real data\n    jetson: real TensorRT\n")
    pytester.makepyfile(test_cases=CASES)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))  # absent
    monkeypatch.delenv(STRICT_SKIPS_ENV, raising=False)
    return pytester


def outcomes(result) -> dict[str, str]:
    """test name -> PASSED / FAILED / ERROR / SKIPPED / XFAIL, from `pytest -v` lines."""
    out = {}
    for line in result.outlines:
        if line.startswith("test_cases.py::") and " " in line:
            name, word = line.split()[:2]
            out[name.split("::")[1]] = word
    return out


def run(project, *args):
    return project.runpytest_subprocess("-v", "-rs", "-p", "no:cacheprovider", *args)


def test_without_the_variable_every_skip_is_a_skip(project):
    result = run(project)
    assert result.ret == 0
    assert outcomes(result) == {
        "test_passes": "PASSED", "test_unmarked_skip": "SKIPPED", "test_unmarked_skipif": "SKIPPED",
        "test_unmarked_fixture_skip": "SKIPPED", "test_jetson_skip": "SKIPPED", "test_realdata": "SKIPPED",
        "test_realdata_other_reason": "SKIPPED", "test_xfail": "XFAIL"}


def test_strict_fails_unmarked_skips_and_keeps_jetson_and_absent_data_skips(project, monkeypatch, tmp_path):
    monkeypatch.setenv(STRICT_SKIPS_ENV, "1")
    result = run(project)
    assert result.ret == 1
    assert outcomes(result) == {
        "test_passes": "PASSED",
        "test_unmarked_skip": "FAILED", "test_unmarked_skipif": "ERROR", "test_unmarked_fixture_skip": "ERROR",
        "test_jetson_skip": "SKIPPED",
        "test_realdata": "SKIPPED",  # its data is absent: the one reason a realdata test may skip
        "test_realdata_other_reason": "SKIPPED",  # the data is absent, so it never got as far as its own skip
        "test_xfail": "XFAIL"}
    text = result.stdout.str()
    assert f"{STRICT_SKIPS_ENV}=1 lets only tests marked jetson" in text and "a package is missing" in text
    assert f"real data absent: {tmp_path / 'data' / 'mvtec3d' / 'cable_gland'}" in text  # -rs names the folder


def test_strict_with_the_data_present_fails_a_realdata_skip_for_another_reason(project, monkeypatch, tmp_path):
    (tmp_path / "data" / "mvtec3d" / "cable_gland").mkdir(parents=True)
    monkeypatch.setenv(STRICT_SKIPS_ENV, "1")
    result = run(project, "-k", "realdata")
    assert outcomes(result) == {"test_realdata": "PASSED", "test_realdata_other_reason": "FAILED"}
    assert "flaky today" in result.stdout.str()


def test_strict_fails_a_module_level_skip(project, monkeypatch):
    project.makepyfile(test_module_skip='import pytest\n\npytest.importorskip("rgbd_edge_no_such_module")\n\n\n'
                                        'def test_never():\n    pass\n')
    result = run(project, "test_module_skip.py")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED and "1 skipped" in result.stdout.str()
    monkeypatch.setenv(STRICT_SKIPS_ENV, "1")
    result = run(project, "test_module_skip.py")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error stops the run
    assert "rgbd_edge_no_such_module" in result.stdout.str()


@pytest.mark.parametrize("body", [
    '@pytest.mark.realdata("mvtec3d/cable_gland")\ndef test_marked_only():\n    pass\n',
    "def test_fixture_only(real_data):\n    pass\n",
    "@pytest.mark.realdata\ndef test_no_path(real_data):\n    pass\n",
])
def test_real_data_needs_both_the_marker_with_its_path_and_the_fixture(project, body):
    project.makepyfile(test_misuse="import pytest\n\n\n" + body)
    result = run(project, "test_misuse.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "tests/_data.py rule broken" in result.stderr.str()
