"""A dataset split loaded once and run through the shared edge preprocessing.

numpy only: training (torch), INT8 calibration and ONNX evaluation all consume it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from edge.data import open_dataset
from edge.preprocess import PreprocessParams, crop_roi, params_for_sample, preprocess, resize_rgb


@dataclass
class PreparedSplit:
    rgb: np.ndarray  # N x 3 x S x S float32
    depth: np.ndarray  # N x 3 x S x S float32
    fg: np.ndarray  # N x 1 x S x S float32
    height: np.ndarray  # N x S x S float32, normalised height above the plane (pseudo-anomalies edit it)
    labels: np.ndarray  # N, 0 good / 1 anomalous / -1 unknown
    masks: list  # per sample: bool mask at the source resolution (ROI applied), or None
    thumbs: list  # per sample: RGB uint8 at model resolution, for galleries
    names: list
    defects: list
    valid_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def feed(self, i: int, names=("rgb", "depth", "foreground"), batch: int = 1) -> dict[str, np.ndarray]:
        """ONNX-style input dict for samples i .. i + batch."""
        arrays = {"rgb": self.rgb, "depth": self.depth, "foreground": self.fg}
        return {n: np.ascontiguousarray(arrays[n][i : i + batch]) for n in names}


def load_raw(root, split: str, progress: bool = True, desc: str | None = None):
    refs = open_dataset(root, split)
    return [r.load() for r in tqdm(refs, desc=desc or f"read {split}", disable=not progress, leave=False)]


def load_normal_raw(root, progress: bool = True) -> tuple[list, str]:
    """Normal samples held out from training, for score statistics and thresholds: the
    validation split, or the train split (named as such) when the data set has none."""
    try:
        return load_raw(root, "validation", progress), "validation"
    except (FileNotFoundError, ValueError):
        return load_raw(root, "train", progress), "train"


def prepare(samples, params: PreprocessParams, progress: bool = True, desc: str = "preprocess") -> PreparedSplit:
    rgb, depth, fg, height, masks, thumbs, vf = [], [], [], [], [], [], []
    for s in tqdm(samples, desc=desc, disable=not progress, leave=False):
        p = preprocess(s.rgb, s.depth, params_for_sample(params, s))  # a posed capture: its plane moved with it
        rgb.append(p.rgb)
        depth.append(p.depth)
        fg.append(p.foreground[None].astype(np.float32))
        height.append(p.height)
        masks.append(None if s.mask is None else crop_roi(s.mask, params.roi).astype(bool))
        thumbs.append(resize_rgb(s.rgb, params.image_size, params.roi))
        vf.append(p.valid_fraction)
    return PreparedSplit(
        rgb=np.stack(rgb),
        depth=np.stack(depth),
        fg=np.stack(fg),
        height=np.stack(height),
        labels=np.array([s.label for s in samples]),
        masks=masks,
        thumbs=thumbs,
        names=[s.name for s in samples],
        defects=[s.defect for s in samples],
        valid_fraction=np.array(vf),
    )
