"""Token mixers over flattened 3D feature maps: attention (ViT) and Mamba blocks.

Every mixer built by :func:`make_mixer` maps a ``(B, C, D, H, W)`` feature map
to the same shape and is a pre-norm residual block, so the encoder can stack
either kind without knowing which it holds. Both kinds are "token mixer + MLP"
blocks; their MLP ratios default to values that give the two kinds nearly the
same parameter count per block (about ``12 * dim**2``), so a ViT and a Mamba
encoder of one preset are compared at equal size.

Positions: Mamba reads position from the scan order. Attention is
permutation-invariant, so :class:`ViTBlock` adds a fixed sinusoidal 3D
encoding of each voxel's grid coordinates to its queries and keys (as DETR
does in every layer). Being a function of integer coordinates, it works for
any grid size, so a model trained on one crop size predicts on another.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Attention",
    "MLP",
    "MambaMixerBlock",
    "ViTBlock",
    "grid_coordinates",
    "make_mixer",
    "sincos_position_encoding",
]

Triple = tuple[int, int, int]

#: Channels per attention head when the head count is not given.
HEAD_DIM = 32


def sincos_position_encoding(coords: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed sinusoidal encoding of 3D coordinates.

    Args:
        coords: ``(..., 3)`` coordinates (z, y, x), integers or fractions, in
            grid units of the feature map they describe.
        dim: output channels. Each axis gets ``2 * (dim // 6)`` channels
            (sine and cosine of ``dim // 6`` frequencies); any remainder is 0.
        temperature: longest wavelength, in grid units.

    Returns:
        ``(..., dim)`` float32 encoding.

    Raises:
        ValueError: for ``dim < 6`` or coordinates whose last axis is not 3.
    """
    if dim < 6:
        raise ValueError(f"a 3D sinusoidal encoding needs dim >= 6, got {dim}")
    if coords.shape[-1] != 3:
        raise ValueError(f"coords must end in an axis of size 3 (z, y, x), got {tuple(coords.shape)}")
    n_freq = dim // 6
    # Geometric frequencies from 1 down to 1/temperature, as in "Attention is all you need".
    freqs = temperature ** (-torch.arange(n_freq, dtype=torch.float32, device=coords.device) / n_freq)
    angles = coords.float()[..., None] * freqs  # (..., 3, n_freq)
    enc = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., 6 * n_freq)
    return F.pad(enc, (0, dim - enc.shape[-1]))


