"""Dataset readers and writers. Every reader yields :class:`edge.frames.RGBDSample`.

Listing is lazy: ``open_dataset``, ``list_mvtec3d_split`` and ``read_folder_dataset`` return
:class:`SampleRef` objects (paths, label, defect, name) whose ``.load()`` reads the sample, so
training code can show progress and cache. Layouts are described in docs/data-layout.md.
"""
from __future__ import annotations

from pathlib import Path

from ._base import DatasetError, SampleRef, subdirs
from .folder import is_folder_root, read_folder_config, read_folder_dataset, write_folder_sample
from .mvtec3d import is_mvtec3d_root, list_mvtec3d_split, load_mvtec3d_split
from .synthetic import SyntheticConfig, make_sample, make_synthetic_dataset

__all__ = [
    "DatasetError",
    "SampleRef",
    "SyntheticConfig",
    "detect_format",
    "list_mvtec3d_split",
    "load_mvtec3d_split",
    "make_sample",
    "make_synthetic_dataset",
    "open_dataset",
    "read_folder_config",
    "read_folder_dataset",
    "write_folder_sample",
]


def detect_format(root: str | Path) -> str:
    """``"rgbd-folder"`` (has dataset.yaml) or ``"mvtec3d"`` (has ``<split>/<defect>/{rgb,xyz}``)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset root {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    if is_folder_root(root):
        return "rgbd-folder"
    if is_mvtec3d_root(root):
        return "mvtec3d"
    if any((d / "color").is_dir() for s in subdirs(root) for d in subdirs(s)):
        raise DatasetError(
            f"{root} has <split>/<defect>/color folders but no dataset.yaml; "
            "an rgbd-folder dataset needs one (see docs/data-layout.md)"
        )
    cats = [p.name for p in subdirs(root) if is_mvtec3d_root(p)]
    hint = f"; it contains MVTec 3D-AD categories ({', '.join(cats[:5])}): pass one of those" if cats else ""
    raise DatasetError(
        f"{root} is neither an MVTec 3D-AD category (<split>/<defect>/rgb + xyz) "
        f"nor an rgbd-folder dataset (dataset.yaml){hint}"
    )


def open_dataset(root: str | Path, split: str) -> list[SampleRef]:
    """Lazy references to the samples of ``split`` in an MVTec 3D-AD category folder or an
    rgbd-folder dataset, whichever ``root`` is. Call ``ref.load()`` for the RGBDSample."""
    fmt = detect_format(root)
    if fmt == "rgbd-folder":
        return read_folder_dataset(root, split)
    return list_mvtec3d_split(root, split)
