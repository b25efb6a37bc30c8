"""`tokenunify pretrain`: token-prediction pretraining on unlabelled EM.

Each step draws a batch of crops, picks the step's objective from the
schedule (single, staged or mixture), draws that objective's masks and takes
one optimiser step on the reconstruction loss of the target tokens. The run
folder holds atomic checkpoints (with the config), `metrics.jsonl`,
`loss_per_objective.png` and reconstruction previews (`preview_step0.png`
from the untrained network, then `preview_<objective>.png` as training goes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tokenunify.config import to_dict
from tokenunify.errors import ConfigError
from tokenunify.io.checkpoint import load_checkpoint, save_checkpoint
from tokenunify.models.registry import build_model, count_parameters
from tokenunify.pretrain.data import UnlabeledCrops
from tokenunify.pretrain.objectives import ObjectiveOutput, objective_loss
from tokenunify.pretrain.schedule import objective_for_step
from tokenunify.pretrain.settings import PretrainSettings
from tokenunify.report.pretrain_plots import plot_objective_losses, reconstruction_png
from tokenunify.run_folder import RunFolder, cosine_lr, guarded_step, restore_rng, rng_state
from tokenunify.tokens.masks import MaskSampler, available_samplers, build_sampler


def pretrain_model_spec(settings: PretrainSettings) -> dict[str, Any]:
    """The spec a pretraining checkpoint stores (the network with its pretraining heads)."""
    m = settings.model
    spec: dict[str, Any] = {"name": "tokenunify", "preset": m.preset, "mixer": m.mixer, "in_channels": 1,
                            "out_channels": 1, "anisotropic": m.anisotropic, "pretraining": True}
    if m.patch is not None:
        spec["patch"] = tuple(m.patch)
    return spec


def build_samplers(settings: PretrainSettings) -> dict[str, MaskSampler]:
    """One sampler per objective named in the schedule, with its configured arguments."""
    samplers = {}
    for name in dict.fromkeys(settings.schedule.objectives):
        if name not in available_samplers():
            raise ConfigError(f"schedule.objectives: unknown objective '{name}'; known: {', '.join(available_samplers())}")
        kwargs = (settings.samplers or {}).get(name) or {}
        try:
            samplers[name] = build_sampler(name, **kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"samplers.{name}: {err}") from None
    return samplers


def _check_crop(model: torch.nn.Module, crop: tuple[int, ...]) -> None:
    for size, p, f in zip(crop, model.patch, model.downsample_factor):
        if size % p or size % f:
            raise ConfigError(f"train.crop {tuple(crop)} must be divisible by the patch {model.patch} and the downsample factor {model.downsample_factor}")


def pretrain(settings: PretrainSettings, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run pretraining as configured; returns a summary dict."""
    run = RunFolder(Path(settings.out_dir))
    run.check(resume, overwrite)
    loop = settings.train
    if loop.threads:
        torch.set_num_threads(loop.threads)
    torch.manual_seed(loop.seed)  # before building: the initial weights come from the seed
    spec = pretrain_model_spec(settings)
    model = build_model(spec)
    _check_crop(model, tuple(loop.crop))
    samplers = build_samplers(settings)
    data = UnlabeledCrops(settings.data.volumes, tuple(loop.crop), settings.augment)
    optimizer = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    rng = np.random.default_rng(loop.seed)
    torch.manual_seed(loop.seed)
    mask_generator = torch.Generator().manual_seed(loop.seed)
    step, history, tokens_seen = 0, [], 0
    if resume:
        state = load_checkpoint(run.last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history, tokens_seen = state["step"], state["history"], state["tokens_seen"]
        restore_rng(rng, state)
        mask_generator.set_state(state["mask_rng"])
    run.write_config(settings)

    def checkpoint() -> None:
        save_checkpoint(run.last, {
            "model_spec": spec, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "config": to_dict(settings), "history": history, "tokens_seen": tokens_seen, "kind": "pretrain",
            "mask_rng": mask_generator.get_state(), **rng_state(rng),
        })

    def preview(out: ObjectiveOutput, x: torch.Tensor, name: str, filename: str) -> None:
        reconstruction_png(run.file(filename), x, out.masks.visible, out.masks.target, out.prediction_tokens,
                           tuple(model.patch), loop.normalize_targets, title=f"{name}, step {step}")

    started = time.monotonic()
    model.train()
    if step == 0:
        # The untrained network's guesses, for comparison with later previews.
        x = data.batch(loop.batch_size, np.random.default_rng(loop.seed + 1))
        with torch.no_grad():
            name = objective_for_step(0, loop.steps, settings.schedule, loop.seed)
            out = objective_loss(model, x, samplers[name], torch.Generator().manual_seed(1), loop.normalize_targets)
        preview(out, x, name, "preview_step0.png")
    bar = tqdm(total=loop.steps, initial=step, disable=not progress, desc="pretrain", unit="step", dynamic_ncols=True)
    while step < loop.steps:
        if loop.max_minutes is not None and time.monotonic() - started > 60 * loop.max_minutes:
            tqdm.write(f"time limit of {loop.max_minutes} min reached at step {step}")
            break
        tick = time.monotonic()
        name = objective_for_step(step, loop.steps, settings.schedule, loop.seed)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, loop.steps, loop.lr, loop.lr_final)
        x = data.batch(loop.batch_size, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=loop.bf16):
            out = objective_loss(model, x, samplers[name], mask_generator, loop.normalize_targets)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm, stepped = guarded_step(model, optimizer, loop.clip_grad_norm)
        step += 1
        n_tokens = out.masks.visible.numel()
        tokens_seen += n_tokens
        seconds = time.monotonic() - tick
        history.append({"step": step, "objective": name, "loss": float(out.loss.detach()), "seconds": seconds,
                        "tokens": n_tokens, "targets": out.n_target_tokens,
                        "grad_norm": grad_norm, "skipped": not stepped})
        bar.update(1)
        bar.set_postfix(obj=name, loss=f"{history[-1]['loss']:.4f}", tok_s=f"{n_tokens / max(seconds, 1e-9):.0f}")
        if step % loop.checkpoint_every == 0 or step == loop.steps:
            checkpoint()
        if step % loop.preview_every == 0 or step == loop.steps:
            preview(out, x, name, f"preview_{name}.png")
            plot_objective_losses(history, run.file("loss_per_objective.png"))
    bar.close()
    checkpoint()
    run.write_metrics(history)
    if history:
        plot_objective_losses(history, run.file("loss_per_objective.png"))
    return {"out_dir": str(run.root), "steps": step, "tokens_seen": tokens_seen, "parameters": count_parameters(model),
            "skipped_steps": sum(1 for h in history if h.get("skipped")),
            "minutes": (time.monotonic() - started) / 60, "loss_by_objective": _loss_summary(history),
            "checkpoint": str(run.last)}


def _loss_summary(history: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean loss of the first and last 10% of each objective's steps: does it fall?"""
    summary = {}
    for name in sorted({h["objective"] for h in history}):
        losses = [h["loss"] for h in history if h["objective"] == name]
        tenth = max(1, len(losses) // 10)
        summary[name] = {"first": float(np.mean(losses[:tenth])), "last": float(np.mean(losses[-tenth:])), "steps": len(losses)}
    return summary
