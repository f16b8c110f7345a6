"""`rgbd-convert build`: TensorRT engines from a model bundle's ONNX files, built ON THE JETSON.

A TensorRT engine is only valid for the TensorRT version and the GPU it was built on, so
engines are never shipped: the bundle carries ONNX (fp32, and optionally an INT8 Q/DQ
variant per mode) and this module builds engines where they run, into a cache directory
(``BUNDLE_DIR/engines`` by default, or ``--cache-dir``, e.g. a systemd StateDirectory).

Cache layout (one engine per mode and precision)::

    <cache>/<mode>-<precision>-<key16>.engine       serialized engine (IHostMemory bytes)
    <cache>/<mode>-<precision>-<key16>.engine.json  sidecar: onnx file + sha256, TensorRT version,
                                                    GPU name + compute capability, flags,
                                                    workspace, engine sha256, build time
    <cache>/timing-<trt>-<gpu>-sm<cc>.cache         TensorRT timing cache (per TRT version + GPU)

``key16`` is the first 16 hex digits of :func:`engine_key`. :func:`find_engine` reuses an
engine only when every identity field in its sidecar matches exactly and the engine file's
sha256 matches the sidecar; anything else is rebuilt (the stale file is left in place and
logged).

TensorRT usage follows the TensorRT 10 Python API: ``Builder.create_network(0)`` (explicit
batch is the only mode), ``OnnxParser``, ``IBuilderConfig.set_memory_pool_limit``,
``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` (INT8 for explicit Q/DQ graphs; no calibrator),
a persisted ``ITimingCache`` and ``Builder.build_serialized_network``.

`tensorrt` is imported lazily: ``--print-trtexec`` (the equivalent ``trtexec`` command lines)
works on any machine.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import importlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import yaml

log = logging.getLogger(__name__)

MODES = ("rgbd", "rgb", "depth")
BUNDLE_FILE = "bundle.yaml"
DEFAULT_CACHE_SUBDIR = "engines"
DEFAULT_WORKSPACE_MIB = 1024
SIDECAR_FORMAT = 1
ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"  # appended to the engine file name: <mode>-<precision>-<key16>.engine.json
LOCK_FILE = ".build.lock"
# JetPack installs trtexec here, not on PATH.
JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
# Board name on Jetson (NUL-terminated); distinguishes e.g. Orin Nano from AGX Orin (both sm_87).
DEVICE_TREE_MODEL = "/proc/device-tree/model"

_FLAG_NAMES = ("fp16", "int8")

NO_TENSORRT_HINT = (
    "the TensorRT Python bindings are not importable here: engines are built on the Jetson "
    "(JetPack 6 ships TensorRT 10.3 Python bindings as python3-libnvinfer: use the system "
    "python3, or a venv created with --system-site-packages). On this machine, "
    "`rgbd-convert build --bundle DIR --print-trtexec` prints the equivalent trtexec commands."
)


# --------------------------------------------------------------------------- errors

class BundleError(ValueError):
    """bundle.yaml is malformed or does not describe what was asked (names the key or file)."""


class TensorRTUnavailableError(RuntimeError):
    """`import tensorrt` failed."""


class EngineBuildError(RuntimeError):
    """TensorRT could not build an engine."""


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


# --------------------------------------------------------------------------- bundle

@dataclass(frozen=True)
class ModeSource:
    mode: str
    onnx: Path               # the file to build from (the INT8 variant when asked)
    int8_variant: bool


def load_bundle_modes(bundle_dir: str | os.PathLike) -> dict:
    """The ``modes`` mapping of BUNDLE_DIR/bundle.yaml (nothing else is read)."""
    path = Path(bundle_dir) / BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"bundle manifest not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BundleError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or "modes" not in doc:
        raise BundleError(f"{path}: missing key 'modes'")
    modes = doc["modes"]
    if not isinstance(modes, dict) or not modes:
        raise BundleError(f"{path}: 'modes' must be a non-empty mapping of mode -> {{onnx: FILE}}")
    for name, entry in modes.items():
        if not isinstance(entry, dict):
            raise BundleError(f"{path}: 'modes.{name}' must be a mapping with an 'onnx' key")
        if not entry.get("onnx"):
            raise BundleError(f"{path}: missing key 'modes.{name}.onnx'")
    return modes


def resolve_mode_sources(bundle_dir: str | os.PathLike, modes: Sequence[str] | None, int8: bool) -> list[ModeSource]:
    """The ONNX file for each requested mode (default: every mode in bundle.yaml, in its order).
    With ``int8`` the mode's ``onnx_int8`` is used and must exist."""
    bundle_dir = Path(bundle_dir)
    manifest = bundle_dir / BUNDLE_FILE
    table = load_bundle_modes(bundle_dir)
    wanted = list(dict.fromkeys(modes)) if modes else list(table)
    out = []
    for m in wanted:
        if m not in table:
            raise BundleError(f"{manifest}: mode '{m}' is not in 'modes' (has: {', '.join(table)})")
        entry = table[m]
        key = "onnx"
        if int8:
            if not entry.get("onnx_int8"):
                raise BundleError(
                    f"--int8 asked, but mode '{m}' has no INT8 ONNX ('modes.{m}.onnx_int8' missing in "
                    f"{manifest}); run rgbd-calibrate to produce the Q/DQ model, or build '{m}' without --int8")
            key = "onnx_int8"
        onnx = Path(entry[key])
        if not onnx.is_absolute():
            onnx = bundle_dir / onnx
        if not onnx.is_file():
            raise FileNotFoundError(f"ONNX file for mode '{m}' ('modes.{m}.{key}' in {manifest}) not found: {onnx}")
        out.append(ModeSource(mode=m, onnx=onnx, int8_variant=int8))
    return out


