"""Check `ops`: op types outside TensorRT 10.3's parser, custom domains, com.microsoft ops."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .findings import Finding
from .rules import (DEFAULT_DOMAINS, ERROR, MS_FIX, QOPERATOR, QOPERATOR_FIX, TRT_OPS, TRT_VERSION,
                    UNCERTAIN_OPS, UNSUPPORTED_OPS, WARNING)
from .walk import all_nodes

if TYPE_CHECKING:
    from .graph import GraphIndex


def check_ops(model, ctx: GraphIndex | None = None) -> list[Finding]:
    """Op types outside TensorRT 10.3's parser, non-default domains, com.microsoft ops."""
    local_functions = {(f.domain, f.name) for f in model.functions}  # TRT >= 9 inlines these
    out: list[Finding] = []
    for node, label in all_nodes(model):
        op, domain = node.op_type, node.domain
        if (domain, op) in local_functions:
            continue
        if domain in DEFAULT_DOMAINS:
            finding = _default_domain_op(op, label)
            if finding is not None:
                out.append(finding)
        elif domain == "com.microsoft":
            out.append(Finding(ERROR, label, f"{domain}:{op}",
                               f"{op} is an onnxruntime-specific op (com.microsoft); TensorRT cannot "
                               "parse it. It appears when a model is saved after ORT graph "
                               "optimisation or quantised in QOperator format.", MS_FIX, "ops"))
        else:
            out.append(Finding(ERROR, label, f"{domain}:{op}",
                               f"op in custom domain '{domain}' needs a TensorRT plugin; bundles ship "
                               "none [project].",
                               "export it with default-domain (ai.onnx) ops only.", "ops"))
    return out


def _default_domain_op(op: str, label: str) -> Finding | None:
    """None for a supported op; a warning for an unconfirmed one; an error otherwise."""
    if op in TRT_OPS:
        return None
    if op in UNCERTAIN_OPS:
        return Finding(WARNING, label, op, UNCERTAIN_OPS[op] + ".",
                       "decompose it in the export, or confirm by building on the Jetson.", "ops")
    reason = UNSUPPORTED_OPS.get(op, "")
    msg = f"{op} is not supported by the TensorRT {TRT_VERSION} ONNX parser"
    msg += f" ({reason})." if reason else "."
    fix = (QOPERATOR_FIX if reason == QOPERATOR else
           "replace it in the model (or the export) with supported ops; TensorRT plugins "
           "are not part of our bundles.")
    return Finding(ERROR, label, op, msg, fix, "ops")
