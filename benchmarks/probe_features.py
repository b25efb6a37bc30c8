"""Linear boundary probe of each encoder level: what do pretrained features know about membranes?

Usage::

    python benchmarks/probe_features.py NAME=CHECKPOINT|fresh [NAME=... ...]
        [--config configs/study_fib.yaml] [--seed 0] [--per-tile 3000] [--threads N]

For each network (a pretraining or affinity checkpoint loaded into the
study's fine-tuning network by `load_pretrained`, exactly as a study arm
starts, or `fresh`: the network at scratch's initialisation for `--seed`),
runs the encoder in eval mode on non-overlapping tiles of the study's
training crop size from the labelled cube, upsamples each level's features
(stem, stage 0..3) trilinearly to full resolution and fits a class-balanced
logistic regression that predicts "boundary" (any of the three nearest
affinities is 0) from one level's channels, and from all levels together.
The probe is fitted on voxels of the tiles of z 0-31 and scored by ROC AUC
and average precision on every voxel of the tiles of z 128-159 (inside the
study's validation part; no network here saw those labels). `raw 3x3x3`, a
probe on the 27 raw intensities around each voxel, is the intensity floor.

Beside each level it prints the spatial share of its features: the
variance over the scored voxels, summed over channels, over the mean
squared feature (1: no component common to all voxels; near 0: every voxel
carries nearly the same vector, and a gradient step on the decoder sees
little of what tells voxels apart).

A level whose probe scores lower for a pretrained network than for `fresh`
lost boundary information in pretraining; a higher one gained it. Linear
separability is not trainability, so this tells the hypotheses of
docs/study_runs.md apart, it does not predict fine-tuning VOI.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokenunify.finetune import train as ft
from tokenunify.finetune.affinities import affinities_from_labels
from tokenunify.finetune.init import load_pretrained
from tokenunify.finetune.settings import TrainSettings
from tokenunify.io.volumes import open_volume
from tokenunify.models.registry import build_model
from tokenunify.predict.inference import to_unit_float
from tokenunify.runtime import tune_malloc
from tokenunify.study.plan import plan_study
from tokenunify.study.run_study import load_study

FIT_Z, SCORE_Z = (0, 32), (128, 160)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("networks", nargs="+", help="NAME=CHECKPOINT or NAME=fresh")
    p.add_argument("--config", type=Path, default=Path("configs/study_fib.yaml"))
    p.add_argument("--seed", type=int, default=0, help="initialisation seed of every network (as the study's seed)")
    p.add_argument("--per-tile", type=int, default=3000, help="fit voxels drawn per tile")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


Tile = tuple[np.ndarray, np.ndarray, np.ndarray]  # raw in [0, 1], boundary 0/1, scored voxels


def _tiles(raw: np.ndarray, labels: np.ndarray, z: tuple[int, int], crop: tuple[int, int, int]) -> Iterator[Tile]:
    """Non-overlapping crops (raw in [0, 1], boundary 0/1) covering `z` and as much of y, x as fits."""
    dz, dy, dx = crop
    for z0 in range(z[0], z[1] - dz + 1, dz):
        for y0 in range(0, raw.shape[1] - dy + 1, dy):
            for x0 in range(0, raw.shape[2] - dx + 1, dx):
                sl = np.s_[z0:z0 + dz, y0:y0 + dy, x0:x0 + dx]
                affs = affinities_from_labels(labels[sl])
                # the first plane of each axis has no neighbour inside the tile: not scored
                boundary = (affs.min(axis=0) == 0).astype(np.float32)
                valid = np.zeros(crop, dtype=bool)
                valid[1:, 1:, 1:] = True
                yield to_unit_float(raw[sl]), boundary, valid


@torch.no_grad()
def _level_features(model: torch.nn.Module, x: np.ndarray) -> list[torch.Tensor]:
    """Each encoder level's features at full resolution, `(C_level, D, H, W)` each."""
    t = torch.from_numpy(x)[None, None]
    feats = model.encode(t)
    return [F.interpolate(f.float(), size=x.shape, mode="trilinear", align_corners=False)[0] for f in feats]


def _raw_neighbourhood(x: np.ndarray) -> torch.Tensor:
    """The 27 raw intensities of each voxel's 3x3x3 neighbourhood, `(27, D, H, W)`."""
    t = F.pad(torch.from_numpy(x)[None, None], (1, 1) * 3, mode="replicate")[0, 0]
    d, h, w = x.shape
    return torch.stack([t[i:i + d, j:j + h, k:k + w] for i in range(3) for j in range(3) for k in range(3)])


