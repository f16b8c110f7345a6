"""Our generic RGB-D folder layout ("rgbd-folder", see docs/data-layout.md):

    <root>/dataset.yaml                          format, version, depth_scale, depth_units, intrinsics
    <root>/<split>/<defect>/color/<stem>.png     8-bit colour (BGR on disk, as cv2 writes it)
    <root>/<split>/<defect>/depth/<stem>.png     16-bit unsigned, metres = value * depth_scale, 0 = missing
    <root>/<split>/<defect>/mask/<stem>.png      optional, 8-bit, anomalous where > 0
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import yaml

from edge.checks import CheckError, load_yaml, short_repr
from edge.frames import RGBDSample

from ._base import (
    DatasetError,
    SampleRef,
    check_pairs,
    check_same_size,
    files_by_stem,
    imread_checked,
    label_for,
    missing_mask_policy,
    read_rgb,
    require_dir,
    require_split_dir,
    resolve_mask,
    subdirs,
)

FORMAT = "rgbd-folder"
VERSION = 1
CONFIG_NAME = "dataset.yaml"
DEFAULT_DEPTH_SCALE = 0.001
UINT16_MAX = 65535
INTRINSICS_KEYS = ("fx", "fy", "cx", "cy", "width", "height")


# ---------------------------------------------------------------- dataset.yaml


def is_folder_root(root: str | Path) -> bool:
    return (Path(root) / CONFIG_NAME).is_file()


def _check_scale(value, where: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DatasetError(f"{where}: depth_scale must be a positive number of metres per count, got {short_repr(value)}")
    return float(value)


def _check_intrinsics(value, where: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: intrinsics must be a mapping with {', '.join(INTRINSICS_KEYS)}")
    missing = [k for k in INTRINSICS_KEYS if k not in value]
    if missing:
        raise DatasetError(f"{where}: intrinsics lacks {', '.join(missing)}")
    out = {}
    for k in INTRINSICS_KEYS:
        v = value[k]
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise DatasetError(f"{where}: intrinsics.{k} must be a number, got {short_repr(v)}")
        out[k] = int(v) if k in ("width", "height") else float(v)
    return out


def read_folder_config(root: str | Path) -> dict:
    """Read and validate ``<root>/dataset.yaml``. Returns a dict with ``format``, ``version``,
    ``depth_scale`` (float), ``depth_units`` and ``intrinsics`` (dict or None)."""
    path = Path(root) / CONFIG_NAME
    if not path.is_file():
        raise DatasetError(f"{path} does not exist: {root} is not an rgbd-folder dataset (see docs/data-layout.md)")
    try:  # the shared loader: size, alias and nesting limits, so a hostile dataset.yaml stays cheap
        cfg = load_yaml(path)
    except CheckError as e:
        raise DatasetError(f"cannot parse {e}") from e
    if not isinstance(cfg, dict):
        raise DatasetError(f"{path}: expected a mapping, got {type(cfg).__name__}")
    if cfg.get("format") != FORMAT:
        raise DatasetError(f"{path}: format must be {FORMAT!r}, got {short_repr(cfg.get('format'))}")
    version = cfg.get("version", VERSION)
    if not isinstance(version, int) or version < 1:
        raise DatasetError(f"{path}: version must be a positive integer, got {short_repr(version)}")
    if version > VERSION:
        raise DatasetError(f"{path}: version {version} is newer than this reader understands ({VERSION})")
    units = cfg.get("depth_units")
    if units is not None and units not in ("mm", "m"):
        raise DatasetError(f"{path}: depth_units must be 'mm' or 'm', got {short_repr(units)}")
    if "depth_scale" in cfg:
        scale = _check_scale(cfg["depth_scale"], str(path))
    elif units == "mm":
        scale = 0.001
    else:
        raise DatasetError(f"{path}: depth_scale (metres per raw depth count) is missing")
    if units == "mm" and not math.isclose(scale, 0.001, rel_tol=1e-9):
        raise DatasetError(f"{path}: depth_units 'mm' contradicts depth_scale {scale} (a millimetre count is 0.001)")
    return {
        "format": FORMAT,
        "version": version,
        "depth_scale": scale,
        "depth_units": units or _units_for(scale),
        "intrinsics": _check_intrinsics(cfg.get("intrinsics"), str(path)),
    }


def _units_for(scale: float) -> str:
    return "mm" if math.isclose(scale, 0.001, rel_tol=1e-9) else "m"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_config(root: Path, scale: float, intrinsics: dict | None) -> None:
    cfg = {"format": FORMAT, "version": VERSION, "depth_scale": scale, "depth_units": _units_for(scale)}
    if intrinsics is not None:
        cfg["intrinsics"] = intrinsics
    _write_text_atomic(root / CONFIG_NAME, yaml.safe_dump(cfg, sort_keys=False))


# ---------------------------------------------------------------- reading


def read_folder_dataset(
    root: str | Path, split: str, defects: Iterable[str] | None = None
) -> list[SampleRef]:
    """Lazy references to every sample of ``split`` (sorted by defect, then stem).

    Labels come from the defect folder: ``good`` -> 0, ``unknown``/``unlabelled`` -> -1, else 1.
    A sample without a mask file gets an all-zero mask if it is ``good`` outside train/validation,
    else ``mask=None``.
    """
    root = Path(root)
    require_dir(root, "rgbd-folder dataset root")
    cfg = read_folder_config(root)
    split_dir = require_split_dir(root, split, "color", "rgbd-folder")
    defect_dirs = subdirs(split_dir)
    if defects is not None:
        have = {d.name: d for d in defect_dirs}
        wanted = list(defects)
        unknown = [w for w in wanted if w not in have]
        if unknown:
            raise DatasetError(
                f"no defect folder {', '.join(unknown)} in {split_dir}; present: {', '.join(have) or 'none'}"
            )
        defect_dirs = [have[w] for w in wanted]

    refs: list[SampleRef] = []
    for ddir in defect_dirs:
        defect = ddir.name
        color_dir, depth_dir, mask_dir = ddir / "color", ddir / "depth", ddir / "mask"
        require_dir(color_dir, "colour folder")
        require_dir(depth_dir, "depth folder")
        colors = files_by_stem(color_dir, (".png",))
        depths = files_by_stem(depth_dir, (".png",))
        check_pairs(colors, depths, color_dir, depth_dir)
        masks = files_by_stem(mask_dir, (".png",)) if mask_dir.is_dir() else {}
        policy = missing_mask_policy(split, defect)
        label = label_for(defect)
        for stem in sorted(colors):
            refs.append(
                SampleRef(
                    name=f"{split}/{defect}/{stem}",
                    label=label,
                    defect=defect,
                    split=split,
                    format=FORMAT,
                    rgb=colors[stem],
                    depth=depths[stem],
                    mask=masks.get(stem),
                    mask_default=policy,
                    depth_scale=cfg["depth_scale"],
                    intrinsics=cfg["intrinsics"],
                )
            )
    return refs


def read_depth_png(path: str | Path, depth_scale: float) -> np.ndarray:
    """16-bit depth PNG -> H x W float32 metres (0 = missing)."""
    raw = imread_checked(Path(path))
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise DatasetError(
            f"depth image {path} must be a single-channel 16-bit PNG, got {raw.dtype} with shape {raw.shape}"
        )
    return (raw.astype(np.float64) * depth_scale).astype(np.float32)


def load_folder_sample(ref: SampleRef) -> RGBDSample:
    scale = ref.depth_scale if ref.depth_scale is not None else DEFAULT_DEPTH_SCALE
    rgb = read_rgb(ref.rgb)
    depth = read_depth_png(ref.depth, scale)
    check_same_size(rgb, ref.rgb, depth, ref.depth)
    mask = resolve_mask(ref, depth.shape)
    meta = {
        "format": FORMAT,
        "split": ref.split,
        "depth_scale": scale,
        "source": {
            "color": str(ref.rgb),
            "depth": str(ref.depth),
            "mask": str(ref.mask) if ref.mask is not None else None,
        },
    }
    if ref.intrinsics is not None:
        meta["intrinsics"] = dict(ref.intrinsics)
    return RGBDSample(rgb=rgb, depth=depth, mask=mask, label=ref.label, defect=ref.defect, name=ref.name, meta=meta)


# ---------------------------------------------------------------- writing


def depth_to_raw(depth: np.ndarray, depth_scale: float) -> tuple[np.ndarray, int]:
    """Metres -> uint16 counts (round to nearest). Non-finite and non-positive depth -> 0 (missing).
    Valid depth beyond the uint16 range is clipped to 1..65535 (a tiny positive depth must not
    turn into "missing"). Returns (raw, number of clipped pixels)."""
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    q = np.zeros(d.shape, np.float64)
    q[valid] = np.rint(d[valid] / depth_scale)
    out_of_range = valid & ((q < 1) | (q > UINT16_MAX))
    np.clip(q, 0, UINT16_MAX, out=q)
    q[out_of_range & (q < 1)] = 1
    return q.astype(np.uint16), int(out_of_range.sum())


def _check_part(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or value in (".", "..") or value.startswith("."):
        raise DatasetError(f"invalid {what} {value!r}: must be a non-empty name not starting with '.'")
    if any(c in value for c in '/\\:*?"<>|\0'):
        raise DatasetError(f"invalid {what} {value!r}: must not contain path separators or special characters")
    return value


def _imwrite_atomic(path: Path, img: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        ok = cv2.imwrite(str(tmp), img)
    except cv2.error as e:
        raise DatasetError(f"cannot write {path}: {e}") from e
    if not ok:
        raise DatasetError(f"cannot write {path}")
    os.replace(tmp, path)


def write_folder_sample(
    root: str | Path,
    split: str,
    defect: str,
    stem: str,
    sample: RGBDSample,
    depth_scale: float = DEFAULT_DEPTH_SCALE,
    intrinsics: dict | None = None,
) -> dict:
    """Write one sample into the rgbd-folder layout at ``root`` (created as needed).

    Creates ``dataset.yaml`` when missing; refuses a ``depth_scale`` (or ``intrinsics``) that
    differs from an existing one. Depth is rounded to the nearest ``depth_scale`` step, so reading
    back gives the input within ``depth_scale / 2``. Out-of-range depth is clipped with a warning.
    A mask file is written when ``sample.mask`` is not None (and a stale one removed otherwise).

    Returns ``{"color": Path, "depth": Path, "mask": Path | None, "clipped": int}``.
    """
    root = Path(root)
    for value, what in ((split, "split"), (defect, "defect"), (stem, "stem")):
        _check_part(value, what)
    scale = _check_scale(depth_scale, "write_folder_sample")
    intr = _check_intrinsics(intrinsics, "write_folder_sample")

    rgb = np.asarray(sample.rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DatasetError(f"{sample.name or stem}: rgb must be H x W x 3 uint8, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    if intr is not None and (intr["width"], intr["height"]) != (w, h):
        raise DatasetError(
            f"{sample.name or stem}: intrinsics are for {intr['width']}x{intr['height']} but the sample is {w}x{h}"
        )

    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / CONFIG_NAME
    if cfg_path.is_file():
        cfg = read_folder_config(root)
        if not math.isclose(cfg["depth_scale"], scale, rel_tol=1e-9):
            raise DatasetError(
                f"{cfg_path} has depth_scale {cfg['depth_scale']} but this write uses {scale}; "
                f"pass depth_scale={cfg['depth_scale']} or write to a new dataset"
            )
        if intr is not None:
            if cfg["intrinsics"] is None:
                _write_config(root, scale, intr)
            elif any(not math.isclose(cfg["intrinsics"][k], intr[k], rel_tol=1e-9) for k in INTRINSICS_KEYS):
                raise DatasetError(f"{cfg_path} has intrinsics {cfg['intrinsics']} that differ from {intr}")
    else:
        _write_config(root, scale, intr)

    ddir = root / split / defect
    paths = {"color": ddir / "color" / f"{stem}.png", "depth": ddir / "depth" / f"{stem}.png"}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)

    raw, clipped = depth_to_raw(sample.depth, scale)
    if clipped:
        lo, hi = scale, UINT16_MAX * scale
        warnings.warn(
            f"{paths['depth']}: {clipped} depth value(s) outside the storable range "
            f"{lo:g}..{hi:g} m (depth_scale {scale:g}) were clipped",
            RuntimeWarning,
            stacklevel=2,
        )
    _imwrite_atomic(paths["color"], cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    _imwrite_atomic(paths["depth"], raw)

    mask_path = ddir / "mask" / f"{stem}.png"
    if sample.mask is not None:
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        _imwrite_atomic(mask_path, np.where(np.asarray(sample.mask) > 0, 255, 0).astype(np.uint8))
        paths["mask"] = mask_path
    else:
        if mask_path.exists():
            mask_path.unlink()
        paths["mask"] = None
    return {**paths, "clipped": clipped}
