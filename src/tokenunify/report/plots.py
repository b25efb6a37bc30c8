"""PNG pictures of results: loss curves and raw / affinity / segmentation previews."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless machines and CI have no display
import matplotlib.pyplot as plt
import numpy as np

from tokenunify.io.atomic import atomic_path


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a figure atomically (a reader never sees half a PNG) and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as staging:
            fig.savefig(staging, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_loss_curve(
    steps: Sequence[int], losses: Sequence[float], path: str | Path, val: Sequence[dict[str, Any]] = (), title: str = "training loss"
) -> Path:
    """Loss against step (raw and smoothed), with validation VOI/ARAND on a second panel."""
    panels = 2 if val else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    steps_arr, loss_arr = np.asarray(steps), np.asarray(losses, dtype=float)
    ax.plot(steps_arr, loss_arr, color="0.75", lw=0.8, label="per step")
    if len(loss_arr) >= 5:
        window = max(5, len(loss_arr) // 25)
        smooth = np.convolve(loss_arr, np.ones(window) / window, mode="valid")
        ax.plot(steps_arr[window - 1 :], smooth, color="C0", lw=1.8, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    if val:
        ax2 = axes[0, 1]
        vsteps = [v["step"] for v in val]
        ax2.plot(vsteps, [v["voi"] for v in val], "o-", label="VOI (best threshold)")
        ax2.plot(vsteps, [v["arand"] for v in val], "s-", label="ARAND")
        ax2.set_xlabel("step")
        ax2.set_title("validation")
        ax2.legend()
    return save_figure(fig, path)


def _label_colours(seg: np.ndarray, seed: int = 3) -> np.ndarray:
    """Random but stable colours per id; id 0 is black."""
    ids, inverse = np.unique(seg, return_inverse=True)
    rng = np.random.default_rng(seed)
    palette = rng.uniform(0.15, 1.0, size=(len(ids), 3))
    palette[ids == 0] = 0.0
    return palette[inverse.reshape(seg.shape)]


def preview_png(
    path: str | Path,
    raw: np.ndarray,
    affs: np.ndarray | None = None,
    seg: np.ndarray | None = None,
    gt: np.ndarray | None = None,
    z: int | None = None,
    title: str = "",
    z_label: int | None = None,
) -> Path:
    """One z section: raw, affinities (z,y,x channels as RGB), segmentation overlay and ground truth.

    `z_label` is the section's index in the title when the arrays are a slab cut from a larger volume.
    """
    z = raw.shape[0] // 2 if z is None else z
    panels: list[tuple[str, np.ndarray, dict[str, Any]]] = [("raw", raw[z], {"cmap": "gray"})]
    if affs is not None:
        rgb = np.moveaxis(np.clip(affs[:3, z], 0, 1), 0, -1)
        panels.append(("affinities (z,y,x as R,G,B)", rgb, {}))
    grey = raw[z].astype(np.float32)
    grey = (grey - grey.min()) / max(float(np.ptp(grey)), 1e-6)
    if seg is not None:
        overlay = 0.55 * _label_colours(seg[z]) + 0.45 * grey[..., None]
        panels.append((f"segmentation ({len(np.unique(seg))} ids)", overlay, {}))
    if gt is not None:
        overlay = 0.55 * _label_colours(gt[z], seed=5) + 0.45 * grey[..., None]
        panels.append(("ground truth", overlay, {}))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3), squeeze=False)
    for ax, (name, image, kwargs) in zip(axes[0], panels):
        ax.imshow(image, interpolation="nearest", **kwargs)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title} z={z if z_label is None else z_label}".strip())
    return save_figure(fig, path)


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "threshold sweep") -> Path:
    """VOI split/merge and ARAND against the agglomeration threshold."""
    thresholds = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(thresholds, [r["voi_split"] for r in rows], "o-", label="VOI split")
    ax.plot(thresholds, [r["voi_merge"] for r in rows], "o-", label="VOI merge")
    ax.plot(thresholds, [r["voi"] for r in rows], "o-", lw=2, label="VOI")
    ax.plot(thresholds, [r["arand"] for r in rows], "s--", label="ARAND")
    ax.set_xlabel("agglomeration threshold")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)