# --------------------------------------------------------------------------- identity and keys

@dataclass(frozen=True)
class GpuIdentity:
    name: str                # e.g. "Orin [NVIDIA Jetson AGX Orin Developer Kit]"
    compute_capability: str  # "8.7"


def _normalize_cc(cc) -> str:
    if isinstance(cc, (tuple, list)):
        return ".".join(str(int(x)) for x in cc)
    return str(cc).strip()


def _device_tree_model() -> str | None:
    try:
        raw = Path(DEVICE_TREE_MODEL).read_bytes()
    except OSError:
        return None
    text = raw.replace(b"\x00", b"").decode("utf-8", "replace").strip()
    return text or None


def _probe_cuda_python():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.8
    except ImportError:
        from cuda import cudart  # older cuda-python
    err, prop = cudart.cudaGetDeviceProperties(0)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"cudaGetDeviceProperties(0): {err}")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\x00", 1)[0].decode("utf-8", "replace")
    return str(name).strip(), f"{prop.major}.{prop.minor}"


def _probe_pycuda():
    import pycuda.driver as cuda

    cuda.init()
    dev = cuda.Device(0)
    return dev.name().strip(), _normalize_cc(dev.compute_capability())


def _probe_libcuda():
    """CUDA driver API through ctypes: libcuda.so.1 is present wherever TensorRT can run."""
    import ctypes

    lib = ctypes.CDLL("libcuda.so.1")
    if lib.cuInit(0) != 0:
        raise RuntimeError("cuInit failed")
    dev = ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(dev), 0) != 0:
        raise RuntimeError("cuDeviceGet(0) failed")
    buf = ctypes.create_string_buffer(256)
    if lib.cuDeviceGetName(buf, 256, dev) != 0:
        raise RuntimeError("cuDeviceGetName failed")
    major, minor = ctypes.c_int(), ctypes.c_int()
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) or lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev):
        raise RuntimeError("cuDeviceGetAttribute(compute capability) failed")
    return buf.value.decode("utf-8", "replace").strip(), f"{major.value}.{minor.value}"


def _probe_nvidia_smi():
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise RuntimeError("nvidia-smi not on PATH")
    out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    line = out.strip().splitlines()[0]
    name, cc = line.rsplit(",", 1)
    if not re.fullmatch(r"\d+\.\d+", cc.strip()):
        raise RuntimeError(f"nvidia-smi gave no compute capability: {line!r}")
    return name.strip(), cc.strip()


_GPU_PROBES = (("cuda-python", _probe_cuda_python), ("pycuda", _probe_pycuda),
               ("libcuda", _probe_libcuda), ("nvidia-smi", _probe_nvidia_smi))


