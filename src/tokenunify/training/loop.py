"""The one training loop that `tokenunify pretrain` and `tokenunify train` share.

A plain loop with callbacks, not a trainer class: a task (pretraining or
fine-tuning) supplies a step function (batch -> loss), an evaluation hook
and its plots; the loop owns everything else, once:

* the run folder, its safety checks and resume (refused if the config changed);
* seeding (rank r uses seed + r) and every rank's RNG state in the checkpoint;
* the device, bf16 autocast on its type, and DDP under torchrun;
* AdamW with parameter groups and the warm-up + cosine learning rate;
* the guarded step (clipping, skipping non-finite steps) and EMA;
* the time limit, checkpoints, history rows, `metrics.jsonl` and plots.

Only rank 0 writes files, logs and the progress bar. Every decision that
changes what the ranks do next (stop at the time limit, checkpoint, evaluate)
is either a pure function of the step or agreed by a collective, so the
ranks never wait on each other forever.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from tokenunify.config import to_dict
from tokenunify.errors import InputError
from tokenunify.io.checkpoint import load_checkpoint, save_checkpoint
from tokenunify.training import distributed
from tokenunify.training.devices import autocast
from tokenunify.training.ema import WeightAverage
from tokenunify.training.optim import build_optimizer, load_optimizer_state, lr_of_group
from tokenunify.training.resume import check_same_config
from tokenunify.training.rng import Rngs, rank_states
from tokenunify.training.run_folder import RunFolder
from tokenunify.training.settings import LoopBase
from tokenunify.training.step import StepOutput, cosine_lr, optimizer_step

__all__ = ["EvalResult", "RunResult", "StepContext", "Task", "run_training"]


@dataclass
class StepContext:
    """What a step function gets: the step, the (possibly DDP-wrapped) forward module, RNGs, device."""

    step: int
    forward: nn.Module
    model: nn.Module
    rng: Rngs
    device: torch.device
    bf16: bool

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on this device's type, if the run uses bf16."""
        return autocast(self.device, self.bf16)


@dataclass
class EvalResult:
    """An evaluation: the row to record and, if it is a score (lower is better), whether to keep best.pt."""

    row: dict[str, Any]
    score: float | None = None
    on_best: Callable[[], None] | None = None


@dataclass
class Task:
    """What a kind of training plugs into the loop.

    Attributes:
        kind: "pretrain" or "train"; stored in checkpoints, shown on the progress bar.
        step: draws this rank's batch and returns its loss (see `StepOutput`).
        evaluate: rank 0, every `eval_every` steps and at the end, with the weights
            that are evaluated (the EMA if any), the step and the history; may return None.
        eval_every: steps between evaluations (0: only at the end).
        init: fresh runs only, before the first step: e.g. load pretrained
            weights; returns a text that is printed before training starts.
        start: rank 0, fresh runs only: e.g. a preview of the untrained network.
        finish: rank 0, after the last step: plots from (history, eval rows).
        extra: task fields stored in every checkpoint, from the history.
        wrap: builds the module whose forward the step calls (DDP wraps it).
        find_unused_parameters: for DDP, when some steps skip some parameters.
        lr: the learning rate of a step (default: one warm-up + cosine over the run).
    """

    kind: str
    step: Callable[[StepContext], StepOutput]
    evaluate: Callable[[nn.Module, int, list[dict[str, Any]]], EvalResult | None] | None = None
    eval_every: int = 0
    init: Callable[[nn.Module], str | None] | None = None
    start: Callable[[nn.Module], None] | None = None
    finish: Callable[[list[dict[str, Any]], list[dict[str, Any]]], None] | None = None
    extra: Callable[[list[dict[str, Any]]], dict[str, Any]] = lambda history: {}
    wrap: Callable[[nn.Module], nn.Module] | None = None
    find_unused_parameters: bool = False
    lr: Callable[[int], float] | None = None


@dataclass
class RunResult:
    """What a finished (or time-limited) run leaves behind."""

    steps: int
    history: list[dict[str, Any]]
    eval_history: list[dict[str, Any]]
    minutes: float
    model: nn.Module
    checkpoint: Path
    world_size: int = 1
    is_main: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def skipped_steps(self) -> int:
        return sum(1 for h in self.history if h.get("skipped"))


def run_training(settings: Any, loop: LoopBase, spec: dict[str, Any], build: Callable[[], nn.Module], task: Task,
                 out_dir: str | Path, device: torch.device, resume: bool = False, overwrite: bool = False,
                 progress: bool = True) -> RunResult:
    """Train `build()` with `task` as configured by `loop`; `settings` is the full config stored with the run."""
    run = RunFolder(Path(out_dir))
    run.check(resume, overwrite)
    if loop.threads:
        torch.set_num_threads(loop.threads)
    dist = distributed.setup(device)
    try:
        return _run(settings, loop, spec, build, task, run, device, dist, resume, progress)
    finally:
        distributed.teardown(dist)


