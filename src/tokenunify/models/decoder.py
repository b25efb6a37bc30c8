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

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenunify.models.encoder import ConvBlock

__all__ = ["LeanUpBlock", "ShuffleUp", "UNETRDecoder", "UpBlock"]

Triple = tuple[int, int, int]


class ShuffleUp(nn.Module):
    """Upsample by ``stride`` as a 1x1x1 convolution to ``cout * prod(stride)`` channels and a depth-to-space.

    The same function as a transposed convolution whose kernel equals its
    stride (each coarse voxel writes its own ``stride`` box), computed as one
    matrix product at the coarse resolution; the full-resolution transposed
    convolution was the slower of the two on CPU (benchmarks/bench_finetune_step.py).
    """

    def __init__(self, cin: int, cout: int, stride: Triple) -> None:
        super().__init__()
        self.cout, self.stride = cout, tuple(int(s) for s in stride)
        self.proj = nn.Conv3d(cin, cout * math.prod(self.stride), 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, d, h, w = x.shape
        sz, sy, sx = self.stride
        # channel c * prod(stride) + offset goes to that offset of the box; built
        # channels-last, so a channels-last network makes one copy here, not three
        y = self.proj(x).movedim(1, -1).unflatten(-1, (self.cout, sz, sy, sx)).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.reshape(b, d * sz, h * sy, w * sx, self.cout).movedim(-1, 1)


class UpBlock(nn.Module):
    """Upsample ``cin`` -> ``cout`` by ``stride``, merge the skip, fuse with a :class:`ConvBlock`.

    ``merge="cat"`` concatenates the skip (UNETR); ``"add"`` adds it, which
    halves the fuse block's input and drops its projection shortcut.
    """

    def __init__(self, cin: int, cout: int, stride: Triple, kernel: Triple, merge: str = "cat") -> None:
        super().__init__()
        if merge not in ("cat", "add"):
            raise ValueError(f"merge must be 'cat' or 'add', got {merge!r}")
        self.merge = merge
        # the lean layout ("add") upsamples by ShuffleUp, the UNETR one by a transposed convolution
        self.up: nn.Module = nn.ConvTranspose3d(cin, cout, stride, stride=stride) if merge == "cat" else ShuffleUp(cin, cout, stride)
        self.fuse = ConvBlock(2 * cout if merge == "cat" else cout, cout, kernel)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = self.up(x)
        return self.fuse(torch.cat([up, skip], dim=1) if self.merge == "cat" else up + skip)


class LeanUpBlock(nn.Module):
    """Upsample ``cin`` -> ``cout`` by ``stride`` and add the skip (``full_res="lean"``'s last level).

    Adding instead of concatenating and fusing leaves no convolution at full
    resolution in the decoder: the transposed convolution places the coarse
    features, the skip (the stem's features) brings the full-resolution detail.
    """

    def __init__(self, cin: int, cout: int, stride: Triple) -> None:
        super().__init__()
        self.up = ShuffleUp(cin, cout, stride)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return F.gelu(self.up(x) + skip)


class UNETRDecoder(nn.Module):
    """Decode ``[stem, stage_0, ..., stage_{n-1}]`` features to dense logits at input resolution.

    Args:
        stem_width: channels of the stem features.
        dims: channels of each encoder stage, finest first.
        strides: stride of each encoder stage (the decoder undoes them in reverse).
        kernels: conv kernel of the stem level followed by one per stage.
        out_channels: channels of the output logits.
        full_res: ``"block"`` (concatenating :class:`UpBlock` s at every level) or
            ``"lean"`` (a :class:`LeanUpBlock` at full resolution, adding
            :class:`UpBlock` s above it).
    """

    def __init__(
        self,
        stem_width: int,
        dims: Sequence[int],
        strides: Sequence[Triple],
        kernels: Sequence[Triple],
        out_channels: int,
        full_res: str = "block",
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
            LeanUpBlock(widths[1], widths[0], tuple(strides[0])) if i == 0 and full_res == "lean"
            else UpBlock(widths[i + 1], widths[i], tuple(strides[i]), tuple(kernels[i]),
                         "add" if full_res == "lean" else "cat") for i in range(n)
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
