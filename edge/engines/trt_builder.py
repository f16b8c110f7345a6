"""ONNX -> serialized TensorRT engine, with the TensorRT 10 Python API; no cache.

``Builder.create_network(0)`` (explicit batch is the only mode), ``OnnxParser``,
``IBuilderConfig.set_memory_pool_limit``, ``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` (INT8 for
explicit Q/DQ graphs; no calibrator), a persisted ``ITimingCache`` and
``Builder.build_serialized_network``. Also the precision vocabulary and the errors a build
raises. edge.engines.trt_cache keys, caches and finds what this builds (and re-exports these
names, its callers' import path).

Imports the standard library, edge.digest and edge.engines.base only: `tensorrt` is imported
by :func:`import_tensorrt` when a build starts.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from ..digest import sha256_bytes
from .base import EngineError

log = logging.getLogger("edge.engines.trt_cache")  # one logger for the cache and its builds

DEFAULT_WORKSPACE_MIB = 1024

_FLAG_NAMES = ("fp16", "int8")

NO_TENSORRT_HINT = (
    "the TensorRT Python bindings are not importable here: engines are built on the Jetson "
    "(JetPack 6 ships TensorRT 10.3 Python bindings as python3-libnvinfer: use the system "
    "python3, or a venv created with --system-site-packages). On this machine, "
    "`rgbd-convert build --bundle DIR --print-trtexec` prints the equivalent trtexec commands."
)


# --------------------------------------------------------------------------- errors

class TensorRTUnavailableError(EngineError):
    """`import tensorrt` failed."""


class EngineBuildError(EngineError):
    """TensorRT could not build an engine (or the cache cannot hold one)."""


class OnnxParseError(EngineBuildError):
    """The ONNX parser rejected the model; ``errors`` holds every parser message."""

    def __init__(self, onnx_path: Path, errors: Sequence[str]):
        self.onnx_path = Path(onnx_path)
        self.errors = list(errors)
        lines = "\n".join(f"  [{i}] {e}" for i, e in enumerate(self.errors)) or "  (the parser reported no message)"
        super().__init__(f"TensorRT's ONNX parser rejected {self.onnx_path} "
                         f"({len(self.errors)} error(s)):\n{lines}")


# --------------------------------------------------------------------------- precision

def precision_flags(precision: str | Iterable[str]) -> tuple[str, ...]:
    """Canonical builder flags for a precision: 'fp32' -> (), 'fp16' -> ('fp16',),
    'int8' -> ('int8',), 'fp16_int8' (or 'int8_fp16', or an iterable of flags) -> ('fp16', 'int8')."""
    if isinstance(precision, str):
        parts = [p for p in re.split(r"[_+,\s]+", precision.strip().lower()) if p]
    else:
        parts = [str(p).strip().lower() for p in precision]
    flags = set()
    for p in parts:
        if p == "fp32":
            continue
        if p not in _FLAG_NAMES:
            raise ValueError(f"unknown precision {precision!r}: use fp32, fp16, int8 or fp16_int8")
        flags.add(p)
    return tuple(sorted(flags))


def precision_name(flags: Iterable[str] | str) -> str:
    """'fp32' for no flags, else the sorted flags joined by '_' ('fp16', 'int8', 'fp16_int8')."""
    f = precision_flags(flags)
    return "_".join(f) if f else "fp32"


def precision_from_args(fp16: bool, int8: bool) -> str:
    return precision_name([n for n, on in (("fp16", fp16), ("int8", int8)) if on])


# --------------------------------------------------------------------------- files

def atomic_write(path: Path, data: bytes) -> None:
    """Write data to path through a synced temporary file: readers see the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- TensorRT

