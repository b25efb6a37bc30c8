"""Affinity training: crops -> augmentation -> balanced BCE -> checkpoints and validation.

A run lives in one folder (`out_dir`): `config.yaml`, `checkpoints/last.pt`
(rewritten atomically every `checkpoint_every` steps), `checkpoints/best.pt`
(best validation VOI), `metrics.jsonl`, `loss.png` and `val_preview.png`.
`resume=True` continues from `last.pt` with the weights, optimiser, RNG
states and history it holds, so a killed run loses at most a few steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tokenunify.config import to_dict
from tokenunify.data.augment import augment, required_input_shape
from tokenunify.data.sampler import CropSampler, resolve_region
from tokenunify.ema import WeightAverage
from tokenunify.errors import InputError
from tokenunify.io import open_volume
from tokenunify.io.checkpoint import load_checkpoint, save_checkpoint
from tokenunify.io.validate import require_labels, require_raw, require_same_shape
from tokenunify.models.registry import build_model, count_parameters
from tokenunify.report.plots import plot_loss_curve, preview_png
from tokenunify.run_folder import RunFolder, cosine_lr, guarded_step, restore_rng, rng_state
from tokenunify.segment.affinities import affinities_from_labels, affinity_mask, balance_weights
from tokenunify.segment.init import load_pretrained
from tokenunify.segment.pipeline import sweep_scores
from tokenunify.segment.predict import predict_blockwise
from tokenunify.segment.settings import TrainSettings


# The task-specific output layer: re-initialised when fine-tuning a network
# pretrained for reconstruction (1 channel) to predict affinities.
HEAD_PREFIXES = ("decoder.head.", "head.")


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
    spec = {"name": m.name, "in_channels": 1, "out_channels": len(m.offsets), "anisotropic": m.anisotropic}
    if m.name == "tokenunify":
        return {**spec, "preset": m.preset, "mixer": m.mixer}
    return {**spec, "width": tuple(m.width)}


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


def network_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...],
                 settings: TrainSettings) -> tuple[torch.Tensor, float, bool]:
    """Forward (bf16 autocast if configured), balanced BCE, backward and a guarded optimiser step.

    Returns (loss, gradient norm before clipping, whether the step was taken).
    """
    raw, target, weight = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.train.bf16):
        logits = model(raw)
    loss = weighted_bce(logits, target, weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm, stepped = guarded_step(model, optimizer, settings.train.clip_grad_norm)
    return loss, grad_norm, stepped


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Short linear warm-up, then cosine decay from lr to lr_final."""
    loop = settings.train
    return cosine_lr(step, loop.steps, loop.lr, loop.lr_final)


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


def train(settings: TrainSettings, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train an affinity network as configured; returns a summary dict."""
    run = RunFolder(Path(settings.out_dir))
    run.check(resume, overwrite)
    if settings.train.threads:
        torch.set_num_threads(settings.train.threads)
    loop = settings.train
    input_shape = required_input_shape(tuple(loop.crop), settings.augment)
    data = open_training_data(settings, input_shape)

    torch.manual_seed(loop.seed)  # before building: the initial weights come from the seed
    spec = model_spec(settings)
    model = build_model(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    rng = np.random.default_rng(loop.seed)
    torch.manual_seed(loop.seed)
    step, history, val_history, best_voi = 0, [], [], math.inf
    init_report: dict[str, Any] | None = None
    if resume:
        state = load_checkpoint(run.last)
        model.load_state_dict(state.get("online_model", state["model"]))
        optimizer.load_state_dict(state["optimizer"])
        step, history, val_history = state["step"], state["history"], state["val_history"]
        best_voi = state.get("best_voi", math.inf)
        restore_rng(rng, state)
    elif settings.init:
        init_report = load_pretrained(model, settings.init, allow_mismatch=settings.init_allow_mismatch,
                                      head_prefixes=HEAD_PREFIXES)
    ema = None if loop.ema_decay is None else WeightAverage(model, loop.ema_decay)
    if ema is not None and resume:
        if "online_model" not in state:
            raise InputError(run.last, "this run was trained without train.ema_decay; resume it without EMA "
                                       "or start a new run")
        ema.load(state["model"], state["ema_updates"])
    evaluated = model if ema is None else ema.module
    run.write_config(settings)

    def checkpoint(path: Path) -> None:
        # "model" always holds the weights that are validated and that predict loads.
        weights = {"model": model.state_dict()} if ema is None else {
            "model": ema.state_dict(), "online_model": model.state_dict(), "ema_updates": ema.updates}
        save_checkpoint(path, {
            "model_spec": spec, **weights, "optimizer": optimizer.state_dict(), "step": step,
            "config": to_dict(settings), "history": history, "val_history": val_history, "best_voi": best_voi,
            **rng_state(rng),
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
        loss, grad_norm, stepped = network_step(model, optimizer, make_batch(data, settings, rng), settings)
        if ema is not None and stepped:
            ema.update(model)
        step += 1
        history.append({"step": step, "loss": float(loss.detach()), "lr": optimizer.param_groups[0]["lr"],
                        "seconds": time.monotonic() - tick, "grad_norm": grad_norm, "skipped": not stepped})
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if step % loop.checkpoint_every == 0 or step == loop.steps:
            checkpoint(run.last)
        if data.val_raw is not None and (step % loop.val_every == 0 or step == loop.steps):
            report, affs, seg = validate(evaluated, data, settings)
            best = report["best"]
            val_history.append({"step": step, **best})
            tqdm.write(f"step {step}: val VOI {best['voi']:.3f} (split {best['voi_split']:.3f}, merge {best['voi_merge']:.3f}), ARAND {best['arand']:.3f} at threshold {best['threshold']}")
            if best["voi"] < best_voi:
                best_voi = best["voi"]
                checkpoint(run.best)
                preview_png(run.file("val_preview.png"), data.val_raw, affs, seg, data.val_gt, title=f"validation, step {step}")
            checkpoint(run.last)
    bar.close()
    checkpoint(run.last)
    run.write_metrics(history + [{"val": v} for v in val_history])
    plot_loss_curve([h["step"] for h in history], [h["loss"] for h in history], run.file("loss.png"), val_history)
    return {
        "out_dir": str(run.root), "steps": step, "parameters": count_parameters(model),
        "final_loss": float(np.mean([h["loss"] for h in history[-20:]])) if history else None,
        "best_val": min(val_history, key=lambda v: v["voi"]) if val_history else None,
        "minutes": (time.monotonic() - started) / 60, "init": init_report,
        "skipped_steps": sum(1 for h in history if h.get("skipped")),
        "checkpoint": str(run.best if run.best.exists() else run.last),
    }
