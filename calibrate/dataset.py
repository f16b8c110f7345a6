"""A dataset split run through the shared edge preprocessing, whole or in batches.

numpy only: training (torch), INT8 calibration and ONNX evaluation all consume it.
Calibration and evaluation hold their (small) splits whole (`prepare`); training streams
any number of captures in bounded memory: one sample at a time (`prepare_sample`, stacked by
`stack_prepared`) or batches of a split read one capture at a time (`prepared_batches`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

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


@dataclass
class PreparedSample:
    """One sample through preprocessing: a row of a PreparedSplit."""

    rgb: np.ndarray  # 3 x S x S float32
    depth: np.ndarray  # 3 x S x S float32
    fg: np.ndarray  # 1 x S x S float32
    height: np.ndarray  # S x S float32
    label: int
    mask: np.ndarray | None
    thumb: np.ndarray  # S x S x 3 uint8
    name: str
    defect: str
    valid_fraction: float


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


def normal_refs(root) -> tuple[list, str]:
    """The samples `load_normal_raw` reads, as lazy references (nothing loaded)."""
    try:
        return open_dataset(root, "validation"), "validation"
    except (FileNotFoundError, ValueError):
        return open_dataset(root, "train"), "train"


def prepare_sample(s, params: PreprocessParams) -> PreparedSample:
    """One raw sample (edge.frames.RGBDSample) -> its preprocessed row."""
    p = preprocess(s.rgb, s.depth, params_for_sample(params, s))  # a posed capture: its plane moved with it
    return PreparedSample(
        rgb=p.rgb, depth=p.depth, fg=p.foreground[None].astype(np.float32), height=p.height, label=s.label,
        mask=None if s.mask is None else crop_roi(s.mask, params.roi).astype(bool),
        thumb=resize_rgb(s.rgb, params.image_size, params.roi), name=s.name, defect=s.defect,
        valid_fraction=p.valid_fraction,
    )


def stack_prepared(rows: list[PreparedSample]) -> PreparedSplit:
    return PreparedSplit(
        rgb=np.stack([r.rgb for r in rows]),
        depth=np.stack([r.depth for r in rows]),
        fg=np.stack([r.fg for r in rows]),
        height=np.stack([r.height for r in rows]),
        labels=np.array([r.label for r in rows]),
        masks=[r.mask for r in rows],
        thumbs=[r.thumb for r in rows],
        names=[r.name for r in rows],
        defects=[r.defect for r in rows],
        valid_fraction=np.array([r.valid_fraction for r in rows]),
    )


def prepare(samples, params: PreprocessParams, progress: bool = True, desc: str = "preprocess") -> PreparedSplit:
    return stack_prepared([prepare_sample(s, params)
                           for s in tqdm(samples, desc=desc, disable=not progress, leave=False)])


def batched(items: Iterable, n: int) -> Iterator[list]:
    """Consecutive lists of n items (the last may be shorter), drawing items only as needed."""
    rows = []
    for item in items:
        rows.append(item)
        if len(rows) == n:
            yield rows
            rows = []
    if rows:
        yield rows


def prepared_batches(refs: Iterable, params: PreprocessParams, batch: int, progress: bool = True,
                     desc: str = "preprocess") -> Iterator[PreparedSplit]:
    """PreparedSplits of up to `batch` consecutive samples of `refs` (edge.data.SampleRef), each
    capture read when its batch is made: memory holds one batch whatever the split's size."""
    samples = (prepare_sample(ref.load(), params) for ref in tqdm(refs, desc=desc, disable=not progress, leave=False))
    for rows in batched(samples, batch):
        yield stack_prepared(rows)
