"""Synthetic RGB-D anomaly data for tests and demos (numpy + OpenCV only, deterministic).

The scene is ray-cast through a pinhole camera: a tilted background plane at ~0.5 m (so 1/z is
linear in the pixel coordinates, z = 1 / (a*u + b*v + c)), with a flat-topped object on it (a disc
or rounded box, 1-3 cm high) whose top carries a stripe or checker texture. The steep object walls
have no depth (as with a structured-light sensor), depth also drops out in a band along the object
silhouette and in random blobs, and both channels get sensor noise.

Defects, always on the object top, with masks covering exactly the painted pixels:

* ``rgb_only``   a stain or scratch: colour changes, depth does not;
* ``depth_only`` a dent or bump of a few mm: depth changes, colour does not;
* ``both``       a hole or cut: darker colour, deeper (partly missing) depth.

``make_sample`` splits its generator into independent scene / defect / noise streams, so two
calls with equally seeded generators and different ``defect`` give the same scene and noise and
differ only inside the defect mask.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import yaml

from edge.frames import RGBDSample

from ._base import DatasetError
from .folder import CONFIG_NAME, write_folder_sample

DEFECTS = ("rgb_only", "depth_only", "both")
ALL_KINDS = ("good",) + DEFECTS


@dataclass
class SyntheticConfig:
    size: int = 128  # image width = height, pixels
    n_train: int = 20  # train/good
    n_validation: int = 5  # validation/good
    n_test_good: int = 5  # test/good
    n_test_per_defect: int = 5  # test/{rgb_only, depth_only, both}
    seed: int = 0
    # camera and background plane
    fov_deg: float = 40.0  # horizontal = vertical field of view
    distance: float = 0.5  # metres from the camera to the plane along the optical axis
    distance_jitter: float = 0.005  # +- metres per sample
    tilt_deg: tuple[float, float] = (0.0, 10.0)  # plane tilt range; azimuth is uniform
    # object
    object_shape: str = "disc"  # "disc" or "box" (rounded square)
    object_size: float = 0.075  # disc radius / box half-width, metres
    object_height: float = 0.02  # metres (1-3 cm is typical)
    position_jitter: float = 0.01  # +- metres of the object centre on the plane
    rotation_jitter_deg: float = 180.0  # +- degrees about the plane normal
    texture: str = "stripes"  # "stripes" or "checker" on the object top
    # sensor
    hole_fraction: float = 0.02  # fraction of the image in random missing-depth blobs
    edge_dropout: float = 0.5  # probability of missing depth in the band along the silhouette
    depth_noise: float = 0.0003  # metres (1 sigma) at `distance`, grows with z^2
    rgb_noise: float = 2.0  # grey levels (1 sigma)
    # defects
    defect_radius: tuple[float, float] = (0.022, 0.035)  # metres
    defect_depth: tuple[float, float] = (0.003, 0.006)  # dent / bump amplitude, metres
    # storage (make_synthetic_dataset)
    depth_scale: float = 0.0001  # metres per stored count: 0.1 mm keeps the dents well resolved

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be >= 32, got {self.size}")
        for k in ("n_train", "n_validation", "n_test_good", "n_test_per_defect"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0")
        if self.object_shape not in ("disc", "box"):
            raise ValueError(f"object_shape must be 'disc' or 'box', got {self.object_shape!r}")
        if self.texture not in ("stripes", "checker"):
            raise ValueError(f"texture must be 'stripes' or 'checker', got {self.texture!r}")
        if not 0 < self.fov_deg < 120:
            raise ValueError("fov_deg must be in (0, 120)")
        if not 0 <= self.tilt_deg[0] <= self.tilt_deg[1] < 90 - self.fov_deg / 2 - 5:
            raise ValueError(f"tilt_deg {self.tilt_deg} must be ordered and leave the plane in front of the camera")
        if not 0 < self.object_height < self.distance / 4:
            raise ValueError("object_height must be positive and well below distance")
        if not 0 < self.defect_radius[0] <= self.defect_radius[1] < self.object_size * 0.55:
            raise ValueError("defect_radius must be ordered and fit on the object top")
        if not 0 <= self.hole_fraction < 0.5 or not 0 <= self.edge_dropout <= 1:
            raise ValueError("hole_fraction must be in [0, 0.5) and edge_dropout in [0, 1]")

    def intrinsics(self) -> dict:
        f = (self.size / 2) / math.tan(math.radians(self.fov_deg) / 2)
        c = (self.size - 1) / 2
        return {"fx": f, "fy": f, "cx": c, "cy": c, "width": self.size, "height": self.size}


# ---------------------------------------------------------------- helpers


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise, roughly in [0, 1], with ``cells`` features across the image."""
    low = rng.random((cells, cells)).astype(np.float32)
    return cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)


