"""edge.config: the daemon's YAML configuration, checked at start with errors that name the key."""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from edge.config import (
    MAX_READ_TIMEOUT_S,
    MAX_REOPEN_ATTEMPTS,
    MAX_RESULTS_TIMEOUT_S,
    MAX_STATUS_INTERVAL_S,
    MAX_THREADS,
    MAX_WORKSPACE_MIB,
    Config,
    ConfigError,
    EngineConfig,
    HeatmapConfig,
    QueueConfig,
    StatusConfig,
    config_from_dict,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "rgbd-edge.example.yaml"


def minimal(tmp_path: Path, **over) -> dict:
    (tmp_path / "replay").mkdir(exist_ok=True)
    doc = {
        "device_id": "line3-cam1",
        "bundle": "bundle",
        "source": {"type": "folder", "path": "replay"},
        "sinks": {"jsonl": {"path": "out/results.jsonl"}},
    }
    doc.update(over)
    return doc


def write(tmp_path: Path, doc) -> Path:
    p = tmp_path / "edge.yaml"
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return p


def error(tmp_path: Path, doc) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, doc))
    return info.value


# --------------------------------------------------------------------------- valid files


def test_minimal_config_defaults_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, minimal(tmp_path)))
    assert isinstance(cfg, Config)
    assert cfg.device_id == "line3-cam1"
    assert cfg.bundle == tmp_path.resolve() / "bundle"  # relative to the config file, not the cwd
    assert cfg.source == {"type": "folder", "path": str(tmp_path.resolve() / "replay")}
    assert cfg.source_type == "folder"
    assert cfg.sinks == {"jsonl": {"path": str(tmp_path.resolve() / "out" / "results.jsonl")}}
    assert cfg.engine == EngineConfig()
    assert cfg.queues.capture == 4 and cfg.queues.results == 64
    assert cfg.heatmaps.on_reject is True and cfg.heatmaps.jpeg_quality == 85
    assert cfg.watchdog.enabled is True
    assert cfg.log_level == "INFO"
    assert cfg.fallback == {}
    assert cfg.path == (tmp_path / "edge.yaml").resolve()


def test_replays_exit_at_end_and_block_by_default_live_cameras_do_not(tmp_path):
    replay = load_config(write(tmp_path, minimal(tmp_path)))
    assert replay.exit_at_end is True and replay.queues.on_full == "block"
    live = config_from_dict(minimal(tmp_path, source={"type": "realsense", "fps": 30}), base_dir=tmp_path)
    assert live.exit_at_end is False and live.queues.on_full == "drop_oldest"
    assert live.source == {"type": "realsense", "fps": 30}
    forced = config_from_dict(minimal(tmp_path, source={"type": "folder", "path": "replay", "exit_at_end": False},
                                      queues={"on_full": "drop_newest", "capture": 1}), base_dir=tmp_path)
    assert forced.exit_at_end is False and forced.queues == QueueConfig(capture=1, on_full="drop_newest")
    assert "exit_at_end" not in forced.source  # daemon-only keys are not passed to open_source


def test_full_config(tmp_path):
    doc = minimal(tmp_path, engine={"backend": "onnxruntime", "precision": "fp32", "threads": 2,
                                    "cache_dir": "/var/lib/rgbd-edge/engines", "cuda": "pycuda"},
                  fallback={"hold_good": 3}, queues={"capture": 2, "results": 8},
                  heatmaps={"on_reject": False, "jpeg_quality": 70}, watchdog={"enabled": False},
                  status={"interval_s": 2}, log_level="debug")
    cfg = load_config(write(tmp_path, doc))
    assert cfg.engine.backend == "onnxruntime" and cfg.engine.threads == 2 and cfg.engine.cuda == "pycuda"
    assert cfg.engine.cache_dir == Path("/var/lib/rgbd-edge/engines")
    assert cfg.fallback == {"hold_good": 3}
    assert cfg.heatmaps.jpeg_quality == 70 and cfg.watchdog.enabled is False and cfg.status.interval_s == 2
    assert cfg.log_level == "DEBUG"


