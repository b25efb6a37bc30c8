"""Affinity training: crops -> augmentation -> balanced BCE -> checkpoints and validation.

A run lives in one folder (`out_dir`): `config.yaml`, `checkpoints/last.pt`
(rewritten atomically every `checkpoint_every` steps), `checkpoints/best.pt`
(best validation VOI), `metrics.jsonl`, `loss.png` and `val_preview.png`.
`resume=True` continues from `last.pt` with the weights, optimiser, RNG
states and history it holds, so a killed run loses at most a few steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tokenunify.data.augment import augment, required_input_shape
from tokenunify.data.sampler import CropSampler, resolve_region
from tokenunify.errors import ConfigError, InputError
from tokenunify.finetune.affinities import (
    affinities_from_labels,
    affinity_mask,
    balance_weights,
)
from tokenunify.finetune.holdout import open_holdout, score_holdout
from tokenunify.finetune.init import format_init_report, load_pretrained
from tokenunify.finetune.settings import TrainSettings
from tokenunify.io import open_volume
from tokenunify.io.validate import require_labels, require_raw, require_same_shape
from tokenunify.models.registry import build_model, count_parameters
from tokenunify.postprocess.pipeline import sweep_scores
from tokenunify.predict.inference import predict_blockwise
from tokenunify.report.plots import plot_loss_curve, preview_png
from tokenunify.training.devices import autocast, precision, resolve_device
from tokenunify.training.distributed import Dist, world_size
from tokenunify.training.loop import EvalResult, StepContext, Task, run_training
from tokenunify.training.run_folder import RunFolder
from tokenunify.training.step import StepOutput, optimizer_step

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
        spec = {**spec, "preset": m.preset, "mixer": m.mixer}
        return spec if m.full_res == "block" else {**spec, "full_res": m.full_res}
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
        weights.append(balance_weights(affs, mask, clip=tuple(settings.train.balance_clip)))
    as_tensor = lambda items: torch.from_numpy(np.stack(items).astype(np.float32, copy=False))
    return as_tensor(raws), as_tensor(targets), as_tensor(weights)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy; the weights already sum positives and negatives equally."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight, reduction="sum")
    return loss / weight.sum().clamp_min(1.0)


def fine_tune_step(forward: torch.nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device,
                   bf16: bool) -> StepOutput:
    """Forward (bf16 autocast if configured) and the balanced BCE of one batch, on `device`."""
    raw, target, weight = (t.to(device, non_blocking=True) for t in batch)
    with autocast(device, bf16):
        logits = forward(raw)
    loss = weighted_bce(logits, target, weight)
    return StepOutput(loss, float(weight.sum().clamp_min(1.0)))


def network_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...],
                 settings: TrainSettings, device: torch.device = torch.device("cpu")) -> tuple[float, float, bool]:
    """One single-process training step as the loop takes it: forward, loss, backward, guarded update.

    Returns (loss, gradient norm before clipping, whether the step was taken).
    """
    out = fine_tune_step(model, batch, device, settings.train.bf16)
    return optimizer_step(model, optimizer, out, Dist(), device, settings.train.clip_grad_norm)


def validate(model: torch.nn.Module, data: TrainData, settings: TrainSettings) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Predict the validation region, run the segmentation sweep and score it."""
    assert data.val_raw is not None and data.val_gt is not None
    was_training = model.training
    model.eval()
    affs = np.zeros((len(settings.model.offsets),) + data.val_raw.shape, dtype=np.float32)
    p = settings.predict
    device = next(model.parameters()).device
    predict_blockwise(model, data.val_raw, affs, tuple(p.block), tuple(p.overlap), batch_size=p.batch_size,
                      device=device, bf16=p.bf16, progress=False)
    model.train(was_training)
    rows, best, seg = sweep_scores(affs, data.val_gt, settings.model.offsets, settings.segment)
    return {"best": best, "rows": rows}, affs, seg


def _load_init(model: torch.nn.Module, settings: TrainSettings) -> dict[str, Any]:
    return load_pretrained(model, settings.init, allow_mismatch=settings.init_allow_mismatch,
                           head_prefixes=HEAD_PREFIXES, offsets=settings.model.offsets,
                           keep_fresh=settings.init_keep_fresh)


