"""Token-prediction objectives: one reconstruction loss, scored on target tokens only.

An objective is nothing but a mask sampler (`tokenunify.tokens.masks`): it
decides which tokens the network sees and which it must predict. The loss is
shared: hidden tokens are blanked with the model's mask token, the model
predicts, and the mean squared error is taken over the target tokens'
(optionally per-patch normalised) voxels. Samplers whose `head` is "next"
are scored through the causal next-token head (every token after the prefix,
each from the prefix and the tokens before it), all others through the dense
reconstruction. The truth is the clean crop where the data gives one (input
degradations are not targets; `pretrain/data.py`). A new objective is therefore one sampler class and its
`@register_sampler` line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from torch import nn

from tokenunify.tokens.masks import MaskSampler, TokenMasks
from tokenunify.tokens.patchify import patchify, per_patch_normalize, token_grid


@dataclass
class ObjectiveOutput:
    """What one objective step produced: the loss and what the previews need."""

    loss: Tensor
    masks: TokenMasks
    prediction_tokens: Tensor  # (B, K, F); for next-token, rows before the prefix are not predictions
    n_target_tokens: int

    @property
    def weight(self) -> float:
        """How many items the loss is a mean over: the target tokens."""
        return float(max(self.n_target_tokens, 1))


class MaskedForward(nn.Module):
    """The pretraining forward as one module call: blank the hidden tokens, then predict.

    Everything that touches parameters (the mask token included) happens in
    `forward`, so DistributedDataParallel, which only sees calls to forward,
    synchronises every gradient.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, visible: Tensor, prefix: Tensor | None = None) -> Tensor:
        """Dense reconstruction `(B, C, D, H, W)`, or with `prefix` the next-token predictions `(B, K, F)`."""
        x_hidden = self.net.hide(x, visible)
        if prefix is None:
            return self.net.forward_tokens(x_hidden)
        return self.net.predict_next(x_hidden, patchify(x, tuple(self.net.patch)), prefix)


def _targets(x: Tensor, patch: tuple[int, int, int], normalize: bool) -> Tensor:
    tokens = patchify(x, patch)
    return per_patch_normalize(tokens) if normalize else tokens


def objective_loss(
    model: torch.nn.Module, x: Tensor, sampler: MaskSampler, generator: torch.Generator, normalize: bool = True,
    forward: nn.Module | None = None, target: Tensor | None = None,
) -> ObjectiveOutput:
    """Draw masks with `sampler`, predict the targets of crop `x` (B,C,D,H,W), return the loss.

    The model must offer `hide`, `forward_tokens`, `predict_next` and `patch`
    (see `TokenUnifyNet`). No target token's content reaches the prediction
    that scores it. `forward` is the model's `MaskedForward` (or a DDP wrapper
    of it); by default one is made here. `target` is the clean crop the loss
    compares with (default `x`: the network input itself).
    """
    masks = sampler(x.shape[0], math.prod(token_grid(x.shape, tuple(model.patch))), generator)
    return masked_loss(model, x, masks, getattr(sampler, "head", "dense"), normalize, forward, target)


def masked_loss(model: torch.nn.Module, x: Tensor, masks: TokenMasks, head: str = "dense", normalize: bool = True,
                forward: nn.Module | None = None, target: Tensor | None = None) -> ObjectiveOutput:
    """The reconstruction loss of the target tokens of `masks` (scored by the `head`: "next" or "dense").

    `x` is the network input; `target` (default `x`) the crop whose tokens are the truth.
    """
    forward = MaskedForward(model) if forward is None else forward
    patch = tuple(model.patch)
    target = x if target is None else target
    if target.shape != x.shape:
        raise ValueError(f"target {tuple(target.shape)} and input {tuple(x.shape)} differ in shape")
    visible = masks.visible.to(x.device)
    wanted = masks.target.to(x.device)
    truth = _targets(target, patch, normalize)
    if head == "next":
        if masks.prefix is None:
            raise ValueError("the next-token head needs a prefix sampler (masks.prefix)")
        pred = forward(x, visible, masks.prefix.to(x.device)).float()
    elif head == "dense":
        pred = patchify(forward(x, visible).float(), patch)
    else:
        raise ValueError(f"unknown head {head!r}; expected 'dense' or 'next'")
    per_token = torch.mean((pred - truth) ** 2, dim=-1)
    weight = wanted.float()
    loss = (per_token * weight).sum() / weight.sum().clamp_min(1.0)
    return ObjectiveOutput(loss, masks, pred.detach(), int(weight.sum()))