def _fit_logistic(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-balanced L2 logistic regression on standardised features; returns (mean, std, w, b)."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    pos = y.mean().clamp(1e-6, 1 - 1e-6)
    weight = torch.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y, weight=weight) + 1e-4 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, w.detach(), b.detach()


def _auc_ap(score: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """ROC AUC (rank statistic, ties averaged) and average precision of `score` for the labels `y`."""
    from scipy.stats import rankdata

    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(score)
    auc = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    order = np.argsort(-score, kind="stable")
    hits = pos[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    ap = float(precision[hits].sum() / n_pos)
    return float(auc), ap


def _collect(model: torch.nn.Module | None, tiles: list[Tile], rng: np.random.Generator | None,
             per_tile: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Per level (and `all`), features and labels of the sampled (fit) or all valid (score) voxels."""
    xs: dict[str, list[torch.Tensor]] = {}
    ys: list[np.ndarray] = []
    for raw, boundary, valid in tiles:
        idx = np.flatnonzero(valid.ravel())
        if rng is not None:
            idx = rng.choice(idx, size=min(per_tile, len(idx)), replace=False)
        levels = {"raw 3x3x3": _raw_neighbourhood(raw)} if model is None else \
            {("stem" if i == 0 else f"stage {i - 1}"): f for i, f in enumerate(_level_features(model, raw))}
        if model is not None:
            levels["all levels"] = torch.cat(list(levels.values()))
        t_idx = torch.from_numpy(idx)
        for name, f in levels.items():
            xs.setdefault(name, []).append(f.reshape(f.shape[0], -1)[:, t_idx].T.contiguous())
        ys.append(boundary.ravel()[idx])
    return {k: torch.cat(v) for k, v in xs.items()}, np.concatenate(ys)


def _build(spec: str, settings: TrainSettings, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(ft.model_spec(settings))
    if spec != "fresh":
        load_pretrained(model, spec, allow_mismatch=False, head_prefixes=ft.HEAD_PREFIXES, offsets=settings.model.offsets)
    return model.eval()


def main() -> None:
    args = _parse()
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    nets = []
    for item in args.networks:
        name, sep, spec = item.partition("=")
        if not sep or not spec:
            raise SystemExit(f"expected NAME=CHECKPOINT or NAME=fresh, got {item!r}")
        if spec != "fresh" and not Path(spec).is_file():
            raise SystemExit(f"{name}: no checkpoint at {spec}")
        nets.append((name, spec))
    study = load_study(args.config, [], quick=False)
    settings = next(s for s in plan_study(study) if s.kind == "finetune" and s.arm == "scratch").settings
    crop = tuple(settings.train.crop)
    raw = open_volume(settings.data.raw).read()
    labels = open_volume(settings.data.labels).read()
    fit_tiles = list(_tiles(raw, labels, FIT_Z, crop))
    score_tiles = list(_tiles(raw, labels, SCORE_Z, crop))
    y_score_frac = float(np.mean([b[v].mean() for _, b, v in score_tiles]))
    print(f"probe: fit on {len(fit_tiles)} tiles of {crop} from z {FIT_Z[0]}-{FIT_Z[1] - 1} "
          f"({args.per_tile} voxels each), scored on every voxel of {len(score_tiles)} tiles from "
          f"z {SCORE_Z[0]}-{SCORE_Z[1] - 1}; boundary fraction {y_score_frac:.3f}; ROC AUC / average precision")
    for name, spec in [("intensity", None), *nets]:
        started = time.perf_counter()
        model = None if spec is None else _build(spec, settings, args.seed)
        x_fit, y_fit = _collect(model, fit_tiles, np.random.default_rng(args.seed), args.per_tile)
        x_score, y_score = _collect(model, score_tiles, None, args.per_tile)
        for level in x_fit:
            mean, std, w, b = _fit_logistic(x_fit[level], torch.from_numpy(y_fit))
            score = (((x_score[level] - mean) / std) @ w + b).numpy()
            auc, ap = _auc_ap(score, y_score)
            share = float(x_score[level].var(0).sum() / x_score[level].pow(2).mean(0).sum())
            print(f"{name:14s} {level:11s} AUC {auc:.3f}  AP {ap:.3f}  spatial share {share:.3f}", flush=True)
        print(f"{name:14s} ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
