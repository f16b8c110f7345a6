"""Inference engines for a model bundle: ONNX Runtime or TensorRT, one engine per mode.

    from edge.bundle import load_bundle
    from edge.engines import load_engines, EngineError

    engines = load_engines(load_bundle("/opt/models/cable_gland"), backend="auto", precision="int8")
    amap, score = engines["rgbd"].run({"rgb": x, "depth": d, "foreground": fg})
    for e in engines.values():
        e.close()

See docs/engines.md. This package imports numpy and the standard library only; onnxruntime,
tensorrt, pycuda and cuda-python are imported when a backend needs them. It never imports
`convert` (imports flow convert -> calibrate -> edge).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from .base import (
    BACKEND_CHOICES,
    BACKENDS,
    PRECISIONS,
    Engine,
    EngineError,
    PrecisionChoice,
    choose_precision,
)
from .trt_cache import DEFAULT_WORKSPACE_MIB, TensorRTUnavailableError

__all__ = ["Engine", "EngineError", "load_engines", "resolve_backend", "BACKENDS", "BACKEND_CHOICES", "PRECISIONS",
           "PrecisionChoice", "choose_precision"]

log = logging.getLogger(__name__)


def resolve_backend(backend: str = "auto") -> str:
    """'auto' -> 'tensorrt' when `import tensorrt` works, else 'onnxruntime' (logged)."""
    if backend not in BACKEND_CHOICES:
        raise EngineError(f"unknown backend {backend!r}: use one of {', '.join(BACKEND_CHOICES)}")
    if backend != "auto":
        return backend
    from .trt_cache import import_tensorrt

    try:
        trt = import_tensorrt()
    except TensorRTUnavailableError as exc:
        cause = exc.__cause__
        log.info("backend auto: TensorRT is not importable (%s); using ONNX Runtime",
                 f"{cause.__class__.__name__}: {cause}" if cause else exc)
        return "onnxruntime"
    log.info("backend auto: TensorRT %s imports; using TensorRT", getattr(trt, "__version__", "?"))
    return "tensorrt"


def load_engines(bundle, backend: str = "auto", precision: str = "int8", modes: Sequence[str] | None = None,
                 cache_dir: str | os.PathLike | None = None, build_missing: bool = True, *,
                 cuda: str = "auto", intra_op_num_threads: int | None = None,
                 workspace_mib: int = DEFAULT_WORKSPACE_MIB) -> dict[str, Engine]:
    """One engine per mode of ``bundle`` (an edge.bundle.Bundle, or a bundle directory to load).

    backend: "onnxruntime" | "tensorrt" | "auto" (TensorRT if it imports, else ONNX Runtime).
    precision: "int8" (the bundle's Q/DQ graph; per mode, fp32 with a warning when a mode has
        none) | "fp32" | "fp16" (TensorRT only; ONNX Runtime runs fp32 with a warning).
    modes: the modes to load, default every mode of the bundle, in bundle.yaml order.
    cache_dir: TensorRT engine cache, default the bundle's engines.dir (BUNDLE/engines).
    build_missing: TensorRT builds (and caches) an engine no cached one matches; False raises.
    cuda: "auto" | "pycuda" | "cuda-python" (TensorRT device buffers).
    intra_op_num_threads: ONNX Runtime CPU threads (None: onnxruntime's default).
    workspace_mib: TensorRT builder workspace for engines built here.

    Returns {mode: Engine} in bundle order. Raises EngineError (BundleError when ``bundle`` is a
    directory that does not load); engines loaded before a failure are closed first.
    """
    if not hasattr(bundle, "modes"):
        from ..bundle import load_bundle

        bundle = load_bundle(Path(bundle))
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    wanted = list(dict.fromkeys(modes)) if modes else list(bundle.modes)
    unknown = [m for m in wanted if m not in bundle.modes]
    if unknown:
        raise EngineError(f"{bundle.manifest}: mode(s) {', '.join(unknown)} not in this bundle "
                          f"(available: {', '.join(bundle.modes)})", mode=unknown[0])
    chosen = resolve_backend(backend)

    engines: dict[str, Engine] = {}
    try:
        for m in wanted:
            spec = bundle.modes[m]
            choice = choose_precision(spec, chosen, precision)
            if chosen == "onnxruntime":
                from . import onnxruntime_engine

                engines[m] = onnxruntime_engine.load(bundle, spec, choice, intra_op_num_threads=intra_op_num_threads)
            else:
                from . import tensorrt_engine

                engines[m] = tensorrt_engine.load(bundle, spec, choice, cache_dir=cache_dir,
                                                  build_missing=build_missing, cuda=cuda, workspace_mib=workspace_mib)
    except BaseException:
        for e in engines.values():
            try:
                e.close()
            except Exception:  # already failing: keep the first error
                log.exception("closing the %s engine after a load failure", e.mode)
        raise
    return engines