def _shape_sdf(a: np.ndarray, b: np.ndarray, shape: str, size: float) -> np.ndarray:
    """Signed distance (metres, negative inside) to the object outline in local plane coordinates."""
    if shape == "disc":
        return np.hypot(a, b) - size
    r = 0.3 * size  # rounded square
    qa, qb = np.abs(a) - (size - r), np.abs(b) - (size - r)
    outside = np.hypot(np.maximum(qa, 0), np.maximum(qb, 0))
    return outside + np.minimum(np.maximum(qa, qb), 0) - r


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), k) > 0


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.erode(mask.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


def _as_rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# ---------------------------------------------------------------- scene


def _render_scene(rng: np.random.Generator, cfg: SyntheticConfig) -> dict:
    """Clean geometry and colour (float), before defects and sensor effects."""
    n_px = cfg.size
    intr = cfg.intrinsics()
    f, c = intr["fx"], intr["cx"]
    v, u = np.mgrid[0:n_px, 0:n_px].astype(np.float64)
    dx, dy = (u - c) / f, (v - c) / f  # ray direction (dx, dy, 1)

    # background plane n.X = d, n pointing away from the camera
    tilt = math.radians(rng.uniform(*cfg.tilt_deg))
    azim = rng.uniform(0, 2 * math.pi)
    nrm = np.array([math.sin(tilt) * math.cos(azim), math.sin(tilt) * math.sin(azim), math.cos(tilt)])
    dist = cfg.distance + rng.uniform(-1, 1) * cfg.distance_jitter
    d = dist * nrm[2]  # the plane passes through (0, 0, dist)
    ndotr = nrm[0] * dx + nrm[1] * dy + nrm[2]
    z_plane = d / ndotr

    # in-plane basis, object pose
    e1 = np.array([1.0, 0, 0]) - nrm[0] * nrm
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(nrm, e1)
    rot = math.radians(rng.uniform(-1, 1) * cfg.rotation_jitter_deg)
    a1 = math.cos(rot) * e1 + math.sin(rot) * e2
    a2 = -math.sin(rot) * e1 + math.cos(rot) * e2
    jx, jy = rng.uniform(-1, 1, 2) * cfg.position_jitter
    base_c = np.array([0.0, 0.0, dist]) + jx * e1 + jy * e2
    top_c = base_c - cfg.object_height * nrm

    def local(z, centre):
        x, y = z * dx - centre[0], z * dy - centre[1]
        zz = z - centre[2]
        return x * a1[0] + y * a1[1] + zz * a1[2], x * a2[0] + y * a2[1] + zz * a2[2]

    z_top = (d - cfg.object_height) / ndotr
    ta, tb = local(z_top, top_c)
    pa, pb = local(z_plane, base_c)
    top_sdf = _shape_sdf(ta, tb, cfg.object_shape, cfg.object_size)
    top = top_sdf < 0
    side = (_shape_sdf(pa, pb, cfg.object_shape, cfg.object_size) < 0) & ~top  # walls: no depth

    depth = np.where(top, z_top, np.where(side, 0.0, z_plane))

    # colour: plane with blotchy texture, textured top, dark walls, vignetting
    bright = rng.uniform(0.93, 1.07)
    plane_col = np.array([150.0, 148.0, 140.0]) + rng.uniform(-8, 8, 3)
    top_col = np.array([80.0, 115.0, 165.0]) + rng.uniform(-8, 8, 3)
    blot = _smooth_noise(rng, n_px, n_px, 7)[..., None]
    grain = _smooth_noise(rng, n_px, n_px, max(8, n_px // 4))[..., None]
    rgb = plane_col * (0.88 + 0.2 * blot + 0.06 * grain)
    period = cfg.object_size / rng.uniform(2.5, 3.5)
    phase = rng.uniform(0, 2 * math.pi)
    sa = np.sin(2 * math.pi * ta / period + phase)
    if cfg.texture == "stripes":
        pattern = 0.5 + 0.5 * np.tanh(3 * sa)
    else:
        pattern = 0.5 + 0.5 * np.tanh(3 * sa * np.sin(2 * math.pi * tb / period))
    rim = np.clip(-top_sdf / (0.12 * cfg.object_size), 0, 1)  # darker bevel near the edge
    top_rgb = top_col * (0.65 + 0.5 * pattern[..., None]) * (0.6 + 0.4 * rim[..., None])
    rgb = np.where(top[..., None], top_rgb, rgb)
    rgb = np.where(side[..., None], top_col * 0.4, rgb)
    r2 = (dx**2 + dy**2) / (dx.max() ** 2 * 2)
    rgb = rgb * (bright * (1 - 0.18 * r2))[..., None]

    return {
        "rgb": rgb, "depth": depth, "top": top, "side": side, "top_sdf": top_sdf,
        "ta": ta, "tb": tb, "dx": dx, "dy": dy, "top_col": top_col, "intrinsics": intr,
    }


def _defect_region(rng: np.random.Generator, cfg: SyntheticConfig, scene: dict, scale_long: float,
                   aspect: tuple[float, float], wobble: float) -> tuple[np.ndarray, np.ndarray]:
    """An (optionally wobbly) ellipse on the object top. Returns (mask, ell) where ell < 1 inside."""
    rho = rng.uniform(*cfg.defect_radius)
    long_r = rho * scale_long
    short_r = long_r * rng.uniform(*aspect)
    margin = cfg.object_size - long_r * (1 + wobble) - 0.12 * cfg.object_size
    if cfg.object_shape == "disc":
        rr, ang = margin * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        a0, b0 = rr * math.cos(ang), rr * math.sin(ang)
    else:
        a0, b0 = rng.uniform(-1, 1, 2) * margin * 0.7
    th = rng.uniform(0, math.pi)
    da, db = scene["ta"] - a0, scene["tb"] - b0
    pa = da * math.cos(th) + db * math.sin(th)
    pb = -da * math.sin(th) + db * math.cos(th)
    ell = (pa / long_r) ** 2 + (pb / short_r) ** 2
    if wobble:
        n = scene["ta"].shape[0]
        ell = ell * (1 + wobble * 2 * (_smooth_noise(rng, n, n, 10) - 0.5))
    mask = (ell < 1) & scene["top"]
    if mask.sum() < 4:  # a degenerate draw cannot happen with validated configs; guard anyway
        raise RuntimeError("synthetic defect fell off the object")
    return mask, ell


def _scratch_region(rng: np.random.Generator, cfg: SyntheticConfig, scene: dict) -> np.ndarray:
    rho = rng.uniform(*cfg.defect_radius)
    half_len = 1.6 * rho
    pixel = 2 * cfg.distance * math.tan(math.radians(cfg.fov_deg) / 2) / cfg.size  # metres per pixel
    width = max(0.18 * rho, 1.5 * pixel)  # at least ~1.5 px wide so it survives at small sizes
    margin = cfg.object_size - half_len - 0.12 * cfg.object_size
    rr, ang = margin * math.sqrt(rng.random()) * 0.7, rng.uniform(0, 2 * math.pi)
    a0, b0 = rr * math.cos(ang), rr * math.sin(ang)
    th = rng.uniform(0, math.pi)
    bend = rng.uniform(-0.25, 0.25) / rho  # slight curvature
    da, db = scene["ta"] - a0, scene["tb"] - b0
    along = da * math.cos(th) + db * math.sin(th)
    across = -da * math.sin(th) + db * math.cos(th) - bend * along**2
    return (np.abs(along) < half_len) & (np.abs(across) < width / 2) & scene["top"]


def _apply_defect(rng: np.random.Generator, cfg: SyntheticConfig, scene: dict, rgb: np.ndarray,
                  depth: np.ndarray, defect: str) -> tuple[np.ndarray, str]:
    """Paint ``defect`` into rgb/depth in place. Returns (mask, kind)."""
    if defect == "rgb_only":
        if rng.random() < 0.5:
            mask, _ = _defect_region(rng, cfg, scene, 1.0, (0.6, 1.0), 0.3)
            col, alpha, kind = np.array([165.0, 85.0, 35.0]) + rng.uniform(-15, 15, 3), rng.uniform(0.65, 0.85), "stain"
        else:
            mask = _scratch_region(rng, cfg, scene)
            col, alpha, kind = np.array([235.0, 232.0, 220.0]), rng.uniform(0.7, 0.9), "scratch"
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * col
        return mask, kind
    if defect == "depth_only":
        mask, ell = _defect_region(rng, cfg, scene, 1.0, (0.6, 1.0), 0.0)
        amp = rng.uniform(*cfg.defect_depth)
        kind = "dent" if rng.random() < 0.6 else "bump"
        delta = amp * np.sqrt(np.clip(1 - ell[mask], 0, 1))  # spherical cap, nonzero to the edge
        depth[mask] += delta if kind == "dent" else -delta
        return mask, kind
    if defect == "both":
        if rng.random() < 0.5:
            mask, _ = _defect_region(rng, cfg, scene, 0.8, (0.75, 1.0), 0.15)
            kind = "hole"
        else:
            mask, _ = _defect_region(rng, cfg, scene, 1.5, (0.22, 0.35), 0.1)
            kind = "cut"
        depth[mask] += rng.uniform(0.4, 0.9) * cfg.object_height
        dark = np.array([40.0, 36.0, 33.0]) * rng.uniform(0.8, 1.2)
        rgb[mask] = 0.15 * rgb[mask] + 0.85 * dark
        rim = mask & ~_erode(mask, 1)  # structured light loses the steep cut walls
        depth[rim & (rng.random(mask.shape) < 0.5)] = 0.0
        return mask, kind
    raise ValueError(f"unknown defect {defect!r}; expected one of {', '.join(ALL_KINDS)}")


def make_sample(rng: np.random.Generator | int, config: SyntheticConfig | None = None,
                defect: str = "good", name: str = "") -> RGBDSample:
    """One synthetic sample. ``defect`` is ``good``, ``rgb_only``, ``depth_only`` or ``both``.

    The mask is all False for ``good`` and True exactly where the defect was painted.
    """
    cfg = config or SyntheticConfig()
    if defect not in ALL_KINDS:
        raise ValueError(f"unknown defect {defect!r}; expected one of {', '.join(ALL_KINDS)}")
    seeds = _as_rng(rng).integers(0, 2**63 - 1, size=3)
    scene_rng, defect_rng, noise_rng = (np.random.default_rng(int(s)) for s in seeds)

    scene = _render_scene(scene_rng, cfg)
    rgb, depth = scene["rgb"].copy(), scene["depth"].copy()
    n = cfg.size
    if defect == "good":
        mask, kind = np.zeros((n, n), bool), ""
    else:
        mask, kind = _apply_defect(defect_rng, cfg, scene, rgb, depth, defect)

    # sensor: every draw happens whatever the defect, so paired samples share their noise
    holes_field = _smooth_noise(noise_rng, n, n, max(6, n // 10))
    edge_draw = noise_rng.random((n, n))
    depth_n = noise_rng.standard_normal((n, n))
    rgb_n = noise_rng.standard_normal((n, n, 3))

    obj = scene["top"] | scene["side"]  # clean silhouette: defects never move the dropout band
    bw = max(1, round(n / 128))
    band = _dilate(obj, bw) & ~_erode(obj, bw)
    missing = band & (edge_draw < cfg.edge_dropout)
    if cfg.hole_fraction > 0:
        missing |= holes_field > np.quantile(holes_field, 1 - cfg.hole_fraction)
    valid = depth > 0
    depth = depth + depth_n * cfg.depth_noise * (depth / cfg.distance) ** 2
    depth[missing | ~valid] = 0.0

    rgb = np.clip(np.rint(rgb + rgb_n * cfg.rgb_noise), 0, 255).astype(np.uint8)
    meta = {"synthetic": True, "defect_kind": kind, "intrinsics": dict(scene["intrinsics"])}
    return RGBDSample(rgb=rgb, depth=depth.astype(np.float32), mask=mask, label=0 if defect == "good" else 1,
                      defect=defect, name=name, meta=meta)


# ---------------------------------------------------------------- dataset


def _plan(cfg: SyntheticConfig) -> list[tuple[str, str, int]]:
    plan = [("train", "good", cfg.n_train), ("validation", "good", cfg.n_validation), ("test", "good", cfg.n_test_good)]
    return plan + [("test", d, cfg.n_test_per_defect) for d in DEFECTS]


def make_synthetic_dataset(root: str | Path, config: SyntheticConfig | None = None,
                           overwrite: bool = False) -> Path:
    """Write a synthetic dataset in the rgbd-folder layout and return ``root``:
    ``train/good``, ``validation/good``, ``test/{good, rgb_only, depth_only, both}``, stems ``000``...

    Each sample's generator is seeded from ``(seed, split, defect, index)``, so changing one count
    does not change the other samples. train/validation get no mask files (unlabelled, as in
    MVTec 3D-AD); test samples get masks. ``overwrite=True`` replaces an earlier rgbd-folder
    dataset at ``root``; any other non-empty folder is refused.
    """
    cfg = config or SyntheticConfig()
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise DatasetError(f"{root} is not empty; pass overwrite=True to replace a synthetic dataset there")
        if not (root / CONFIG_NAME).is_file():
            raise DatasetError(f"{root} is not empty and holds no {CONFIG_NAME}; refusing to overwrite it")
        for split in ("train", "validation", "test"):
            if (root / split).is_dir():
                shutil.rmtree(root / split)
        (root / CONFIG_NAME).unlink()
    split_ids = {"train": 0, "validation": 1, "test": 2}
    for split, defect, count in _plan(cfg):
        for i in range(count):
            seq = np.random.SeedSequence([cfg.seed, split_ids[split], ALL_KINDS.index(defect), i])
            stem = f"{i:03d}"
            s = make_sample(np.random.default_rng(seq), cfg, defect, name=f"{split}/{defect}/{stem}")
            if split != "test":
                s = replace(s, mask=None)
            write_folder_sample(root, split, defect, stem, s, depth_scale=cfg.depth_scale,
                                intrinsics=cfg.intrinsics())
    (root / "synthetic.yaml").write_text(_config_yaml(cfg), encoding="utf-8")
    return root


def _config_yaml(cfg: SyntheticConfig) -> str:
    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    return "# SyntheticConfig that generated this dataset (edge.data.synthetic)\n" + yaml.safe_dump(d, sort_keys=False)
