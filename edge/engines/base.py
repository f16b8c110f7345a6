"""What every inference engine offers the daemon, and the checks both backends share.

An engine runs ONE mode's graph (rgbd | rgb | depth) of a model bundle:

    amap, score = engine.run({"rgb": x_rgb, "depth": x_depth, "foreground": fg})

``feed`` holds exactly the mode's inputs (``engine.inputs``), float32, batch 1, the shapes the
graph was exported with (rgb and depth [1, 3, S, S], foreground [1, 1, S, S]). ``run`` returns
the anomaly map as a fresh S x S float32 array (the caller may keep it) and the image score as
a Python float. Every problem is an :class:`EngineError` naming the mode and the input or file.

This module imports numpy and the standard library only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..results import ModelInfo

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt")
BACKEND_CHOICES = ("auto",) + BACKENDS
PRECISIONS = ("int8", "fp32", "fp16")   # what load_engines accepts
GRAPH_PRECISIONS = ("fp32", "int8")      # what a bundle ships (edge.bundle.PRECISIONS)
OUTPUT_MAP = "anomaly_map"
OUTPUT_SCORE = "score"

# Channels per graph input (convert/export.py writes these; edge/preprocess.py produces them).
# Used only to resolve a dimension the graph leaves symbolic; static graph dimensions win.
INPUT_CHANNELS = {"rgb": 3, "depth": 3, "foreground": 1}


class EngineError(RuntimeError):
    """The engine could not be loaded or could not run. ``mode`` and ``input`` (the offending
    input name) are set when known, for programs; the message always names them."""

    def __init__(self, message: str, *, mode: str | None = None, input: str | None = None):  # noqa: A002
        super().__init__(message)
        self.mode = mode
        self.input = input


@runtime_checkable
class Engine(Protocol):
    mode: str                       # rgbd | rgb | depth
    inputs: tuple[str, ...]         # the feed's names, e.g. ("rgb", "depth", "foreground")
    info: ModelInfo                 # name, version, sha256 of the ONNX, precision, engine

    def run(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        """(anomaly map S x S float32, image score)."""
        ...

    def close(self) -> None:
        ...


# --------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class PrecisionChoice:
    graph: str        # the bundle graph to use: fp32 | int8
    engine: str       # what the engine runs: fp32 | fp16 | int8 (ModelInfo.precision)
    notes: tuple[str, ...] = ()  # warnings already logged, for callers and tests


def choose_precision(mode_spec, backend: str, precision: str) -> PrecisionChoice:
    """Which bundle graph a mode runs and at which engine precision, logging every fallback.

    int8: the mode's Q/DQ graph; a mode without one falls back to fp32 (warning).
    fp16: TensorRT builds the fp32 graph with BuilderFlag.FP16; ONNX Runtime runs fp32 (warning).
    fp32: the fp32 graph.
    A warning also says when the threshold was calibrated with another graph than the one used.
    """
    name = mode_spec.name
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}", mode=name)
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}: use one of {', '.join(BACKEND_CHOICES)}", mode=name)
    notes = []
    if precision == "int8":
        if mode_spec.onnx_int8 is not None:
            graph, engine = "int8", "int8"
        else:
            graph, engine = "fp32", "fp32"
            notes.append(f"mode '{name}': precision int8 asked, but the bundle has no INT8 graph for this mode "
                         f"(modes.{name}.onnx_int8); running the fp32 graph instead")
    elif precision == "fp16":
        graph = "fp32"
        if backend == "tensorrt":
            engine = "fp16"
        else:
            engine = "fp32"
            notes.append(f"mode '{name}': precision fp16 is TensorRT-only; ONNX Runtime runs the fp32 graph")
    else:
        graph, engine = "fp32", "fp32"
    calibrated = mode_spec.threshold.precision
    if calibrated != graph:
        notes.append(f"mode '{name}': its threshold was computed with the {calibrated} graph, but the "
                     f"{graph} graph runs: scores are not calibrated for this threshold")
    for n in notes:
        log.warning("%s", n)
    if engine == "fp16" and calibrated == "fp32":
        log.info("mode '%s': fp16 engine with a threshold computed in fp32; scores may shift slightly", name)
    return PrecisionChoice(graph=graph, engine=engine, notes=tuple(notes))


# --------------------------------------------------------------------------- shapes


def _is_static(d) -> bool:
    return isinstance(d, (int, np.integer)) and not isinstance(d, bool) and int(d) > 0


def resolve_input_shape(name: str, graph_shape: Sequence, image_size: int, *, mode: str, where: str) -> tuple:
    """The batch-1 shape to feed ``name``: the graph's static dimensions; symbolic or -1 ones
    resolved (batch -> 1, channels -> INPUT_CHANNELS, H and W -> image_size). Raises EngineError
    when the graph's rank or static size disagrees with the bundle."""
    dims = list(graph_shape)
    if len(dims) != 4:
        raise EngineError(f"{where}: input '{name}' has rank {len(dims)} {tuple(dims)}; expected [1, C, S, S]",
                          mode=mode, input=name)
    fill = (1, INPUT_CHANNELS.get(name), image_size, image_size)
    out = []
    for axis, (d, default) in enumerate(zip(dims, fill)):
        if _is_static(d):
            out.append(int(d))
        elif default is None:
            raise EngineError(f"{where}: input '{name}' has a symbolic channel dimension and no known default",
                              mode=mode, input=name)
        else:
            out.append(default)
    shape = tuple(out)
    if shape[0] != 1:
        raise EngineError(f"{where}: input '{name}' has batch {shape[0]}; the runtime feeds batch 1",
                          mode=mode, input=name)
    if shape[2:] != (image_size, image_size):
        raise EngineError(f"{where}: input '{name}' is {shape[2]}x{shape[3]}, but the bundle's input.image_size "
                          f"is {image_size}", mode=mode, input=name)
    return shape