def _run(settings: Any, loop: LoopBase, spec: dict[str, Any], build: Callable[[], nn.Module], task: Task,
         run: RunFolder, device: torch.device, dist: distributed.Dist, resume: bool, progress: bool) -> RunResult:
    log = tqdm.write if dist.is_main else (lambda _text: None)
    torch.manual_seed(loop.seed)  # before building: the initial weights come from the seed, the same on every rank
    model = build()
    if dist.active and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    optimizer = build_optimizer(model, loop.lr, loop.weight_decay, split=loop.splits_encoder)
    rng = Rngs.seeded(loop.seed + dist.rank)
    step, history, evals = 0, [], []
    state: dict[str, Any] = {}
    if resume:
        state = load_checkpoint(run.last)
        check_same_config(run.last, state.get("config"), to_dict(settings))
        model.load_state_dict(state.get("online_model", state["model"]))
        load_optimizer_state(optimizer, model, state["optimizer"])
        step, history, evals = state["step"], state["history"], state.get("val_history", [])
        rng.restore(rank_states(state, run.last, dist.world_size)[dist.rank])
    elif task.init is not None:
        report = task.init(model)
        if report:
            log(report)
    ema = None
    if loop.ema_decay is not None and dist.is_main:
        ema = WeightAverage(model, loop.ema_decay)
        if resume:
            if "online_model" not in state:
                raise InputError(run.last, "this run was trained without train.ema_decay; resume it without EMA or start a new run")
            ema.load(state["model"], state["ema_updates"])
    evaluated = model if ema is None else ema.module
    forward = task.wrap(model) if task.wrap is not None else model
    if dist.active:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters)
    if dist.is_main:
        run.write_config(settings)
    # checkpoints of earlier versions kept the best score as best_voi and no score per row
    best = min([e["score"] for e in evals if e.get("score") is not None] + [state.get("best_voi", math.inf)])

    def checkpoint(paths: list[Path]) -> None:
        states = dist.gather(rng.state())  # a collective: every rank calls it at the same steps
        if not dist.is_main:
            return
        weights = {"model": model.state_dict()} if ema is None else {
            "model": ema.state_dict(), "online_model": model.state_dict(), "ema_updates": ema.updates}
        payload = {"model_spec": spec, **weights, "optimizer": optimizer.state_dict(), "step": step,
                   "config": to_dict(settings), "history": history, "val_history": evals, "kind": task.kind,
                   "rng": states, "world_size": dist.world_size, **task.extra(history)}
        for path in paths:
            save_checkpoint(path, payload)

    started = time.monotonic()
    model.train()
    if step == 0 and task.start is not None and dist.is_main:
        task.start(model)
    bar = tqdm(total=loop.steps, initial=step, disable=not (progress and dist.is_main), desc=task.kind,
               unit="step", dynamic_ncols=True)
    while step < loop.steps:
        late = loop.max_minutes is not None and time.monotonic() - started > 60 * loop.max_minutes
        if dist.any(late, device):
            log(f"time limit of {loop.max_minutes} min reached at step {step}")
            break
        tick = time.monotonic()
        lr = task.lr(step) if task.lr is not None else cosine_lr(step, loop.steps, loop.lr, loop.lr_final,
                                                                 loop.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr_of_group(group, lr, step, loop.encoder_lr_scale, loop.encoder_frozen_steps)
        out = task.step(StepContext(step, forward, model, rng, device, loop.bf16))
        loss, grad_norm, stepped = optimizer_step(model, optimizer, out, dist, device, loop.clip_grad_norm)
        if ema is not None and stepped:
            ema.update(model)
        step += 1
        counts = dict(zip(out.counts, dist.sum(list(out.counts.values()), device))) if out.counts else {}
        seconds = time.monotonic() - tick
        history.append({"step": step, **out.row, "loss": loss, "lr": lr, "seconds": seconds, "grad_norm": grad_norm,
                        "skipped": not stepped, **{k: int(v) if float(v).is_integer() else v for k, v in counts.items()}})
        bar.update(1)
        bar.set_postfix(_postfix(history[-1], counts, seconds))
        paths = []
        due_eval = task.evaluate is not None and (step == loop.steps or (task.eval_every and step % task.eval_every == 0))
        if due_eval and dist.is_main:
            result = task.evaluate(evaluated, step, history)  # type: ignore[misc]
            if result is not None:
                evals.append({"step": step, **result.row, "score": result.score})
                if result.score is not None and result.score < best:
                    best = result.score
                    paths.append(run.best)
                    if result.on_best is not None:
                        result.on_best()
        if due_eval or step % loop.checkpoint_every == 0 or step == loop.steps:
            checkpoint(paths + [run.last])
    bar.close()
    checkpoint([run.last])
    if dist.is_main:
        run.write_metrics(history + [{"val": {k: v for k, v in e.items() if k != "score"}} for e in evals])
        if task.finish is not None and history:
            task.finish(history, evals)
    dist.barrier()
    return RunResult(step, history, evals, (time.monotonic() - started) / 60, evaluated,
                     run.best if run.best.exists() else run.last, dist.world_size, dist.is_main)


def _postfix(row: dict[str, Any], counts: dict[str, float], seconds: float) -> dict[str, str]:
    shown = {k: str(v) for k, v in row.items() if isinstance(v, str)}
    shown["loss"] = f"{row['loss']:.4f}"
    if "tokens" in counts:
        shown["tok_s"] = f"{counts['tokens'] / max(seconds, 1e-9):.0f}"
    return shown