def import_tensorrt():
    """The `tensorrt` module, or TensorRTUnavailableError with what to do instead."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        raise TensorRTUnavailableError(f"{NO_TENSORRT_HINT}\n(import tensorrt: {exc})") from exc


def _format_parser_error(err) -> str:
    text = str(err)
    if not text or (text.startswith("<") and "object at 0x" in text):  # no __str__: assemble it
        parts = []
        for attr in ("node", "node_name", "node_operator", "code", "desc"):
            fn = getattr(err, attr, None)
            if callable(fn):
                with contextlib.suppress(Exception):
                    parts.append(f"{attr}={fn()}")
        text = ", ".join(parts) or text
    return text


def _dims(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


def _read_onnx(onnx_path: Path, expected_sha256: str | None) -> bytes:
    data = onnx_path.read_bytes()
    if expected_sha256 is not None:
        have = sha256_bytes(data)
        if have != expected_sha256.lower():
            raise EngineBuildError(f"{onnx_path}: sha256 is {have[:12]}..., expected {expected_sha256[:12]}... "
                                   "(the file changed after the bundle was checked?); not building from it")
    return data


def _create_builder(trt, logger):
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # pybind11 raises when createInferBuilder returns null (no CUDA device)
        raise EngineBuildError(f"could not create a TensorRT builder (no usable CUDA GPU?): {exc}") from exc
    if builder is None:
        raise EngineBuildError("could not create a TensorRT builder (no usable CUDA GPU?)")
    return builder


def _set_precision(trt, builder, config, flags: tuple[str, ...]) -> None:
    if "fp16" in flags:
        if getattr(builder, "platform_has_fast_fp16", True) is False:
            log.warning("this GPU reports no fast FP16; building with the FP16 flag anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    if "int8" in flags:
        if getattr(builder, "platform_has_fast_int8", True) is False:
            log.warning("this GPU reports no fast INT8; building with the INT8 flag anyway")
        # Explicit quantization: the Q/DQ nodes carry the scales; no calibrator is set.
        config.set_flag(trt.BuilderFlag.INT8)


def _add_batch_one_profile(builder, network, config, onnx_path: Path) -> None:
    """Inputs: static shapes expected; a dynamic batch dimension gets a batch-1 profile."""
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = _dims(tensor.shape)
        log.debug("input %s: shape %s dtype %s", tensor.name, shape, getattr(tensor, "dtype", "?"))
        if any(d < 0 for d in shape):
            if any(d < 0 for d in shape[1:]):
                raise EngineBuildError(
                    f"{onnx_path}: input '{tensor.name}' has dynamic dimensions {shape}; export the model "
                    "with a static input size (only a dynamic batch dimension is handled, as batch 1)")
            fixed = (1,) + shape[1:]
            if profile is None:
                profile = builder.create_optimization_profile()
            profile.set_shape(tensor.name, fixed, fixed, fixed)
            log.info("input '%s' has a dynamic batch dimension; building for shape %s", tensor.name, fixed)
    if profile is not None:
        config.add_optimization_profile(profile)


def _use_timing_cache(config, path: Path):
    """Load the timing cache file (if any) into config; a new cache when it does not match."""
    blob = b""
    if path.is_file():
        blob = path.read_bytes()
        log.info("timing cache: loading %s (%d bytes)", path, len(blob))
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False
        log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def build_engine(onnx_path: str | os.PathLike, precision: str, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                 timing_cache_path: str | os.PathLike | None = None, *, verbose: bool = False,
                 expected_sha256: str | None = None) -> bytes:
    """Build a serialized TensorRT engine from an ONNX file with the TensorRT 10 Python API.

    ``precision``: fp32 | fp16 | int8 | fp16_int8. INT8 expects an explicit Q/DQ ONNX (no
    calibrator). ``timing_cache_path``: loaded if present, written back after a successful build.
    ``expected_sha256``: the digest the engine will be keyed by; the bytes read are checked
    against it, so an engine can never be built from other bytes than its key says.
    Raises OnnxParseError with every parser message, EngineBuildError when the build fails.
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    flags = precision_flags(precision)
    data = _read_onnx(onnx_path, expected_sha256)
    # logger, builder and parser stay referenced until the build ends (the parser owns the weights)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = _create_builder(trt, logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    # path lets the parser find externally stored weights next to the model
    if not parser.parse(data, str(onnx_path)):
        raise OnnxParseError(onnx_path, [_format_parser_error(parser.get_error(i)) for i in range(parser.num_errors)])
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) * (1 << 20))
    _set_precision(trt, builder, config, flags)
    _add_batch_one_profile(builder, network, config, onnx_path)
    cache = _use_timing_cache(config, Path(timing_cache_path)) if timing_cache_path is not None else None
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT failed to build an engine from {onnx_path} (build_serialized_network returned None). "
            "Re-run with --verbose for TensorRT's verbose log, or reproduce with the command from "
            "--print-trtexec (add --verbose to trtexec) to see which layer fails.")
    engine = bytes(serialized)
    if cache is not None:
        atomic_write(Path(timing_cache_path), bytes(cache.serialize()))
        log.info("timing cache: saved %s", timing_cache_path)
    return engine
