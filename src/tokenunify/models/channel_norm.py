"""Per-voxel LayerNorm over the channel axis of a channels-first ``(B, C, ...)`` tensor.

The same function as ``F.layer_norm(x.movedim(1, -1), (C,), w, b, eps).movedim(-1, 1)``,
computed where the data lies. On a channels-first feature map that route
copies the map into channels-last order, normalises rows of only C (16-48)
values, and copies back, forward and backward; at the fine levels of the
``tiny`` network (24 channels at 16 x 32 x 32, batch 2) one norm took 8-10
ms forward + backward on a 2-core CPU, against 2 ms here
(benchmarks/bench_finetune_step.py, docs/study.md "The fine-tuning step").
Here every reduction runs over axis 1, which torch vectorises across the
contiguous voxels, and the backward pass is the closed-form LayerNorm
gradient instead of autograd's chain of elementwise ops.

Statistics are fp32 (float64 for float64 input); the output has the
input's dtype, as ``F.layer_norm`` gives a bf16 map with fp32 weights, with
or without autocast. On a channels-last map the C kernel
(``csrc/channel_norm.c``, :mod:`tokenunify.models.native`) does the same in
one pass per row and direction; without it a channels-last map takes the
plain ``F.layer_norm`` route, which needs no copy there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from tokenunify.models.native import library, parts

__all__ = ["channel_norm", "channel_norm_reference", "use_reference_norm"]

_REFERENCE = False


def _shape(x: Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


class _ChannelNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        acc = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(acc)
        centred = xf - xf.mean(1, keepdim=True)
        rstd = centred.square().mean(1, keepdim=True).add_(eps).rsqrt_()
        xhat = centred.mul_(rstd)
        sh = _shape(x)
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.x_dtype = x.dtype
        return torch.addcmul(bias.to(acc).view(sh), xhat, weight.to(acc).view(sh)).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        xhat, rstd, weight = ctx.saved_tensors
        g = grad.to(xhat.dtype)
        dims = [0, *range(2, g.dim())]
        g_bias = g.sum(dims) if ctx.needs_input_grad[2] else None
        g_weight = (g * xhat).sum(dims) if ctx.needs_input_grad[1] else None
        g_x = None
        if ctx.needs_input_grad[0]:
            gx = g * weight.to(xhat.dtype).view(_shape(g))
            # d xhat / d x projects out the mean and the xhat direction, then scales by rstd
            proj = (gx * xhat).mean(1, keepdim=True)
            gx.sub_(gx.mean(1, keepdim=True)).sub_(xhat * proj).mul_(rstd)
            g_x = gx.to(ctx.x_dtype)
        cast = lambda t, ref: None if t is None else t.to(ref.dtype)  # noqa: E731
        return g_x, cast(g_weight, weight), cast(g_bias, weight), None


class _NativeChannelNorm(torch.autograd.Function):
    """The same function on a channels-last ``x`` by the C kernel (``csrc/channel_norm.c``)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        lib = library()
        assert lib is not None
        ctx.lib = lib  # the backward pass uses the same kernels whatever the mode is by then
        last = x.movedim(1, -1)  # contiguous: checked by the caller
        rows, c = last.numel() // x.shape[1], x.shape[1]
        w, b = weight.detach().float().contiguous(), bias.detach().float().contiguous()
        y = torch.empty(last.shape, dtype=x.dtype)
        xhat = torch.empty(last.shape, dtype=torch.float32)
        rstd = torch.empty(rows, dtype=torch.float32)
        lib.channel_norm_forward(last.data_ptr(), int(x.dtype == torch.bfloat16), w.data_ptr(), b.data_ptr(),
                                 float(eps), y.data_ptr(), xhat.data_ptr(), rstd.data_ptr(), c, rows, parts(rows))
        ctx.save_for_backward(xhat, rstd, w)
        ctx.x_dtype = x.dtype
        return y.movedim(-1, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        lib = ctx.lib
        xhat, rstd, w = ctx.saved_tensors
        g = grad.movedim(1, -1).float().contiguous()
        rows, c = rstd.numel(), w.numel()
        gx = torch.empty(xhat.shape, dtype=ctx.x_dtype)
        k = parts(rows)
        partial = torch.zeros(2, k, c)  # dL/dweight, dL/dbias per row range
        lib.channel_norm_backward(g.data_ptr(), xhat.data_ptr(), rstd.data_ptr(), w.data_ptr(), gx.data_ptr(),
                                  int(ctx.x_dtype == torch.bfloat16), partial[0].data_ptr(), partial[1].data_ptr(),
                                  c, rows, k)
        sums = partial.sum(1)
        return gx.movedim(-1, 1), sums[0], sums[1], None


def _native_fits(x: Tensor, weight: Tensor) -> bool:
    # bf16 only: on fp32 channels-last maps F.layer_norm was faster (1.95 against 4.54 ms forward + backward
    # at 24 x 16 x 32 x 32, batch 2, one thread; docs/study.md, "The C kernels")
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and weight.dtype == torch.float32
            and x.movedim(1, -1).is_contiguous() and x.numel() > 0 and library() is not None)


def channel_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over axis 1 of ``x`` (``(B, C, ...)``) with per-channel ``weight`` and ``bias``.

    Raises:
        ValueError: if ``x`` has fewer than 2 axes or ``weight`` / ``bias`` are not ``(C,)``.
    """
    if x.dim() < 2 or weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise ValueError(f"channel_norm needs x (B, C, ...) and (C,) weight and bias; got x {tuple(x.shape)}, "
                         f"weight {tuple(weight.shape)}, bias {tuple(bias.shape)}")
    if _REFERENCE:
        return channel_norm_reference(x, weight, bias, eps)
    if _native_fits(x, weight):
        return _NativeChannelNorm.apply(x, weight, bias, float(eps))
    if x.movedim(1, -1).is_contiguous():  # channels-last: the plain route needs no copy (and is one kernel on CUDA)
        return channel_norm_reference(x, weight, bias, eps)
    return _ChannelNorm.apply(x, weight, bias, float(eps))


def channel_norm_reference(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """The plain route :func:`channel_norm` replaces: ``F.layer_norm`` on the channels-last view."""
    return F.layer_norm(x.movedim(1, -1), (x.shape[1],), weight, bias, eps).movedim(-1, 1)


@contextmanager
def use_reference_norm(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`channel_norm` takes :func:`channel_norm_reference` (this process, all threads).

    For benchmarks that time the step as it was before this module, and for
    tests that compare whole networks under both routes.
    """
    global _REFERENCE
    before, _REFERENCE = _REFERENCE, enabled
    try:
        yield
    finally:
        _REFERENCE = before
