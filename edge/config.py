"""`rgbd-edge run` configuration: one YAML file -> typed dataclasses, checked before anything starts.

Every problem is a :class:`ConfigError` whose message names the file and the key as a dotted
path (``source.fps: must be a positive integer, got 'x' (str)``). Unknown keys are errors with a
did-you-mean, so a typo cannot be ignored silently. Relative paths are relative to the config
file's directory, never to the working directory.

The daemon owns every section except ``source``, ``fallback`` and ``sinks``, whose keys belong to
``edge.sources``, ``edge.fallback`` and ``edge.sinks``: here they get the checks the daemon needs
(section types, known top-level keys, paths resolved), and the owning module checks its own keys.
Its errors carry the key as data (``exc.key``), which is prefixed here with the section handed
over; messages are never parsed. The full schema with defaults is in docs/daemon.md and
systemd/rgbd-edge.example.yaml.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .checks import CheckError, Checker, describe, join, load_yaml
from .fallback import FallbackConfig
from .signing import SignatureError, TrustedKey, load_public_key, load_trusted_keys
from .sinks import SINK_TYPES, parse_sinks_config
from .sources import DEFAULTS as SOURCE_KEYS, SOURCE_TYPES, SourceConfigError, validate_source_config

# --------------------------------------------------------------------------- constants

BACKENDS = ("auto", "tensorrt", "onnxruntime")
CUDA_BINDINGS = ("auto", "pycuda", "cuda-python")
ENGINE_PRECISIONS = ("int8", "fp16", "fp32")
FINITE_SOURCES = ("recording", "folder")  # replays end; exit_at_end defaults to true for them
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ON_FULL = ("drop_oldest", "drop_newest", "block")

# Keys of `source` that the daemon consumes itself; they are not passed to open_source().
SOURCE_DAEMON_KEYS = ("exit_at_end", "read_timeout_s", "reopen_attempts")

_TOP_KEYS = ("device_id", "bundle", "engine", "source", "fallback", "sinks", "queues", "heatmaps", "watchdog",
             "status", "log_level", "trusted_keys")
_ENGINE_KEYS = ("backend", "precision", "threads", "cache_dir", "cuda", "workspace_mib", "build_missing", "warmup",
                "verify_hashes")
_QUEUE_KEYS = ("capture", "results", "on_full", "results_timeout_s")
_HEATMAP_KEYS = ("on_reject", "jpeg_quality", "max_width")
_WATCHDOG_KEYS = ("enabled",)
_STATUS_KEYS = ("interval_s",)
# Keys whose string values are filesystem paths, resolved against the config file's directory,
# wherever they appear inside `source` and `sinks` (e.g. source.path, sinks.jsonl.path,
# sinks.mqtt.outbox.path, sinks.mqtt.tls.ca_file).
_PATH_KEY_NAMES = ("path", "dir", "file", "directory", "outbox", "root")
_PATH_KEY_SUFFIXES = ("_path", "_dir", "_file")

# Upper bounds of the daemon's numeric keys: far beyond what a line needs, and low enough that a
# typo (an extra zero, 1e10) fails at start with exit 2 instead of crashing or starving the daemon
# later. Timeouts become threading waits, which raise OverflowError beyond threading.TIMEOUT_MAX.
# ONNX Runtime intra-op threads: the biggest Jetson (AGX Orin) has 12 cores; more threads than
# cores only contend, 64 leaves room for a workstation.
MAX_THREADS = 64
# TensorRT builder workspace: 64 GiB is all the memory of the biggest Jetson.
MAX_WORKSPACE_MIB = 64 * 1024
# Frames between capture and inference: the default 4 is 0.13 s at 30 fps; 256 frames are 8.5 s of
# latency (a reject pulse could never reach its part) and ~550 MB of 640x480 RGB + float32 depth.
MAX_CAPTURE_QUEUE = 256
# Results between inference and the sinks (a result plus, for rejects, an overlay JPEG of ~50 kB):
# 1024 are half a minute at 30 fps; a broker outage is the MQTT outbox's job, not this queue's.
MAX_RESULTS_QUEUE = 1024
# Inference waits this long for room in the results queue before dropping a result; while it
# waits nothing is inspected, so more than 10 minutes is a stopped line, not a hiccup.
MAX_RESULTS_TIMEOUT_S = 600.0
# Source.read timeout, and so the watchdog tick interval while the camera is silent: keep it well
# below WatchdogSec / 2; a camera silent for a minute is broken, not slow.
MAX_READ_TIMEOUT_S = 60.0
# Source failures in a row before exit 5: the reopen backoff (1, 2, 4 ... s, at most 30 s) computes
# 2.0 ** attempt, which overflows a float after 1024 attempts; 1000 attempts are ~8 hours of
# retries, and systemd restarts the service after exit 5 anyway.
MAX_REOPEN_ATTEMPTS = 1000
# Overlays are only ever scaled down, so a width above the camera's is harmless; 8192 px covers any
# camera (JPEG itself stops at 65535).
MAX_HEATMAP_WIDTH = 8192
# Status period (sd_notify STATUS, the log, publish_status and its health report): an hour between
# reports is already blind.
MAX_STATUS_INTERVAL_S = 3600.0


class ConfigError(CheckError):
    """The configuration is unusable. ``key`` is the dotted path at fault (or None), ``file`` the
    config file (or None)."""


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class EngineConfig:
    backend: str = "auto"          # auto | tensorrt | onnxruntime
    precision: str = "int8"        # int8 | fp16 | fp32 (falls back as edge.engines documents)
    threads: int | None = None     # ONNX Runtime intra-op CPU threads; None = onnxruntime's default
    cache_dir: Path | None = None  # TensorRT engine cache; None = the bundle's engines dir
    cuda: str = "auto"             # TensorRT device buffers via: auto | pycuda | cuda-python
    workspace_mib: int | None = None  # TensorRT builder workspace; None = edge.engines' default
    build_missing: bool = True     # build TensorRT engines on first start when the cache has none
    warmup: bool = True            # one inference per engine before READY=1
    verify_hashes: bool = True     # sha256-check the bundle's files at start


@dataclass(frozen=True)
class QueueConfig:
    capture: int = 4               # frames between capture and inference
    results: int = 64              # results between inference and the sinks
    # What capture does when the capture queue is full: drop the oldest queued frame (default for
    # live cameras: keep latency bounded), drop the new frame, or block (default for replays:
    # every recorded frame is inspected). Drops are counted and reported.
    on_full: str = "drop_oldest"
    # How long inference waits for room in a full results queue before dropping (counted) a result.
    results_timeout_s: float = 5.0


@dataclass(frozen=True)
class HeatmapConfig:
    on_reject: bool = True         # attach a heatmap overlay JPEG to reject results
    jpeg_quality: int = 85         # 1..100
    max_width: int = 640           # overlays wider than this are scaled down


@dataclass(frozen=True)
class WatchdogConfig:
    enabled: bool = True           # send WATCHDOG=1 when systemd asks for it (WatchdogSec)


@dataclass(frozen=True)
class StatusConfig:
    interval_s: float = 5.0        # counters to sd_notify STATUS, the log and publish_status


@dataclass(frozen=True)
class Config:
    path: Path | None              # the YAML file (None when built from a dict without one)
    device_id: str
    bundle: Path
    engine: EngineConfig
    source: dict                   # passed to edge.sources.open_source (daemon-only keys removed)
    source_type: str
    exit_at_end: bool              # finite replay ended -> drain and exit 0 (else reopen and go on)
    read_timeout_s: float          # Source.read timeout
    reopen_attempts: int           # source failures in a row before giving up (exit 5)
    fallback: dict                 # edge.fallback.FallbackConfig.from_dict input
    sinks: dict                    # edge.sinks.make_sinks input
    queues: QueueConfig = field(default_factory=QueueConfig)
    heatmaps: HeatmapConfig = field(default_factory=HeatmapConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    log_level: str = "INFO"
    # Public keys a bundle must be signed by (docs/bundle.md); () = unsigned bundles load too.
    trusted_keys: tuple[TrustedKey, ...] = ()


# --------------------------------------------------------------------------- checks


def _checker(file: Path | None) -> Checker:
    return Checker(where=file, file=file, error=ConfigError)


def _path(chk: Checker, value: Any, key: str, base: Path) -> Path:
    text = chk.string(value, key)
    p = Path(os.path.expanduser(text))
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _is_path_key(k: str) -> bool:
    return k in _PATH_KEY_NAMES or k.endswith(_PATH_KEY_SUFFIXES)


def _resolve_paths(chk: Checker, d: dict, key: str, base: Path) -> dict:
    """Copy of ``d`` with path-valued string keys made absolute against ``base`` (recursively)."""
    out = {}
    for k, v in d.items():
        sub = join(key, k)
        if isinstance(v, dict):
            out[k] = _resolve_paths(chk, v, sub, base)
        elif isinstance(k, str) and _is_path_key(k) and isinstance(v, str):
            out[k] = str(_path(chk, v, sub, base))
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- sections


def _engine(chk: Checker, value: Any, base: Path) -> EngineConfig:
    d = chk.mapping(value, "engine", allow_none=True)
    chk.keys(d, "engine", _ENGINE_KEYS)
    kw: dict[str, Any] = {}
    if d.get("backend") is not None:
        kw["backend"] = chk.choice(d["backend"], "engine.backend", BACKENDS)
    if d.get("precision") is not None:
        kw["precision"] = chk.choice(d["precision"], "engine.precision", ENGINE_PRECISIONS)
    if d.get("threads") is not None:
        kw["threads"] = chk.positive_int(d["threads"], "engine.threads", maximum=MAX_THREADS)
    if d.get("cache_dir") is not None:
        kw["cache_dir"] = _path(chk, d["cache_dir"], "engine.cache_dir", base)
    if d.get("cuda") is not None:
        kw["cuda"] = chk.choice(d["cuda"], "engine.cuda", CUDA_BINDINGS)
    if d.get("workspace_mib") is not None:
        kw["workspace_mib"] = chk.positive_int(d["workspace_mib"], "engine.workspace_mib",
                                               maximum=MAX_WORKSPACE_MIB)
    for k in ("build_missing", "warmup", "verify_hashes"):
        if d.get(k) is not None:
            kw[k] = chk.boolean(d[k], f"engine.{k}")
    return EngineConfig(**kw)


def _source(chk: Checker, value: Any, base: Path) -> tuple[dict, str, bool, float, int]:
    if value is None:
        raise chk.fail("source", f"missing required section (a mapping with 'type': {', '.join(SOURCE_TYPES)})")
    d = chk.mapping(value, "source")
    if d.get("type") is None:
        raise chk.fail("source.type", f"missing required key (one of {', '.join(SOURCE_TYPES)})")
    kind = chk.choice(d["type"], "source.type", SOURCE_TYPES)
    if kind in FINITE_SOURCES and d.get("path") is None:
        raise chk.fail("source.path", f"missing required key (a '{kind}' source replays files from a path)")
    exit_at_end = kind in FINITE_SOURCES and d.get("loop") is not True
    if d.get("exit_at_end") is not None:
        exit_at_end = chk.boolean(d["exit_at_end"], "source.exit_at_end")
    read_timeout_s = 1.0
    if d.get("read_timeout_s") is not None:
        read_timeout_s = chk.number(d["read_timeout_s"], "source.read_timeout_s", lo=0, hi=MAX_READ_TIMEOUT_S,
                                    lo_open=True)
    reopen_attempts = 3
    if d.get("reopen_attempts") is not None:
        reopen_attempts = chk.positive_int(d["reopen_attempts"], "source.reopen_attempts",
                                           maximum=MAX_REOPEN_ATTEMPTS)
    passed = {k: v for k, v in d.items() if k not in SOURCE_DAEMON_KEYS}
    passed = _resolve_paths(chk, passed, "source", base)
    _check_source_keys(chk, passed, kind)
    if kind in FINITE_SOURCES and not Path(passed["path"]).exists():
        raise chk.fail("source.path", f"not found: {passed['path']}")
    if passed.get("loop") is True and d.get("exit_at_end") is True:
        raise chk.fail("source.exit_at_end", "a looping replay (source.loop: true) never ends; remove one of them")
    return passed, kind, exit_at_end, read_timeout_s, reopen_attempts


def _check_source_keys(chk: Checker, d: dict, kind: str) -> None:
    """edge.sources checks its own keys (types, unknown keys with a did-you-mean); its errors name
    keys below ``source``."""
    try:
        validate_source_config(dict(d))
    except SourceConfigError as exc:
        problem = exc.problem
        if exc.key in d and exc.key not in ("type", *SOURCE_KEYS[kind]):  # an unknown key
            problem += f"; the daemon itself also reads {', '.join(SOURCE_DAEMON_KEYS)}"
        raise chk.fail(join("source", exc.key), problem) from exc


def _sinks(chk: Checker, value: Any, base: Path) -> dict:
    if value is None:
        raise chk.fail("sinks", f"missing required section: name at least one of {', '.join(SINK_TYPES)} "
                                f"(results would go nowhere)")
    d = chk.mapping(value, "sinks")
    chk.keys(d, "sinks", SINK_TYPES)
    out = {}
    for name, entry in d.items():
        if entry is None or entry is True:  # `console:` / `console: true` -> defaults
            out[name] = {}
            continue
        if entry is False:
            continue  # disabled
        entry = chk.mapping(entry, f"sinks.{name}", allow_none=True)
        if entry.get("enabled") is False:
            continue
        out[name] = _resolve_paths(chk, entry, f"sinks.{name}", base)
    if not out:
        raise chk.fail("sinks", f"every sink is disabled: enable at least one of {', '.join(SINK_TYPES)}")
    return out


def _check_sinks_keys(chk: Checker, sinks: dict, device_id: str) -> None:
    """edge.sinks checks its own sections without opening anything (it reads the MQTT password
    file); its errors name the whole dotted key (``sinks.mqtt.qos``)."""
    try:
        parse_sinks_config(sinks, device_id)
    except CheckError as exc:
        raise chk.fail(exc.key, exc.problem) from exc


def _queues(chk: Checker, value: Any, kind: str) -> QueueConfig:
    d = chk.mapping(value, "queues", allow_none=True)
    chk.keys(d, "queues", _QUEUE_KEYS)
    kw: dict[str, Any] = {"on_full": "block" if kind in FINITE_SOURCES else "drop_oldest"}
    for k, most in (("capture", MAX_CAPTURE_QUEUE), ("results", MAX_RESULTS_QUEUE)):
        if d.get(k) is not None:
            kw[k] = chk.positive_int(d[k], f"queues.{k}", maximum=most)
    if d.get("on_full") is not None:
        kw["on_full"] = chk.choice(d["on_full"], "queues.on_full", ON_FULL)
    if d.get("results_timeout_s") is not None:
        kw["results_timeout_s"] = chk.number(d["results_timeout_s"], "queues.results_timeout_s", lo=0,
                                             hi=MAX_RESULTS_TIMEOUT_S, lo_open=True)
    return QueueConfig(**kw)


def _heatmaps(chk: Checker, value: Any) -> HeatmapConfig:
    d = chk.mapping(value, "heatmaps", allow_none=True)
    chk.keys(d, "heatmaps", _HEATMAP_KEYS)
    kw: dict[str, Any] = {}
    if d.get("on_reject") is not None:
        kw["on_reject"] = chk.boolean(d["on_reject"], "heatmaps.on_reject")
    if d.get("jpeg_quality") is not None:
        kw["jpeg_quality"] = chk.integer(d["jpeg_quality"], "heatmaps.jpeg_quality", 1, 100)
    if d.get("max_width") is not None:
        kw["max_width"] = chk.integer(d["max_width"], "heatmaps.max_width", 32, MAX_HEATMAP_WIDTH)
    return HeatmapConfig(**kw)


def _watchdog(chk: Checker, value: Any) -> WatchdogConfig:
    d = chk.mapping(value, "watchdog", allow_none=True)
    chk.keys(d, "watchdog", _WATCHDOG_KEYS)
    if d.get("enabled") is None:
        return WatchdogConfig()
    return WatchdogConfig(enabled=chk.boolean(d["enabled"], "watchdog.enabled"))


def _status(chk: Checker, value: Any) -> StatusConfig:
    d = chk.mapping(value, "status", allow_none=True)
    chk.keys(d, "status", _STATUS_KEYS)
    if d.get("interval_s") is None:
        return StatusConfig()
    return StatusConfig(interval_s=chk.number(d["interval_s"], "status.interval_s", lo=0,
                                                  hi=MAX_STATUS_INTERVAL_S, lo_open=True))


def parse_trusted_keys(chk: Checker, value: Any, base: Path) -> tuple[TrustedKey, ...]:
    """``trusted_keys``: a non-empty list of Ed25519 public key files (PEM), read now so that an
    unreadable or wrong key is a configuration error (exit 2) naming its list index."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise chk.fail("trusted_keys", f"must be a non-empty list of public key files, got {describe(value)}")
    keys = []
    for i, item in enumerate(value):
        path = _path(chk, item, f"trusted_keys.{i}", base)
        try:
            keys.append(load_public_key(path))
        except SignatureError as exc:
            raise chk.fail(f"trusted_keys.{i}", str(exc), file=path) from exc
    return load_trusted_keys(keys)


