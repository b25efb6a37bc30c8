"""One optimiser step, written once: learning rate, loss normalisation across ranks, backward, guarded update.

A step function returns the mean loss over its local batch and the number
of items that mean is over (voxel weights, target tokens, samples). With
several ranks the loss is rescaled by `weight * world / global weight`
before backward; DDP then averages the gradients over ranks, which gives
exactly the gradient of the mean over the global batch, as one process on
the concatenated batch would compute it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tokenunify.training.distributed import Dist

__all__ = ["StepOutput", "cosine_lr", "guarded_step", "optimizer_step"]


@dataclass
class StepOutput:
    """What a task's step function returns.

    Attributes:
        loss: scalar, the mean over this rank's batch (it is differentiated).
        weight: how many items that mean is over; DDP normalises by the sum over ranks.
        row: extra fields for this step's history row (e.g. the objective).
        counts: numbers summed over ranks into the row (e.g. tokens seen).
    """

    loss: Tensor
    weight: float = 1.0
    row: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)


def cosine_lr(step: int, total: int, lr: float, lr_final: float, warmup: int | None = None) -> float:
    """Linear warm-up, then cosine decay from `lr` to `lr_final` at `total` steps."""
    warmup = min(100, total // 10) if warmup is None else warmup
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * progress))


def guarded_step(model: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float | None) -> tuple[float, bool]:
    """Clip the gradient norm and step, unless the gradients are not finite.

    A step whose gradient norm is NaN or infinite is skipped (as mixed-precision
    loss scalers do) rather than allowed to write NaN into the weights; the
    caller records it, so skipped steps are reported, not hidden. Returns
    (gradient norm before clipping, whether the step was taken). Under DDP the
    gradients are already averaged, so every rank takes the same decision.
    """
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm else float("inf"))
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return float(norm), False
    optimizer.step()
    return float(norm), True


def optimizer_step(net: nn.Module, optimizer: torch.optim.Optimizer, out: StepOutput, dist: Dist,
                   device: torch.device, max_norm: float | None) -> tuple[float, float, bool]:
    """Backward of `out.loss` (normalised over ranks) and a guarded step.

    Returns (loss averaged over the global batch, gradient norm, whether the step was taken).
    """
    optimizer.zero_grad(set_to_none=True)
    if dist.active:
        local = float(out.loss.detach())
        total_weight, weighted_loss = dist.sum([out.weight, local * out.weight], device)
        (out.loss * (out.weight * dist.world_size / total_weight)).backward()
        loss = weighted_loss / total_weight
    else:
        out.loss.backward()
        loss = float(out.loss.detach())
    grad_norm, stepped = guarded_step(net, optimizer, max_norm)
    return loss, grad_norm, stepped
