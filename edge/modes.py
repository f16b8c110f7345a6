"""The inspection modes, defined once for the whole project.

A mode names which camera streams a decision uses (``MODE_STREAMS``) and which tensors the mode's
graph takes (``MODE_INPUTS``, in the export's order: the depth-derived foreground mask comes with
depth). ``MODES`` is also the fallback's preference order: fused first, then each stream alone.
"""
from __future__ import annotations

MODES: tuple[str, ...] = ("rgbd", "rgb", "depth")
STREAMS: tuple[str, ...] = ("rgb", "depth")

MODE_STREAMS: dict[str, tuple[str, ...]] = {"rgbd": ("rgb", "depth"), "rgb": ("rgb",), "depth": ("depth",)}
MODE_INPUTS: dict[str, tuple[str, ...]] = {
    "rgbd": ("rgb", "depth", "foreground"),
    "rgb": ("rgb",),
    "depth": ("depth", "foreground"),
}
# (rgb present, depth present) per mode: what a model sees when a stream is missing.
PRESENT: dict[str, tuple[bool, bool]] = {m: ("rgb" in s, "depth" in s) for m, s in MODE_STREAMS.items()}


def check_mode(mode: object) -> str:
    """``mode`` if it is a known mode, else a ValueError naming the known ones."""
    if mode not in MODE_STREAMS:
        raise ValueError(f"unknown mode {mode!r} (known modes: {', '.join(MODES)})")
    return mode  # type: ignore[return-value]
