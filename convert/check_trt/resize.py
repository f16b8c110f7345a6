"""Check `attributes`, Resize and Upsample: the modes and axes TensorRT 10.3's importer accepts.

Source: [ops] Resize row + [import] DEFINE_BUILTIN_OP_IMPORTER(Resize) (see rules.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .findings import Finding, attribute_finding as _f
from .rules import ERROR, NEAREST_MODES, RESIZE_CTM, WARNING
from .walk import attr, attr_str, node_input

if TYPE_CHECKING:
    from .graph import GraphIndex


def resize_rules(node, ctx: GraphIndex) -> list[Finding]:
    mode = attr_str(node, "mode", "nearest")
    return _resize_modes(node, ctx, mode) + _resized_axes(node, ctx, mode)


def _resize_modes(node, ctx: GraphIndex, mode: str) -> list[Finding]:
    """coordinate_transformation_mode, mode, nearest_mode, antialias, keep_aspect_ratio_policy."""
    out = []
    ctm = attr_str(node, "coordinate_transformation_mode", "half_pixel")
    nearest = attr_str(node, "nearest_mode", "round_prefer_floor")
    if ctm not in RESIZE_CTM:
        out.append(_f(ERROR, ctx, node, f"coordinate_transformation_mode '{ctm}' is not supported "
                      f"(TensorRT supports {', '.join(sorted(RESIZE_CTM))}).",
                      "use F.interpolate without crop/roi (half_pixel or align_corners)."))
    if mode == "cubic":
        out.append(_f(WARNING, ctx, node, "mode 'cubic' is not in the documented Resize modes "
                      "(nearest, linear); the importer maps it to cubic on at most the 2 innermost axes.",
                      "prefer mode 'linear' (bilinear), or confirm on the Jetson."))
    elif mode not in ("nearest", "linear"):
        out.append(_f(ERROR, ctx, node, f"Resize mode '{mode}' is not supported.",
                      "use 'nearest' or 'linear'."))
    if mode == "nearest" and nearest not in NEAREST_MODES:
        out.append(_f(ERROR, ctx, node, f"nearest_mode '{nearest}' is not supported.",
                      f"use one of {', '.join(sorted(NEAREST_MODES))}."))
    if attr(node, "antialias", 0):
        out.append(_f(ERROR, ctx, node, "antialias=1 is not supported.",
                      "export with antialias=False."))
    policy = attr_str(node, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        out.append(_f(ERROR, ctx, node, f"keep_aspect_ratio_policy '{policy}' is not supported "
                      "(only 'stretch').", "pass explicit sizes/scales instead."))
    return out


def _resized_axes(node, ctx: GraphIndex, mode: str) -> list[Finding]:
    """How many axes are actually resized: linear <= 3 innermost, cubic <= 2 innermost."""
    out = []
    limit = {"linear": 3, "cubic": 2}.get(mode)
    scales = ctx.static_value(node_input(node, 2)) if node_input(node, 2) else None
    in_shape = ctx.static_shape(node_input(node, 0))
    sizes = ctx.static_value(node_input(node, 3)) if node_input(node, 3) else None
    axes = attr(node, "axes", None)
    ratios = None
    if scales is not None and scales.size:
        ratios = [float(s) for s in scales.reshape(-1)]
    elif sizes is not None and sizes.size and in_shape is not None:
        ratios = [float(s) / d if d else 1.0 for s, d in zip(sizes.reshape(-1), in_shape)] \
            if axes is None else None
    if limit and ratios is not None and axes is None:
        outer = ratios[:-limit] if len(ratios) > limit else []
        if any(abs(r - 1.0) > 1e-9 for r in outer):
            out.append(_f(ERROR, ctx, node, f"{mode} resize changes an axis outside the {limit} "
                          f"innermost ones (scales {ratios}); TensorRT cannot do that.",
                          "resize only the spatial axes (N and C scale 1)."))
    if axes is not None and list(axes) != list(range(len(axes))) and node_input(node, 2) \
            and scales is None:
        out.append(_f(ERROR, ctx, node, "`axes` with a runtime `scales` tensor must be 0..rank-1.",
                      "make scales a constant or drop `axes`."))
    return out


def upsample_rules(node, ctx: GraphIndex) -> list[Finding]:
    return [_f(ERROR, ctx, node, "Upsample is deprecated since opset 10 and invalid in an opset-"
               f"{ctx.opset} graph.", "export Resize (F.interpolate) at opset 17.")]
