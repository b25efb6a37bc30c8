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

from tokenunify.tokens.masks import MaskSampler, TokenMasks
from tokenunify.tokens.patchify import patchify, per_patch_normalize, token_grid


@dataclass
class ObjectiveOutput:
    """What one objective step produced: the loss and what the previews need."""

    loss: Tensor
    masks: TokenMasks
    prediction_tokens: Tensor  # (B, K, F) for dense heads; (B, 1, F) for next-token
    n_target_tokens: int


def _targets(x: Tensor, patch: tuple[int, int, int], normalize: bool) -> Tensor:
    tokens = patchify(x, patch)
    return per_patch_normalize(tokens) if normalize else tokens


def objective_loss(
    model: torch.nn.Module, x: Tensor, sampler: MaskSampler, generator: torch.Generator, normalize: bool = True
) -> ObjectiveOutput:
    """Draw masks with `sampler`, predict the targets of crop `x` (B,C,D,H,W), return the loss.

    The model must offer `hide`, `forward_tokens`, `predict_next` and `patch`
    (see `TokenUnifyNet`). No target token's content reaches the model: it is
    blanked by `hide` before the forward pass.
    """
    patch = tuple(model.patch)
    batch = x.shape[0]
    n_tokens = math.prod(token_grid(x.shape, patch))
    masks = sampler(batch, n_tokens, generator)
    visible = masks.visible.to(x.device)
    target = masks.target.to(x.device)
    x_hidden = model.hide(x, visible)
    truth = _targets(x, patch, normalize)
    if getattr(sampler, "head", "dense") == "next":
        if masks.prefix is None or not bool((target.sum(dim=1) == 1).all()):
            raise ValueError(f"{type(sampler).__name__}: the next-token head needs exactly one target per sample and a prefix")
        index = masks.prefix.to(x.device)
        pred = model.predict_next(x_hidden, index).float()
        wanted = truth[torch.arange(batch, device=x.device), index]
        loss = torch.mean((pred - wanted) ** 2)
        return ObjectiveOutput(loss, masks, pred[:, None].detach(), batch)
    dense = model.forward_tokens(x_hidden).float()
    pred = patchify(dense, patch)
    per_token = torch.mean((pred - truth) ** 2, dim=-1)
    weight = target.float()
    loss = (per_token * weight).sum() / weight.sum().clamp_min(1.0)
    return ObjectiveOutput(loss, masks, pred.detach(), int(weight.sum()))
