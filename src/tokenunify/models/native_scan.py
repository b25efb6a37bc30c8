"""The fused C selective scan (``csrc/selective_scan.c``) as an autograd function.

The chunked PyTorch scan (:mod:`tokenunify.models.scan`) passes its
(L, B, N, D) intermediates through memory a few dozen times per step and
pays Python dispatch for thousands of small ops; the C kernel keeps one
row's state in a vector register and walks the sequence once forward and
twice backward. :mod:`tokenunify.models.native` builds and loads it
(``TOKENUNIFY_NATIVE``); :func:`tokenunify.models.scan.selective_scan`
takes it for CPU tensors when it is available.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tokenunify.models.native import NativeError, failure, library, parts

__all__ = ["native_scan", "selective_scan_native"]

#: steps between the forward pass's saved states; the backward pass recomputes
#: a chunk from its state into two chunk x d_state stack buffers
CHUNK = 64


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def _time_major(t: Tensor) -> Tensor:
    """A (B, D, L) tensor as a contiguous (B, L, D) one; free for the mixer's transposed views."""
    return t.transpose(1, 2).contiguous()


class _NativeScan(torch.autograd.Function):
    """Core scan ``y_t = C_t . h_t`` on fp32 (B, D, L) inputs, as ``scan._ChunkedScan``."""

    @staticmethod
    def forward(ctx, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:  # type: ignore[override]
        lib = library()
        assert lib is not None
        ctx.lib = lib  # the backward pass uses the same kernels whatever the mode is by then
        batch, dim, length = u.shape
        n = A.shape[1]
        u, dt, A = _time_major(u), _time_major(dt), A.contiguous()
        Bt, Ct = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        y = u.new_empty(batch, length, dim)
        ckpt = u.new_empty(batch * dim, -(-length // CHUNK), n)
        rows = batch * dim
        lib.scan_forward(_ptr(u), _ptr(dt), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(y), _ptr(ckpt), dim, length, n, CHUNK,
                         rows, parts(rows))
        ctx.save_for_backward(u, dt, A, Bt, Ct, ckpt)
        return y.transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        lib = ctx.lib
        u, dt, A, Bt, Ct, ckpt = ctx.saved_tensors  # u, dt: (B, L, D)
        batch, length, dim = u.shape
        n = A.shape[1]
        gy = _time_major(gy.float()).transpose(1, 2)
        gu, gdt = torch.empty_like(u), torch.empty_like(dt)
        gA_rows = u.new_empty(batch * dim, n)
        rows = batch * dim
        k = parts(rows)
        gB_parts = Bt.new_zeros(k, *Bt.shape)
        gC_parts = Ct.new_zeros(k, *Ct.shape)
        lib.scan_backward(_ptr(u), _ptr(dt), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(ckpt), _ptr(gy), _ptr(gu), _ptr(gdt),
                          _ptr(gA_rows), _ptr(gB_parts), _ptr(gC_parts), Bt.numel(), dim, length, n, CHUNK, rows, k)
        gA = gA_rows.view(batch, dim, n).sum(0)
        return gu.transpose(1, 2), gdt.transpose(1, 2), gA, gB_parts.sum(0).transpose(1, 2), gC_parts.sum(0).transpose(1, 2)


def native_scan(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """``y_t = C_t . h_t`` of the recurrence on fp32 CPU tensors (``u``, ``dt``: (B, D, L); ``B``, ``C``: (B, N, L)).

    ``dt`` is the final step size (bias and softplus applied). Raises
    :class:`~tokenunify.models.native.NativeError` when the library is unavailable.
    """
    if library() is None:
        raise NativeError(f"the native scan is unavailable: {failure() or 'TOKENUNIFY_NATIVE=off'}")
    return _NativeScan.apply(u, dt, A, B, C)


def selective_scan_native(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """:func:`~tokenunify.models.scan.selective_scan_ref`'s semantics on the native kernel (CPU tensors).

    The recurrence runs in fp32 with autocast disabled; ``D``, ``z`` and the
    softplus stay in autograd, as in the chunked path.
    """
    from tokenunify.models.scan import _check, around_core

    _check(u, delta, A, B, C)
    if u.device.type != "cpu":
        raise ValueError(f"the native scan runs on the CPU, got {u.device}")
    return around_core(native_scan, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
