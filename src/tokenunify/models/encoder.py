"""Hierarchical 3D encoder: a full-resolution stem and four downsampling stages.

Layout (``s_i`` = stride of stage ``i``, ``d_i`` = its width)::

    x (B, C_in, D, H, W)
    stem     : residual conv block at full resolution        -> (B, stem_width, D, H, W)
    stage i  : strided conv (kernel = stride = s_i), norm,
               residual conv block, depth_i mixer blocks,
               output norm                                   -> (B, d_i, D / prod(s_0..s_i), ...)

The stem stays at full resolution rather than patch-embedding the crop, so
the decoder has a full-resolution skip and thin membranes (a few voxels
wide) reach the affinity head without being squeezed through a 4x16x16
token. Tokenization happens in the stages instead: with the anisotropic
strides (1,2,2), (1,2,2), (2,2,2), (2,2,2) the deepest grid is exactly the
paper's 4x16x16 token grid (one deepest voxel per token); the isotropic
strides are (2,2,2) x 4 (deepest voxel = 16^3 voxels = 8 tokens of 8^3).

Anisotropic data keeps z at full resolution through the first two stages,
where the xy pixels are still much smaller than the section thickness, and
uses (1,3,3) kernels there (a 3-voxel z kernel would mix sections 40-50 nm
apart before xy context is built up), as the baseline U-Net does.

Normalisation is a per-voxel LayerNorm over channels everywhere: unlike
BatchNorm it makes a sample's output independent of the rest of the batch
(and of train/eval mode), and unlike instance or group norm it is independent
of the block size, so blockwise prediction sees the statistics training saw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from tokenunify.models.channel_norm import channel_norm
from tokenunify.models.mixers import make_mixer
from tokenunify.models.safe_conv import SafeConv3d

__all__ = [
    "ANISOTROPIC_STRIDES",
    "ISOTROPIC_STRIDES",
    "ChannelNorm",
    "ConvBlock",
    "FULL_RES",
    "EncoderStage",
    "HierarchicalEncoder",
    "LeanStem",
    "stage_kernels",
]

Triple = tuple[int, int, int]

ANISOTROPIC_STRIDES: tuple[Triple, ...] = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
ISOTROPIC_STRIDES: tuple[Triple, ...] = ((2, 2, 2),) * 4


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``(B, C, ...)`` tensor (one statistic per voxel).

    ``eps`` is 1e-3, not LayerNorm's 1e-5: where a voxel's channels are
    (nearly) equal, as in flat image regions, the gradient is scaled by
    1/sqrt(var + eps), and stacked norms then multiplied it into 1e13 and NaN.
    """

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return channel_norm(x, self.weight, self.bias, self.eps)


def _conv(cin: int, cout: int, kernel: Triple) -> nn.Conv3d:
    return SafeConv3d(cin, cout, kernel, padding=tuple(k // 2 for k in kernel))


class ConvBlock(nn.Module):
    """Two 'same' convolutions with norm and GELU, plus a (projected) residual.

    Bias is kept in the convolutions: a per-voxel LayerNorm does not absorb
    a per-channel shift the way BatchNorm would. It keeps PyTorch's random
    initialisation: zero biases make a flat input region give all-equal
    channels, the degenerate case of the per-voxel norm.
    """

    def __init__(self, cin: int, cout: int, kernel: Triple) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, kernel)
        self.norm1 = ChannelNorm(cout)
        self.conv2 = _conv(cout, cout, kernel)
        self.norm2 = ChannelNorm(cout)
        self.shortcut: nn.Module = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        y = F.gelu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.gelu(y + self.shortcut(x))


def stage_kernels(anisotropic: bool, n_stages: int = 4) -> tuple[Triple, list[Triple]]:
    """Conv kernel of the stem and of each stage's residual block."""
    if not anisotropic:
        return (3, 3, 3), [(3, 3, 3)] * n_stages
    # z is pooled only from stage 2 on; before that in-plane kernels only.
    return (1, 3, 3), [(1, 3, 3) if i < 2 else (3, 3, 3) for i in range(n_stages)]


class LeanStem(nn.Module):
    """The ``full_res="lean"`` stem: one 'same' convolution and GELU at full resolution.

    The residual conv block of the default stem and the decoder's last fuse
    block cost 40% of a ``tiny`` fine-tuning step on a 2-core CPU
    (benchmarks/bench_finetune_step.py) while only these voxels are at full
    resolution. A per-voxel channel norm after a convolution of one input
    channel would only rescale it, so there is none.
    """

    def __init__(self, cin: int, cout: int, kernel: Triple) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, kernel)
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.conv(x))


#: How the full-resolution level is built: ``"block"`` (a residual conv block
#: in the stem and in the decoder's last level) or ``"lean"`` (:class:`LeanStem`
#: and :class:`~tokenunify.models.decoder.LeanUpBlock`).
FULL_RES = ("block", "lean")