def gpu_identity() -> GpuIdentity:
    """Name and compute capability of GPU 0 (cuda-python, then pycuda, then the CUDA driver
    library through ctypes, then nvidia-smi). On a Jetson the board model from the device tree
    is appended to the name."""
    tried = []
    for label, probe in _GPU_PROBES:
        try:
            name, cc = probe()
        except Exception as exc:  # each probe is optional; report them all if none works
            tried.append(f"{label}: {exc.__class__.__name__}: {exc}")
            log.debug("GPU probe %s failed: %s", label, exc)
            continue
        model = _device_tree_model()
        if model and model not in name:
            name = f"{name} [{model}]"
        log.debug("GPU identity from %s: %s, compute capability %s", label, name, cc)
        return GpuIdentity(name=name, compute_capability=_normalize_cc(cc))
    raise EngineBuildError("could not identify the CUDA GPU (needed to key the engine cache); tried:\n  "
                           + "\n  ".join(tried))


def engine_key(onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability,
               precision_flags_: Iterable[str] | str) -> str:
    """sha256 (hex) over everything that makes an engine valid: the ONNX bytes, the TensorRT
    version, the GPU and the builder precision flags."""
    ident = {
        "onnx_sha256": str(onnx_sha256),
        "tensorrt_version": str(trt_version),
        "gpu_name": str(gpu_name),
        "compute_capability": _normalize_cc(compute_capability),
        "flags": list(precision_flags(precision_flags_)),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine's validity depends on; its sidecar must match every field."""
    mode: str
    precision: str            # fp32 | fp16 | int8 | fp16_int8
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str

    @property
    def flags(self) -> tuple[str, ...]:
        return precision_flags(self.precision)

    @property
    def key(self) -> str:
        return engine_key(self.onnx_sha256, self.tensorrt_version, self.gpu_name, self.compute_capability, self.flags)

    @property
    def file_name(self) -> str:
        return f"{self.mode}-{precision_name(self.flags)}-{self.key[:16]}{ENGINE_SUFFIX}"

    def identity(self) -> dict:
        return {
            "format": SIDECAR_FORMAT,
            "mode": self.mode,
            "precision": precision_name(self.flags),
            "flags": list(self.flags),
            "onnx_sha256": self.onnx_sha256,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": _normalize_cc(self.compute_capability),
            "key": self.key,
        }


def engine_path(cache_dir: str | os.PathLike, spec: EngineSpec) -> Path:
    return Path(cache_dir) / spec.file_name


def sidecar_path(engine: str | os.PathLike) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_engine(cache_dir: str | os.PathLike, spec: EngineSpec) -> Path | None:
    """The cached engine for ``spec``, or None. Reused only when the sidecar exists, every identity
    field in it equals ``spec`` exactly, and the engine file's size and sha256 match the sidecar."""
    eng = engine_path(cache_dir, spec)
    side = sidecar_path(eng)
    if not eng.is_file():
        return None
    meta = _read_sidecar(side)
    if meta is None:
        log.info("%s: no readable sidecar %s; not reusing it", eng.name, side.name)
        return None
    for field, want in spec.identity().items():
        have = meta.get(field)
        if have != want:
            log.info("%s: sidecar field %r is %r, expected %r; not reusing it", eng.name, field, have, want)
            return None
    size = eng.stat().st_size
    if meta.get("engine_bytes") != size or meta.get("engine_sha256") != sha256_file(eng):
        log.info("%s: engine file does not match its sidecar (truncated or replaced?); not reusing it", eng.name)
        return None
    return eng


def _stale_engines(cache_dir: Path, spec: EngineSpec) -> list[Path]:
    """Other engines for the same mode and precision (different key: older ONNX, TRT or GPU)."""
    prefix = f"{spec.mode}-{precision_name(spec.flags)}-"
    return sorted(p for p in cache_dir.glob(f"{prefix}*{ENGINE_SUFFIX}")
                  if p.name != spec.file_name and re.fullmatch(re.escape(prefix) + r"[0-9a-f]{16}\.engine", p.name))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:80] or "gpu"


def timing_cache_path(cache_dir: str | os.PathLike, trt_version: str, gpu: GpuIdentity) -> Path:
    """Timing cache file for one TensorRT version + GPU (shared by all modes and precisions)."""
    cc = _normalize_cc(gpu.compute_capability).replace(".", "")
    tag = hashlib.sha256(f"{trt_version}|{gpu.name}|{gpu.compute_capability}".encode()).hexdigest()[:8]
    return Path(cache_dir) / f"timing-trt{_slug(trt_version)}-{_slug(gpu.name)}-sm{cc}-{tag}.cache"


