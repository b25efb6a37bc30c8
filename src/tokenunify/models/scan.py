"""Mamba-1 selective scan: a sequential reference, a chunked CPU path and a dispatcher.

The recurrence, per batch ``b``, channel ``d`` and state ``n``::

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = sum_n C_t[n] * h_t[n] + D * u_t          (then y * silu(z) if z is given)

Argument conventions follow mamba-ssm's ``selective_scan_fn``: ``u`` and
``delta`` are ``(batch, dim, length)``, ``A`` is ``(dim, d_state)`` (real),
``B`` and ``C`` are input dependent ``(batch, d_state, length)``, ``D`` is
``(dim,)``, ``z`` is ``(batch, dim, length)``; ``delta_bias`` (``(dim,)``) is
added to ``delta`` before the optional softplus. All paths run the recurrence
in fp32 and return ``u``'s dtype.

Why the CPU path is not the Mamba-2 "segment-sum matmul" form: in Mamba-1 the
decay ``exp(delta_t * A[d, n])`` differs per state channel, so a chunk's
(T, T) masked decay matrix exists once per (b, d, n) and the matmul form does
T times the exponentials and memory traffic of the recurrence. A prototype
(forward only, L=2048, d_inner 256, d_state 16, 1 thread) took 0.9 / 1.5 /
4.4 s at T = 4 / 8 / 16 against 0.09 s for the path below.

The chunked path instead walks the sequence in chunks of ``chunk_size`` steps.
Per chunk it materialises the decays and inputs, (chunk, B, N, D), runs the
recurrence in place (optionally as a two-level scan over sub-chunks, see
:func:`_scan_`), contracts with C, and carries the last state to the next
chunk. A custom autograd function keeps only its (B, D, L)-sized inputs and one
state per chunk, and recomputes a chunk's states in the backward pass, which
runs the adjoint recurrence backwards over the chunks; so no (B, D, N, L)
tensor ever exists and small chunks stay in cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "around_core",
    "DEFAULT_SUB_CHUNK",
    "mamba_ssm_available",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]

#: Steps per chunk: the scan holds about five (chunk, B, N, D) fp32 buffers at
#: a time. Measured forward+backward of the scan alone at (B, D, N, L) =
#: (4, 256, 16, 2048), 2 threads (``benchmarks/bench_mamba.py --sweep``), in ms:
#: chunk/sub 16/16: 155, 32/32: 143, 64/64: 129, 32/8: 126, 64/8: 108,
#: 64/16: 106, 96/16: 100, 128/8: 129, 128/16: 123, 256/16: 148 (repeat
#: runs vary by about +-15 ms). Small
#: chunks keep the buffers in cache; much smaller ones pay Python overhead.
DEFAULT_CHUNK_SIZE = 64
#: Sub-chunk length of the two-level scan inside a chunk (see above): with
#: ``chunk // sub`` sub-chunks scanned side by side each step's op is big
#: enough to split across threads; ``sub == chunk`` is a plain sequential scan
#: (about as fast single-threaded).
DEFAULT_SUB_CHUNK = 16


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, length); got {tuple(u.shape)}, {tuple(delta.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f"A must be real (dim={dim}, d_state); got {tuple(A.shape)} {A.dtype}")
    want = (batch, A.shape[1], length)
    if tuple(B.shape) != want or tuple(C.shape) != want:
        raise ValueError(f"B and C must be (batch, d_state, length)={want}; got {tuple(B.shape)}, {tuple(C.shape)}")


def _prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    if D is not None:
        y = y + u.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def around_core(
    core: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor],
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> Tensor:
    """What the fast paths share around their core ``y_t = C_t . h_t``: fp32 without autocast, delta, D, gate.

    ``core`` takes fp32 ``(u, dt, A, B, C)`` with ``dt`` final (bias and
    softplus applied); D, z and the softplus stay in autograd. Returns
    ``u``'s dtype; an empty sequence gives zeros.
    """
    if u.shape[-1] == 0:
        return u.new_zeros(u.shape)
    with torch.autocast(u.device.type, enabled=False):
        uf = u.float()
        dt = _prepare_delta(delta, delta_bias, delta_softplus)
        return _finish(core(uf, dt, A.float(), B.float(), C.float()), uf, D, z, u.dtype)


def selective_scan_ref(
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
    """Reference selective scan: a plain fp32 loop over the sequence.

    Slow and memory hungry under autograd (it keeps every step); use it to
    check the fast paths. Returns ``(batch, dim, length)`` in ``u``'s dtype.
    """
    _check(u, delta, A, B, C)
    dtype = u.dtype
    uf, A32, B32, C32 = u.float(), A.float(), B.float(), C.float()
    dt = _prepare_delta(delta, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    h = uf.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, :, t, None] * A32)
        h = decay * h + (dt[:, :, t] * uf[:, :, t])[:, :, None] * B32[:, None, :, t]
        ys.append((h * C32[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(batch, dim, 0)
    return _finish(y, uf, D, z, dtype)


# ---------------------------------------------------------------------------
# Chunked CPU path. Internally everything is time-major, (L, B, D) and
# (L, B, N, D) with the state axis *before* channels: one time step is a
# contiguous block, slicing a chunk is a free view, and the contractions over N
# (C . h) become batched matmuls while those over D stay long inner reductions
# (measured: the six contractions 1.8x faster in total than in (..., D, N)).
# ---------------------------------------------------------------------------

#: Decay exponents are clamped here: torch's CPU exp takes a 10-30x slower
#: path when the result underflows (delta * A < ~-87), which large delta * |A|
#: hits often. exp(-80) = 1.8e-35 changes nothing visible in fp32.
_MIN_LOG_DECAY = -80.0


def _exp_decay_(log_decay: Tensor) -> Tensor:
    """In place ``exp(max(log_decay, -80))`` of a freshly computed tensor."""
    return log_decay.clamp_(min=_MIN_LOG_DECAY).exp_()


def _sub_chunk_decay(dt: Tensor, At: Tensor, K: int) -> Tensor:
    """Decay across each whole sub-chunk, exp(A * sum(delta)): (K, B, N, D); exponent <= 0 for A < 0."""
    return _exp_decay_(dt.reshape(K, -1, *dt.shape[1:]).sum(1).unsqueeze(2) * At)


def _sweep_(a: Sequence[Tensor], x: Sequence[Tensor], h0: Tensor) -> None:
    """In place, in list order: ``x[i] <- a[i] * x[i-1] + x[i]`` with ``x[-1] = h0``."""
    prev = h0
    for a_i, x_i in zip(a, x):
        x_i.addcmul_(a_i, prev)
        prev = x_i


def _scan_(a: Tensor, x: Tensor, h0: Tensor, dt: Tensor, At: Tensor, sub: int, reverse: bool = False) -> None:
    """In place linear recurrence over axis 0 of ``x`` (S, B, N, D), S % sub == 0.

    Forward: ``x[t] <- a[t] * x[t-1] + x[t]`` with ``x[-1] = h0`` (the states).
    Reverse: ``x[t] <- a[t] * x[t+1] + x[t]`` with ``x[S] = h0`` (the adjoint
    scan; there ``a`` and ``dt`` are the *next* step's). ``dt`` (S, B, D) gives
    the log-decays ``dt * A`` of whole sub-chunks.

    With ``sub < S`` it runs two sweeps over the position inside a sub-chunk,
    each vectorised over all ``S / sub`` sub-chunks (so 2-thread ops stay big
    enough to split): the first tracks only each sub-chunk's end value from a
    zero start, in a small buffer that stays in cache; a loop over sub-chunks
    carries the true state across (decay of a whole sub-chunk = exp of the
    summed log-decay); the second runs the real recurrence from those carries.
    """
    S = x.shape[0]
    K = S // sub

    def steps(t: Tensor) -> Sequence[Tensor]:  # views of the time steps, in scan order
        views = t.unbind(0) if K == 1 else t.view(K, sub, *t.shape[1:]).unbind(1)
        return views[::-1] if reverse else views

    a_s, x_s = steps(a), steps(x)
    if K == 1:
        _sweep_(a_s, x_s, h0)
        return
    end = x_s[0].clone()
    for a_t, x_t in zip(a_s[1:], x_s[1:]):
        torch.addcmul(x_t, a_t, end, out=end)
    decay = _sub_chunk_decay(dt, At, K)
    order = range(K - 1, -1, -1) if reverse else range(K)
    carry = torch.empty_like(end)  # state entering each sub-chunk
    carry[order[0]] = h0
    for k, k_next in zip(order[:-1], order[1:]):
        torch.addcmul(end[k], decay[k], carry[k], out=carry[k_next])
    _sweep_(a_s, x_s, carry)


def _states(dt: Tensor, u: Tensor, At: Tensor, B: Tensor, h0: Tensor, sub: int) -> tuple[Tensor, Tensor]:
    """Decays and states, both (S, B, N, D), of one chunk from the incoming state ``h0``.

    ``dt`` may be one step longer than ``u`` and ``B``: the decays then cover
    that extra step too (the adjoint scan needs a_{t+1}).
    """
    a = _exp_decay_(dt.unsqueeze(2) * At)
    S = u.shape[0]
    h = (dt[:S] * u).unsqueeze(2) * B.unsqueeze(-1)
    _scan_(a[:S], h, h0, dt[:S], At, sub)
    return a, h


class _ChunkedScan(torch.autograd.Function):
    """Core scan ``y_t = C_t . h_t`` on fp32 (B, D, L) inputs; D, z, softplus stay in autograd."""

    @staticmethod
    def forward(ctx, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int, sub: int) -> Tensor:  # type: ignore[override]
        batch, dim, length = u.shape
        pad = (-length) % sub
        # time-major copies, zero padded to a multiple of `sub` (+1 step for the
        # shifted decays of the adjoint scan): delta=0 gives decay 1 and input 0
        ut, dtt, Bt, Ct = (F.pad(t.permute(2, 0, 1), (0, 0, 0, 0, 0, pad + 1)) for t in (u, dt, B, C))
        At = A.t().contiguous()
        Lp = length + pad
        starts = range(0, Lp, chunk)
        states = ut.new_empty(len(starts), batch, A.shape[1], dim)
        y = ut.new_empty(Lp, batch, dim)
        h0 = ut.new_zeros(batch, A.shape[1], dim)
        for i, s0 in enumerate(starts):
            s1 = min(s0 + chunk, Lp)
            states[i] = h0
            _, h = _states(dtt[s0:s1], ut[s0:s1], At, Bt[s0:s1], h0, sub)
            y[s0:s1] = torch.matmul(Ct[s0:s1].unsqueeze(2), h).squeeze(2)
            h0 = h[-1].clone()  # detach from the chunk buffer so it can be freed
        ctx.save_for_backward(ut, dtt, At, Bt, Ct, states)
        ctx.meta = (length, chunk, sub)
        return y[:length].permute(1, 2, 0)

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        ut, dtt, At, Bt, Ct, states = ctx.saved_tensors
        length, chunk, sub = ctx.meta
        Lp = dtt.shape[0] - 1
        gyt = F.pad(gy.float().permute(2, 0, 1), (0, 0, 0, 0, 0, Lp - length))
        gu, gdt = torch.empty_like(ut[:Lp]), torch.empty_like(dtt[:Lp])
        gB, gC = torch.empty_like(Bt[:Lp]), torch.empty_like(Ct[:Lp])
        gAt = torch.zeros_like(At)
        G = torch.zeros_like(states[0])
        starts = range(0, Lp, chunk)
        for i in range(len(starts) - 1, -1, -1):
            s0 = starts[i]
            s1 = min(s0 + chunk, Lp)
            dt, u, Bc, gyc, h0 = dtt[s0:s1], ut[s0:s1], Bt[s0:s1], gyt[s0:s1], states[i]
            a_ext, h = _states(dtt[s0:s1 + 1], u, At, Bc, h0, sub)
            g = Ct[s0:s1].unsqueeze(-1) * gyc.unsqueeze(2)  # dL/dh_t before the adjoint scan
            _scan_(a_ext[1:], g, G, dtt[s0 + 1:s1 + 1], At, sub, reverse=True)
            G = g[0].clone()
            # q_t = g_t * a_t * h_{t-1} is the gradient w.r.t. the log-decay delta_t * A
            q = a_ext[:-1].mul_(g)
            q[1:].mul_(h[:-1])
            q[0].mul_(h0)
            gBn = torch.matmul(Bc.unsqueeze(2), g).squeeze(2)  # sum_n B g
            gdt[s0:s1] = (q * At).sum(2) + u * gBn
            gu[s0:s1] = dt * gBn
            # not einsum: it transposes q into a (N, D, S*B) copy first, the slowest op here
            gAt += q.mul_(dt.unsqueeze(2)).sum((0, 1))
            gB[s0:s1] = (g * (dt * u).unsqueeze(2)).sum(-1)
            gC[s0:s1] = (h * gyc.unsqueeze(2)).sum(-1)
        back = lambda t: t[:length].permute(1, 2, 0)  # noqa: E731
        return back(gu), back(gdt), gAt.t(), back(gB), back(gC), None, None


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
    sub_chunk: int | None = None,
) -> Tensor:
    """Fast pure-PyTorch selective scan (any device; tuned for CPU), differentiable.

    Same semantics and return dtype as :func:`selective_scan_ref`. The
    recurrence runs in fp32 with autocast disabled, whatever the input dtype.
    ``chunk_size`` (default :data:`DEFAULT_CHUNK_SIZE`) bounds the memory: the
    scan holds a few (chunk_size, B, D, N) fp32 buffers at a time; it is
    rounded up to a multiple of ``sub_chunk`` (default :data:`DEFAULT_SUB_CHUNK`).
    """
    _check(u, delta, A, B, C)
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    sub_chunk = DEFAULT_SUB_CHUNK if sub_chunk is None else sub_chunk
    if sub_chunk < 1 or chunk_size < 1:
        raise ValueError("chunk_size and sub_chunk must be >= 1")
    chunk = -(-chunk_size // sub_chunk) * sub_chunk
    return around_core(lambda *t: _ChunkedScan.apply(*t, chunk, sub_chunk), u, delta, A, B, C, D, z, delta_bias,
                       delta_softplus)


_MAMBA_SSM: object | None = None


def mamba_ssm_available() -> bool:
    """Whether mamba-ssm's CUDA ``selective_scan_fn`` imports (cached)."""
    global _MAMBA_SSM
    if _MAMBA_SSM is None:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            _MAMBA_SSM = selective_scan_fn
        except Exception:  # ImportError, or a broken CUDA extension build
            _MAMBA_SSM = False
    return _MAMBA_SSM is not False


def selective_scan(
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
    """Selective scan on the best available backend.

    CUDA tensors with mamba-ssm installed use its fused kernel; CPU tensors
    the native C kernel when it builds (:mod:`tokenunify.models.native_scan`,
    ``TOKENUNIFY_NATIVE``); everything else :func:`selective_scan_chunked`.
    Returns ``u``'s dtype.
    """
    if u.is_cuda and mamba_ssm_available():
        fn = _MAMBA_SSM
        # the kernel checks dtypes: delta, B, C, z as u; A, D, delta_bias fp32
        u = u.contiguous()
        same = lambda t: t.to(u.dtype).contiguous()  # noqa: E731
        return fn(  # type: ignore[operator]
            u, same(delta), A.float(), same(B), same(C),
            None if D is None else D.float(), None if z is None else same(z),
            None if delta_bias is None else delta_bias.float(), delta_softplus,
        )
    if u.device.type == "cpu":
        from tokenunify.models.native import native_available
        from tokenunify.models.native_scan import selective_scan_native

        if native_available():
            return selective_scan_native(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