class EncoderStage(nn.Module):
    """Downsampling conv, residual conv block, ``depth`` mixer blocks, output norm."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: Triple,
        kernel: Triple,
        depth: int,
        mixer: str,
        mixer_kwargs: Mapping[str, Any],
    ) -> None:
        super().__init__()
        # kernel == stride: non-overlapping "patch merging", the hierarchical
        # counterpart of the tokenizer's non-overlapping patches.
        self.down = SafeConv3d(cin, cout, stride, stride=stride)
        self.down_norm = ChannelNorm(cout)
        self.conv = ConvBlock(cout, cout, kernel)
        self.mixers = nn.ModuleList(make_mixer(mixer, cout, **dict(mixer_kwargs)) for _ in range(depth))
        self.out_norm = ChannelNorm(cout)
        nn.init.kaiming_normal_(self.down.weight, nonlinearity="linear")
        nn.init.zeros_(self.down.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(self.down_norm(self.down(x)))
        for block in self.mixers:
            x = block(x)
        # Mixer blocks are pre-norm residual, so their output stream is not
        # normalised; the skip to the decoder should be.
        return self.out_norm(x)


class HierarchicalEncoder(nn.Module):
    """Stem + four stages of conv and Mamba/ViT mixer blocks (see the module docstring).

    Args:
        in_channels: input channels (1 for grey-scale EM).
        stem_width: channels of the full-resolution stem.
        dims: width of each stage.
        depths: mixer blocks per stage (0 allowed: a pure conv stage).
        mixer: ``"mamba"`` or ``"vit"``.
        anisotropic: strides and kernels for anisotropic data (see module docstring).
        strides: per-stage strides, overriding the ``anisotropic`` default.
        mixer_kwargs: extra keyword arguments for every mixer block (e.g.
            ``orders`` for Mamba, ``heads`` for ViT, ``mlp_ratio`` for both).
        full_res: ``"block"`` or ``"lean"`` stem (see :data:`FULL_RES`).

    ``forward`` returns ``[stem, stage_0, ..., stage_3]`` features, finest
    first: the decoder's skips.
    """

    def __init__(
        self,
        in_channels: int = 1,
        stem_width: int = 16,
        dims: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (1, 1, 1, 1),
        mixer: str = "mamba",
        anisotropic: bool = True,
        strides: Sequence[Sequence[int]] | None = None,
        mixer_kwargs: Mapping[str, Any] | None = None,
        full_res: str = "block",
    ) -> None:
        super().__init__()
        if full_res not in FULL_RES:
            raise ValueError(f"full_res must be one of {FULL_RES}, got {full_res!r}")
        dims = tuple(int(d) for d in dims)
        depths = tuple(int(d) for d in depths)
        if strides is None:
            strides = ANISOTROPIC_STRIDES if anisotropic else ISOTROPIC_STRIDES
        strides_t: tuple[Triple, ...] = tuple(tuple(int(s) for s in st) for st in strides)  # type: ignore[misc]
        n = len(dims)
        if n < 1 or len(depths) != n or len(strides_t) != n:
            raise ValueError(
                f"dims, depths and strides need one entry per stage, got {len(dims)}, {len(depths)}, {len(strides_t)}"
            )
        if min(dims) < 1 or stem_width < 1 or in_channels < 1 or min(depths) < 0:
            raise ValueError("widths and in_channels must be positive, depths non-negative")
        if any(len(s) != 3 or min(s) < 1 for s in strides_t):
            raise ValueError(f"strides must be positive (z, y, x) triples, got {strides_t}")
        if mixer not in ("mamba", "vit"):
            raise ValueError(f"mixer must be 'mamba' or 'vit', got {mixer!r}")
        self.in_channels, self.stem_width, self.dims, self.depths = in_channels, stem_width, dims, depths
        self.mixer, self.strides = mixer, strides_t
        stem_kernel, kernels = stage_kernels(anisotropic, n)
        self.kernels: tuple[Triple, ...] = (stem_kernel, *kernels)
        self.full_res = full_res
        self.stem: nn.Module = (ConvBlock if full_res == "block" else LeanStem)(in_channels, stem_width, stem_kernel)
        self.stages = nn.ModuleList()
        for i in range(n):
            kwargs = dict(mixer_kwargs or {})
            # Keys/values of attention on the deepest grid: the product of the
            # strides still to come (cost N_i * N_deepest instead of N_i^2).
            kwargs.setdefault(
                "kv_reduction", tuple(math.prod(s[a] for s in strides_t[i + 1 :]) for a in range(3))
            )
            cin = stem_width if i == 0 else dims[i - 1]
            self.stages.append(EncoderStage(cin, dims[i], strides_t[i], kernels[i], depths[i], mixer, kwargs))

    @property
    def downsample_factor(self) -> Triple:
        """Product of all stage strides per axis (z, y, x)."""
        return tuple(math.prod(s[a] for s in self.strides) for a in range(3))  # type: ignore[return-value]

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, C_in, D, H, W)`` -> ``[stem, stage_0, ..., stage_{n-1}]`` features."""
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats
