"""TensorRT engine cache and build: shared by the runtime (edge.engines) and `rgbd-convert build`.

A TensorRT engine is only valid for the TensorRT version and the GPU it was built on, so
engines are never shipped: the bundle carries ONNX (fp32, and optionally an INT8 Q/DQ
variant per mode) and engines are built where they run, into a cache directory
(the bundle's ``engines.dir``, ``BUNDLE_DIR/engines`` by default, or an explicit cache
directory such as a systemd StateDirectory).

Cache layout (one engine per mode and precision)::

    <cache>/<mode>-<precision>-<key16>.engine       serialized engine (IHostMemory bytes)
    <cache>/<mode>-<precision>-<key16>.engine.json  sidecar: onnx file + sha256, TensorRT version,
                                                    GPU name + compute capability, flags,
                                                    workspace, engine sha256, build time
    <cache>/timing-<trt>-<gpu>-sm<cc>-<tag>.cache   TensorRT timing cache (per TRT version + GPU)
    <cache>/.build.lock                             flock: one builder at a time

``key16`` is the first 16 hex digits of :func:`engine_key`. :func:`find_engine` reuses an
engine only when every identity field in its sidecar matches exactly and the engine file's
sha256 matches the sidecar; anything else is rebuilt (the stale file is left in place and
logged). The engine file is read once: the bytes hashed are the bytes handed to TensorRT
(:func:`read_cached_engine`), so a file swapped after the check can never be deserialised; a
file that does not match its sidecar (swapped or corrupt) is logged as a WARNING, counted in
``CachedEngine.rejected`` and rebuilt (or refused when building is off). :func:`ensure_engine`
is find-or-build, used by both the runtime's first start and `rgbd-convert build`.

The build itself (ONNX -> engine bytes with the TensorRT 10 Python API), the precision names
and the build errors live in edge.engines.trt_builder; this module re-exports them, so
``from edge.engines.trt_cache import build_engine`` (and the rest) is the one import path.

Imports the standard library, edge.digest and edge.engines' base and trt_builder only:
`tensorrt` is imported by :func:`import_tensorrt`, cuda-python or pycuda inside
:func:`gpu_identity`'s probes. Never imports `convert` (`rgbd-convert build` imports this
module, not the other way round).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..digest import sha256_bytes, sha256_file
from .base import EngineError
from .trt_builder import (  # noqa: F401 - the builder's names, imported from here by the runtime and convert
    DEFAULT_WORKSPACE_MIB,
    NO_TENSORRT_HINT,
    EngineBuildError,
    OnnxParseError,
    TensorRTUnavailableError,
    atomic_write,
    build_engine,
    import_tensorrt,
    precision_flags,
    precision_from_args,
    precision_name,
)

log = logging.getLogger(__name__)

DEFAULT_CACHE_SUBDIR = "engines"
SIDECAR_FORMAT = 1
ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"  # appended to the engine file name: <mode>-<precision>-<key16>.engine.json
LOCK_FILE = ".build.lock"
# Board name on Jetson (NUL-terminated); distinguishes e.g. Orin Nano from AGX Orin (both sm_87).
DEVICE_TREE_MODEL = "/proc/device-tree/model"

# --------------------------------------------------------------------------- errors

class EngineNotCachedError(EngineError):
    """No matching engine in the cache, and building was not allowed."""



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
    return sha256_bytes(json.dumps(ident, sort_keys=True).encode())


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


def read_sidecar(path: str | os.PathLike) -> dict | None:
    """The sidecar's JSON object, or None when it is missing or unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class CacheLookup:
    engine: Path | None       # the verified engine file, or None
    data: bytes | None        # its bytes, read once and hashed: what TensorRT may deserialise
    rejected: str | None      # why an engine file that is there was refused (swapped, corrupt)


def read_cached_engine(cache_dir: str | os.PathLike, spec: EngineSpec) -> CacheLookup:
    """The cached engine for ``spec`` and its verified bytes. Reused only when the sidecar exists,
    every identity field in it equals ``spec`` exactly, and the bytes read (once) have the size and
    sha256 the sidecar records."""
    eng = engine_path(cache_dir, spec)
    side = sidecar_path(eng)
    if not eng.is_file():
        return CacheLookup(None, None, None)
    meta = read_sidecar(side)
    if meta is None:
        log.info("%s: no readable sidecar %s; not reusing it", eng.name, side.name)
        return CacheLookup(None, None, None)
    for field, want in spec.identity().items():
        have = meta.get(field)
        if have != want:
            log.info("%s: sidecar field %r is %r, expected %r; not reusing it", eng.name, field, have, want)
            return CacheLookup(None, None, None)
    try:
        with open(eng, "rb") as f:
            data = f.read()
    except OSError as exc:
        log.warning("%s: cannot read the cached engine (%s); not reusing it", eng, exc)
        return CacheLookup(None, None, f"unreadable: {exc}")
    have = sha256_bytes(data)
    if meta.get("engine_bytes") != len(data) or meta.get("engine_sha256") != have:
        reason = (f"{eng.name} has {len(data)} bytes, sha256 {have[:12]}..., its sidecar records "
                  f"{meta.get('engine_bytes')} bytes, sha256 {str(meta.get('engine_sha256'))[:12]}... "
                  f"(replaced, truncated or corrupt)")
        log.warning("engine cache: %s; not loading it", reason)
        return CacheLookup(None, None, reason)
    return CacheLookup(eng, data, None)


