"""ONNX export: one static graph per deployable mode.

Why one file per mode rather than one graph with a mode input: each graph
computes only what its mode needs (the RGB-only graph never runs the depth
teacher), shapes stay static so TensorRT builds one optimal engine per mode,
and the runtime's fallback is a switch between already-built engines, not a
branch inside one. The cost is three files sharing the teacher's weights
(a few MB each).

Each graph holds everything from preprocessed tensors to outputs: teacher,
students, cosine distance, upsampling, Gaussian smoothing (a fixed
convolution), foreground masking, normalisation and fusion, and the image
score. Inputs and outputs (batch 1, S = image size):

    rgb         float32 [1, 3, S, S]  normalised RGB          (rgbd, rgb)
    depth       float32 [1, 3, S, S]  encoded depth           (rgbd, depth)
    foreground  float32 [1, 1, S, S]  part mask from depth    (rgbd, depth)
    anomaly_map float32 [1, 1, S, S]  fused, normalised map
    score       float32 [1]           image score (max of the map)
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
import torch.nn as nn

from edge.digest import sha256_file
from edge.modes import MODE_INPUTS, MODES

OPSET = 17
OUTPUTS = ("anomaly_map", "score")


class ModeGraph(nn.Module):
    """The model fixed to one mode, with positional inputs in MODE_INPUTS order."""

    def __init__(self, model: nn.Module, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model, self.mode = model.eval(), mode

    def forward(self, *inputs):
        named = dict(zip(MODE_INPUTS[self.mode], inputs))
        fused, score, _ = self.model(named.get("rgb"), named.get("depth"), named.get("foreground"), self.mode)
        return fused, score


def example_inputs(mode: str, size: int, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"rgb": (batch, 3, size, size), "depth": (batch, 3, size, size), "foreground": (batch, 1, size, size)}
    out = {k: rng.standard_normal(shapes[k]).astype(np.float32) for k in MODE_INPUTS[mode]}
    if "foreground" in out:
        out["foreground"] = (out["foreground"] > 0).astype(np.float32)
    return out


def export_mode(model: nn.Module, mode: str, size: int, path: str | Path, dynamic_batch: bool = False) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ModeGraph(model, mode)
    args = tuple(torch.from_numpy(v) for v in example_inputs(mode, size).values())
    axes = None
    if dynamic_batch:
        axes = {n: {0: "batch"} for n in (*MODE_INPUTS[mode], *OUTPUTS)}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer notes that torch's reflect-pad decomposition cannot be folded;
        # simplify() below folds it.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        # The TorchScript exporter is deprecated in favour of torch.export, which needs
        # onnxscript and emits a different graph; it is still complete in torch 2.13.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX export")
        torch.onnx.export(
            graph, args, str(path), input_names=list(MODE_INPUTS[mode]), output_names=list(OUTPUTS),
            opset_version=OPSET, do_constant_folding=True, dynamic_axes=axes, dynamo=False,
        )
    m = simplify(onnx.load(str(path)))
    onnx.checker.check_model(m, full_check=True)
    m.doc_string = f"rgbd-edge {mode} graph; inputs {MODE_INPUTS[mode]}, outputs {OUTPUTS}"
    onnx.save(m, str(path))  # single file: weights are small, no external data
    return path


def simplify(model):
    """Constant folding and Conv/BN/Pad fusion by ONNX Runtime's *basic* level.

    The basic level rewrites with standard ONNX ops only, so the result stays
    portable to TensorRT; it removes the shape plumbing torch emits around pads
    (int64 Slice/Concat/ConstantOfShape chains) that TensorRT would otherwise
    have to swallow.
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        out = onnx.load(str(dst))
    used = {n.domain for n in out.graph.node}
    keep = [o for o in out.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def ort_session(path: str | Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def parity(model: nn.Module, mode: str, onnx_path: str | Path, batches: list[dict[str, np.ndarray]]) -> dict:
    """Max abs difference between torch and ONNX Runtime on the given inputs."""
    sess = ort_session(onnx_path)
    graph = ModeGraph(model, mode)
    dmap = dscore = scale = 0.0
    for feed in batches:
        feed = {k: feed[k] for k in MODE_INPUTS[mode]}
        with torch.no_grad():
            t_map, t_score = graph(*(torch.from_numpy(v) for v in feed.values()))
        o_map, o_score = sess.run(list(OUTPUTS), feed)
        dmap = max(dmap, float(np.abs(o_map - t_map.numpy()).max()))
        dscore = max(dscore, float(np.abs(o_score - t_score.numpy()).max()))
        scale = max(scale, float(np.abs(t_map.numpy()).max()))
    # map_scale: float32 rounding grows with the magnitude of the (standardised) map.
    return {"mode": mode, "max_abs_map": dmap, "max_abs_score": dscore, "map_scale": scale, "n": len(batches)}


def parity_ok(p: dict, tol: float = 1e-4) -> bool:
    """Differences within tol, relative to the map's magnitude where that exceeds 1."""
    s = max(1.0, p.get("map_scale", 1.0))
    return p["max_abs_map"] <= tol * s and p["max_abs_score"] <= tol * s


def export_run(run_dir, out_dir, modes=MODES, dynamic_batch: bool = False, check_data=None, progress: bool = True) -> dict:
    """Export every mode of a run; with check_data, verify parity on its real samples."""
    from calibrate.dataset import load_normal_raw, prepare
    from .train import load_run

    model, params, run = load_run(run_dir)
    out_dir = Path(out_dir)
    manifest = {"model": run["model"], "image_size": params.image_size, "opset": OPSET, "modes": {}}
    out_dir.mkdir(parents=True, exist_ok=True)
    # The graphs start at preprocessed tensors: calibration and the runtime need these parameters.
    (out_dir / "preprocess.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    samples = None
    if check_data is not None:
        raw, _ = load_normal_raw(check_data, progress)
        prep = prepare(raw[:8], params, progress)
        samples = [prep.feed(i) for i in range(len(prep))]
    for mode in modes:
        path = export_mode(model, mode, params.image_size, out_dir / f"{mode}.onnx")
        entry = {"onnx": path.name, "sha256": sha256_file(path), "inputs": list(MODE_INPUTS[mode]), "outputs": list(OUTPUTS)}
        if dynamic_batch:
            dyn = export_mode(model, mode, params.image_size, out_dir / f"{mode}.dynbatch.onnx", dynamic_batch=True)
            entry["onnx_dynamic_batch"] = dyn.name
        if samples is not None:
            entry["parity"] = parity(model, mode, path, samples)
        manifest["modes"][mode] = entry
    (out_dir / "export.json").write_text(json.dumps(manifest, indent=2))
    return manifest
