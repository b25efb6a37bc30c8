"""Dense next-token prediction: a causal, teacher-forced head over the tokens after the prefix.

The encoder sees the crop with every token from the prefix length ``n`` on
hidden, and a context module (:class:`~tokenunify.models.perceiver.PerceiverResampler`
by default) condenses its deepest features. :class:`CausalNextHead` then
predicts *every* token ``t >= n`` at once, as language models and iGPT do:
position ``t`` reads a learned start vector when ``t == n`` and the embedding
of token ``t - 1`` (teacher forcing) when ``t > n``, mixes causally along the
token sequence (Mamba's scan, or attention with a causal mask), and
cross-attends to the context. So the prediction of token ``t`` sees the
prefix only through the context, and the tokens ``n .. t-1`` only through the
causal stream; nothing at or after ``t`` reaches it, in any voxel.

Tokens before the prefix are *not* fed to the stream: if they were, the head
could predict from the stream alone and the encoder (the part that is
transferred to segmentation) would learn nothing from this objective.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tokenunify.models.mamba import MambaMixer
from tokenunify.models.mixers import MLP, Attention, sincos_position_encoding

__all__ = ["CausalNextHead"]


class _CausalAttention(nn.Module):
    def __init__(self, dim: int, heads: int | None) -> None:
        super().__init__()
        self.attn = Attention(dim, heads)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x, x, causal=True)


class CausalNextHead(nn.Module):
    """Predict tokens ``n .. K-1`` of each sample, each from the context and the tokens before it.

    Args:
        dim: width of the stream and of the context.
        token_features: values per token, ``C * pz * py * px``.
        depth: layers of (causal mixer, cross-attention to the context, MLP).
        mixer: ``"mamba"`` (a causal Mamba mixer) or ``"vit"`` (causal self-attention).
        heads: attention heads (default ``dim // 32``).
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(self, dim: int, token_features: int, depth: int = 2, mixer: str = "mamba",
                 heads: int | None = None, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if token_features < 1 or depth < 1:
            raise ValueError(f"token_features and depth must be positive, got {token_features} and {depth}")
        if mixer not in ("mamba", "vit"):
            raise ValueError(f"mixer must be 'mamba' or 'vit', got {mixer!r}")
        self.dim, self.token_features = dim, token_features
        self.embed = nn.Linear(token_features, dim)
        self.start = nn.Parameter(torch.randn(dim) * 0.02)
        # The context's mean enters every position directly, not only through
        # attention: with attention alone (small init, near-uniform weights),
        # a toy model learned to predict from the teacher-forced stream and
        # left the context unused.
        self.context_in = nn.Linear(dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleDict({
                "norm_seq": nn.LayerNorm(dim),
                "seq": MambaMixer(dim) if mixer == "mamba" else _CausalAttention(dim, heads),
                "norm_query": nn.LayerNorm(dim),
                "norm_context": nn.LayerNorm(dim),
                "cross": Attention(dim, heads),
                "norm_mlp": nn.LayerNorm(dim),
                "mlp": MLP(dim, int(dim * mlp_ratio)),
            })
            for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, token_features)
        for lin in (self.embed, self.out):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, tokens: Tensor, prefix: Tensor, context: Tensor, positions: Tensor,
                context_pos: Tensor | None = None) -> Tensor:
        """Predictions ``(B, K, token_features)``; row ``t`` predicts token ``t`` (meaningful for ``t >= prefix``).

        Args:
            tokens: ``(B, K, token_features)`` the network's input tokens, centred
                and scaled like the encoder's input.
            prefix: long ``(B,)``, the prefix length ``n`` per sample (``1 <= n < K``).
            context: ``(B, M, dim)`` latents (or features) summarising the prefix.
            positions: ``(K, 3)`` token centres, in the context's grid units.
            context_pos: optional ``(B or 1, M, dim)`` position terms of the context's keys.
        """
        b, k, f = tokens.shape
        if f != self.token_features or prefix.shape != (b,) or positions.shape != (k, 3):
            raise ValueError(
                f"expected tokens (B, K, {self.token_features}), prefix (B,) and positions (K, 3); got "
                f"{tuple(tokens.shape)}, {tuple(prefix.shape)} and {tuple(positions.shape)}"
            )
        if context.shape[0] != b or context.shape[-1] != self.dim:
            raise ValueError(f"context must be (B={b}, M, {self.dim}), got {tuple(context.shape)}")
        dtype = context.dtype
        # Shift right by one: position t holds token t-1. `where` selects, so the
        # tokens of the prefix (and token K-1, never an input) leave no trace.
        shifted = torch.cat([tokens.new_zeros(b, 1, f), tokens[:, :-1]], dim=1)
        fed = torch.arange(k, device=tokens.device)[None] > prefix[:, None]
        x = torch.where(fed[..., None], self.embed(shifted).to(dtype), self.start.to(dtype))
        pos = sincos_position_encoding(positions.float(), self.dim).to(dtype)
        x = x + pos + self.context_in(context.mean(1))[:, None]
        ctx_pos = None if context_pos is None else context_pos.to(dtype)
        for layer in self.layers:
            x = x + layer["seq"](layer["norm_seq"](x))
            x = x + layer["cross"](layer["norm_query"](x), layer["norm_context"](context), pos, ctx_pos)
            x = x + layer["mlp"](layer["norm_mlp"](x))
        return self.out(self.norm_out(x))