def find_engine(cache_dir: str | os.PathLike, spec: EngineSpec) -> Path | None:
    """The cached engine file for ``spec`` when :func:`read_cached_engine` accepts it, or None."""
    return read_cached_engine(cache_dir, spec).engine


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
    tag = sha256_bytes(f"{trt_version}|{gpu.name}|{gpu.compute_capability}".encode())[:8]
    return Path(cache_dir) / f"timing-trt{_slug(trt_version)}-{_slug(gpu.name)}-sm{cc}-{tag}.cache"


@contextlib.contextmanager
def cache_lock(cache_dir: str | os.PathLike):
    """Exclusive flock on ``<cache_dir>/.build.lock`` so the service and a manual build do not
    build into one cache at once. Not re-entrant: do not nest it in one process."""
    try:
        import fcntl
    except ImportError:  # not Linux: no locking
        yield
        return
    path = Path(cache_dir) / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("waiting for another build holding %s", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- find or build

def default_cache_dir(bundle) -> Path:
    """The bundle's ``engines.dir`` if bundle.yaml names one, else BUNDLE_DIR/engines.
    ``bundle``: an edge.bundle.Bundle, or a bundle directory."""
    engines_dir = getattr(bundle, "engines_dir", None)
    if engines_dir is not None:
        return Path(engines_dir)
    root = getattr(bundle, "root", bundle)
    return Path(root) / DEFAULT_CACHE_SUBDIR


def prepare_cache_dir(cache_dir: str | os.PathLike) -> Path:
    """Create the cache directory; EngineBuildError when it cannot be created or written."""
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineBuildError(f"cannot create engine cache directory {cache_dir}: {exc}; use a writable "
                               "cache directory (rgbd-convert build --cache-dir, the runtime's cache_dir, "
                               "e.g. the service's StateDirectory)") from exc
    if not os.access(cache_dir, os.W_OK):
        raise EngineBuildError(f"engine cache directory {cache_dir} is not writable; use a writable cache "
                               "directory (rgbd-convert build --cache-dir, the runtime's cache_dir)")
    return cache_dir


@dataclass(frozen=True)
class CachedEngine:
    spec: EngineSpec
    onnx: Path         # the graph the engine was (or would be) built from
    engine: Path
    sidecar: Path
    built: bool        # False: reused from the cache
    # The engine's bytes as verified (reused) or built, with ensure_engine(keep_bytes=True): the
    # runtime deserialises exactly these and never reads the file again.
    data: bytes | None = field(default=None, repr=False)
    rejected: str | None = None  # a cached file for this spec was refused (why); it was rebuilt


def _log_stale(cache: Path, spec: EngineSpec, tag: str) -> None:
    for old in _stale_engines(cache, spec):
        meta = read_sidecar(sidecar_path(old)) or {}
        diffs = [f"{k} {meta.get(k)!r} -> {v!r}" for k, v in spec.identity().items()
                 if k != "key" and meta.get(k) != v]
        log.info("%s: stale engine %s left in place, not reused (differs: %s)",
                 tag, old.name, "; ".join(diffs) or "unreadable sidecar")


def ensure_engine(onnx: str | os.PathLike, spec: EngineSpec, cache_dir: str | os.PathLike, *,
                  workspace_mib: int = DEFAULT_WORKSPACE_MIB, force: bool = False, build_missing: bool = True,
                  verbose: bool = False, int8_variant: bool = False, tag: str | None = None,
                  lock: bool = True, built_by: str = "rgbd-edge", build_log_level: int = logging.INFO,
                  keep_bytes: bool = False) -> CachedEngine:
    """The engine for ``spec`` from ``cache_dir``, built from ``onnx`` when none matches.

    A cached engine is reused only through :func:`find_engine` (every identity field and the
    engine's own sha256 must match), so an engine for another ONNX, TensorRT version, GPU or
    precision is never reused. ``spec.onnx_sha256`` must be the digest of ``onnx`` (the bundle's
    listed, verified digest); the bytes are re-checked before a build.

    ``build_missing=False``: EngineNotCachedError instead of building. ``lock``: hold the cache's
    flock while looking again and building (pass False when the caller holds it already).
    The build writes the engine and its sidecar atomically, engine first; the line announcing
    it is logged at ``build_log_level`` (the runtime uses WARNING: a build takes minutes).
    ``keep_bytes``: return the verified (or built) bytes in ``CachedEngine.data``.
    """
    onnx = Path(onnx)
    cache = Path(cache_dir)
    tag = tag or spec.mode
    precision = precision_name(spec.flags)
    found = CacheLookup(None, None, None) if force else read_cached_engine(cache, spec)
    if found.engine is not None:
        return _reused(spec, onnx, found, workspace_mib, tag, keep_bytes)
    rejected = found.rejected
    if not build_missing:
        refused = f" (the cached file was refused: {rejected})" if rejected else ""
        raise EngineNotCachedError(
            f"no cached {precision} engine for mode '{spec.mode}' in {cache} matching ONNX sha256 "
            f"{spec.onnx_sha256[:12]}..., TensorRT {spec.tensorrt_version}, GPU {spec.gpu_name} (sm "
            f"{spec.compute_capability}){refused}; build it on this device (rgbd-convert build) or allow building")
    prepare_cache_dir(cache)
    with (cache_lock(cache) if lock else contextlib.nullcontext()):
        if not force:  # another process may have built it while we waited for the lock
            found = read_cached_engine(cache, spec)
            if found.engine is not None:
                return _reused(spec, onnx, found, workspace_mib, tag, keep_bytes)
        built = _build(onnx, spec, cache, workspace_mib=workspace_mib, force=force, verbose=verbose,
                       int8_variant=int8_variant, tag=tag, built_by=built_by, level=build_log_level)
    return CachedEngine(built.spec, built.onnx, built.engine, built.sidecar, built=True,
                        data=built.data if keep_bytes else None, rejected=rejected or found.rejected)


def _reused(spec: EngineSpec, onnx: Path, found: CacheLookup, workspace_mib: int, tag: str,
            keep_bytes: bool) -> CachedEngine:
    engine = found.engine
    meta = read_sidecar(sidecar_path(engine)) or {}
    if meta.get("workspace_mib") not in (None, workspace_mib):
        log.info("%s: cached engine was built with workspace %s MiB (now %d); rgbd-convert build --force rebuilds it",
                 tag, meta.get("workspace_mib"), workspace_mib)
    log.info("%s: reusing cached %s engine %s", tag, precision_name(spec.flags), engine)
    return CachedEngine(spec, onnx, engine, sidecar_path(engine), built=False, data=found.data if keep_bytes else None)


def _build(onnx: Path, spec: EngineSpec, cache: Path, *, workspace_mib: int, force: bool, verbose: bool,
           int8_variant: bool, tag: str, built_by: str, level: int = logging.INFO) -> CachedEngine:
    precision = precision_name(spec.flags)
    gpu = GpuIdentity(spec.gpu_name, spec.compute_capability)
    tcache = timing_cache_path(cache, spec.tensorrt_version, gpu)
    eng = engine_path(cache, spec)
    _log_stale(cache, spec, tag)
    log.log(level, "%s: building %s engine from %s (sha256 %s…) for TensorRT %s on %s (sm %s)%s; this takes "
            "minutes on a Jetson", tag, precision, onnx.name, spec.onnx_sha256[:12], spec.tensorrt_version,
            spec.gpu_name, spec.compute_capability, " [force]" if force else "")
    t0 = time.monotonic()
    blob = build_engine(onnx, precision, workspace_mib, tcache, verbose=verbose, expected_sha256=spec.onnx_sha256)
    seconds = time.monotonic() - t0
    atomic_write(eng, blob)
    meta = spec.identity()
    meta.update({
        "onnx_file": onnx.name,
        "onnx_path": str(onnx.resolve()),
        "onnx_int8_variant": bool(int8_variant),
        "workspace_mib": int(workspace_mib),
        "engine_file": eng.name,
        "engine_bytes": len(blob),
        "engine_sha256": sha256_bytes(blob),
        "timing_cache": tcache.name,
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
        "built_by": built_by,
        "python": sys.version.split()[0],
    })
    atomic_write(sidecar_path(eng), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    log.info("%s: built in %.1f s -> %s (%.1f MiB)", tag, seconds, eng, len(blob) / (1 << 20))
    return CachedEngine(spec, onnx, eng, sidecar_path(eng), built=True, data=blob)
