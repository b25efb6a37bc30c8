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
(T, T) decay matrix exists once per (b, d, n) and the matmul form costs T
times more exponentials than the recurrence (measured 3-6x slower at T=8-16).
Instead each chunk of ``chunk_size`` steps is scanned with a two-level scheme:
sub-chunks of ``sub_chunk`` steps are scanned locally *all at once* (a loop
over the sub-chunk position, vectorised over sub-chunks), the cumulative
log-decay (``cumsum`` of ``delta``, times ``A`` which is <= 0 for Mamba so the
exponent is never positive) gives each position's decay from its sub-chunk
start, and a short loop over sub-chunks carries the state across. A custom
autograd function keeps only the inputs and one state per chunk, and
recomputes a chunk's states in the backward pass, so no (B, D, N, L) tensor
ever exists: peak extra memory is a few (chunk_size, B, D, N) buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_SUB_CHUNK",
    "mamba_ssm_available",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]

#: Steps held in memory at once (forward recompute unit). Chosen by measurement
#: (see ``benchmarks/bench_mamba.py --sweep``): 128-256 are equally fast at
#: d_inner 256, d_state 16; 256 halves the Python loop count of 128.
DEFAULT_CHUNK_SIZE = 256
#: Sub-chunk length of the two-level scan inside a chunk (measured, see above).
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
# Chunked CPU path. Internally everything is time-major, (L, B, D[, N]), so one
# time step is a contiguous block and slicing a chunk is a free view.
# ---------------------------------------------------------------------------


def _scan_forward_(a: Tensor, x: Tensor, h0: Tensor, dt: Tensor, A: Tensor, sub: int) -> None:
    """In place: ``x[t] <- a[t] * x[t-1] + x[t]`` with ``x[-1] = h0``. ``x`` is (S, B, D, N), S % sub == 0."""
    S = x.shape[0]
    K = S // sub
    xv, av = x.view(K, sub, *x.shape[1:]), a.view(K, sub, *a.shape[1:])
    for t in range(1, sub):  # local scans of all sub-chunks at once
        xv[:, t].addcmul_(av[:, t], xv[:, t - 1])
    # decay from each sub-chunk's start; exponent is A * (sum of delta) <= 0 for Mamba's A < 0
    P = torch.exp(dt.view(K, sub, *dt.shape[1:]).cumsum(1).unsqueeze(-1) * A)
    H = h0
    for k in range(K):  # carry the state across sub-chunks
        xv[k].addcmul_(P[k], H)
        H = xv[k, -1]


def _scan_reverse_(a_next: Tensor, g: Tensor, g_end: Tensor, dt_next: Tensor, A: Tensor, sub: int) -> None:
    """In place: ``g[t] <- a_next[t] * g[t+1] + g[t]`` with ``g[S] = g_end`` (the adjoint scan)."""
    S = g.shape[0]
    K = S // sub
    gv, av = g.view(K, sub, *g.shape[1:]), a_next.view(K, sub, *a_next.shape[1:])
    for t in range(sub - 2, -1, -1):
        gv[:, t].addcmul_(av[:, t], gv[:, t + 1])
    # reverse cumulative log-decay: decay from position t to the sub-chunk's end (inclusive)
    rc = dt_next.view(K, sub, *dt_next.shape[1:]).flip(1).cumsum(1).flip(1)
    Q = torch.exp(rc.unsqueeze(-1) * A)
    G = g_end
    for k in range(K - 1, -1, -1):
        gv[k].addcmul_(Q[k], G)
        G = gv[k, 0]


def _states(dt: Tensor, u: Tensor, A: Tensor, B: Tensor, h0: Tensor, sub: int) -> tuple[Tensor, Tensor]:
    """Decays (S, B, D, N) and states (S, B, D, N) of one chunk, from the incoming state ``h0``."""
    a = torch.exp(dt.unsqueeze(-1) * A)
    h = (dt * u).unsqueeze(-1) * B.unsqueeze(2)
    _scan_forward_(a, h, h0, dt, A, sub)
    return a, h


