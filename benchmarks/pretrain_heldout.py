"""Masked-token MSE of pretrained checkpoints on held-out EM, against an untrained network and baselines.

The crops come from a region no pretraining run saw (default: the validation
part z 120-159 of the labelled FIB cube); masks and crops are seeded, so every
checkpoint is scored on exactly the same targets. Baselines: predicting 0.5
everywhere, and predicting each sample's mean over what the model may see
(the visible tokens; for next-token prediction every token before the
target): the best a network that learned only brightness can do. Every
checkpoint is scored on every task; tasks outside its schedule are bracketed.

    python benchmarks/pretrain_heldout.py runs/pretrain_random/checkpoints/last.pt [more checkpoints]
        [--volume PATH:DATASET] [--batches 8]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from tokenunify.data.augment import AugmentConfig
from tokenunify.io.checkpoint import load_checkpoint
from tokenunify.models.registry import build_model
from tokenunify.pretrain.data import UnlabeledCrops
from tokenunify.pretrain.objectives import objective_loss
from tokenunify.pretrain.schedule import ScheduleSettings
from tokenunify.tokens.masks import build_sampler
from tokenunify.tokens.patchify import patchify

NO_AUGMENT = AugmentConfig(isotropic=True, flip_prob=0.0, transpose_prob=0.0, rotate_prob=0.0, elastic_prob=0.0,
                           intensity_prob=0.0, section_jitter=0.0, noise_prob=0.0, motion_blur_prob=0.0,
                           missing_section_prob=0.0, misalignment_prob=0.0)


def baselines(x: torch.Tensor, visible: torch.Tensor, target: torch.Tensor, patch: tuple[int, int, int],
              causal: bool) -> tuple[float, float]:
    """(MSE of 0.5, MSE of the mean of what the model may see) over the target tokens.

    For the dense objectives that is the mean of the visible tokens; for
    next-token prediction (`causal`) the mean of every token before the
    target, since the causal head sees the tokens after the prefix too.
    """
    tokens = patchify(x, patch)
    w = target.float()
    brightness = tokens.mean(-1)  # (B, K)
    if causal:
        before = torch.cumsum(brightness, 1) - brightness
        seen = torch.arange(tokens.shape[1]).clamp_min(1).float()[None]
        guess = (before / seen)[..., None]
    else:
        guess = ((brightness * visible).sum(1) / visible.sum(1))[:, None, None]
    mse_half = (((tokens - 0.5) ** 2).mean(-1) * w).sum() / w.sum()
    mse_vis = (((tokens - guess) ** 2).mean(-1) * w).sum() / w.sum()
    return float(mse_half), float(mse_vis)


@torch.no_grad()
def score(model: torch.nn.Module, crops: list[torch.Tensor], objective: str, sampler_kwargs: dict) -> dict[str, float]:
    """Mean target MSE of `model` and of the baselines over the fixed crops and masks of `objective`."""
    sampler = build_sampler(objective, **sampler_kwargs)
    model.eval()
    losses, half, vis = [], [], []
    for i, x in enumerate(crops):
        out = objective_loss(model, x, sampler, torch.Generator().manual_seed(1000 + i), normalize=False)
        losses.append(float(out.loss))
        h, v = baselines(x, out.masks.visible, out.masks.target, tuple(model.patch), sampler.head == "next")
        half.append(h)
        vis.append(v)
    return {"model": float(np.mean(losses)), "half": float(np.mean(half)), "visible_mean": float(np.mean(vis))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    data = os.environ.get("TOKENUNIFY_DATA", "../shared/data")
    parser.add_argument("--volume", default=f"{data}/fib_medulla_labeled_z0-160.h5:raw[120:160]")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--objectives", nargs="+", default=["random", "next", "next_all"],
                        help="tasks to score every checkpoint on; a task outside its schedule is shown in brackets")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    crops_by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}  # the same seeded crops for every checkpoint
    for path in args.checkpoints:
        state = load_checkpoint(path)
        config = state["config"]
        crop = tuple(config["train"]["crop"])
        if crop not in crops_by_shape:
            source, rng = UnlabeledCrops([args.volume], crop, NO_AUGMENT), np.random.default_rng(0)
            crops_by_shape[crop] = [source.batch(4, rng)[0] for _ in range(args.batches)]
        crops = crops_by_shape[crop]
        trained = build_model(state["model_spec"])
        trained.load_state_dict(state["model"])
        torch.manual_seed(config["train"]["seed"])
        untrained = build_model(state["model_spec"])
        own = set(ScheduleSettings(**config["schedule"]).objectives)
        for objective in args.objectives:
            kwargs = (config.get("samplers") or {}).get(objective) or {}
            t, u = score(trained, crops, objective, kwargs), score(untrained, crops, objective, kwargs)
            mark = objective if objective in own else f"({objective})"
            rows.append((path, state["step"], mark, t["model"], u["model"], t["half"], t["visible_mean"]))
    print(f"held-out crops from {args.volume}, {args.batches} batches of 4, no augmentation; MSE on target tokens")
    print("vis. mean: the mean of the visible tokens (next: of every token before the target)")
    print(f"{'checkpoint':48s} {'step':>5s} {'objective':10s} {'trained':>8s} {'untrained':>9s} {'const 0.5':>9s} {'vis. mean':>9s}")
    for path, step, objective, t, u, h, v in rows:
        print(f"{path:48s} {step:5d} {objective:10s} {t:8.4f} {u:9.4f} {h:9.4f} {v:9.4f}   trained/vis.mean {t / v:.2f}")


if __name__ == "__main__":
    main()
