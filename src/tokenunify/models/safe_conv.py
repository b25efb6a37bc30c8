"""A Conv3d that steps around a wrong bf16 weight gradient of PyTorch's CPU convolution.

With torch 2.13 on x86 CPUs, a 3D convolution under bf16 autocast whose
input has depth exactly 2 and a kernel deeper than 1 returns a wrong weight
gradient: infinite or NaN on most draws, off by 100% on the rest
(`benchmarks/bf16_conv_check.py` measures it; other depths agree with fp32
to 0.2%). The forward output and the input gradient are right, which is why
it showed up only as "non-finite gradient norm" in bf16 pretraining, where
the tiny preset's deepest map on a 32-voxel-deep crop is 2 deep.

:class:`SafeConv3d` runs exactly those calls in fp32. They are the smallest
maps of a network, so the fp32 detour costs next to nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SafeConv3d", "needs_fp32"]


def needs_fp32(x: Tensor, kernel_depth: int) -> bool:
    """True where a bf16-autocast CPU convolution of ``x`` would get a wrong weight gradient."""
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and x.dim() == 5
        and x.shape[2] == 2
        and kernel_depth > 1
    )


class SafeConv3d(nn.Conv3d):
    """``nn.Conv3d`` that computes in fp32 where bf16 autocast would corrupt its weight gradient."""

    def forward(self, x: Tensor) -> Tensor:
        if needs_fp32(x, self.kernel_size[0]):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)
