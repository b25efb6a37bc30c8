"""Token-prediction objectives: one reconstruction loss, scored on target tokens only.

An objective is nothing but a mask sampler (`tokenunify.tokens.masks`): it
decides which tokens the network sees and which it must predict. The loss is
shared: hidden tokens are blanked with the model's mask token, the model
predicts, and the mean squared error is taken over the target tokens'
(optionally per-patch normalised) voxels. Samplers whose `head` is "next"
are scored through the Perceiver next-token head, all others through the dense
reconstruction. A new objective is therefore one sampler class and its
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
    prediction_tokens: Tensor  # (B, K, F) for dense heads; (B, 1, F) for next-token
    n_target_tokens: int

    @property
    def weight(self) -> float:
        """How many items the loss is a mean over (samples for next-token, target tokens otherwise)."""
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

    def forward(self, x: Tensor, visible: Tensor, next_index: Tensor | None = None) -> Tensor:
        x_hidden = self.net.hide(x, visible)
        if next_index is None:
            return self.net.forward_tokens(x_hidden)
        return self.net.predict_next(x_hidden, next_index)


def _targets(x: Tensor, patch: tuple[int, int, int], normalize: bool) -> Tensor:
    tokens = patchify(x, patch)
    return per_patch_normalize(tokens) if normalize else tokens


def objective_loss(
    model: torch.nn.Module, x: Tensor, sampler: MaskSampler, generator: torch.Generator, normalize: bool = True,
    forward: nn.Module | None = None,
) -> ObjectiveOutput:
    """Draw masks with `sampler`, predict the targets of crop `x` (B,C,D,H,W), return the loss.

    The model must offer `hide`, `forward_tokens`, `predict_next` and `patch`
    (see `TokenUnifyNet`). No target token's content reaches the model: it is
    blanked by `hide` before the forward pass. `forward` is the model's
    `MaskedForward` (or a DDP wrapper of it); by default one is made here.
    """
    masks = sampler(x.shape[0], math.prod(token_grid(x.shape, tuple(model.patch))), generator)
    return masked_loss(model, x, masks, getattr(sampler, "head", "dense"), normalize, forward)


def masked_loss(model: torch.nn.Module, x: Tensor, masks: TokenMasks, head: str = "dense", normalize: bool = True,
                forward: nn.Module | None = None) -> ObjectiveOutput:
    """The reconstruction loss of the target tokens of `masks` (scored by the `head`: "next" or "dense")."""
    forward = MaskedForward(model) if forward is None else forward
    patch = tuple(model.patch)
    batch = x.shape[0]
    visible = masks.visible.to(x.device)
    target = masks.target.to(x.device)
    truth = _targets(x, patch, normalize)
    if head == "next":
        if masks.prefix is None or not bool((target.sum(dim=1) == 1).all()):
            raise ValueError("the next-token head needs exactly one target per sample and a prefix")
        index = masks.prefix.to(x.device)
        pred = forward(x, visible, index).float()
        wanted = truth[torch.arange(batch, device=x.device), index]
        loss = torch.mean((pred - wanted) ** 2)
        return ObjectiveOutput(loss, masks, pred[:, None].detach(), batch)
    dense = forward(x, visible).float()
    pred = patchify(dense, patch)
    per_token = torch.mean((pred - truth) ** 2, dim=-1)
    weight = target.float()
    loss = (per_token * weight).sum() / weight.sum().clamp_min(1.0)
    return ObjectiveOutput(loss, masks, pred.detach(), int(weight.sum()))
