"""edge.checks: the one configuration checker; its errors carry the dotted key as data."""
from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from edge import checks
from edge.bundle import BundleError
from edge.checks import CheckError, Checker, Section, describe, did_you_mean, join, short_repr, type_ok
from edge.config import ConfigError, check_fallback
from edge.fallback import FallbackConfig
from edge.sources import SourceConfigError, validate_source_config


def test_every_config_error_is_a_check_error():
    for cls in (ConfigError, BundleError, SourceConfigError):
        assert issubclass(cls, CheckError) and issubclass(cls, ValueError)


def test_fail_keeps_key_file_and_problem_as_data():
    chk = Checker(where="/etc/x.yaml", file="/etc/x.yaml", prefix="source", error=ConfigError)
    exc = chk.fail("fps", "must be a positive integer, got 0 (int)")
    assert isinstance(exc, ConfigError)
    assert str(exc) == "/etc/x.yaml: source.fps: must be a positive integer, got 0 (int)"
    assert exc.key == "fps" and exc.file == Path("/etc/x.yaml")
    assert exc.problem == "must be a positive integer, got 0 (int)"


def test_owning_modules_name_keys_below_their_section():
    with pytest.raises(SourceConfigError) as src:
        validate_source_config({"type": "realsense", "fsp": 30})
    assert src.value.key == "fsp" and "did you mean 'fps'?" in src.value.problem
    with pytest.raises(CheckError) as fb:
        FallbackConfig.from_dict({"hold_bad": 0})
    assert fb.value.key == "hold_bad" and str(fb.value).startswith("fallback.hold_bad: ")


def test_the_config_prefixes_the_owners_key_without_reading_the_message(tmp_path):
    exc = pytest.raises(ConfigError, check_fallback, tmp_path / "c.yaml", {"hold_goood": 3}).value
    assert exc.key == "fallback.hold_goood" and exc.file == tmp_path / "c.yaml"
    assert str(exc).startswith(f"{tmp_path / 'c.yaml'}: fallback.hold_goood: unknown key; did you mean 'hold_good'?")


def test_section_reads_defaults_and_names_the_key():
    s = Section({"port": 1883, "qos": None}, "sinks.mqtt", ("port", "qos", "host"))
    assert s.int("port", 1, 65535, default=1) == 1883 and s.choice("qos", (0, 1, 2), 1) == 1
    with pytest.raises(CheckError) as e:
        s.str("host", required=True)
    assert e.value.key == "sinks.mqtt.host" and str(e.value) == "sinks.mqtt.host: required"
    with pytest.raises(CheckError, match=r"^sinks\.mqtt\.qos: must be one of 0, 1, 2, got True"):
        Section({"qos": True}, "sinks.mqtt", ("qos",)).choice("qos", (0, 1, 2), 1)


def test_annotation_checks():
    assert type_ok(3, float) and not type_ok(True, int) and not type_ok(float("nan"), float)
    assert type_ok([1, 2], tuple[int, ...]) and not type_ok([1], tuple[int, int])
    with pytest.raises(CheckError, match=r"^preprocess\.k: expected int \| None, got 'x' \(str\)$"):
        Checker().annotated("x", "preprocess.k", int | None)


def test_config_modules_import_no_optional_library():
    code = ("import sys, edge.config, edge.sources, edge.sinks\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyrealsense2', 'paho', 'gpiod', 'Jetson')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- bounded wording


@pytest.mark.parametrize("value", [
    "x", "it's", 'say "hi"', b"\x00ab", 3, -7, True, None, 2.5, float("nan"), [1, "a"], (1,), (1, 2), (),
    {"a": [1, {"b": None}]}, {}, {1, 2}, set(), frozenset({3}), frozenset(), datetime.date(2024, 1, 2),
])
def test_short_repr_is_the_repr_of_a_small_value(value):
    assert short_repr(value) == repr(value)


def _laughs(levels: int) -> list:
    """A list whose repr has 9**levels items but which holds only 9 * levels references."""
    value: list = ["lol"] * 9
    for _ in range(levels):
        value = [value] * 9
    return value


def _deep(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


HUGE = {  # built when the test runs, not held for the session
    "str": lambda: "x" * 10_000_000, "bytes": lambda: b"y" * 10_000_000, "list": lambda: list(range(200_000)),
    "dict": lambda: dict.fromkeys(range(200_000)), "laughs": lambda: _laughs(30), "deep": lambda: _deep(100_000),
    "set": lambda: set(range(200_000)), "tuple": lambda: tuple(range(200_000)),
}


@pytest.mark.parametrize("kind", list(HUGE))
def test_short_repr_of_a_huge_value_walks_only_what_it_shows(monkeypatch, kind):
    """The repr of _laughs(30) would have 9**30 items and _deep(100000) overflows repr's recursion:
    the walk stops after ~60 characters, so it visits ~60 values, whatever the size."""
    value = HUGE[kind]()
    calls = []
    emit = checks._emit
    monkeypatch.setattr(checks, "_emit", lambda v, out, left: calls.append(1) or emit(v, out, left))
    text = short_repr(value)
    assert len(text) == 60 and text.endswith("...") and len(calls) <= 62
    assert describe(value) == f"{text} ({type(value).__name__})"


def test_describe_never_converts_a_huge_int_to_decimal():
    """str() of an int over 4300 digits raises ValueError, and is quadratic below that."""
    huge = 1 << 100_000
    assert describe(huge) == "<an integer of 100001 bits> (int)"
    assert describe(10 ** 200) == f"{str(10 ** 200)[:57]}... (int)"
    with pytest.raises(CheckError, match=r"must be a finite number, got <an integer of 100001 bits> \(int\)"):
        Checker().number(huge, "k")  # no OverflowError from float(huge)
    assert not type_ok(huge, float)


def test_positive_int_names_its_maximum():
    chk = Checker(prefix="queues")
    assert chk.positive_int(256, "capture", maximum=256) == 256
    for bad in (0, 257, "4", True):
        with pytest.raises(CheckError) as e:
            chk.positive_int(bad, "capture", maximum=256)
        assert e.value.problem.startswith("must be a positive integer <= 256, got ")
    with pytest.raises(CheckError, match=r"^queues\.capture: must be a positive integer, got 0 \(int\)$"):
        chk.positive_int(0, "capture")


def test_long_keys_are_cut_and_get_no_suggestion():
    long_key = "k" * 1_000_000
    assert did_you_mean(long_key, ("capture", "results")) is None
    assert did_you_mean("captrue", ("capture", "results")) == "capture"
    assert len(join("queues", long_key)) < 300 and join("queues", long_key).endswith("...")
    with pytest.raises(CheckError) as e:
        Section({long_key: 1}, "queues", ("capture",))
    assert len(str(e.value)) < 500 and "unknown key" in str(e.value)