def check_io_names(inputs: Sequence[str], outputs: Sequence[str], want_inputs: Sequence[str], *,
                   mode: str, where: str) -> None:
    """The graph/engine takes exactly the mode's inputs and produces anomaly_map and score."""
    if set(inputs) != set(want_inputs) or len(inputs) != len(want_inputs):
        raise EngineError(f"{where}: inputs are [{', '.join(inputs)}], but mode '{mode}' takes "
                          f"[{', '.join(want_inputs)}]", mode=mode)
    missing = [o for o in (OUTPUT_MAP, OUTPUT_SCORE) if o not in outputs]
    if missing:
        raise EngineError(f"{where}: has no output {', '.join(repr(m) for m in missing)} "
                          f"(outputs: {', '.join(outputs)})", mode=mode)


# --------------------------------------------------------------------------- run() helpers


def validate_feed(feed: Mapping[str, np.ndarray], shapes: Mapping[str, tuple], mode: str) -> dict[str, np.ndarray]:
    """The feed as C-contiguous float32 arrays in ``shapes`` order; EngineError naming the bad input.

    Exactly the names in ``shapes``; each a numpy float32 array of exactly that shape. Nothing
    is converted silently (a float64 or a wrong size is a bug upstream, not something to guess).
    """
    names = tuple(shapes)
    takes = f"mode '{mode}' takes {', '.join(names)}"
    if not isinstance(feed, Mapping):
        raise EngineError(f"{mode} engine: feed must be a dict of input name -> array, got "
                          f"{type(feed).__name__}", mode=mode)
    for name in feed:
        if name not in shapes:
            raise EngineError(f"{mode} engine: unexpected input {name!r} ({takes})", mode=mode, input=str(name))
    out = {}
    for name in names:
        if name not in feed:
            raise EngineError(f"{mode} engine: missing input '{name}' ({takes})", mode=mode, input=name)
        a = feed[name]
        if not isinstance(a, np.ndarray):
            raise EngineError(f"{mode} engine: input '{name}' must be a numpy array, got {type(a).__name__}",
                              mode=mode, input=name)
        if a.dtype != np.float32:
            raise EngineError(f"{mode} engine: input '{name}' has dtype {a.dtype}, expected float32",
                              mode=mode, input=name)
        if a.shape != tuple(shapes[name]):
            raise EngineError(f"{mode} engine: input '{name}' has shape {tuple(a.shape)}, expected "
                              f"{tuple(shapes[name])}", mode=mode, input=name)
        out[name] = np.ascontiguousarray(a)
    return out


def finish_outputs(amap: np.ndarray, score: np.ndarray, image_size: int, mode: str) -> tuple[np.ndarray, float]:
    """(S x S float32 copy of the map, float score) from the raw outputs."""
    s = image_size
    if amap.size != s * s:
        raise EngineError(f"{mode} engine: output '{OUTPUT_MAP}' has shape {tuple(amap.shape)}, expected "
                          f"[1, 1, {s}, {s}]", mode=mode)
    if np.size(score) != 1:
        raise EngineError(f"{mode} engine: output '{OUTPUT_SCORE}' has shape {tuple(np.shape(score))}, expected [1]",
                          mode=mode)
    out = np.array(amap, dtype=np.float32, copy=True).reshape(s, s)
    return out, float(np.asarray(score).reshape(-1)[0])


def model_info(bundle, graph_path, precision: str, engine: str) -> ModelInfo:
    """ModelInfo for a graph of ``bundle`` (sha256 as listed in bundle.files)."""
    return ModelInfo(name=bundle.model_name, version=bundle.model_version, sha256=graph_sha256(bundle, graph_path),
                     precision=precision, engine=engine)


def graph_rel(bundle, graph_path) -> str:
    return Path(graph_path).relative_to(bundle.root).as_posix()


def graph_sha256(bundle, graph_path) -> str:
    """The digest bundle.yaml lists for a graph (load_bundle guarantees every graph is listed)."""
    rel = graph_rel(bundle, graph_path)
    try:
        return bundle.files[rel]
    except KeyError:
        raise EngineError(f"{bundle.manifest}: {rel} is not listed in 'files'") from None