def test_example_config_in_systemd_dir_is_valid(tmp_path):
    doc = yaml.safe_load(EXAMPLE.read_text())
    # the example points at /etc and /var paths that do not exist here: check it with a live source
    cfg = config_from_dict(doc, base_dir=tmp_path)
    assert cfg.source_type == "realsense" and cfg.exit_at_end is False
    assert set(cfg.sinks) >= {"mqtt", "gpio", "jsonl"}


# --------------------------------------------------------------------------- errors name the key


@pytest.mark.parametrize("over, key, words", [
    ({"source": {"type": "realsense", "fps": "x"}}, "source.fps", "must be a positive integer, got 'x'"),
    ({"source": {"type": "folder", "path": "replay", "fps": -1}}, "source.fps", "non-negative number"),
    ({"source": {"type": "realsense", "fsp": 30}}, "source.fsp", "did you mean 'fps'"),
    ({"source": {"type": "folder", "path": "replay", "loop": True, "exit_at_end": True}}, "source.exit_at_end",
     "never ends"),
    ({"source": {"type": "realsense", "fps": 0}}, "source.fps", "positive integer"),
    ({"source": {"type": "kinect"}}, "source.type", "must be one of realsense, recording, folder"),
    ({"source": {"type": "folder"}}, "source.path", "missing required key"),
    ({"source": {"type": "folder", "path": "nowhere"}}, "source.path", "not found"),
    ({"source": {"type": "folder", "path": "replay", "exit_at_end": "yes please"}}, "source.exit_at_end",
     "true or false"),
    ({"engine": {"backend": "tensorrtt"}}, "engine.backend", "did you mean 'tensorrt'"),
    ({"engine": {"precision": "int4"}}, "engine.precision", "int8, fp16, fp32"),
    ({"engine": {"threads": -1}}, "engine.threads", "positive integer"),
    ({"queues": {"capture": 0}}, "queues.capture", "positive integer"),
    ({"queues": {"on_full": "drop"}}, "queues.on_full", "drop_oldest"),
    ({"heatmaps": {"jpeg_quality": 101}}, "heatmaps.jpeg_quality", "from 1 to 100"),
    ({"heatmaps": {"on_reject": "sometimes"}}, "heatmaps.on_reject", "true or false"),
    ({"watchdog": {"enabled": 1}}, "watchdog.enabled", "true or false"),
    ({"log_level": "LOUD"}, "log_level", "DEBUG, INFO"),
    ({"device_id": 42}, "device_id", "quote it"),
    ({"sinks": {"jsonl": False}}, "sinks", "every sink is disabled"),
    ({"sinks": None}, "sinks", "missing required section"),
    ({"sinks": {"jsonl": "results.jsonl"}}, "sinks.jsonl", "must be a mapping"),
    ({"fallback": {"hold_good": 0}}, "fallback.hold_good", "integer >= 1"),
    ({"fallback": {"available_modes": ["rgb"]}}, "fallback.available_modes", "set from the bundle"),
    ({"engine": ["onnxruntime"]}, "engine", "must be a mapping"),
])
def test_errors_name_the_dotted_key(tmp_path, over, key, words):
    exc = error(tmp_path, minimal(tmp_path, **over))
    assert exc.key == key
    assert f": {key}: " in str(exc)
    assert words in str(exc)
    assert str(tmp_path / "edge.yaml") in str(exc)  # and the file


@pytest.mark.parametrize("over, key, suggestion", [
    ({"queue": {"capture": 2}}, "queue", "queues"),
    ({"heatmap": {}}, "heatmap", "heatmaps"),
    ({"engine": {"precison": "fp32"}}, "engine.precison", "precision"),
    ({"queues": {"result": 8}}, "queues.result", "results"),
    ({"sinks": {"jsonl": {"path": "r.jsonl"}, "mqqt": {}}}, "sinks.mqqt", "mqtt"),
    ({"heatmaps": {"jpeg_qualty": 80}}, "heatmaps.jpeg_qualty", "jpeg_quality"),
])
def test_unknown_keys_are_errors_with_did_you_mean(tmp_path, over, key, suggestion):
    exc = error(tmp_path, minimal(tmp_path, **over))
    assert exc.key == key
    assert "unknown key" in str(exc) and f"did you mean '{suggestion}'?" in str(exc)


