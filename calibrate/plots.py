"""Evaluation plots: ROC curves, PRO curves and heatmap galleries (PNG).

matplotlib is imported lazily inside each function so that importing
``calibrate`` stays cheap and works where matplotlib is absent. Figures are
built with the object-oriented API on an Agg canvas (no pyplot): nothing is
registered with a GUI backend or pyplot's global figure list, so no figure can
leak and the global backend is never switched under other code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["plot_roc", "plot_pro", "heatmap_gallery"]


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi, bbox_inches="tight")
    fig.clear()
    return path


def plot_roc(curves: Mapping[str, tuple], path, title: str = "ROC") -> Path:
    """Several named ROC curves ``{name: (fpr, tpr, auc)}`` on one axes; returns the PNG path."""
    fig = _new_figure((5.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(np.asarray(fpr), np.asarray(tpr), linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_pro(curves: Mapping[str, tuple], path, title: str = "PRO", fpr_limit: float = 0.3) -> Path:
    """Several named PRO curves ``{name: (fpr, pro, aupro)}``; the AUPRO integration
    limit is drawn as a vertical line and the x axis shows [0, min(1, 2 * fpr_limit)]."""
    fig = _new_figure((5.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    for name, (fpr, pro, au) in curves.items():
        ax.plot(np.asarray(fpr), np.asarray(pro), linewidth=1.5, label=f"{name} (AUPRO@{fpr_limit:g} {au:.3f})")
    ax.axvline(fpr_limit, linestyle="--", color="grey", linewidth=1, label=f"FPR limit {fpr_limit:g}")
    ax.set_xlim(0, min(1.0, 2.0 * fpr_limit))
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (anomaly-free pixels)")
    ax.set_ylabel("per-region overlap")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def _colour_range(maps: Sequence[np.ndarray], vmin: float | None, vmax: float | None) -> tuple[float, float]:
    """One colour scale for every map: the given bounds, else the min / max over all maps."""
    if vmin is None:
        vmin = float(min(np.nanmin(m) for m in maps))
    if vmax is None:
        vmax = float(max(np.nanmax(m) for m in maps))
    if vmax <= vmin:
        vmax = vmin + 1e-6
    return vmin, vmax


@dataclass(frozen=True)
class _GalleryLayout:
    """Figure size in inches and the panel grid: n_groups rows of (RGB, heatmap, caption) panels."""

    n_cols: int
    n_groups: int
    panel_h: float
    caption_h: float
    fig_w: float
    fig_h: float
    top: float  # figure fraction below the title
    right: float  # figure fraction left of the colour bar


def _gallery_layout(n_items: int, first_rgb, max_cols: int, title: str) -> _GalleryLayout:
    n_cols = min(n_items, max_cols)
    n_groups = math.ceil(n_items / n_cols)
    # size the panels from the first image's aspect ratio so images fill their cells
    h0, w0 = np.asarray(first_rgb).shape[:2]
    panel_w = 2.4
    panel_h = panel_w * h0 / max(w0, 1)
    caption_h = 0.6
    title_h = 0.45 if title else 0.0
    fig_h = (2 * panel_h + caption_h) * n_groups + title_h
    cbar_w = 0.9  # inches kept free on the right for the shared colour bar
    fig_w = panel_w * n_cols + cbar_w
    return _GalleryLayout(n_cols=n_cols, n_groups=n_groups, panel_h=panel_h, caption_h=caption_h, fig_w=fig_w,
                          fig_h=fig_h, top=1.0 - title_h / fig_h, right=1.0 - cbar_w / fig_w)


def _draw_item(fig, cells, it: dict, amap: np.ndarray, vmin: float, vmax: float):
    """One item's three panels in cells (RGB with the ground-truth contour, heatmap over the RGB,
    caption); returns the heatmap's image (for the colour bar)."""
    rgb = np.asarray(it["rgb"])
    h, w = rgb.shape[:2]
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # map/mask drawn over the image whatever their resolution
    mask = it.get("mask")

    ax_rgb = fig.add_subplot(cells[0])
    ax_rgb.imshow(rgb, interpolation="nearest")
    if mask is not None and np.any(mask):
        m = np.asarray(mask).astype(np.float32)
        ax_rgb.contour(m, levels=[0.5], colors="lime", linewidths=1.0, extent=extent, origin="upper")

    ax_map = fig.add_subplot(cells[1])
    ax_map.imshow(rgb, interpolation="nearest")
    heat = ax_map.imshow(amap, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax, extent=extent, interpolation="bilinear")

    ax_txt = fig.add_subplot(cells[2])
    label = int(it.get("label", -1))
    kind = {0: "good", 1: "anomalous"}.get(label, "unknown")
    ax_txt.text(
        0.5, 0.5,
        f"{it.get('name', '')}\nlabel {label} ({kind})\nscore {float(it.get('score', float('nan'))):.4g}",
        ha="center", va="center", fontsize=8, transform=ax_txt.transAxes,
        color="firebrick" if label == 1 else "black",
    )
    for ax in (ax_rgb, ax_map, ax_txt):
        ax.set_axis_off()
    return heat


def _add_colour_bar(fig, heat, lay: _GalleryLayout) -> None:
    bar_h = min(0.6 * lay.top, 3.0 / lay.fig_h)
    cax = fig.add_axes((lay.right + 0.12 / lay.fig_w, (lay.top - bar_h) / 2, 0.15 / lay.fig_w, bar_h))
    cbar = fig.colorbar(heat, cax=cax)
    cbar.solids.set_alpha(1.0)
    cbar.set_label("anomaly score")


def heatmap_gallery(
    items: Sequence[dict],
    path,
    title: str = "",
    max_cols: int = 6,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """Grid of samples, one column of three panels per item.

    Each item is a dict with ``rgb`` (H x W x 3 uint8), ``map`` (h x w float,
    may be lower resolution: it is stretched over the image), ``mask`` (H x W
    bool or None), ``score`` (float), ``label`` (int) and ``name`` (str).
    Panels: RGB with the ground-truth contour, the heatmap over the RGB (jet,
    alpha 0.5) and a caption. All heatmaps share one colour scale so that
    colours are comparable across samples; it defaults to the min / max over
    all maps.
    """
    items = list(items)
    if not items:
        raise ValueError("heatmap_gallery: no items to draw")
    if max_cols < 1:
        raise ValueError(f"max_cols must be >= 1, got {max_cols}")
    maps = [np.asarray(it["map"], dtype=np.float32) for it in items]
    vmin, vmax = _colour_range(maps, vmin, vmax)
    lay = _gallery_layout(len(items), items[0]["rgb"], max_cols, title)
    fig = _new_figure((lay.fig_w, lay.fig_h))
    grid = fig.add_gridspec(
        3 * lay.n_groups, lay.n_cols, height_ratios=[lay.panel_h, lay.panel_h, lay.caption_h] * lay.n_groups,
        hspace=0.06, wspace=0.05, top=lay.top, bottom=0.0, left=0.0, right=lay.right,
    )
    heat = None
    for i, (it, amap) in enumerate(zip(items, maps)):
        g, c = divmod(i, lay.n_cols)
        heat = _draw_item(fig, [grid[3 * g + k, c] for k in range(3)], it, amap, vmin, vmax)
    if heat is not None:
        _add_colour_bar(fig, heat, lay)
    if title:
        fig.suptitle(title, y=1.0 - 0.1 / lay.fig_h, va="top")
    return _save(fig, path)
