"""Exponential moving average of a network's weights, for evaluation.

Fine-tuning at a high learning rate on a few labelled sections makes the
weights of consecutive checkpoints segment very differently (the FIB study's
validation VOI moved by 0.3-0.9 between checkpoints 100 steps apart,
docs/study_runs.md). Evaluating an average of the recent weights instead of the
last iterate removes most of that step-to-step noise without choosing a
checkpoint on the validation data.

The average starts from the first trained weights and uses a warm-up decay
`min(decay, (1 + n) / (10 + n))` after `n` updates, so an early evaluation
is not dominated by the weights of step 1.
"""

from __future__ import annotations

import copy

import torch

__all__ = ["WeightAverage", "ema_decay_at"]


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used for the update after `updates` earlier ones."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """An averaged copy of `model`: floating-point parameters and buffers are averaged, others copied."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the current weights of `model` into the average."""
        d = ema_decay_at(self.decay, self.updates) if self.updates else 0.0
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            new = current[name].detach()
            if avg.is_floating_point():
                avg.mul_(d).add_(new.to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(new)
        self.updates += 1

    def state_dict(self) -> dict:
        """The averaged weights, as a plain model state dict."""
        return self.module.state_dict()

    def load(self, weights: dict, updates: int) -> None:
        """Restore an average saved with `state_dict` after `updates` updates."""
        self.module.load_state_dict(weights)
        self.updates = updates
