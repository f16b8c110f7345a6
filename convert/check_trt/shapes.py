"""Check `shapes`: static graph inputs, and where an intermediate shape stops being static.

Our engines are built with fixed shapes, so a symbolic or <= 0 input dimension is an error
(a warning with --allow-dynamic: the builder then needs an optimisation profile). Inside the
graph only the node where a shape is lost is reported, with a count of what inherits it.
"""
from __future__ import annotations

from .findings import Finding, format_shape
from .graph import GraphIndex, index_for
from .rules import DEFAULT_DOMAINS, ERROR, WARNING


def check_dynamic_shapes(model, ctx: GraphIndex | None = None, allow_dynamic: bool = False) -> list[Finding]:
    """Graph inputs must be fully static (symbolic / <= 0 dims are errors unless allow_dynamic);
    intermediate tensors whose shape onnx shape inference cannot pin down are warnings."""
    ctx = index_for(model, ctx)
    out = _input_findings(ctx, allow_dynamic)
    if ctx.shape_inference_error:
        out.append(Finding(WARNING, ctx.graph.name or "<graph>", "model",
                           f"onnx shape inference failed ({ctx.shape_inference_error}); shapes were "
                           "not checked.", "run onnx.checker.check_model and fix the graph.", "shapes"))
        return out
    return out + _lost_shape_findings(ctx)


def _input_findings(ctx: GraphIndex, allow_dynamic: bool) -> list[Finding]:
    out: list[Finding] = []
    sev = WARNING if allow_dynamic else ERROR
    for name in ctx.input_names:
        s = ctx.shape(name)
        if s is None:
            out.append(Finding(sev, name, "graph input", "the input has no declared shape.",
                               "export with a fixed input shape (our engines are static).", "shapes"))
            continue
        bad = [i for i, d in enumerate(s) if not isinstance(d, int) or d <= 0]
        if bad:
            dims = ", ".join(f"dim {i}={s[i] if s[i] is not None else '?'}" for i in bad)
            fix = ("build with an optimisation profile (min/opt/max) on the Jetson." if allow_dynamic
                   else "export without dynamic_axes (fixed batch 1 and image size), or pass "
                        "--allow-dynamic and give trtexec/the builder an optimisation profile.")
            out.append(Finding(sev, name, "graph input", f"dynamic shape {format_shape(s)} ({dims}).",
                               fix, "shapes"))
    return out


def _unstatic_outputs(ctx: GraphIndex) -> set[str]:
    """Node outputs with an unknown dimension or a symbol that is not one of the inputs'."""
    def unstatic(name: str) -> bool:
        s = ctx.shape(name)
        return s is None or any(d is None or (isinstance(d, str) and d not in ctx.input_symbols)
                                for d in s)

    return {o for n in ctx.nodes if n.domain in DEFAULT_DOMAINS for o in n.output
            if o and o not in ctx.input_names and unstatic(o)}


def _lost_shape_findings(ctx: GraphIndex) -> list[Finding]:
    out: list[Finding] = []
    bad = _unstatic_outputs(ctx)
    for node in ctx.nodes:
        if node.domain not in DEFAULT_DOMAINS or node.op_type == "Constant":
            continue
        if any(i in bad or (i in ctx.producer and ctx.producer[i].domain not in DEFAULT_DOMAINS)
               for i in node.input if i):
            continue  # not where the shape got lost: an input was already unknown
        for o in node.output:
            if o not in bad:
                continue
            s = ctx.shape(o)
            why = ("its shape could not be inferred statically" if s is None
                   else f"its shape {format_shape(s)} has dimensions that are not static")
            downstream = _count_downstream(ctx, o, bad)
            more = f"; {downstream} tensor(s) downstream inherit it" if downstream else ""
            out.append(Finding(WARNING, ctx.label(node), node.op_type, f"output '{o}': {why}{more}.",
                               "make shapes static at export (constant-fold shape arithmetic, e.g. "
                               "polygraphy surgeon sanitize --fold-constants).", "shapes"))
    return out


def _count_downstream(ctx: GraphIndex, start: str, bad: set[str]) -> int:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for node, _ in ctx.consumers.get(stack.pop(), []):
            for o in node.output:
                if o in bad and o not in seen:
                    seen.add(o)
                    stack.append(o)
    return len(seen)
