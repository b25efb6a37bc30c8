"""Perceiver Resampler and next-token head for autoregressive pretraining.

:class:`PerceiverResampler` (Flamingo, Alayrac et al. 2022) summarises a
feature map of any size into a fixed number of learned latents: each layer
lets the latents cross-attend to the flattened features (plus the latents
themselves, as in Flamingo) and refines them with an MLP. Unlike a flatten +
linear layer, it has no input-size-dependent weights, so one model serves any
crop or block size.

The next-token head (:mod:`tokenunify.models.next_head`) reads the prefix
only through these latents: an earlier head that also sampled the deep
features at the target's position learned to ignore the latents (swapping
them between samples changed its predictions by 3e-5 relative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenunify.models.mixers import MLP, Attention, grid_coordinates, sincos_position_encoding

__all__ = ["PerceiverResampler"]


class PerceiverResampler(nn.Module):
    """``n_latents`` learned latents that cross-attend to a feature map.

    Args:
        dim: latent width.
        n_latents: number of latents (the summary's length).
        depth: cross-attention + MLP layers.
        context_dim: channels of the features (projected to ``dim`` when different).
        heads: attention heads (default ``dim // 32``).
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(
        self,
        dim: int,
        n_latents: int = 32,
        depth: int = 2,
        context_dim: int | None = None,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if n_latents < 1 or depth < 1:
            raise ValueError(f"n_latents and depth must be positive, got {n_latents} and {depth}")
        context_dim = context_dim or dim
        self.dim, self.context_dim = dim, context_dim
        self.latents = nn.Parameter(torch.randn(n_latents, dim) * 0.02)
        self.proj_in: nn.Module = nn.Identity() if context_dim == dim else nn.Linear(context_dim, dim)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(
                nn.ModuleDict(
                    {
                        "norm_context": nn.LayerNorm(dim),
                        "norm_latents": nn.LayerNorm(dim),
                        "attn": Attention(dim, heads),
                        "norm_mlp": nn.LayerNorm(dim),
                        "mlp": MLP(dim, int(dim * mlp_ratio)),
                    }
                )
            )
        self.norm_out = nn.LayerNorm(dim)

    @property
    def n_latents(self) -> int:
        """Number of latents."""
        return self.latents.shape[0]

    def forward(self, features: Tensor) -> Tensor:
        """``(B, C, D, H, W)`` map or ``(B, N, C)`` sequence -> latents ``(B, n_latents, dim)``.

        A 5D map gets a sinusoidal encoding of its grid coordinates on the
        keys; a sequence is taken as is (its positions, if any, already added).
        """
        if features.dim() == 5:
            grid = features.shape[2:]
            ctx = features.flatten(2).transpose(1, 2)
            ctx_pos: Tensor | None = sincos_position_encoding(grid_coordinates(grid, features.device), self.dim)
        elif features.dim() == 3:
            ctx, ctx_pos = features, None
        else:
            raise ValueError(f"expected (B, C, D, H, W) or (B, N, C) features, got {tuple(features.shape)}")
        if ctx.shape[-1] != self.context_dim:
            raise ValueError(f"expected {self.context_dim} feature channels, got {ctx.shape[-1]}")
        ctx = self.proj_in(ctx)
        b = ctx.shape[0]
        lat = self.latents.to(ctx.dtype).expand(b, -1, -1)
        kv_pos: Tensor | None = None
        if ctx_pos is not None:
            # latents carry no grid position: zeros for their own keys
            kv_pos = F.pad(ctx_pos.to(ctx.dtype), (0, 0, 0, self.n_latents)).expand(b, -1, -1)
        for layer in self.layers:
            q = layer["norm_latents"](lat)
            kv = torch.cat([layer["norm_context"](ctx), q], dim=1)
            lat = lat + layer["attn"](q, kv, None, kv_pos)
            lat = lat + layer["mlp"](layer["norm_mlp"](lat))
        return self.norm_out(lat)
