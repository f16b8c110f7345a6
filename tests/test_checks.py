"""edge.checks: the one configuration checker; its errors carry the dotted key as data."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.bundle import BundleError
from edge.checks import CheckError, Checker, Section, type_ok
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
