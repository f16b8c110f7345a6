"""`rgbd-convert check-trt MODEL.onnx [--allow-dynamic] [--json]`: argparse and the report printer.

Exit 0: no errors; 1: the graph would not build (or not as exported); 2: unreadable input.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from .driver import ModelReadError, check_file
from .findings import format_finding
from .rules import ERROR, TRT_VERSION


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="ONNX model (fp32 export or INT8 Q/DQ)")
    p.add_argument("--allow-dynamic", action="store_true",
                   help="dynamic input dimensions are warnings instead of errors")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text")


_DESCRIPTION = (f"Static lint of an ONNX graph against the TensorRT {TRT_VERSION} ONNX parser "
                "(JetPack 6). Exit 0: no errors; 1: the graph would not build (or not as exported); "
                "2: unreadable input. The real proof is building the engine on the Jetson.")


def _cmd(a) -> int:
    try:
        findings = check_file(a.model, allow_dynamic=a.allow_dynamic)
    except ModelReadError as exc:
        if a.json:
            print(json.dumps({"model": str(a.model), "ok": False, "error": str(exc)}, indent=2))
        print(f"rgbd-convert check-trt: error: {exc}", file=sys.stderr)
        return 2
    errors = sum(f.severity == ERROR for f in findings)
    warnings = len(findings) - errors
    if a.json:
        print(json.dumps({"model": str(a.model), "tensorrt": TRT_VERSION, "ok": errors == 0,
                          "errors": errors, "warnings": warnings,
                          "findings": [asdict(f) for f in findings]}, indent=2))
    else:
        for f in findings:
            print(format_finding(f))
        verdict = (f"would not build on TensorRT {TRT_VERSION}" if errors
                   else f"no blocking problems found for TensorRT {TRT_VERSION} (static check)")
        print(f"{a.model}: {errors} error(s), {warnings} warning(s): {verdict}")
    return 1 if errors else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `check-trt` on an argparse subparsers object (sets `func`)."""
    p = subparsers.add_parser("check-trt", help="static TensorRT 10.3 compatibility lint of an ONNX model",
                              description=_DESCRIPTION)
    _add_arguments(p)
    p.set_defaults(func=_cmd)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rgbd-convert check-trt", description=_DESCRIPTION)
    _add_arguments(p)
    return _cmd(p.parse_args(argv))
