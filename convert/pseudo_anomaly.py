"""Pseudo-anomaly synthesis for RGB-D training (DBRN: Bi, Li, Luo, "Dual-Branch
Reconstruction Network for Industrial Anomaly Detection with RGB-D Data").

Pure numpy + OpenCV; every random draw comes from the numpy Generator passed
in, so a seeded generator reproduces a sample exactly. See
docs/pseudo-anomalies.md for the rule and what is simplified.

Rule, per image (D = original view, A = anomaly texture, M = Perlin mask restricted
to the foreground, p ~ U(0, 1)):

    p >= 0.7          unchanged:   D,                                 M = 0
    0.5 <= p < 0.7    masked-out:  D * (1 - M)
    p < 0.5           blended:     D * (1 - M) + beta * D * M + (1 - beta) * A * M,
                                   beta ~ U(beta_range), default U(0, 1)

Depth works on the normalised height map in [0, 1] (0 = background plane,
1 = the part's fitted height scale); RGB on uint8 images.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CASES = ("unchanged", "masked_out", "blended")
MODALITIES = ("rgb", "depth", "both")


@dataclass(frozen=True)
class AnomalyConfig:
    """Probabilities and ranges of the synthesis (defaults = DBRN)."""

    p_unchanged: float = 0.3  # p >= 1 - p_unchanged
    p_masked_out: float = 0.2  # 1 - p_unchanged - p_masked_out <= p < 1 - p_unchanged
    beta_range: tuple[float, float] = (0.0, 1.0)  # opacity of the original in the blend
    perlin_threshold: float = 0.5
    perlin_scale_range: tuple[int, int] = (0, 6)  # exponents of 2, upper bound exclusive (DRAEM)
    # DBRN normalises depth into [0.2, 0.8] and blends textures in [0, 1]; see depth_anomaly.
    depth_norm_range: tuple[float, float] = (0.2, 0.8)
    p_crop_texture: float = 0.5  # share of RGB textures cut from other training images
    max_mask_tries: int = 10  # redraws when the Perlin mask misses the foreground

    def __post_init__(self) -> None:
        if not (0 <= self.p_unchanged and 0 <= self.p_masked_out and self.p_unchanged + self.p_masked_out <= 1):
            raise ValueError("p_unchanged and p_masked_out must be >= 0 and sum to at most 1")
        lo, hi = self.beta_range
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"beta_range must satisfy 0 <= lo <= hi <= 1, got {self.beta_range}")
        lo, hi = self.depth_norm_range
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"depth_norm_range must satisfy 0 <= lo < hi <= 1, got {self.depth_norm_range}")


DEFAULT = AnomalyConfig()


# ----------------------------------------------------------------------------- Perlin noise


def _fade(t: np.ndarray) -> np.ndarray:
    return ((6 * t - 15) * t + 10) * t * t * t


def perlin_noise_2d(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise of `shape` with `res` lattice periods per axis.

    Same construction as DRAEM's rand_perlin_2d (random unit gradients on a
    (res+1) lattice, quintic fade, scaled by sqrt(2) to roughly [-1, 1]), but any
    shape works: it need not be a multiple of res.
    """
    h, w = int(shape[0]), int(shape[1])
    ry, rx = max(int(res[0]), 1), max(int(res[1]), 1)
    angles = rng.uniform(0, 2 * np.pi, size=(ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    y = np.arange(h, dtype=np.float64) * ry / h
    x = np.arange(w, dtype=np.float64) * rx / w
    iy, ix = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]
    iy, ix = iy[:, None], ix[None, :]

    def dot(oy: int, ox: int) -> np.ndarray:
        return gy[iy + oy, ix + ox] * (fy - oy) + gx[iy + oy, ix + ox] * (fx - ox)

    ty, tx = _fade(fy), _fade(fx)
    n0 = dot(0, 0) * (1 - tx) + dot(0, 1) * tx
    n1 = dot(1, 0) * (1 - tx) + dot(1, 1) * tx
    return (np.sqrt(2) * (n0 * (1 - ty) + n1 * ty)).astype(np.float32)


def fractal_noise_2d(
    shape: tuple[int, int],
    res: tuple[int, int],
    rng: np.random.Generator,
    octaves: int = 4,
    persistence: float = 0.5,
) -> np.ndarray:
    """Sum of `octaves` Perlin layers, frequency x2 and amplitude x persistence each."""
    out = np.zeros(shape, np.float32)
    amp, f = 1.0, 1
    for _ in range(octaves):
        out += amp * perlin_noise_2d(shape, (res[0] * f, res[1] * f), rng)
        amp *= persistence
        f *= 2
    return out


def _rotate(img: np.ndarray, angle_deg: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle_deg, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    threshold: float = 0.5,
    scale_range: tuple[int, int] = (0, 6),
) -> np.ndarray:
    """Binary blob mask like DRAEM: Perlin noise with random scales 2**k per axis
    (k uniform in [scale_range[0], scale_range[1]) ), rotated by U(-90, 90)
    degrees, thresholded at `threshold`. Returns float32 {0, 1}."""
    kx = int(rng.integers(scale_range[0], scale_range[1]))
    ky = int(rng.integers(scale_range[0], scale_range[1]))
    noise = perlin_noise_2d(shape, (2**ky, 2**kx), rng)
    noise = _rotate(noise, float(rng.uniform(-90, 90)))
    return (noise > threshold).astype(np.float32)


def foreground_mask(
    fg: np.ndarray | None, shape: tuple[int, int], rng: np.random.Generator, cfg: AnomalyConfig = DEFAULT
) -> tuple[np.ndarray, int]:
    """M = perlin_mask & foreground (whole image if the foreground is empty or
    None). Redraws up to cfg.max_mask_tries times while M is empty; returns the
    mask (float32 {0, 1}) and the number of draws used. An empty mask is
    returned only when every draw missed (tiny foreground)."""
    if fg is None or not np.any(fg):
        region = np.ones(shape, bool)
    else:
        if fg.shape != tuple(shape):
            raise ValueError(f"foreground shape {fg.shape} differs from image shape {tuple(shape)}")
        region = fg.astype(bool)
    m = np.zeros(shape, np.float32)
    for tries in range(1, cfg.max_mask_tries + 1):
        m = perlin_mask(shape, rng, cfg.perlin_threshold, cfg.perlin_scale_range) * region
        if m.any():
            return m.astype(np.float32), tries
    return m.astype(np.float32), cfg.max_mask_tries


def draw_case(rng: np.random.Generator, cfg: AnomalyConfig = DEFAULT) -> tuple[str, float]:
    p = float(rng.uniform(0, 1))
    if p >= 1 - cfg.p_unchanged:
        return "unchanged", p
    if p >= 1 - cfg.p_unchanged - cfg.p_masked_out:
        return "masked_out", p
    return "blended", p


# ----------------------------------------------------------------------------- textures


def _colour_jitter(img01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random hue shift, saturation and value scaling, then contrast/brightness."""
    hsv = cv2.cvtColor(np.clip(img01, 0, 1).astype(np.float32), cv2.COLOR_RGB2HSV)  # H in [0, 360)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(0, 360)) % 360
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.6, 1.4), 0, 1)
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    c, b = rng.uniform(0.7, 1.3), rng.uniform(-0.15, 0.15)
    return np.clip((out - 0.5) * c + 0.5 + b, 0, 1).astype(np.float32)


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)


def procedural_texture(shape: tuple[int, int], rng: np.random.Generator, kind: str | None = None) -> tuple[np.ndarray, str]:
    """A procedural RGB texture in [0, 1] (H x W x 3 float32) and its kind:
    'perlin' (fractal Perlin colour field), 'stripes', 'checker' or 'noise'
    (blurred colour noise), followed by a random colour jitter."""
    kinds = ("perlin", "stripes", "checker", "noise")
    if kind is None:
        kind = kinds[int(rng.integers(len(kinds)))]
    h, w = shape
    c0, c1 = _two_colours(rng)
    if kind == "perlin":
        r = 2 ** int(rng.integers(0, 4))
        t = np.stack([fractal_noise_2d(shape, (r, r), rng, octaves=3) for _ in range(3)], -1)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0 * (1 - t) + c1 * t
    elif kind in ("stripes", "checker"):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0, np.pi)
        period = rng.uniform(4, max(h, w) / 3)
        u = (xx * np.cos(a) + yy * np.sin(a)) / period
        if kind == "stripes":
            t = 0.5 + 0.5 * np.sin(2 * np.pi * u)
        else:
            v = (-xx * np.sin(a) + yy * np.cos(a)) / period
            t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
        img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    elif kind == "noise":
        n = rng.normal(0.5, 0.25, size=(h, w, 3)).astype(np.float32)
        k = 2 * int(rng.integers(0, 4)) + 1
        img = cv2.GaussianBlur(n, (k, k), 0) if k > 1 else n
        img = 0.5 * img + 0.5 * (c0 * 0.5 + c1 * 0.5)
    else:
        raise ValueError(f"unknown procedural texture kind {kind!r}; expected one of {kinds}")
    return _colour_jitter(np.clip(img, 0, 1).astype(np.float32), rng), kind


class TextureBank:
    """Anomaly textures for RGB: procedural ones and crops of other training images.

    `images` are H x W x 3 uint8 training images (any sizes). A crop is a random
    box (side 1/4 to 1 of the image's shorter side) of an image *other than* the
    one being augmented, resized to the target shape, randomly flipped /
    rotated by 90 degree steps and colour-jittered.
    """

    def __init__(self, images: list[np.ndarray], rng: np.random.Generator | None = None,
                 p_crop: float = DEFAULT.p_crop_texture):
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"TextureBank image {i} must be HxWx3 uint8, got {im.shape} {im.dtype}")
        self.images = list(images)
        self.p_crop = float(p_crop)
        self.rng = rng  # default generator when sample() gets none

    def __len__(self) -> int:
        return len(self.images)

    def _candidates(self, exclude_index: int | None, exclude_image: np.ndarray | None) -> list[int]:
        out = []
        for i, im in enumerate(self.images):
            if i == exclude_index:
                continue
            if exclude_image is not None and (
                im is exclude_image or (im.shape == exclude_image.shape and np.array_equal(im, exclude_image))
            ):
                continue
            out.append(i)
        return out

    def crop(self, index: int, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        im = self.images[index]
        ih, iw = im.shape[:2]
        side_max = min(ih, iw)
        side = int(rng.integers(max(side_max // 4, 1), side_max + 1))
        y0 = int(rng.integers(0, ih - side + 1))
        x0 = int(rng.integers(0, iw - side + 1))
        patch = im[y0 : y0 + side, x0 : x0 + side].astype(np.float32) / 255.0
        patch = cv2.resize(patch, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        if rng.uniform() < 0.5:
            patch = patch[:, ::-1]
        if shape[0] == shape[1]:
            patch = np.rot90(patch, int(rng.integers(4)))
        patch = np.ascontiguousarray(patch)
        tex = _colour_jitter(patch, rng)
        return tex, {"source": "crop", "index": index, "box": (x0, y0, side, side)}

    def sample(
        self,
        shape: tuple[int, int],
        rng: np.random.Generator | None = None,
        exclude_index: int | None = None,
        exclude_image: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict]:
        """A texture H x W x 3 float32 in [0, 1] and where it came from:
        {'source': 'crop', 'index', 'box'} or {'source': 'procedural', 'kind'}."""
        rng = rng if rng is not None else self.rng
        if rng is None:
            raise ValueError("TextureBank.sample needs a numpy Generator (none given, none stored)")
        cands = self._candidates(exclude_index, exclude_image)
        if cands and rng.uniform() < self.p_crop:
            return self.crop(cands[int(rng.integers(len(cands)))], shape, rng)
        tex, kind = procedural_texture(shape, rng)
        return tex, {"source": "procedural", "kind": kind}


def depth_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Grey smooth texture in [0, 1]: fractal Perlin noise (base scale 2**k,
    k in 0..3, 4 octaves) min-max normalised."""
    r = 2 ** int(rng.integers(0, 4))
    t = fractal_noise_2d(shape, (r, r), rng, octaves=4)
    return ((t - t.min()) / max(float(t.max() - t.min()), 1e-6)).astype(np.float32)


# ----------------------------------------------------------------------------- applying a case


def _apply_rgb(rgb, m, case, rng, bank, cfg, exclude_index):
    info: dict = {}
    if case == "unchanged":
        return rgb.copy(), info
    d = rgb.astype(np.float32)
    m3 = m[..., None]
    if case == "masked_out":
        out = d * (1 - m3)
    else:
        beta = float(rng.uniform(*cfg.beta_range))
        if bank is None:
            tex, src = procedural_texture(rgb.shape[:2], rng)
            src = {"source": "procedural", "kind": src}
        else:
            tex, src = bank.sample(rgb.shape[:2], rng, exclude_index=exclude_index, exclude_image=rgb)
        a = tex * 255.0
        out = d * (1 - m3) + beta * d * m3 + (1 - beta) * a * m3
        info.update(beta=beta, texture=a.astype(np.float32), texture_source=src)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), info


def _apply_depth(h, m, case, rng, cfg):
    info: dict = {}
    if case == "unchanged":
        return h.copy(), info
    lo, hi = cfg.depth_norm_range
    if case == "masked_out":
        out = h * (1 - m)
    else:
        beta = float(rng.uniform(*cfg.beta_range))
        t = depth_texture(h.shape, rng)
        # DBRN: D' = lo + (hi - lo) * D in [0.2, 0.8], texture A' = t in [0, 1].
        # Same blend in the model's height space: A = (t - lo) / (hi - lo).
        a = (t - lo) / (hi - lo)
        out = h * (1 - m) + beta * h * m + (1 - beta) * a * m
        info.update(beta=beta, texture=a.astype(np.float32))
    # The model's height view is [0, 1]; clipping only touches masked pixels.
    return np.clip(out, 0, 1).astype(np.float32), info


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be HxWx3 uint8, got {rgb.shape} {rgb.dtype}")


def _height01(height01: np.ndarray) -> np.ndarray:
    if height01.ndim != 2:
        raise ValueError(f"height must be HxW, got shape {height01.shape}")
    return np.clip(height01.astype(np.float32), 0, 1)


def rgb_anomaly(
    rgb_uint8: np.ndarray,
    fg: np.ndarray | None,
    rng: np.random.Generator,
    bank: TextureBank | None = None,
    cfg: AnomalyConfig = DEFAULT,
    exclude_index: int | None = None,
    return_info: bool = False,
):
    """Pseudo-anomaly on an RGB uint8 image -> (augmented uint8, mask float32 {0,1})
    [, info]. bank=None uses procedural textures only. exclude_index: this
    image's index in the bank (images equal to rgb_uint8 are excluded anyway)."""
    _check_rgb(rgb_uint8)
    case, p = draw_case(rng, cfg)
    info = {"case": case, "p": p}
    if case == "unchanged":
        m = np.zeros(rgb_uint8.shape[:2], np.float32)
    else:
        m, info["mask_tries"] = foreground_mask(fg, rgb_uint8.shape[:2], rng, cfg)
    out, extra = _apply_rgb(rgb_uint8, m, case, rng, bank, cfg, exclude_index)
    info.update(extra)
    return (out, m, info) if return_info else (out, m)


def depth_anomaly(
    height01: np.ndarray,
    fg: np.ndarray | None,
    rng: np.random.Generator,
    cfg: AnomalyConfig = DEFAULT,
    return_info: bool = False,
):
    """Pseudo-anomaly on the normalised height map -> (augmented float32 in [0, 1],
    mask float32 {0,1}) [, info]. The input is clipped to [0, 1] first."""
    h = _height01(height01)
    case, p = draw_case(rng, cfg)
    info = {"case": case, "p": p}
    if case == "unchanged":
        m = np.zeros(h.shape, np.float32)
    else:
        m, info["mask_tries"] = foreground_mask(fg, h.shape, rng, cfg)
    out, extra = _apply_depth(h, m, case, rng, cfg)
    info.update(extra)
    return (out, m, info) if return_info else (out, m)


def modality_distribution(modality_probs) -> np.ndarray:
    """P(rgb only), P(depth only), P(both), normalised to sum to 1."""
    probs = np.asarray(modality_probs, np.float64)
    if probs.shape != (3,) or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"modality_probs must be 3 non-negative numbers (rgb, depth, both), got {modality_probs}")
    return probs / probs.sum()


def synthesize(
    rgb_uint8: np.ndarray,
    height01: np.ndarray,
    fg: np.ndarray | None,
    rng: np.random.Generator,
    bank: TextureBank | None = None,
    modality_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
    cfg: AnomalyConfig = DEFAULT,
    exclude_index: int | None = None,
    return_info: bool = False,
):
    """One RGB-D training sample -> (rgb uint8, height float32, union mask float32)
    [, info]. modality_probs = P(rgb only), P(depth only), P(both). One case and
    one mask are drawn per sample and shared by the modalities that get the
    anomaly (same defect location); textures and opacities are drawn per modality.
    """
    _check_rgb(rgb_uint8)
    h = _height01(height01)
    if h.shape != rgb_uint8.shape[:2]:
        raise ValueError(f"height {h.shape} and rgb {rgb_uint8.shape[:2]} differ")
    modality = MODALITIES[int(rng.choice(3, p=modality_distribution(modality_probs)))]
    case, p = draw_case(rng, cfg)
    info: dict = {"modality": modality, "case": case, "p": p}
    if case == "unchanged":
        m = np.zeros(h.shape, np.float32)
    else:
        m, info["mask_tries"] = foreground_mask(fg, h.shape, rng, cfg)
    zero = np.zeros_like(m)
    if modality in ("rgb", "both"):
        rgb_out, info["rgb"] = _apply_rgb(rgb_uint8, m, case, rng, bank, cfg, exclude_index)
        m_rgb = m
    else:
        rgb_out, info["rgb"], m_rgb = rgb_uint8.copy(), {}, zero
    if modality in ("depth", "both"):
        h_out, info["depth"] = _apply_depth(h, m, case, rng, cfg)
        m_depth = m
    else:
        h_out, info["depth"], m_depth = h.copy(), {}, zero
    union = np.maximum(m_rgb, m_depth).astype(np.float32)
    return (rgb_out, h_out, union, info) if return_info else (rgb_out, h_out, union)
