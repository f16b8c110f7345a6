"""Reader for the MVTec 3D-AD layout (one category folder):

    <root>/{train,validation,test}/<defect>/rgb/<stem>.png
    <root>/{train,validation,test}/<defect>/xyz/<stem>.tiff   float32 H x W x 3, x/y/z in metres, 0 = missing
    <root>/{train,validation,test}/<defect>/gt/<stem>.png     anomalous where > 0 (255 or class ids 252..255)

depth is the z channel; non-finite and non-positive z become 0 (missing). Uncompressed and
deflate-compressed TIFFs read alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import tifffile

from edge.frames import RGBDSample

from ._base import (
    DatasetError,
    SampleRef,
    check_pairs,
    check_same_size,
    files_by_stem,
    label_for,
    missing_mask_policy,
    missing_split_error,
    read_rgb,
    require_dir,
    resolve_mask,
    subdirs,
)

SPLITS = ("train", "validation", "test")
FORMAT = "mvtec3d"


def is_mvtec3d_root(root: str | Path) -> bool:
    """True when some split folder under ``root`` holds ``<defect>/rgb`` and ``<defect>/xyz``."""
    root = Path(root)
    if not root.is_dir():
        return False
    for split in subdirs(root):
        for d in subdirs(split):
            if (d / "rgb").is_dir() and (d / "xyz").is_dir():
                return True
    return False


def list_mvtec3d_split(
    root: str | Path, split: str, defects: Iterable[str] | None = None
) -> list[SampleRef]:
    """Lazy references to every sample of ``split`` (sorted by defect, then stem).

    ``defects`` restricts to those defect folders (a name that does not exist is an error).
    """
    root = Path(root)
    require_dir(root, "MVTec 3D-AD root")
    split_dir = root / split
    if not split_dir.is_dir():
        err = missing_split_error(root, split, "rgb", "MVTec 3D-AD")
        cats = [p.name for p in subdirs(root) if (p / split).is_dir()]
        if cats:  # this looks like the dataset root, one level above the categories
            err = DatasetError(f"{err}; pass a category folder such as {root / cats[0]}")
        raise err
    defect_dirs = subdirs(split_dir)
    if defects is not None:
        wanted = list(defects)
        have = {d.name: d for d in defect_dirs}
        unknown = [w for w in wanted if w not in have]
        if unknown:
            raise DatasetError(
                f"no defect folder {', '.join(unknown)} in {split_dir}; present: {', '.join(have) or 'none'}"
            )
        defect_dirs = [have[w] for w in wanted]
    if not defect_dirs:
        raise DatasetError(f"MVTec 3D-AD split folder {split_dir} has no defect folders")

    refs: list[SampleRef] = []
    for ddir in defect_dirs:
        defect = ddir.name
        rgb_dir, xyz_dir, gt_dir = ddir / "rgb", ddir / "xyz", ddir / "gt"
        require_dir(rgb_dir, "MVTec 3D-AD rgb folder")
        require_dir(xyz_dir, "MVTec 3D-AD xyz folder")
        rgbs = files_by_stem(rgb_dir, (".png",))
        xyzs = files_by_stem(xyz_dir, (".tiff", ".tif"))
        check_pairs(rgbs, xyzs, rgb_dir, xyz_dir)
        gts = files_by_stem(gt_dir, (".png",)) if gt_dir.is_dir() else {}
        label = label_for(defect)
        if gts and label != 0:
            missing = sorted(set(rgbs) - set(gts))
            if missing:
                raise DatasetError(f"{gt_dir} has no mask for stems {', '.join(missing[:10])}")
        policy = missing_mask_policy(split, defect)
        for stem in sorted(rgbs):
            refs.append(
                SampleRef(
                    name=f"{split}/{defect}/{stem}",
                    label=label,
                    defect=defect,
                    split=split,
                    format=FORMAT,
                    rgb=rgbs[stem],
                    depth=xyzs[stem],
                    mask=gts.get(stem),
                    mask_default=policy,
                )
            )
    return refs


def load_mvtec3d_split(
    root: str | Path, split: str, defects: Iterable[str] | None = None
) -> list[RGBDSample]:
    """Eagerly load every sample of ``split`` (a 400x400 sample is ~3 MB in memory)."""
    return [ref.load() for ref in list_mvtec3d_split(root, split, defects)]


def read_xyz(path: str | Path) -> np.ndarray:
    """An organized point cloud TIFF -> H x W x 3 float32 (x, y, z in metres)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"xyz file {path} does not exist")
    try:
        xyz = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for corrupt files
        raise DatasetError(f"cannot read xyz TIFF {path}: {type(e).__name__}: {e}") from e
    xyz = np.asarray(xyz)
    if xyz.ndim == 3 and xyz.shape[2] != 3 and xyz.shape[0] == 3:
        xyz = np.moveaxis(xyz, 0, -1)  # planar (3, H, W) copies
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise DatasetError(f"xyz TIFF {path} has shape {xyz.shape}, expected H x W x 3")
    return xyz.astype(np.float32, copy=False)


def depth_from_xyz(xyz: np.ndarray) -> np.ndarray:
    """z channel in metres; non-finite and non-positive points -> 0 (missing)."""
    z = np.array(xyz[..., 2], dtype=np.float32)
    z[~np.isfinite(z) | (z <= 0)] = 0.0
    return z


def load_mvtec3d_sample(ref: SampleRef) -> RGBDSample:
    rgb = read_rgb(ref.rgb)
    depth = depth_from_xyz(read_xyz(ref.depth))
    check_same_size(rgb, ref.rgb, depth, ref.depth)
    mask = resolve_mask(ref, depth.shape)
    meta = {
        "format": FORMAT,
        "split": ref.split,
        "source": {
            "rgb": str(ref.rgb),
            "xyz": str(ref.depth),
            "gt": str(ref.mask) if ref.mask is not None else None,
        },
    }
    return RGBDSample(rgb=rgb, depth=depth, mask=mask, label=ref.label, defect=ref.defect, name=ref.name, meta=meta)
