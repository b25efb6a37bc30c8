"""Affinity training: crops -> augmentation -> balanced BCE -> checkpoints and validation.

A run lives in one folder (`out_dir`): `config.yaml`, `checkpoints/last.pt`
(rewritten atomically every `checkpoint_every` steps), `checkpoints/best.pt`
(best validation VOI), `metrics.jsonl`, `loss.png` and `val_preview.png`.
`resume=True` continues from `last.pt` with the weights, optimiser, RNG
states and history it holds, so a killed run loses at most a few steps.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from tokenunify.config import to_dict
from tokenunify.data.augment import augment, required_input_shape
from tokenunify.data.sampler import CropSampler, resolve_region
from tokenunify.errors import InputError, OutputError
from tokenunify.io import open_volume
from tokenunify.io.checkpoint import load_checkpoint, save_checkpoint
from tokenunify.io.validate import require_labels, require_raw, require_same_shape
from tokenunify.models.registry import build_model, count_parameters
from tokenunify.report.plots import plot_loss_curve, preview_png
from tokenunify.segment.affinities import affinities_from_labels, affinity_mask, balance_weights
from tokenunify.segment.init import load_pretrained
from tokenunify.segment.pipeline import sweep_scores
from tokenunify.segment.predict import predict_blockwise
from tokenunify.segment.settings import TrainSettings


@dataclass
class TrainData:
    """Opened, checked volumes and samplers for one run."""

    sampler: CropSampler
    val_raw: np.ndarray | None
    val_gt: np.ndarray | None
    voxel_size: tuple[float, ...]


def model_spec(settings: TrainSettings) -> dict[str, Any]:
    """The spec a checkpoint stores so the network can be rebuilt anywhere."""
    m = settings.model
    return {"name": m.name, "in_channels": 1, "out_channels": len(m.offsets), "width": tuple(m.width), "anisotropic": m.anisotropic}


def open_training_data(settings: TrainSettings, input_shape: tuple[int, int, int]) -> TrainData:
    """Open and check raw/labels (train and validation), failing before any training."""
    d = settings.data
    if not d.raw or not d.labels:
        raise InputError("config", "data.raw and data.labels must name volumes (PATH:DATASET)")
    raw, labels = open_volume(d.raw), open_volume(d.labels)
    require_raw(raw)
    require_labels(labels)
    require_same_shape(raw, labels)
    sampler = CropSampler(raw, labels, resolve_region(raw, d.train_z), input_shape)
    val_raw = val_gt = None
    if d.val_z is not None or d.val_raw is not None:
        vraw = open_volume(d.val_raw) if d.val_raw else raw
        vlab = open_volume(d.val_labels) if d.val_labels else labels
        if d.val_raw:
            require_raw(vraw)
            require_labels(vlab)
            require_same_shape(vraw, vlab)
        region = resolve_region(vraw, d.val_z)
        window = (slice(region.start, region.stop), slice(None), slice(None))
        val_raw, val_gt = vraw[window], vlab[window].astype(np.uint64)
    return TrainData(sampler, val_raw, val_gt, raw.voxel_size)


def make_batch(data: TrainData, settings: TrainSettings, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """A batch of (raw, target affinities, loss weights) as tensors."""
    crop = tuple(settings.train.crop)
    offsets = settings.model.offsets
    raws, targets, weights = [], [], []
    for _ in range(settings.train.batch_size):
        raw, labels = data.sampler.sample(rng)
        raw, labels = augment(raw, labels, crop, settings.augment, rng)
        affs = affinities_from_labels(labels, offsets)
        mask = affinity_mask(labels, offsets)
        raws.append(raw[None])
        targets.append(affs)
        weights.append(balance_weights(affs, mask))
    as_tensor = lambda items: torch.from_numpy(np.stack(items).astype(np.float32, copy=False))  # noqa: E731
    return as_tensor(raws), as_tensor(targets), as_tensor(weights)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy; the weights already sum positives and negatives equally."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight, reduction="sum")
    return loss / weight.sum().clamp_min(1.0)


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Short linear warm-up, then cosine decay from lr to lr_final."""
    loop = settings.train
    warmup = min(100, loop.steps // 10)
    if step < warmup:
        return loop.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, loop.steps - warmup)
    return loop.lr_final + 0.5 * (loop.lr - loop.lr_final) * (1 + math.cos(math.pi * min(progress, 1.0)))


