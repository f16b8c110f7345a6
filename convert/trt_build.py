"""`rgbd-convert build`: TensorRT engines from a model bundle's ONNX files, built ON THE JETSON.

A TensorRT engine is only valid for the TensorRT version and the GPU it was built on, so
engines are never shipped: the bundle carries ONNX (fp32, and optionally an INT8 Q/DQ
variant per mode) and this command builds engines where they run, into a cache directory
(the bundle's ``engines.dir``, ``BUNDLE_DIR/engines`` by default, or ``--cache-dir``, e.g. a
systemd StateDirectory). The runtime (`edge.engines.load_engines`) uses the same cache and
builds a missing engine itself on first start; this command builds ahead of time.

The cache, its keys and sidecars, the timing cache and the TensorRT 10 build live in
:mod:`edge.engines.trt_cache` (the runtime needs them and `edge` never imports `convert`);
their names are re-exported here. This module adds the bundle loop, `--print-trtexec` (the
equivalent ``trtexec`` command lines, which work on any machine) and the CLI.

The bundle is read with :func:`edge.bundle.load_bundle`, which checks it completely (schema,
files, every sha256) before anything is built; engines are keyed by the verified digests.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edge.bundle import Bundle, BundleError, load_bundle
from edge.digest import sha256_file
from edge.modes import MODES
from edge.engines.trt_cache import (  # noqa: F401 - re-exported: the public API of `rgbd-convert build`
    DEFAULT_CACHE_SUBDIR,
    DEFAULT_WORKSPACE_MIB,
    DEVICE_TREE_MODEL,
    ENGINE_SUFFIX,
    LOCK_FILE,
    NO_TENSORRT_HINT,
    SIDECAR_FORMAT,
    SIDECAR_SUFFIX,
    CachedEngine,
    EngineBuildError,
    EngineNotCachedError,
    EngineSpec,
    GpuIdentity,
    OnnxParseError,
    TensorRTUnavailableError,
    build_engine,
    cache_lock,
    default_cache_dir,
    engine_key,
    engine_path,
    ensure_engine,
    find_engine,
    gpu_identity,
    import_tensorrt,
    precision_flags,
    precision_from_args,
    precision_name,
    prepare_cache_dir,
    read_sidecar,
    sidecar_path,
    timing_cache_path,
)

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.yaml"
# JetPack installs trtexec here, not on PATH.
JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


# --------------------------------------------------------------------------- bundle

@dataclass(frozen=True)
class ModeSource:
    mode: str
    onnx: Path               # the file to build from (the INT8 variant when asked)
    int8_variant: bool
    sha256: str = ""         # its digest as listed (and verified) in bundle.yaml


def _as_bundle(bundle: Bundle | str | os.PathLike) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


def resolve_mode_sources(bundle: Bundle | str | os.PathLike, modes: Sequence[str] | None,
                         int8: bool) -> list[ModeSource]:
    """The ONNX file for each requested mode (default: every mode in bundle.yaml, in its order).
    With ``int8`` the mode's ``onnx_int8`` is used and must exist. ``bundle``: a loaded Bundle
    or a directory (loaded and fully checked with edge.bundle.load_bundle; BundleError)."""
    b = _as_bundle(bundle)
    wanted = list(dict.fromkeys(modes)) if modes else list(b.modes)
    out = []
    for m in wanted:
        if m not in b.modes:
            raise BundleError(f"{b.manifest}: mode '{m}' is not in 'modes' (has: {', '.join(b.modes)})",
                              key=f"modes.{m}")
        spec = b.modes[m]
        if int8 and spec.onnx_int8 is None:
            raise BundleError(
                f"--int8 asked, but mode '{m}' has no INT8 ONNX ('modes.{m}.onnx_int8' missing in "
                f"{b.manifest}); run rgbd-calibrate to produce the Q/DQ model, or build '{m}' without --int8",
                key=f"modes.{m}.onnx_int8")
        onnx = spec.graph("int8" if int8 else "fp32")
        rel = onnx.relative_to(b.root).as_posix()
        out.append(ModeSource(mode=m, onnx=onnx, int8_variant=int8, sha256=b.files[rel]))
    return out


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


def build_bundle(bundle_dir: Bundle | str | os.PathLike, modes: Sequence[str] | None = None, *, fp16: bool = False,
                 int8: bool = False, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                 cache_dir: str | os.PathLike | None = None, force: bool = False,
                 verbose: bool = False) -> list[BuildResult]:
    """Build (or reuse from the cache) one engine per mode of the bundle."""
    bundle = _as_bundle(bundle_dir)  # every bundle error before touching TensorRT
    precision = precision_from_args(fp16, int8)
    sources = resolve_mode_sources(bundle, modes, int8)
    trt = import_tensorrt()
    trt_version = str(trt.__version__)
    gpu = gpu_identity()
    cache = prepare_cache_dir(Path(cache_dir) if cache_dir else default_cache_dir(bundle))
    if int8 and not fp16:
        log.info("--int8 without --fp16: layers outside the Q/DQ regions run in FP32")
    log.info("TensorRT %s, GPU %s (compute %s), precision %s, workspace %d MiB, cache %s",
             trt_version, gpu.name, gpu.compute_capability, precision, workspace_mib, cache)

    results = []
    n = len(sources)
    with cache_lock(cache):
        for i, src in enumerate(sources, 1):
            spec = EngineSpec(mode=src.mode, precision=precision, onnx_sha256=src.sha256,
                              tensorrt_version=trt_version, gpu_name=gpu.name,
                              compute_capability=gpu.compute_capability)
            got = ensure_engine(src.onnx, spec, cache, workspace_mib=workspace_mib, force=force, verbose=verbose,
                                int8_variant=src.int8_variant, tag=f"[{i}/{n}] {src.mode}", lock=False,
                                built_by="rgbd-convert build")
            results.append(BuildResult(src.mode, precision, src.onnx, got.engine, got.sidecar, built=got.built))
    return results


def print_trtexec(bundle_dir: Bundle | str | os.PathLike, modes: Sequence[str] | None = None, *, fp16: bool = False,
                  int8: bool = False, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                  cache_dir: str | os.PathLike | None = None, verbose: bool = False, file=None) -> list[str]:
    """Print one trtexec command per mode; needs no TensorRT. Engines built this way carry no
    sidecar, so neither `rgbd-convert build` nor the runtime picks them up from the cache."""
    file = file or sys.stdout
    bundle = _as_bundle(bundle_dir)
    precision = precision_from_args(fp16, int8)
    sources = resolve_mode_sources(bundle, modes, int8)
    cache = Path(cache_dir) if cache_dir else default_cache_dir(bundle)
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
    p.add_argument("--cache-dir", help="engine cache directory (default: the bundle's engines.dir, else "
                                       "BUNDLE/engines; for a systemd service, its StateDirectory)")
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
