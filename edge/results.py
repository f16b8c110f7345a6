"""The message the runtime sends for every inspected frame (schema version 1).

One JSON object per frame; documented in docs/results.md. Every frame that
was captured produces exactly one result, including frames where no stream
was usable (decision "no_decision"), so nothing is silently dropped.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

RESULT_SCHEMA = 1
DECISIONS = ("pass", "reject", "no_decision")


@dataclass
class Latency:
    capture_ms: float = 0.0  # frame arrival -> dequeued by inference
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0  # frame arrival -> result ready


@dataclass
class ModelInfo:
    name: str
    version: str
    sha256: str  # of the graph (or engine's ONNX) that produced the score
    precision: str  # fp32 | fp16 | int8
    engine: str  # onnxruntime | tensorrt
    bundle_digest: str = ""  # the bundle's digest (Bundle.digest: every file incl. bundle.yaml); "" if unknown


@dataclass
class InspectionResult:
    device_id: str
    seq: int  # per-process sequence number, gap-free
    mode: str | None  # rgbd | rgb | depth | None when no stream was usable
    reason: str  # why this mode (e.g. "both streams healthy", "depth stale: frame number not advancing")
    score: float | None
    threshold: float | None
    decision: str  # pass | reject | no_decision
    color_frame_number: int = -1
    depth_frame_number: int = -1
    color_timestamp_ms: float | None = None
    depth_timestamp_ms: float | None = None
    wall_time: float = 0.0  # unix seconds when the result was made
    latency: Latency = field(default_factory=Latency)
    model: ModelInfo | None = None
    frame_name: str = ""
    schema: int = RESULT_SCHEMA

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {self.decision!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("color_timestamp_ms", "depth_timestamp_ms", "score", "threshold"):
            v = d[k]
            if isinstance(v, float) and v != v:  # NaN is not JSON
                d[k] = None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)