def grid_coordinates(shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Integer (z, y, x) coordinates of a ``(D, H, W)`` grid, flattened z slowest: ``(D*H*W, 3)``."""
    axes = [torch.arange(int(s), device=device, dtype=torch.float32) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def _init_linear(module: nn.Module) -> None:
    # ViT / MAE initialisation: small truncated normal weights keep the
    # residual stream near identity at the start of training.
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MLP(nn.Module):
    """Two linear layers with GELU in between, on the last axis."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        _init_linear(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention of ``x`` (B, N, dim) to ``context`` (B, M, context_dim).

    Optional position terms are added to queries and keys only, so values
    carry content and positions steer where attention goes.
    """

    def __init__(self, dim: int, heads: int | None = None, context_dim: int | None = None) -> None:
        super().__init__()
        if heads is None:
            # about HEAD_DIM channels per head, rounded down to a divisor of dim
            heads = max(h for h in range(1, max(1, dim // HEAD_DIM) + 1) if dim % h == 0)
        if heads < 1 or dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        context_dim = context_dim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(context_dim, dim)
        self.v = nn.Linear(context_dim, dim)
        self.proj = nn.Linear(dim, dim)
        _init_linear(self)

    def forward(
        self, x: Tensor, context: Tensor, x_pos: Tensor | None = None, context_pos: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """Attend from ``x`` to ``context``; ``causal`` (self-attention only): query i sees keys <= i."""
        q = self.q(x if x_pos is None else x + x_pos)
        k = self.k(context if context_pos is None else context + context_pos)
        v = self.v(context)
        # (B, N, heads * d) -> (B, heads, N, d): the layout SDPA expects
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(out.transpose(1, 2).flatten(2))


class ViTBlock(nn.Module):
    """Pre-norm attention + MLP block over the flattened ``(B, C, D, H, W)`` map.

    Global self-attention over a fine feature map is quadratic in its voxel
    count (131k voxels at stage 1 of a 32x128x128 crop), so keys and values
    can be average-pooled by ``kv_reduction`` first, as in the Pyramid Vision
    Transformer's spatial-reduction attention: every voxel still attends to
    the whole map, at a coarser resolution. The encoder sets the reduction so
    that keys always live on the deepest stage's grid.
    """

    def __init__(
        self,
        dim: int,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
        kv_reduction: Sequence[int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        self.dim = dim
        self.kv_reduction: Triple = tuple(int(r) for r in kv_reduction)  # type: ignore[assignment]
        if len(self.kv_reduction) != 3 or min(self.kv_reduction) < 1:
            raise ValueError(f"kv_reduction must be three positive ints, got {kv_reduction}")
        self.norm1 = nn.LayerNorm(dim)
        self.norm_kv: nn.Module = nn.LayerNorm(dim) if self.kv_reduction != (1, 1, 1) else nn.Identity()
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, D, H, W)`` -> same shape."""
        if x.dim() != 5 or x.shape[1] != self.dim:
            raise ValueError(f"expected (B, {self.dim}, D, H, W), got {tuple(x.shape)}")
        b, c, *grid = x.shape
        pos = sincos_position_encoding(grid_coordinates(grid, x.device), c).to(x.dtype)  # (N, C)
        seq = x.flatten(2).transpose(1, 2)  # (B, N, C), z slowest
        h = self.norm1(seq)
        if self.kv_reduction == (1, 1, 1):
            ctx, ctx_pos = h, pos
        else:
            r = self.kv_reduction
            vol = h.transpose(1, 2).reshape(b, c, *grid)
            # ceil_mode keeps a partial window at the border instead of dropping it
            ctx = self.norm_kv(F.avg_pool3d(vol, r, r, ceil_mode=True).flatten(2).transpose(1, 2))
            pos_vol = pos.t().reshape(1, c, *grid)
            ctx_pos = F.avg_pool3d(pos_vol, r, r, ceil_mode=True).flatten(2).transpose(1, 2)
        seq = seq + self.attn(h, ctx, pos, ctx_pos)
        seq = seq + self.mlp(self.norm2(seq))
        return seq.transpose(1, 2).reshape(b, c, *grid)


class MambaMixerBlock(nn.Module):
    """:class:`~tokenunify.models.mamba.MultiDirectionMamba` followed by a pre-norm MLP.

    The scan paths are ``orders`` (axes slowest to fastest), each forward and
    backward, so every voxel sees context on both sides. ``share_weights``
    runs all paths through one mixer as one batch: faster on a CPU and the
    parameter count of a single mixer.
    """

    def __init__(
        self,
        dim: int,
        orders: Sequence[str] = ("zyx",),
        mlp_ratio: float = 3.0,
        share_weights: bool = True,
        **mamba_kwargs: object,
    ) -> None:
        super().__init__()
        # Imported here so that the ViT path works without the scan module.
        from tokenunify.models.mamba import MultiDirectionMamba

        self.dim = dim
        self.mamba = MultiDirectionMamba(
            dim, orders=tuple(orders), bidirectional=True, share_weights=share_weights, norm="layer",
            **mamba_kwargs,
        )
        self.norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, D, H, W)`` -> same shape."""
        if x.dim() != 5 or x.shape[1] != self.dim:
            raise ValueError(f"expected (B, {self.dim}, D, H, W), got {tuple(x.shape)}")
        y = self.mamba(x).movedim(1, -1)
        y = y + self.mlp(self.norm(y))
        return y.movedim(-1, 1)


def make_mixer(kind: str, dim: int, **kwargs: object) -> nn.Module:
    """Build one mixer block mapping ``(B, dim, D, H, W)`` to the same shape.

    Args:
        kind: ``"mamba"`` (:class:`MambaMixerBlock`) or ``"vit"`` (:class:`ViTBlock`).
        dim: channels of the feature map.
        **kwargs: passed to the block; the encoder passes ``kv_reduction`` to
            both kinds and it is dropped for Mamba, whose cost is linear anyway.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    if kind == "mamba":
        kwargs.pop("kv_reduction", None)
        return MambaMixerBlock(dim, **kwargs)  # type: ignore[arg-type]
    if kind == "vit":
        return ViTBlock(dim, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"mixer must be 'mamba' or 'vit', got {kind!r}")
