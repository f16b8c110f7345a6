"""ONNX Runtime backend: one InferenceSession per mode.

Providers: ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` when this onnxruntime build
offers CUDA (onnxruntime-gpu, e.g. the Jetson Zoo wheel), else ``["CPUExecutionProvider"]``.
INT8 runs the bundle's Q/DQ graph as is (ONNX Runtime executes QuantizeLinear/DequantizeLinear).

Integrity: the graph's bytes are read once, their sha256 compared with the digest bundle.yaml
lists, and the session is created FROM THOSE BYTES. So the graph that runs is exactly the one
whose digest ends up in ``info.sha256``, even if the file changed after ``load_bundle`` (or
``load_bundle(..., verify_hashes=False)`` was used). Cost: one sha256 over a few MB at start.

`onnxruntime` is imported inside :func:`load` (never at module import).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from ..digest import sha256_bytes
from .base import (
    OUTPUT_MAP,
    OUTPUT_SCORE,
    EngineError,
    check_io_names,
    finish_outputs,
    graph_rel,
    graph_sha256,
    model_info,
    resolve_input_shape,
    validate_feed,
)

log = logging.getLogger(__name__)

BACKEND = "onnxruntime"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineError("onnxruntime is not installed: pip install 'rgbd-edge[onnx]' (on a Jetson, the "
                          "onnxruntime-gpu wheel for JetPack 6), or use backend 'tensorrt'") from exc
    return onnxruntime


def choose_providers(available) -> list[str]:
    """CUDA then CPU when CUDA is available, else CPU only."""
    return [CUDA_EP, CPU_EP] if CUDA_EP in set(available) else [CPU_EP]


class OnnxRuntimeEngine:
    """One mode's graph in an onnxruntime.InferenceSession (see the module docstring)."""

    def __init__(self, *, mode: str, inputs: tuple[str, ...], info, session, shapes: dict[str, tuple],
                 image_size: int, graph: Path, providers: list[str]):
        self.mode = mode
        self.inputs = inputs
        self.info = info
        self.graph = graph
        self.providers = providers            # what the session actually uses
        self.input_shapes = dict(shapes)
        self._session = session
        self._image_size = image_size
        self._lock = threading.Lock()
        self._outputs = [OUTPUT_MAP, OUTPUT_SCORE]

    def run(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        arrays = validate_feed(feed, self.input_shapes, self.mode)
        with self._lock:
            if self._session is None:
                raise EngineError(f"{self.mode} engine: run() after close()", mode=self.mode)
            try:
                amap, score = self._session.run(self._outputs, arrays)
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
                raise EngineError(f"{self.mode} engine: onnxruntime failed on {self.graph.name}: {exc}",
                                  mode=self.mode) from exc
        return finish_outputs(amap, score, self._image_size, self.mode)

    def close(self) -> None:
        with self._lock:
            self._session = None

    def __repr__(self) -> str:
        return (f"OnnxRuntimeEngine(mode={self.mode!r}, precision={self.info.precision!r}, "
                f"graph={self.graph.name!r}, providers={self.providers})")


def load(bundle, mode_spec, choice, *, intra_op_num_threads: int | None = None,
         providers: list[str] | None = None) -> OnnxRuntimeEngine:
    """An OnnxRuntimeEngine for ``mode_spec`` running the graph ``choice.graph`` (fp32 | int8)."""
    ort = import_onnxruntime()
    mode = mode_spec.name
    path = mode_spec.graph(choice.graph)
    rel = graph_rel(bundle, path)
    want = graph_sha256(bundle, path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EngineError(f"{mode}: cannot read {path}: {exc}", mode=mode) from exc
    have = sha256_bytes(data)
    if have != want:
        raise EngineError(f"{bundle.manifest}: files.{rel}: sha256 mismatch: bundle.yaml lists {want[:12]}..., "
                          f"the file has {have[:12]}... (changed since the bundle was written?); not loading it",
                          mode=mode)

    opts = ort.SessionOptions()
    if intra_op_num_threads is not None:
        if int(intra_op_num_threads) < 0:
            raise EngineError(f"intra_op_num_threads must be >= 0 (0 = onnxruntime's default), "
                              f"got {intra_op_num_threads}", mode=mode)
        opts.intra_op_num_threads = int(intra_op_num_threads)
    opts.log_severity_level = 3  # errors only; ours is the log that matters
    wanted = providers if providers is not None else choose_providers(ort.get_available_providers())
    try:
        session = ort.InferenceSession(data, sess_options=opts, providers=wanted)
    except Exception as exc:
        raise EngineError(f"{mode}: onnxruntime cannot load {path}: {exc}", mode=mode) from exc
    used = list(session.get_providers())
    if CUDA_EP in wanted and CUDA_EP not in used:
        log.warning("mode '%s': CUDAExecutionProvider was requested but the session runs on %s",
                    mode, ", ".join(used))

    where = f"{path}"
    in_names = [i.name for i in session.get_inputs()]
    out_names = [o.name for o in session.get_outputs()]
    check_io_names(in_names, out_names, mode_spec.inputs, mode=mode, where=where)
    shapes = {}
    graph_inputs = {i.name: i for i in session.get_inputs()}
    for name in mode_spec.inputs:
        gi = graph_inputs[name]
        if gi.type != "tensor(float)":
            raise EngineError(f"{where}: input '{name}' is {gi.type}, expected tensor(float)", mode=mode, input=name)
        shapes[name] = resolve_input_shape(name, gi.shape, bundle.image_size, mode=mode, where=where)

    info = model_info(bundle, path, choice.engine, BACKEND)
    log.info("mode '%s': onnxruntime %s, %s graph %s (sha256 %s...), providers %s%s", mode, ort.__version__,
             choice.graph, rel, want[:12], ", ".join(used),
             f", {opts.intra_op_num_threads} intra-op threads" if intra_op_num_threads is not None else "")
    return OnnxRuntimeEngine(mode=mode, inputs=tuple(mode_spec.inputs), info=info, session=session, shapes=shapes,
                             image_size=bundle.image_size, graph=path, providers=used)