def test_missing_required(tmp_path):
    doc = minimal(tmp_path)
    del doc["bundle"]
    assert error(tmp_path, doc).key == "bundle"
    doc = minimal(tmp_path)
    del doc["source"]
    assert error(tmp_path, doc).key == "source"


def test_fallback_keys_are_checked_by_the_fallback_module(tmp_path):
    exc = error(tmp_path, minimal(tmp_path, fallback={"hold_goood": 3}))
    assert exc.key == "fallback.hold_goood" and "unknown key" in str(exc)


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    assert "empty" in str(error(tmp_path, ""))
    assert "mapping at the top level" in str(error(tmp_path, "- a\n- b\n"))
    exc = error(tmp_path, "bundle: b\nsource: {type: folder, path: replay\n")
    assert "not valid YAML" in str(exc) and "line" in str(exc)
    exc = error(tmp_path, "bundle: a\nbundle: b\n")
    assert "duplicate key 'bundle'" in str(exc)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_sink_sections_are_checked_by_the_sinks_module_and_paths_resolved(tmp_path):
    (tmp_path / "mqtt.password").write_text("secret\n")
    (tmp_path / "mqtt.password").chmod(0o600)  # edge.sinks refuses a password file others can read
    doc = minimal(tmp_path, sinks={"mqtt": {"host": "broker", "username": "edge", "password_file": "mqtt.password",
                                            "outbox": {"path": "state/outbox.sqlite"}},
                                   "gpio": {"backend": "simulated"}, "console": None, "jsonl": False})
    cfg = load_config(write(tmp_path, doc))
    root = tmp_path.resolve()
    assert cfg.sinks["mqtt"]["password_file"] == str(root / "mqtt.password")
    assert cfg.sinks["mqtt"]["outbox"] == {"path": str(root / "state" / "outbox.sqlite")}
    assert cfg.sinks["console"] == {} and "jsonl" not in cfg.sinks

    exc = error(tmp_path, minimal(tmp_path, sinks={"mqtt": {"port": 1883}}))
    assert exc.key == "sinks.mqtt.host" and "required" in str(exc)
    exc = error(tmp_path, minimal(tmp_path, sinks={"mqtt": {"host": "b", "qos": 3}}))
    assert exc.key == "sinks.mqtt.qos"
    exc = error(tmp_path, minimal(tmp_path, sinks={"jsonl": {"path": "r.jsonl", "enabled": False}}))
    assert exc.key == "sinks" and "disabled" in str(exc)


# --------------------------------------------------------------------------- upper bounds

# (section, key, largest accepted value, a value beyond it, how the error names the range)
BOUNDS = [
    ("engine", "threads", MAX_THREADS, 1000, f"must be a positive integer <= {MAX_THREADS}, got 1000 (int)"),
    ("engine", "workspace_mib", MAX_WORKSPACE_MIB, 1 << 30,
     f"must be a positive integer <= {MAX_WORKSPACE_MIB}, got 1073741824 (int)"),
    ("source", "read_timeout_s", 60, 3600, "must be a number in (0, 60], got 3600 (int)"),
    ("source", "reopen_attempts", 1000, 100_000, "must be a positive integer <= 1000, got 100000 (int)"),
    ("queues", "capture", 256, 100_000, "must be a positive integer <= 256, got 100000 (int)"),
    ("queues", "results", 1024, 100_000, "must be a positive integer <= 1024, got 100000 (int)"),
    ("queues", "results_timeout_s", 600, 1e10, "must be a number in (0, 600], got 10000000000.0 (float)"),
    ("heatmaps", "jpeg_quality", 100, 101, "must be an integer from 1 to 100, got 101 (int)"),
    ("heatmaps", "max_width", 8192, 100_000, "must be an integer from 32 to 8192, got 100000 (int)"),
    ("status", "interval_s", 3600, 1e9, "must be a number in (0, 3600], got 1000000000.0 (float)"),
]


