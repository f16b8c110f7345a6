"""`rgbd-convert check-trt`: a static lint of an ONNX graph against TensorRT 10.3's ONNX parser.

TensorRT cannot be installed on the workstation, so this package reads the graph and predicts
what the parser on the Jetson (JetPack 6 = TensorRT 10.3) would reject, or build in a way
that differs from what we exported. It is an approximation: the proof is building the
engine on the device. See docs/check-trt.md.

Layout:
  rules.py          op support tables, opset bounds, dtype codes; the sources of every rule
  findings.py       `Finding` and its text form
  walk.py           reading nodes and walking (sub)graphs
  graph.py          `GraphIndex`: producers, consumers, constants, types and shapes
  fold.py           constant folding + per-node shape re-inference behind `GraphIndex`
  opset.py, external_data.py, ops.py, attributes.py (+ resize.py, conv_pool.py), shapes.py,
  int64.py, qdq.py  one module per check
  driver.py         `check_model` / `check_file` / `load_model`: all checks in `CHECKS` order
  cli.py            the `check-trt` subcommand (`add_parser`, `main`)

Public API: `Finding`, `TRT_OPS`, `UNSUPPORTED_OPS`, the `check_*` functions (each returns a
list of findings), `check_model`, `check_file`, `load_model`, `ModelReadError`,
`format_finding`, `add_parser`, `main`.
"""
from __future__ import annotations

from .attributes import check_attributes
from .cli import add_parser, main
from .driver import CHECKS, ModelReadError, check_file, check_model, load_model
from .external_data import check_external_data
from .findings import Finding, format_finding
from .graph import GraphIndex
from .int64 import check_int64
from .opset import check_opset
from .ops import check_ops
from .qdq import check_qdq
from .rules import (DEFAULT_DOMAINS, ERROR, MAX_OPSET, MIN_OPSET, PROJECT_OPSET, TRT_OPS, TRT_VERSION,
                    UNCERTAIN_OPS, UNSUPPORTED_OPS, WARNING)
from .shapes import check_dynamic_shapes
from .walk import default_opset

__all__ = [
    "CHECKS", "DEFAULT_DOMAINS", "ERROR", "MAX_OPSET", "MIN_OPSET", "PROJECT_OPSET", "TRT_OPS",
    "TRT_VERSION", "UNCERTAIN_OPS", "UNSUPPORTED_OPS", "WARNING", "Finding", "GraphIndex",
    "ModelReadError", "add_parser", "check_attributes", "check_dynamic_shapes",
    "check_external_data", "check_file", "check_int64", "check_model", "check_ops", "check_opset",
    "check_qdq", "default_opset", "format_finding", "load_model", "main",
]