def _atomic_write(path: Path, data: bytes) -> None:
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


@contextlib.contextmanager
def _cache_lock(cache_dir: Path):
    """Exclusive lock on the cache directory so a service and a manual build do not race."""
    try:
        import fcntl
    except ImportError:  # not Linux: no locking
        yield
        return
    with open(cache_dir / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("waiting for another build holding %s", cache_dir / LOCK_FILE)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


def build_engine(onnx_path: str | os.PathLike, precision: str, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                 timing_cache_path: str | os.PathLike | None = None, *, verbose: bool = False) -> bytes:
    """Build a serialized TensorRT engine from an ONNX file with the TensorRT 10 Python API.

    ``precision``: fp32 | fp16 | int8 | fp16_int8. INT8 expects an explicit Q/DQ ONNX (no
    calibrator). ``timing_cache_path``: loaded if present, written back after a successful build.
    Raises OnnxParseError with every parser message, EngineBuildError when the build fails.
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    flags = precision_flags(precision)
    data = onnx_path.read_bytes()

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # pybind11 raises when createInferBuilder returns null (no CUDA device)
        raise EngineBuildError(f"could not create a TensorRT builder (no usable CUDA GPU?): {exc}") from exc
    if builder is None:
        raise EngineBuildError("could not create a TensorRT builder (no usable CUDA GPU?)")

    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    # path lets the parser find externally stored weights next to the model
    if not parser.parse(data, str(onnx_path)):
        raise OnnxParseError(onnx_path, [_format_parser_error(parser.get_error(i)) for i in range(parser.num_errors)])

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) * (1 << 20))
    if "fp16" in flags:
        if getattr(builder, "platform_has_fast_fp16", True) is False:
            log.warning("this GPU reports no fast FP16; building with the FP16 flag anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    if "int8" in flags:
        if getattr(builder, "platform_has_fast_int8", True) is False:
            log.warning("this GPU reports no fast INT8; building with the INT8 flag anyway")
        # Explicit quantization: the Q/DQ nodes carry the scales; no calibrator is set.
        config.set_flag(trt.BuilderFlag.INT8)

    # Inputs: static shapes expected; a dynamic batch dimension gets a batch-1 profile.
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

    cache = None
    if timing_cache_path is not None:
        timing_cache_path = Path(timing_cache_path)
        blob = b""
        if timing_cache_path.is_file():
            blob = timing_cache_path.read_bytes()
            log.info("timing cache: loading %s (%d bytes)", timing_cache_path, len(blob))
        cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(cache, False):  # ignore_mismatch=False
            log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", timing_cache_path)
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT failed to build an engine from {onnx_path} (build_serialized_network returned None). "
            "Re-run with --verbose for TensorRT's verbose log, or reproduce with the command from "
            "--print-trtexec (add --verbose to trtexec) to see which layer fails.")
    engine = bytes(serialized)

    if cache is not None:
        _atomic_write(timing_cache_path, bytes(cache.serialize()))
        log.info("timing cache: saved %s", timing_cache_path)
    return engine


# --------------------------------------------------------------------------- trtexec

def _trtexec_program() -> str:
    found = shutil.which("trtexec")
    if found:
        return found
    if os.path.isfile(JETPACK_TRTEXEC):
        return JETPACK_TRTEXEC
    return "trtexec"


def trtexec_command(onnx: str | os.PathLike, engine: str | os.PathLike, precision: str,
                    workspace_mib: int = DEFAULT_WORKSPACE_MIB, timing_cache: str | os.PathLike | None = None,
                    *, verbose: bool = False, skip_inference: bool = True, program: str | None = None) -> str:
    """The trtexec (TensorRT 10 flag spellings) command equivalent to :func:`build_engine`."""
    flags = precision_flags(precision)
    argv = [program or _trtexec_program(), f"--onnx={onnx}", f"--saveEngine={engine}"]
    if "fp16" in flags:
        argv.append("--fp16")
    if "int8" in flags:
        argv.append("--int8")  # explicit Q/DQ graph: no --calib
    argv.append(f"--memPoolSize=workspace:{int(workspace_mib)}M")
    if timing_cache is not None:
        argv.append(f"--timingCacheFile={timing_cache}")
    if skip_inference:
        argv.append("--skipInference")
    if verbose:
        argv.append("--verbose")
    return shlex.join(argv)


# --------------------------------------------------------------------------- bundle build

@dataclass(frozen=True)
class BuildResult:
    mode: str
    precision: str
    onnx: Path
    engine: Path
    sidecar: Path
    built: bool               # False: reused from the cache


def default_cache_dir(bundle_dir: str | os.PathLike) -> Path:
    return Path(bundle_dir) / DEFAULT_CACHE_SUBDIR


def _prepare_cache_dir(cache_dir: Path) -> Path:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineBuildError(f"cannot create engine cache directory {cache_dir}: {exc}; "
                               "pass --cache-dir to a writable directory") from exc
    if not os.access(cache_dir, os.W_OK):
        raise EngineBuildError(f"engine cache directory {cache_dir} is not writable; pass --cache-dir")
    return cache_dir


def build_bundle(bundle_dir: str | os.PathLike, modes: Sequence[str] | None = None, *, fp16: bool = False,
                 int8: bool = False, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                 cache_dir: str | os.PathLike | None = None, force: bool = False,
                 verbose: bool = False) -> list[BuildResult]:
    """Build (or reuse from the cache) one engine per mode of the bundle."""
    bundle_dir = Path(bundle_dir)
    precision = precision_from_args(fp16, int8)
    sources = resolve_mode_sources(bundle_dir, modes, int8)  # bundle errors before touching TensorRT
    trt = import_tensorrt()
    trt_version = str(trt.__version__)
    gpu = gpu_identity()
    cache = _prepare_cache_dir(Path(cache_dir) if cache_dir else default_cache_dir(bundle_dir))
    tcache = timing_cache_path(cache, trt_version, gpu)
    if int8 and not fp16:
        log.info("--int8 without --fp16: layers outside the Q/DQ regions run in FP32")
    log.info("TensorRT %s, GPU %s (compute %s), precision %s, workspace %d MiB, cache %s",
             trt_version, gpu.name, gpu.compute_capability, precision, workspace_mib, cache)

    results = []
    n = len(sources)
    with _cache_lock(cache):
        for i, src in enumerate(sources, 1):
            tag = f"[{i}/{n}] {src.mode}"
            onnx_sha = sha256_file(src.onnx)
            spec = EngineSpec(mode=src.mode, precision=precision, onnx_sha256=onnx_sha,
                              tensorrt_version=trt_version, gpu_name=gpu.name,
                              compute_capability=gpu.compute_capability)
            eng = engine_path(cache, spec)
            found = None if force else find_engine(cache, spec)
            if found is not None:
                meta = _read_sidecar(sidecar_path(found)) or {}
                if meta.get("workspace_mib") not in (None, workspace_mib):
                    log.info("%s: cached engine was built with workspace %s MiB (now %d); --force rebuilds it",
                             tag, meta.get("workspace_mib"), workspace_mib)
                log.info("%s: reusing cached %s engine %s", tag, precision, found)
                results.append(BuildResult(src.mode, precision, src.onnx, found, sidecar_path(found), built=False))
                continue

            for old in _stale_engines(cache, spec):
                meta = _read_sidecar(sidecar_path(old)) or {}
                diffs = [f"{k} {meta.get(k)!r} -> {v!r}" for k, v in spec.identity().items()
                         if k != "key" and meta.get(k) != v]
                log.info("%s: stale engine %s left in place, not reused (differs: %s)",
                         tag, old.name, "; ".join(diffs) or "unreadable sidecar")
            log.info("%s: building %s engine from %s (sha256 %s…)%s", tag, precision, src.onnx.name,
                     onnx_sha[:12], " [--force]" if force else "")
            t0 = time.monotonic()
            blob = build_engine(src.onnx, precision, workspace_mib, tcache, verbose=verbose)
            seconds = time.monotonic() - t0
            _atomic_write(eng, blob)
            meta = spec.identity()
            meta.update({
                "onnx_file": src.onnx.name,
                "onnx_path": str(src.onnx.resolve()),
                "onnx_int8_variant": src.int8_variant,
                "workspace_mib": int(workspace_mib),
                "engine_file": eng.name,
                "engine_bytes": len(blob),
                "engine_sha256": hashlib.sha256(blob).hexdigest(),
                "timing_cache": tcache.name,
                "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "build_seconds": round(seconds, 3),
                "python": sys.version.split()[0],
            })
            _atomic_write(sidecar_path(eng), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
            log.info("%s: built in %.1f s -> %s (%.1f MiB)", tag, seconds, eng, len(blob) / (1 << 20))
            results.append(BuildResult(src.mode, precision, src.onnx, eng, sidecar_path(eng), built=True))
    return results


def print_trtexec(bundle_dir: str | os.PathLike, modes: Sequence[str] | None = None, *, fp16: bool = False,
                  int8: bool = False, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                  cache_dir: str | os.PathLike | None = None, verbose: bool = False, file=None) -> list[str]:
    """Print one trtexec command per mode; needs no TensorRT. Engines built this way carry no
    sidecar, so `rgbd-convert build` does not pick them up from the cache."""
    file = file or sys.stdout
    precision = precision_from_args(fp16, int8)
    sources = resolve_mode_sources(bundle_dir, modes, int8)
    cache = Path(cache_dir) if cache_dir else default_cache_dir(bundle_dir)
    cmds = []
    for src in sources:
        cmds.append(trtexec_command(src.onnx, cache / f"{src.mode}-{precision}.trtexec{ENGINE_SUFFIX}", precision,
                                    workspace_mib, cache / "timing-trtexec.cache", verbose=verbose))
    print(f"# run on the Jetson; create the output directory first: mkdir -p {shlex.quote(str(cache))}", file=file)
    for src, cmd in zip(sources, cmds):
        print(f"# {src.mode} ({precision}) from {src.onnx}", file=file)
        print(cmd, file=file)
    return cmds


# --------------------------------------------------------------------------- CLI

def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="model bundle directory (holds bundle.yaml and the ONNX files)")
    p.add_argument("--mode", nargs="+", action="extend", choices=list(MODES),
                   help="mode(s) to build (default: every mode in bundle.yaml)")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels (BuilderFlag.FP16)")
    p.add_argument("--int8", action="store_true",
                   help="build from each mode's INT8 Q/DQ ONNX (modes.<m>.onnx_int8) with BuilderFlag.INT8")
    p.add_argument("--workspace-mib", type=int, default=DEFAULT_WORKSPACE_MIB,
                   help=f"builder workspace memory pool limit in MiB (default {DEFAULT_WORKSPACE_MIB})")
    p.add_argument("--cache-dir", help="engine cache directory (default BUNDLE/engines; "
                                       "for a systemd service, its StateDirectory)")
    p.add_argument("--force", action="store_true", help="rebuild even when a matching engine is cached")
    p.add_argument("--print-trtexec", action="store_true",
                   help="print the equivalent trtexec commands and build nothing (works without TensorRT)")
    p.add_argument("--verbose", action="store_true", help="TensorRT verbose log and debug logging")


def _setup_logging(verbose: bool) -> None:
    """Progress lines to stderr when the application has not configured logging itself."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _cmd_build(a) -> int:
    _setup_logging(getattr(a, "verbose", False))
    if a.workspace_mib <= 0:
        print("rgbd-convert build: error: --workspace-mib must be positive", file=sys.stderr)
        return 2
    try:
        if a.print_trtexec:
            print_trtexec(a.bundle, a.mode, fp16=a.fp16, int8=a.int8, workspace_mib=a.workspace_mib,
                          cache_dir=a.cache_dir, verbose=a.verbose)
            return 0
        results = build_bundle(a.bundle, a.mode, fp16=a.fp16, int8=a.int8, workspace_mib=a.workspace_mib,
                               cache_dir=a.cache_dir, force=a.force, verbose=a.verbose)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        print(f"rgbd-convert build: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (FileNotFoundError, ValueError, KeyError, TensorRTUnavailableError)) else 1
    for r in results:
        print(f"{r.mode:>5}  {r.precision:<9}  {'built ' if r.built else 'cached'}  {r.engine}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `build` on an argparse subparsers object (as `rgbd-convert build`)."""
    p = subparsers.add_parser("build", help="build TensorRT engines from a bundle's ONNX (on the Jetson)",
                              description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    p.set_defaults(func=_cmd_build)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rgbd-convert build", description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    a = p.parse_args(argv)
    return _cmd_build(a)


if __name__ == "__main__":
    sys.exit(main())