def validate(model: torch.nn.Module, data: TrainData, settings: TrainSettings) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Predict the validation region, run the segmentation sweep and score it."""
    assert data.val_raw is not None and data.val_gt is not None
    model.eval()
    affs = np.zeros((len(settings.model.offsets),) + data.val_raw.shape, dtype=np.float32)
    p = settings.predict
    predict_blockwise(model, data.val_raw, affs, tuple(p.block), tuple(p.overlap), batch_size=p.batch_size, bf16=p.bf16, progress=False)
    model.train()
    rows, best, seg = sweep_scores(affs, data.val_gt, settings.model.offsets, settings.segment)
    return {"best": best, "rows": rows}, affs, seg


def _run_paths(out_dir: Path) -> dict[str, Path]:
    return {
        "last": out_dir / "checkpoints" / "last.pt",
        "best": out_dir / "checkpoints" / "best.pt",
        "config": out_dir / "config.yaml",
        "metrics": out_dir / "metrics.jsonl",
        "loss_png": out_dir / "loss.png",
        "preview": out_dir / "val_preview.png",
    }


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text("".join(json.dumps(row) + "\n" for row in history))
    staging.replace(path)


def train(settings: TrainSettings, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train an affinity network as configured; returns a summary dict."""
    out_dir = Path(settings.out_dir)
    paths = _run_paths(out_dir)
    if paths["last"].exists() and not (resume or overwrite):
        raise OutputError(out_dir, "already holds a training run; pass --resume to continue it or --overwrite to start again")
    if resume and not paths["last"].exists():
        raise InputError(paths["last"], "nothing to resume: no checkpoint in this run folder")
    if settings.train.threads:
        torch.set_num_threads(settings.train.threads)
    loop = settings.train
    input_shape = required_input_shape(tuple(loop.crop), settings.augment)
    data = open_training_data(settings, input_shape)

    spec = model_spec(settings)
    model = build_model(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    rng = np.random.default_rng(loop.seed)
    torch.manual_seed(loop.seed)
    step, history, val_history, best_voi = 0, [], [], math.inf
    init_report: dict[str, Any] | None = None
    if resume:
        state = load_checkpoint(paths["last"])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, val_history = state["step"], state["history"], state["val_history"]
        best_voi = state.get("best_voi", math.inf)
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
    elif settings.init:
        init_report = load_pretrained(model, settings.init)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths["config"].write_text(yaml.safe_dump(to_dict(settings), sort_keys=False))

    def checkpoint(path: Path) -> None:
        save_checkpoint(path, {
            "model_spec": spec, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "config": to_dict(settings), "history": history, "val_history": val_history, "best_voi": best_voi,
            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "offsets": [list(o) for o in settings.model.offsets], "voxel_size": list(data.voxel_size),
        })

    started = time.monotonic()
    bar = tqdm(total=loop.steps, initial=step, disable=not progress, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    while step < loop.steps:
        if loop.max_minutes is not None and time.monotonic() - started > 60 * loop.max_minutes:
            tqdm.write(f"time limit of {loop.max_minutes} min reached at step {step}")
            break
        tick = time.monotonic()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        raw, target, weight = make_batch(data, settings, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=loop.bf16):
            logits = model(raw)
        loss = weighted_bce(logits, target, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        history.append({"step": step, "loss": float(loss.detach()), "lr": optimizer.param_groups[0]["lr"], "seconds": time.monotonic() - tick})
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if step % loop.checkpoint_every == 0 or step == loop.steps:
            checkpoint(paths["last"])
        if data.val_raw is not None and (step % loop.val_every == 0 or step == loop.steps):
            report, affs, seg = validate(model, data, settings)
            best = report["best"]
            val_history.append({"step": step, **best})
            tqdm.write(f"step {step}: val VOI {best['voi']:.3f} (split {best['voi_split']:.3f}, merge {best['voi_merge']:.3f}), ARAND {best['arand']:.3f} at threshold {best['threshold']}")
            if best["voi"] < best_voi:
                best_voi = best["voi"]
                checkpoint(paths["best"])
                preview_png(paths["preview"], data.val_raw, affs, seg, data.val_gt, title=f"validation, step {step}")
            checkpoint(paths["last"])
    bar.close()
    checkpoint(paths["last"])
    _write_metrics(paths["metrics"], history + [{"val": v} for v in val_history])
    plot_loss_curve([h["step"] for h in history], [h["loss"] for h in history], paths["loss_png"], val_history)
    return {
        "out_dir": str(out_dir), "steps": step, "parameters": count_parameters(model),
        "final_loss": float(np.mean([h["loss"] for h in history[-20:]])) if history else None,
        "best_val": min(val_history, key=lambda v: v["voi"]) if val_history else None,
        "minutes": (time.monotonic() - started) / 60, "init": init_report,
        "checkpoint": str(paths["best"] if paths["best"].exists() else paths["last"]),
    }