def init_report(settings: TrainSettings) -> dict[str, Any] | None:
    """Which tensors `settings.init` fills in a fresh network of this config (None without `init`).

    The same report the run's first call logged: a resumed run loads its own
    checkpoint instead, so this rebuilds the fresh network to say it again.
    """
    if not settings.init:
        return None
    return _load_init(build_model(model_spec(settings)), settings)


def train(settings: TrainSettings, resume: bool = False, overwrite: bool = False, progress: bool = True,
          device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train an affinity network as configured on `device` (auto, cpu, cuda[:N]); returns a summary dict."""
    loop = settings.train
    dev = device if isinstance(device, torch.device) else resolve_device(device, world_size())
    run = RunFolder(Path(settings.out_dir))
    run.check(resume, overwrite)
    data = open_training_data(settings, required_input_shape(tuple(loop.crop), settings.augment))
    holdout = open_holdout(settings)  # checked before training, scored after it
    spec = model_spec(settings)
    reports: list[dict[str, Any]] = []

    def init(model: torch.nn.Module) -> str | None:
        if not settings.init:
            return None
        reports.append(_load_init(model, settings))
        return format_init_report(reports[-1])

    def step(ctx: StepContext) -> StepOutput:
        return fine_tune_step(ctx.forward, make_batch(data, settings, ctx.rng.numpy), ctx.device, loop.bf16)

    def evaluate(model: torch.nn.Module, at: int, history: list[dict[str, Any]]) -> EvalResult:
        report, affs, seg = validate(model, data, settings)
        best = report["best"]
        tqdm.write(f"step {at}: val VOI {best['voi']:.3f} (split {best['voi_split']:.3f}, merge {best['voi_merge']:.3f}), "
                   f"ARAND {best['arand']:.3f} at threshold {best['threshold']}")
        on_best = lambda: preview_png(run.file("val_preview.png"), data.val_raw, affs, seg, data.val_gt,
                                      title=f"validation, step {at}")
        return EvalResult(best, best["voi"], on_best)

    def finish(history: list[dict[str, Any]], evals: list[dict[str, Any]]) -> None:
        rows = [{k: v for k, v in e.items() if k != "score"} for e in evals]
        plot_loss_curve([h["step"] for h in history], [h["loss"] for h in history], run.file("loss.png"), rows)

    task = Task(kind="train", step=step, evaluate=evaluate if data.val_raw is not None else None,
                eval_every=loop.val_every, init=init, finish=finish,
                extra=lambda history: {"offsets": [list(o) for o in settings.model.offsets],
                                       "voxel_size": list(data.voxel_size)})
    def build() -> torch.nn.Module:
        model = build_model(spec)
        if loop.freeze_encoder:
            encoder = getattr(model, "encoder", None)
            if encoder is None:
                raise ConfigError(f"train.freeze_encoder: model '{spec.get('name')}' has no encoder to freeze")
            encoder.requires_grad_(False)
        return model

    result = run_training(settings, loop, spec, build, task, settings.out_dir, dev,
                          resume=resume, overwrite=overwrite, progress=progress)
    history, evals = result.history, result.eval_history
    if resume and settings.init and not reports:
        # the weights came from the run's own checkpoint; the summary still says what its first call loaded
        reports.append(init_report(settings))
    test = None
    if holdout is not None and evals:
        test = score_holdout(result.model, *holdout, settings, float(evals[-1]["threshold"]))
        tqdm.write(f"held-out {test['volume']}: VOI {test['voi']:.3f}, ARAND {test['arand']:.3f} "
                   f"at the validation's threshold {test['threshold']}")
    return {
        "out_dir": str(run.root), "steps": result.steps, "parameters": count_parameters(result.model),
        "final_loss": float(np.mean([h["loss"] for h in history[-20:]])) if history else None,
        "best_val": min(evals, key=lambda v: v["voi"]) if evals else None,
        "minutes": result.minutes, "init": reports[-1] if reports else None,
        "skipped_steps": result.skipped_steps, "world_size": result.world_size, "device": str(dev),
        "precision": precision(dev, loop.bf16), "checkpoint": str(result.checkpoint), "test": test,
    }