class _ChunkedScan(torch.autograd.Function):
    """Core scan ``y_t = C_t . h_t`` on fp32 (B, D, L) inputs; D, z, softplus stay in autograd."""

    @staticmethod
    def forward(ctx, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int, sub: int) -> Tensor:  # type: ignore[override]
        batch, dim, length = u.shape
        pad = (-length) % sub
        # time-major copies, zero padded to a multiple of `sub` (+1 step for the
        # shifted decays of the adjoint scan): delta=0 gives decay 1 and input 0
        ut = F.pad(u.permute(2, 0, 1), (0, 0, 0, 0, 0, pad + 1))
        dtt = F.pad(dt.permute(2, 0, 1), (0, 0, 0, 0, 0, pad + 1))
        Bt = F.pad(B.permute(2, 0, 1), (0, 0, 0, 0, 0, pad + 1))
        Ct = F.pad(C.permute(2, 0, 1), (0, 0, 0, 0, 0, pad + 1))
        Lp = length + pad
        starts = list(range(0, Lp, chunk))
        states = ut.new_empty(len(starts), batch, dim, A.shape[1])
        y = ut.new_empty(Lp, batch, dim)
        h0 = ut.new_zeros(batch, dim, A.shape[1])
        for i, s0 in enumerate(starts):
            s1 = min(s0 + chunk, Lp)
            states[i] = h0
            _, h = _states(dtt[s0:s1], ut[s0:s1], A, Bt[s0:s1], h0, sub)
            y[s0:s1] = torch.matmul(h, Ct[s0:s1].unsqueeze(-1)).squeeze(-1)
            h0 = h[-1].clone()  # detach from the chunk buffer so it can be freed
        ctx.save_for_backward(ut, dtt, A, Bt, Ct, states)
        ctx.meta = (length, chunk, sub)
        return y[:length].permute(1, 2, 0)

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        ut, dtt, A, Bt, Ct, states = ctx.saved_tensors
        length, chunk, sub = ctx.meta
        Lp = dtt.shape[0] - 1
        gyt = F.pad(gy.float().permute(2, 0, 1), (0, 0, 0, 0, 0, Lp - length))
        gu, gdt = torch.empty_like(ut[:Lp]), torch.empty_like(dtt[:Lp])
        gB, gC = torch.empty_like(Bt[:Lp]), torch.empty_like(Ct[:Lp])
        gA = torch.zeros_like(A)
        G = torch.zeros_like(states[0])
        starts = list(range(0, Lp, chunk))
        for i in range(len(starts) - 1, -1, -1):
            s0 = starts[i]
            s1 = min(s0 + chunk, Lp)
            dt, u, Bc, h0 = dtt[s0:s1], ut[s0:s1], Bt[s0:s1], states[i]
            # one step more than the chunk: the adjoint scan needs the decay a_{t+1}
            a_ext = torch.exp(dtt[s0:s1 + 1].unsqueeze(-1) * A)
            a = a_ext[:-1]
            h = (dt * u).unsqueeze(-1) * Bc.unsqueeze(2)
            _scan_forward_(a, h, h0, dt, A, sub)
            g = gyt[s0:s1].unsqueeze(-1) * Ct[s0:s1].unsqueeze(2)  # dL/dh_t before the adjoint scan
            _scan_reverse_(a_ext[1:], g, G, dtt[s0 + 1:s1 + 1], A, sub)
            G = g[0].clone()
            # q_t = g_t * a_t * h_{t-1}: the gradient w.r.t. log-decay
            q = a.mul_(g)
            q[1:].mul_(h[:-1])
            q[0].mul_(h0)
            gBn = torch.matmul(g, Bc.unsqueeze(-1)).squeeze(-1)  # sum_n g B
            gdt[s0:s1] = (q * A).sum(-1) + u * gBn
            gu[s0:s1] = dt * gBn
            gA += torch.einsum("sbdn,sbd->dn", q, dt)
            gB[s0:s1] = torch.matmul((dt * u).unsqueeze(2), g).squeeze(2)
            gC[s0:s1] = torch.matmul(gyt[s0:s1].unsqueeze(2), h).squeeze(2)
        back = lambda t: t[:length].permute(1, 2, 0)  # noqa: E731
        return back(gu), back(gdt), gA, back(gB), back(gC), None, None


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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    sub_chunk: int = DEFAULT_SUB_CHUNK,
) -> Tensor:
    """Fast pure-PyTorch selective scan (any device; tuned for CPU), differentiable.

    Same semantics and return dtype as :func:`selective_scan_ref`. The
    recurrence runs in fp32 with autocast disabled, whatever the input dtype.
    ``chunk_size`` bounds the memory (it is rounded up to a multiple of
    ``sub_chunk``); ``sub_chunk`` trades Python loop steps against passes.
    """
    _check(u, delta, A, B, C)
    if sub_chunk < 1 or chunk_size < 1:
        raise ValueError("chunk_size and sub_chunk must be >= 1")
    dtype = u.dtype
    if u.shape[-1] == 0:
        return u.new_zeros(u.shape)
    chunk = -(-chunk_size // sub_chunk) * sub_chunk
    with torch.autocast(u.device.type, enabled=False):
        uf = u.float()
        dt = _prepare_delta(delta, delta_bias, delta_softplus)
        y = _ChunkedScan.apply(uf, dt, A.float(), B.float(), C.float(), chunk, sub_chunk)
        return _finish(y, uf, D, z, dtype)


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

    CUDA tensors with mamba-ssm installed use its fused kernel; everything
    else uses :func:`selective_scan_chunked`. Returns ``u``'s dtype.
    """
    if u.is_cuda and mamba_ssm_available():
        fn = _MAMBA_SSM
        # the kernel wants B, C in the input dtype and D, delta_bias in fp32
        return fn(  # type: ignore[operator]
            u.contiguous(), delta.contiguous(), A.float(), B.to(u.dtype).contiguous(), C.to(u.dtype).contiguous(),
            None if D is None else D.float(), None if z is None else z.contiguous(),
            None if delta_bias is None else delta_bias.float(), delta_softplus,
        )
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
