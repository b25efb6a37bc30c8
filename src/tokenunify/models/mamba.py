"""Mamba (selective state space) blocks for sequences and 3D feature maps.

:class:`MambaMixer` is the Mamba-1 mixer of Gu & Dao (in_proj -> depthwise
causal conv1d -> SiLU -> x_proj for (delta, B, C) -> dt_proj -> selective scan
-> gate with SiLU(z) -> out_proj). :class:`MambaBlock` wraps it pre-norm with a
residual, :class:`MambaStack` stacks blocks over ``(batch, length, d_model)``
and :class:`MultiDirectionMamba` scans a ``(B, C, D, H, W)`` volume along
several 1D traversals. The scan goes through
:func:`tokenunify.models.scan.selective_scan` (mamba-ssm's kernel on CUDA
when installed, the chunked pure-PyTorch scan otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenunify.models.channel_norm import channel_norm
from tokenunify.models.scan import selective_scan

__all__ = ["MambaBlock", "MambaMixer", "MambaStack", "MultiDirectionMamba", "RMSNorm"]

ScanFn = Callable[..., Tensor]


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis with a learned scale (no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalise in fp32: bf16 mean-of-squares loses too many bits over 128+ channels
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight).to(x.dtype)


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    raise ValueError(f"norm must be 'rms' or 'layer', got {kind!r}")


class MambaMixer(nn.Module):
    """Mamba-1 mixer on ``(batch, length, d_model)``; causal along ``length``.

    Initialisation follows the reference implementation: S4D-real ``A``
    (``A[d, n] = -(n + 1)``, stored as ``A_log``), ``D = 1`` and a ``dt_proj``
    bias whose softplus is log-uniform in ``[dt_min, dt_max]``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
        scan_fn: ScanFn = selective_scan,
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_fn = scan_fn
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))

    def _causal_conv(self, x: Tensor) -> Tensor:
        """Depthwise causal conv on ``(batch, length, d_inner)`` as ``d_conv`` shifted multiply-adds.

        Same weights and result as ``self.conv1d`` on the left-padded transposed
        input, but oneDNN's depthwise conv1d backward on CPU is ~100x slower
        than these few elementwise passes, and the channels-last layout saves
        two transposes.
        """
        length, k = x.shape[1], self.d_conv
        xp = F.pad(x, (0, 0, k - 1, 0))  # left padding only: no output sees the future
        w = self.conv1d.weight[:, 0, :]  # (d_inner, d_conv)
        out = xp[:, k - 1 :] * w[:, k - 1]
        for i in range(k - 1):
            out = out + xp[:, i : i + length] * w[:, i]
        return out if self.conv1d.bias is None else out + self.conv1d.bias

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, length, d_model)`` -> same shape; output t depends on inputs <= t only."""
        length = x.shape[1]
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = F.silu(self._causal_conv(xs))
        dbc = self.x_proj(xs)
        dt, B, C = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj's bias goes into the scan as delta_bias, added before softplus in fp32
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        y = self.scan_fn(
            xs.transpose(1, 2), delta, -torch.exp(self.A_log.float()), B.transpose(1, 2), C.transpose(1, 2),
            D=self.D, z=z.transpose(1, 2), delta_bias=self.dt_proj.bias, delta_softplus=True,
        )
        assert y.shape[-1] == length
        return self.out_proj(y.transpose(1, 2))


class MambaBlock(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` on ``(batch, length, d_model)``."""

    def __init__(self, d_model: int, norm: str = "rms", **mixer_kwargs: object) -> None:
        super().__init__()
        self.norm = _norm(norm, d_model)
        self.mixer = MambaMixer(d_model, **mixer_kwargs)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mixer(self.norm(x))


class MambaStack(nn.Module):
    """``n_layers`` :class:`MambaBlock` s and a final norm over ``(batch, length, d_model)``."""

    def __init__(self, d_model: int, n_layers: int, norm: str = "rms", **mixer_kwargs: object) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MambaBlock(d_model, norm=norm, **mixer_kwargs) for _ in range(n_layers))
        self.norm_f = _norm(norm, d_model)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)


