"""UNETR-style decoder: transposed-conv upsampling, skip concatenation, residual conv blocks.

As in UNETR (Hatamizadeh et al. 2022) each level upsamples with a transposed
convolution whose kernel equals its stride, concatenates the encoder
features of that resolution and fuses the two with a residual conv block.
UNETR's encoder gives every skip the same (token) resolution and needs extra
upsampling blocks per skip; the hierarchical encoder here already delivers
each skip at its own resolution, so the skips enter unchanged.

The last level fuses with the full-resolution stem, and a 1x1x1 ``head``
maps to ``out_channels`` logits: 1 (or ``in_channels``) for reconstruction
in pretraining, one per affinity offset in fine-tuning. Only the head's
shape depends on the task, so a pretrained decoder loads into the
segmentation model by parameter name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tokenunify.models.encoder import ConvBlock

__all__ = ["UNETRDecoder", "UpBlock"]

Triple = tuple[int, int, int]


class UpBlock(nn.Module):
    """Upsample ``cin`` -> ``cout`` by ``stride``, concatenate the skip, fuse with a :class:`ConvBlock`."""

    def __init__(self, cin: int, cout: int, stride: Triple, kernel: Triple) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(cin, cout, stride, stride=stride)
        self.fuse = ConvBlock(2 * cout, cout, kernel)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


class UNETRDecoder(nn.Module):
    """Decode ``[stem, stage_0, ..., stage_{n-1}]`` features to dense logits at input resolution.

    Args:
        stem_width: channels of the stem features.
        dims: channels of each encoder stage, finest first.
        strides: stride of each encoder stage (the decoder undoes them in reverse).
        kernels: conv kernel of the stem level followed by one per stage.
        out_channels: channels of the output logits.
    """

    def __init__(
        self,
        stem_width: int,
        dims: Sequence[int],
        strides: Sequence[Triple],
        kernels: Sequence[Triple],
        out_channels: int,
    ) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        n = len(dims)
        if len(strides) != n or len(kernels) != n + 1:
            raise ValueError("need one stride per stage and one kernel per stage plus the stem")
        self.out_channels = out_channels
        widths = [stem_width, *dims]  # widths[i] is the skip that up-block i fuses with
        # ups[i] goes from level i+1 to level i; level 0 is the stem.
        self.ups = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], tuple(strides[i]), tuple(kernels[i])) for i in range(n)
        )
        self.head = nn.Conv3d(stem_width, out_channels, 1)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """Features from :class:`~tokenunify.models.encoder.HierarchicalEncoder` -> ``(B, out_channels, D, H, W)``."""
        if len(feats) != len(self.ups) + 1:
            raise ValueError(f"expected {len(self.ups) + 1} feature maps, got {len(feats)}")
        x = feats[-1]
        for i in range(len(self.ups) - 1, -1, -1):
            x = self.ups[i](x, feats[i])
        return self.head(x)
