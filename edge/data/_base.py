"""Shared pieces of the dataset readers: the error type, lazy sample references
and checked image I/O. Private: import the public names from ``edge.data``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from edge.frames import RGBDSample

#: Defect folder name of defect-free samples (label 0); every other name is label 1.
GOOD = "good"
#: Defect folder names that mean "not labelled" (label -1), e.g. fresh captures.
UNLABELLED = ("unknown", "unlabelled", "unlabeled")
#: Splits without ground-truth masks: their samples get ``mask=None`` when no mask file exists.
UNMASKED_SPLITS = ("train", "validation")


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or unreadable. The message names the file or folder."""


def label_for(defect: str) -> int:
    if defect == GOOD:
        return 0
    if defect.lower() in UNLABELLED:
        return -1
    return 1


def missing_mask_policy(split: str, defect: str) -> str:
    """What a sample without a mask file gets: an all-zero mask for good samples of
    evaluation splits (they are known to be defect-free), ``None`` otherwise."""
    return "zeros" if defect == GOOD and split not in UNMASKED_SPLITS else "none"


@dataclass(frozen=True)
class SampleRef:
    """A sample on disk, not yet loaded: cheap to list, hold and pickle.

    ``rgb``/``depth``/``mask`` are the files (``depth`` is the xyz TIFF for MVTec 3D-AD).
    ``load()`` reads them into an :class:`~edge.frames.RGBDSample`.
    """

    name: str
    label: int
    defect: str
    split: str
    format: str  # "mvtec3d" or "rgbd-folder"
    rgb: Path
    depth: Path
    mask: Path | None = None
    mask_default: str = "none"  # when mask is None: "zeros" or "none"
    depth_scale: float | None = None  # metres per raw count (rgbd-folder only)
    intrinsics: dict | None = field(default=None, compare=False, hash=False, repr=False)

    def load(self) -> RGBDSample:
        if self.format == "mvtec3d":
            from .mvtec3d import load_mvtec3d_sample

            return load_mvtec3d_sample(self)
        if self.format == "rgbd-folder":
            from .folder import load_folder_sample

            return load_folder_sample(self)
        raise DatasetError(f"{self.name}: unknown dataset format {self.format!r}")

    @property
    def stem(self) -> str:
        return self.rgb.stem

    def __repr__(self) -> str:  # short: lists of these get printed
        return f"SampleRef({self.name!r}, label={self.label}, format={self.format!r})"


# ---------------------------------------------------------------- file listing


def require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is not a folder")
    return path


def subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def present_splits(root: Path, marker: str) -> list[str]:
    """Sub-folders of ``root`` that hold ``<defect>/<marker>`` folders, i.e. look like splits."""
    return [s.name for s in subdirs(root) if any((d / marker).is_dir() for d in subdirs(s))]


def missing_split_error(root: Path, split: str, marker: str, kind: str) -> DatasetError:
    present = present_splits(root, marker)
    return DatasetError(
        f"{kind} split folder {root / split} does not exist; splits present under {root}: "
        f"{', '.join(present) if present else 'none'}"
    )


def require_split_dir(root: Path, split: str, marker: str, kind: str) -> Path:
    require_dir(root, f"{kind} dataset root")
    split_dir = root / split
    if not split_dir.is_dir():
        raise missing_split_error(root, split, marker, kind)
    return split_dir


def files_by_stem(folder: Path, suffixes: Iterable[str]) -> dict[str, Path]:
    """Map stem -> file for the files in ``folder`` with one of ``suffixes`` (case-insensitive).
    Hidden files (``.x``, e.g. half-written temporaries) are ignored."""
    suffixes = tuple(s.lower() for s in suffixes)
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in suffixes:
            continue
        if p.stem in out:
            raise DatasetError(f"{folder}: two files share the stem {p.stem!r}: {out[p.stem].name}, {p.name}")
        out[p.stem] = p
    return out


def check_pairs(a: dict[str, Path], b: dict[str, Path], a_dir: Path, b_dir: Path) -> None:
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"stems in {a_dir} without a partner in {b_dir}: {_few(only_a)}")
        if only_b:
            parts.append(f"stems in {b_dir} without a partner in {a_dir}: {_few(only_b)}")
        raise DatasetError("files do not pair up by stem; " + "; ".join(parts))


def _few(items: list[str], n: int = 10) -> str:
    s = ", ".join(items[:n])
    return s + (f" ... ({len(items)} in all)" if len(items) > n else "")


# ---------------------------------------------------------------- image reading


def imread_checked(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file {path} does not exist")
    try:
        img = cv2.imread(str(path), flags)
    except cv2.error as e:  # pragma: no cover - cv2 normally returns None
        raise DatasetError(f"cannot read image {path}: {e}") from e
    if img is None or img.size == 0:
        raise DatasetError(f"cannot read image {path}: corrupt, truncated or not an image")
    return img


def read_rgb(path: Path) -> np.ndarray:
    """Any 8/16-bit grey, BGR or BGRA image file -> H x W x 3 uint8 RGB."""
    img = imread_checked(path)
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DatasetError(f"colour image {path} has unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise DatasetError(f"colour image {path} has unsupported shape {img.shape}")


def read_mask(path: Path, shape: tuple[int, int], partner: Path) -> np.ndarray:
    """Mask file -> H x W bool, anomalous where any channel > 0 (also class ids like 252..255)."""
    img = imread_checked(path)
    if img.ndim == 3:
        img = img.max(axis=2)
    if img.shape != shape:
        raise DatasetError(f"mask {path} is {img.shape[1]}x{img.shape[0]} but {partner} is {shape[1]}x{shape[0]}")
    return img > 0


def check_same_size(rgb: np.ndarray, rgb_path: Path, depth: np.ndarray, depth_path: Path) -> None:
    if rgb.shape[:2] != depth.shape[:2]:
        raise DatasetError(
            f"sizes differ: {rgb_path} is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but "
            f"{depth_path} is {depth.shape[1]}x{depth.shape[0]}"
        )


def resolve_mask(ref: SampleRef, shape: tuple[int, int]) -> np.ndarray | None:
    if ref.mask is not None:
        return read_mask(ref.mask, shape, ref.rgb)
    return np.zeros(shape, bool) if ref.mask_default == "zeros" else None