def with_key(tmp_path: Path, section: str, key: str, value) -> dict:
    if section == "source":
        return minimal(tmp_path, source={"type": "folder", "path": "replay", key: value})
    return minimal(tmp_path, **{section: {key: value}})


@pytest.mark.parametrize("section, key, most, beyond, problem", BOUNDS)
def test_every_numeric_key_has_an_upper_bound_named_in_the_error(tmp_path, section, key, most, beyond, problem):
    cfg = load_config(write(tmp_path, with_key(tmp_path, section, key, most)))
    got = getattr(cfg, key) if section == "source" else getattr(getattr(cfg, section), key)
    assert got == most
    exc = error(tmp_path, with_key(tmp_path, section, key, beyond))
    assert exc.key == f"{section}.{key}" and exc.problem == problem
    assert str(exc) == f"{tmp_path / 'edge.yaml'}: {section}.{key}: {problem}"


def test_the_bounds_table_covers_every_numeric_key():
    """A numeric key added to the daemon's sections must get a bound (and a row above)."""
    numeric = {f"{section}.{f.name}" for section, cls in (("engine", EngineConfig), ("queues", QueueConfig),
                                                          ("heatmaps", HeatmapConfig), ("status", StatusConfig))
               for f in dataclasses.fields(cls) if f.type.split(" |")[0] in ("int", "float")}
    numeric |= {f"source.{f.name}" for f in dataclasses.fields(Config)
                if f.type in ("int", "float") and f.name not in ("queues", "heatmaps")}
    assert numeric == {f"{s}.{k}" for s, k, *_ in BOUNDS}


def test_yaml_1e10_is_a_string_and_refused_too(tmp_path):
    """YAML 1.1 reads 1e10 (no dot) as a string, 1.0e+10 as a float: both are exit-2 errors."""
    text = yaml.safe_dump(minimal(tmp_path), sort_keys=False)
    exc = error(tmp_path, text + "queues: {results_timeout_s: 1e10}\n")
    assert exc.problem == "must be a number in (0, 600], got '1e10' (str)"
    exc = error(tmp_path, text + "queues: {results_timeout_s: 1.0e+10}\n")
    assert exc.problem == "must be a number in (0, 600], got 10000000000.0 (float)"


def test_the_bounds_stay_below_what_crashes_the_daemon_later():
    """Why the bounds: the daemon waits with threading timeouts, which overflow beyond
    threading.TIMEOUT_MAX (1e10 s did: OverflowError in the inference thread, exit 6), and the
    reopen backoff computes 2.0 ** attempt, which overflows after 1024 attempts."""
    with pytest.raises(OverflowError):
        threading.Event().wait(1e10)
    for most in (MAX_RESULTS_TIMEOUT_S, MAX_READ_TIMEOUT_S, MAX_STATUS_INTERVAL_S):
        assert most < threading.TIMEOUT_MAX
    with pytest.raises(OverflowError):
        2.0 ** 1024
    assert math.isfinite(2.0 ** MAX_REOPEN_ATTEMPTS)


@pytest.mark.parametrize("queues, words", [
    ("{capture: 100000}", "queues.capture: must be a positive integer <= 256, got 100000 (int)"),
    ("{results_timeout_s: 1.0e+10}", "queues.results_timeout_s: must be a number in (0, 600], got 10000000000.0"),
])
def test_the_daemon_exits_2_on_an_out_of_range_value(tmp_path, queues, words):
    """The real command with the values that were accepted before (the second crashed it with
    exit 6 once the results queue filled)."""
    f = write(tmp_path, yaml.safe_dump(minimal(tmp_path), sort_keys=False) + f"queues: {queues}\n")
    run = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(f)], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 2, run.stderr
    assert words in run.stderr and "exit 2 (configuration error)" in run.stderr