def _fallback(chk: Checker, value: Any) -> dict:
    d = dict(chk.mapping(value, "fallback", allow_none=True))
    if "available_modes" in d:
        raise chk.fail("fallback.available_modes", "set from the bundle's modes; remove it from the config")
    return d


def check_fallback(chk_or_file: Checker | str | os.PathLike | None, d: dict,
                   available_modes: Sequence[str] | None = None) -> FallbackConfig:
    """Build FallbackConfig from the ``fallback`` section (edge.fallback checks its own keys); its
    errors become ConfigErrors naming ``fallback.*``. ``chk_or_file``: a Checker or the config file."""
    chk = chk_or_file if isinstance(chk_or_file, Checker) else _checker(chk_or_file)
    doc = dict(d)
    if available_modes is not None:
        doc["available_modes"] = tuple(available_modes)
    try:
        return FallbackConfig.from_dict(doc)
    except CheckError as exc:
        raise chk.fail(join("fallback", exc.key), exc.problem) from exc


# --------------------------------------------------------------------------- entry points


def config_from_dict(doc: Any, path: str | os.PathLike | None = None, base_dir: str | os.PathLike | None = None) -> Config:
    """Check a parsed config document. Relative paths resolve against ``base_dir`` (default: the
    directory of ``path``, else the working directory)."""
    file = Path(path) if path is not None else None
    chk = _checker(file)
    base = Path(base_dir) if base_dir is not None else (file.resolve().parent if file is not None else Path.cwd())
    if doc is None:
        raise ConfigError(f"{file}: the file is empty" if file else "the configuration is empty", file=file)
    if not isinstance(doc, dict):
        raise ConfigError(f"{file or 'config'}: must be a YAML mapping at the top level, got {describe(doc)}",
                          file=file)
    chk.mapping(doc, "")
    chk.keys(doc, "", _TOP_KEYS)

    device_id = socket.gethostname()
    if doc.get("device_id") is not None:
        device_id = chk.string(doc["device_id"], "device_id")
    if doc.get("bundle") is None:
        raise chk.fail("bundle", "missing required key (the model bundle directory)")
    bundle = _path(chk, doc["bundle"], "bundle", base)

    engine = _engine(chk, doc.get("engine"), base)
    source, kind, exit_at_end, read_timeout_s, reopen_attempts = _source(chk, doc.get("source"), base)
    fallback = _fallback(chk, doc.get("fallback"))
    sinks = _sinks(chk, doc.get("sinks"), base)
    _check_sinks_keys(chk, sinks, device_id)
    queues = _queues(chk, doc.get("queues"), kind)
    heatmaps = _heatmaps(chk, doc.get("heatmaps"))
    watchdog = _watchdog(chk, doc.get("watchdog"))
    status = _status(chk, doc.get("status"))
    trusted_keys = parse_trusted_keys(chk, doc.get("trusted_keys"), base)
    log_level = "INFO"
    if doc.get("log_level") is not None:
        v = doc["log_level"]
        log_level = chk.choice(v.upper() if isinstance(v, str) else v, "log_level", LOG_LEVELS)

    cfg = Config(path=file.resolve() if file is not None else None, device_id=device_id, bundle=bundle,
                 engine=engine, source=source, source_type=kind, exit_at_end=exit_at_end,
                 read_timeout_s=read_timeout_s, reopen_attempts=reopen_attempts, fallback=fallback, sinks=sinks,
                 queues=queues, heatmaps=heatmaps, watchdog=watchdog, status=status, log_level=log_level,
                 trusted_keys=trusted_keys)
    # edge.fallback checks its keys now, so a typo fails at start with exit code 2 (sources and
    # sinks are created later; the daemon maps their configuration errors to exit code 2 as well).
    check_fallback(chk, cfg.fallback)
    return cfg


def load_config(path: str | os.PathLike) -> Config:
    """Read and check a YAML config file (duplicate keys are errors, as in bundle.yaml). Raises
    ConfigError naming the file and key."""
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"config file not found: {file}", file=file)
    return config_from_dict(load_yaml(file, ConfigError), path=file)