_AXES = {"z": 2, "y": 3, "x": 4}


def _check_order(order: str) -> tuple[int, int, int]:
    if sorted(order) != ["x", "y", "z"]:
        raise ValueError(f"an order is a permutation of 'zyx' (slowest to fastest axis), got {order!r}")
    return tuple(_AXES[a] for a in order)  # type: ignore[return-value]


class MultiDirectionMamba(nn.Module):
    """Mamba over a 3D feature map along several traversals, residual and pre-norm.

    Each *order* names the axes of ``(B, C, D=z, H=y, W=x)`` from slowest to
    fastest: ``"zyx"`` is the raster order (z slowest, x fastest), ``"zxy"``
    makes y fastest, ``"yxz"`` makes z fastest. With ``bidirectional`` every
    order is scanned forward and backward. Path outputs are mapped back to the
    volume layout and averaged (``reduce="mean"``) or summed (``"sum"``), so
    the sequence length ``D*H*W`` is unrestricted.

    ``share_weights=False`` (default) gives every path its own mixer (more
    parameters; each direction learns its own dynamics, as in Vision Mamba's
    forward/backward SSMs). ``share_weights=True`` uses one mixer for all paths
    and runs them as one batch of ``len(paths) * B`` sequences, which is
    faster on CPU and keeps the parameter count of a single block.
    """

    def __init__(
        self,
        dim: int,
        orders: Sequence[str] = ("zyx",),
        bidirectional: bool = True,
        share_weights: bool = False,
        reduce: str = "mean",
        norm: str = "layer",
        **mixer_kwargs: object,
    ) -> None:
        super().__init__()
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        if not orders:
            raise ValueError("need at least one order")
        self.paths: list[tuple[tuple[int, int, int], bool]] = [
            (_check_order(o), rev) for o in orders for rev in ((False, True) if bidirectional else (False,))
        ]
        self.share_weights, self.reduce = share_weights, reduce
        self.norm = _norm(norm, dim)
        n_mixers = 1 if share_weights else len(self.paths)
        self.mixers = nn.ModuleList(MambaMixer(dim, **mixer_kwargs) for _ in range(n_mixers))  # type: ignore[arg-type]

    def _to_seq(self, x: Tensor, axes: tuple[int, int, int], reverse: bool) -> Tensor:
        seq = x.permute(0, *axes, 1).flatten(1, 3)  # (B, L, C); a view for a channels-last x in raster order
        return seq.flip(1) if reverse else seq

    def _from_seq(self, seq: Tensor, shape: torch.Size, axes: tuple[int, int, int], reverse: bool) -> Tensor:
        if reverse:
            seq = seq.flip(1)
        vol = seq.unflatten(1, [shape[a] for a in axes])  # (B, *grid in traversal order, C)
        inverse = [0, 4] + [1 + axes.index(a) for a in (2, 3, 4)]
        return vol.permute(*inverse)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, D, H, W)`` -> same shape."""
        if x.dim() != 5:
            raise ValueError(f"expected (B, C, D, H, W), got {tuple(x.shape)}")
        if isinstance(self.norm, nn.LayerNorm) and self.norm.weight is not None and self.norm.bias is not None:
            normed = channel_norm(x, self.norm.weight, self.norm.bias, self.norm.eps)
        else:
            normed = self.norm(x.movedim(1, -1)).movedim(-1, 1)
        seqs = [self._to_seq(normed, axes, rev) for axes, rev in self.paths]
        if self.share_weights:
            outs = self.mixers[0](torch.cat(seqs, dim=0)).chunk(len(seqs), dim=0)
        else:
            outs = [m(s) for m, s in zip(self.mixers, seqs)]
        total = sum(self._from_seq(o, x.shape, axes, rev) for o, (axes, rev) in zip(outs, self.paths))
        if self.reduce == "mean":
            total = total / len(self.paths)
        return x + total
