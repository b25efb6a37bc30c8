"""PNG pictures of pretraining: loss per objective and reconstruction previews."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenunify.report.plots import plt, save_figure
from tokenunify.tokens.patchify import patchify, unpatchify


def plot_objective_losses(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss against step, one smoothed curve per objective (they have different scales)."""
    objectives = sorted({h["objective"] for h in history})
    fig, axes = plt.subplots(1, len(objectives), figsize=(5 * len(objectives), 3.8), squeeze=False)
    for ax, name in zip(axes[0], objectives):
        rows = [h for h in history if h["objective"] == name]
        steps = np.asarray([h["step"] for h in rows])
        loss = np.asarray([h["loss"] for h in rows], dtype=float)
        ax.plot(steps, loss, color="0.75", lw=0.7)
        if len(loss) >= 10:
            window = max(5, len(loss) // 20)
            ax.plot(steps[window - 1 :], np.convolve(loss, np.ones(window) / window, mode="valid"), color="C0", lw=1.8)
        ax.set_title(f"{name} ({len(rows)} steps)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss on target tokens")
    return save_figure(fig, path)


def _denormalise(pred: torch.Tensor, truth: torch.Tensor, normalized: bool) -> torch.Tensor:
    """Map per-patch-normalised predictions back to intensities using the true patch statistics."""
    if not normalized:
        return pred
    mean = truth.mean(dim=-1, keepdim=True)
    std = truth.var(dim=-1, unbiased=False, keepdim=True).add(1e-6).sqrt()
    return pred * std + mean


def reconstruction_png(
    path: str | Path,
    x: torch.Tensor,
    visible: torch.Tensor,
    target: torch.Tensor,
    prediction_tokens: torch.Tensor,
    patch: tuple[int, int, int],
    normalized: bool,
    title: str = "",
) -> Path:
    """Visible tokens | prediction on the targets | truth, for sample 0 at three depths.

    `prediction_tokens` is (B, K, F) for dense heads or (B, 1, F) for the
    next-token head, whose one token is pasted at the first target position.
    Tokens that are neither visible nor target are left grey in every panel.
    """
    x = x[:1].float().cpu()
    grid = tuple(s // p for s, p in zip(x.shape[2:], patch))
    truth = patchify(x, patch)[0]
    vis, tgt = visible[0].cpu(), target[0].cpu()
    pred = prediction_tokens[:1].float().cpu()[0]
    if pred.shape[0] != truth.shape[0]:
        full = torch.zeros_like(truth)
        full[tgt] = pred
        pred = full
    pred = _denormalise(pred, truth, normalized)
    grey = torch.full_like(truth, 0.5)
    shown_input = torch.where(vis[:, None], truth, grey)
    shown_pred = torch.where(tgt[:, None], pred.clamp(0, 1), torch.where(vis[:, None], truth, grey))
    shown_truth = torch.where((vis | tgt)[:, None], truth, grey)
    volumes = [unpatchify(t[None], patch, grid, 1)[0, 0].numpy() for t in (shown_input, shown_pred, shown_truth)]
    depth = x.shape[2]
    rows = sorted({depth // 4, depth // 2, (3 * depth) // 4})
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, z in enumerate(rows):
        for c, (name, vol) in enumerate(zip(("visible input", "prediction on targets", "truth"), volumes)):
            axes[r, c].imshow(vol[z], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[r, c].set_title(f"{name}, z={z}", fontsize=8)
            axes[r, c].axis("off")
    fig.suptitle(title)
    return save_figure(fig, path)
