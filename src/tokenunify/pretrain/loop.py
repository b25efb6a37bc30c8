"""`tokenunify pretrain`: token-prediction pretraining on unlabelled EM.

Each step draws a batch of crops (a degraded input and its clean target),
picks the step's objective from the schedule (single, staged or mixture),
draws that objective's masks and takes one optimiser step on the
reconstruction loss of the target tokens. A staged schedule gives each stage
its own warm-up and cosine. The run
folder holds atomic checkpoints (with the config), `metrics.jsonl`,
`loss_per_objective.png` and reconstruction previews (`preview_step0.png`
from the untrained network, then `preview_<objective>.png` as training goes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenunify.errors import ConfigError
from tokenunify.models.registry import build_model, count_parameters
from tokenunify.pretrain.data import UnlabeledCrops
from tokenunify.pretrain.objectives import MaskedForward, ObjectiveOutput, objective_loss
from tokenunify.pretrain.schedule import lr_for_step, objective_for_step
from tokenunify.pretrain.settings import PretrainSettings
from tokenunify.report.pretrain_plots import plot_objective_losses, reconstruction_png
from tokenunify.training.devices import precision, resolve_device
from tokenunify.training.distributed import world_size
from tokenunify.training.loop import StepContext, Task, run_training
from tokenunify.training.run_folder import RunFolder
from tokenunify.training.step import StepOutput
from tokenunify.tokens.masks import MaskSampler, available_samplers, build_sampler


def pretrain_model_spec(settings: PretrainSettings) -> dict[str, Any]:
    """The spec a pretraining checkpoint stores (the network with its pretraining heads)."""
    m = settings.model
    spec: dict[str, Any] = {"name": "tokenunify", "preset": m.preset, "mixer": m.mixer, "in_channels": 1,
                            "out_channels": 1, "anisotropic": m.anisotropic, "pretraining": True}
    if m.patch is not None:
        spec["patch"] = tuple(m.patch)
    if m.next_context != "perceiver":
        spec["next_context"] = m.next_context
    if m.full_res != "block":  # older checkpoints' specs stay as they were
        spec["full_res"] = m.full_res
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


def pretrain(settings: PretrainSettings, resume: bool = False, overwrite: bool = False, progress: bool = True,
             device: str | torch.device = "cpu") -> dict[str, Any]:
    """Run pretraining as configured on `device` (auto, cpu, cuda[:N]); returns a summary dict."""
    loop = settings.train
    dev = device if isinstance(device, torch.device) else resolve_device(device, world_size())
    spec = pretrain_model_spec(settings)
    samplers = build_samplers(settings)
    data = UnlabeledCrops(settings.data.volumes, tuple(loop.crop), settings.augment)
    run = RunFolder(Path(settings.out_dir))
    last: dict[str, Any] = {}

    def build() -> torch.nn.Module:
        model = build_model(spec)
        _check_crop(model, tuple(loop.crop))
        return model

    def step(ctx: StepContext) -> StepOutput:
        name = objective_for_step(ctx.step, loop.steps, settings.schedule, loop.seed)
        x, clean = (t.to(ctx.device) for t in data.batch(loop.batch_size, ctx.rng.numpy))
        with ctx.autocast():
            out = objective_loss(ctx.model, x, samplers[name], ctx.rng.generator, loop.normalize_targets, ctx.forward,
                                 target=clean)
        last.update(out=out, x=clean, name=name)
        return StepOutput(out.loss, out.weight, row={"objective": name},
                          counts={"tokens": out.masks.visible.numel(), "targets": out.n_target_tokens})

    def preview(model: torch.nn.Module, out: ObjectiveOutput, x: torch.Tensor, name: str, at: int, filename: str) -> None:
        reconstruction_png(run.file(filename), x.cpu(), out.masks.visible, out.masks.target, out.prediction_tokens.cpu(),
                           tuple(model.patch), loop.normalize_targets, title=f"{name}, step {at}")

    def start(model: torch.nn.Module) -> None:
        # The untrained network's guesses, for comparison with later previews.
        x, clean = (t.to(dev) for t in data.batch(loop.batch_size, np.random.default_rng(loop.seed + 1)))
        with torch.no_grad():
            name = objective_for_step(0, loop.steps, settings.schedule, loop.seed)
            out = objective_loss(model, x, samplers[name], torch.Generator().manual_seed(1), loop.normalize_targets,
                                 target=clean)
        preview(model, out, clean, name, 0, "preview_step0.png")

    def evaluate(model: torch.nn.Module, at: int, history: list[dict[str, Any]]) -> None:
        preview(model, last["out"], last["x"], last["name"], at, f"preview_{last['name']}.png")
        plot_objective_losses(history, run.file("loss_per_objective.png"))

    task = Task(kind="pretrain", step=step, evaluate=evaluate, eval_every=loop.preview_every, start=start,
                finish=lambda history, evals: plot_objective_losses(history, run.file("loss_per_objective.png")),
                extra=lambda history: {"tokens_seen": sum(h["tokens"] for h in history)},
                wrap=MaskedForward, find_unused_parameters=True,
                lr=lambda at: lr_for_step(at, loop.steps, settings.schedule, loop.lr, loop.lr_final))
    result = run_training(settings, loop, spec, build, task, settings.out_dir, dev, resume, overwrite, progress)
    return {"out_dir": str(run.root), "steps": result.steps, "tokens_seen": sum(h["tokens"] for h in result.history),
            "parameters": count_parameters(result.model), "skipped_steps": result.skipped_steps,
            "minutes": result.minutes, "loss_by_objective": _loss_summary(result.history),
            "checkpoint": str(run.last), "world_size": result.world_size, "device": str(dev),
            "precision": precision(dev, loop.bf16)}


def _loss_summary(history: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per objective: mean loss of its first and last 10% of steps (does it fall?), steps and mean learning rate."""
    summary = {}
    for name in sorted({h["objective"] for h in history}):
        losses = [h["loss"] for h in history if h["objective"] == name]
        tenth = max(1, len(losses) // 10)
        rates = [h["lr"] for h in history if h["objective"] == name]
        summary[name] = {"first": float(np.mean(losses[:tenth])), "last": float(np.mean(losses[-tenth:])),
                         "steps": len(losses), "mean_lr": float(np.mean(rates))}
    return summary
