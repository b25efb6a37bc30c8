"""The fused C selective scan (``csrc/selective_scan.c``): build, load and autograd wrapper.

The chunked PyTorch scan (:mod:`tokenunify.models.scan`) passes its
(L, B, N, D) intermediates through memory a few dozen times per step and
pays Python dispatch for thousands of small ops; the C kernel keeps one
row's state in registers and walks the sequence once forward and twice
backward. The library is compiled on first use with the system C compiler
(``$CC``, else ``cc``) into a cache folder keyed by the source, the flags
and the CPU, so a shared home folder on a mixed cluster never loads a
build for another CPU. Without a compiler, or when the build fails, the
chunked path stays in use and one warning says why.

``TOKENUNIFY_SCAN`` chooses the CPU path: ``auto`` (default: native when it
builds), ``native`` (fail loudly when it does not) or ``chunked``.
``TOKENUNIFY_CACHE`` moves the cache (default ``~/.cache/tokenunify``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["NativeScanError", "native_scan", "native_scan_available", "scan_mode", "selective_scan_native"]

_SOURCE = Path(__file__).parent / "csrc" / "selective_scan.c"
_FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno", "-std=c11"]
_NATIVE_FLAGS = ["-march=native"]
_MODES = ("auto", "native", "chunked")
#: steps between the forward pass's saved states; the backward pass recomputes
#: a chunk from its state into two chunk x d_state stack buffers
CHUNK = 64

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failure: str | None = None
_pools: dict[int, ThreadPoolExecutor] = {}


class NativeScanError(RuntimeError):
    """The native scan was asked for (``TOKENUNIFY_SCAN=native``) and cannot be built or loaded."""


def scan_mode() -> str:
    """``TOKENUNIFY_SCAN``, checked: ``auto``, ``native`` or ``chunked``."""
    mode = os.environ.get("TOKENUNIFY_SCAN", "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"TOKENUNIFY_SCAN must be one of {', '.join(_MODES)}, got {mode!r}")
    return mode


def _cpu_key() -> str:
    try:  # the flags line names the instruction sets -march=native compiles for
        text = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {flags}"


def _build(out: Path, compiler: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        target = Path(tmp) / out.name
        errors = []
        for extra in (_NATIVE_FLAGS, []):  # -march=native is unknown to some compilers / CPUs
            cmd = [compiler, *_FLAGS, *extra, str(_SOURCE), "-o", str(target)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                os.replace(target, out)  # atomic: concurrent builders (study workers) never see half a file
                return
            errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[-500:]}")
        raise NativeScanError("building the native scan failed:\n" + "\n".join(errors))


def _load() -> ctypes.CDLL:
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise NativeScanError(f"no C compiler {compiler!r} on PATH (set CC, or TOKENUNIFY_SCAN=chunked)")
    key = hashlib.sha256(b"\0".join(
        [_SOURCE.read_bytes(), " ".join(_FLAGS + _NATIVE_FLAGS).encode(), compiler.encode(), _cpu_key().encode()]
    )).hexdigest()[:16]
    cache = Path(os.environ.get("TOKENUNIFY_CACHE", Path.home() / ".cache" / "tokenunify"))
    path = cache / f"selective_scan_{key}.so"
    if not path.exists():
        _build(path, compiler)
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.scan_forward.argtypes = [ptr] * 7 + [i64] * 6
    lib.scan_backward.argtypes = [ptr] * 12 + [i64] * 6
    lib.scan_forward.restype = lib.scan_backward.restype = None
    return lib


def _library() -> ctypes.CDLL | None:
    """The loaded library, or None (after one warning) when it cannot be had and the mode allows that."""
    global _lib, _failure
    mode = scan_mode()
    if mode == "chunked":
        return None
    with _lock:
        if _lib is None and _failure is None:
            try:
                _lib = _load()
            except (NativeScanError, OSError) as err:
                _failure = str(err)
                if mode == "auto":
                    warnings.warn(f"native selective scan unavailable, using the chunked PyTorch scan: {err}",
                                  RuntimeWarning, stacklevel=3)
    if _lib is None and mode == "native":
        raise NativeScanError(f"TOKENUNIFY_SCAN=native but the native scan is unavailable: {_failure}")
    return _lib


def native_scan_available() -> bool:
    """Whether CPU scans take the native kernel (builds it on first call; honours ``TOKENUNIFY_SCAN``)."""
    return _library() is not None


def _run(fn: ctypes._CFuncPtr, rows: int, args: list, parts: list[list] | None = None) -> None:
    """Call ``fn(*args, *part_args, r0, r1)`` over row ranges, one per torch thread (ctypes drops the GIL)."""
    threads = max(1, min(torch.get_num_threads(), rows))
    bounds = [rows * i // threads for i in range(threads + 1)]
    calls = [(*args, *(parts[i] if parts else []), bounds[i], bounds[i + 1]) for i in range(threads)]
    if threads == 1:
        fn(*calls[0])
        return
    pool = _pools.get(threads)
    if pool is None:
        pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="tokenunify-scan")
    for future in [pool.submit(fn, *c) for c in calls]:
        future.result()


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


class _NativeScan(torch.autograd.Function):
    """Core scan ``y_t = C_t . h_t`` on fp32 (B, D, L) inputs, as ``scan._ChunkedScan``."""

    @staticmethod
    def forward(ctx, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:  # type: ignore[override]
        lib = _library()
        assert lib is not None
        batch, dim, length = u.shape
        n = A.shape[1]
        u, dt, A = u.contiguous(), dt.contiguous(), A.contiguous()
        Bt, Ct = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        y = torch.empty_like(u)
        ckpt = u.new_empty(batch * dim, -(-length // CHUNK), n)
        _run(lib.scan_forward, batch * dim,
             [_ptr(u), _ptr(dt), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(y), _ptr(ckpt), dim, length, n, CHUNK])
        ctx.save_for_backward(u, dt, A, Bt, Ct, ckpt)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        lib = _library()
        assert lib is not None
        u, dt, A, Bt, Ct, ckpt = ctx.saved_tensors
        batch, dim, length = u.shape
        n = A.shape[1]
        gy = gy.float().contiguous()
        gu, gdt = torch.empty_like(u), torch.empty_like(dt)
        gA_rows = u.new_empty(batch * dim, n)
        threads = max(1, min(torch.get_num_threads(), batch * dim))
        gB_parts = Bt.new_zeros(threads, *Bt.shape)
        gC_parts = Ct.new_zeros(threads, *Ct.shape)
        _run(lib.scan_backward, batch * dim,
             [_ptr(u), _ptr(dt), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(ckpt), _ptr(gy), _ptr(gu), _ptr(gdt),
              _ptr(gA_rows)],
             [[_ptr(gB_parts[i]), _ptr(gC_parts[i]), dim, length, n, CHUNK] for i in range(threads)])
        gA = gA_rows.view(batch, dim, n).sum(0)
        return gu, gdt, gA, gB_parts.sum(0).transpose(1, 2), gC_parts.sum(0).transpose(1, 2)


def native_scan(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """``y_t = C_t . h_t`` of the recurrence on fp32 CPU tensors (``u``, ``dt``: (B, D, L); ``B``, ``C``: (B, N, L)).

    ``dt`` is the final step size (bias and softplus applied). Raises
    :class:`NativeScanError` when the library is unavailable.
    """
    if _library() is None:
        raise NativeScanError(f"the native scan is unavailable: {_failure or 'TOKENUNIFY_SCAN=chunked'}")
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
    from tokenunify.models.scan import _check, _finish, _prepare_delta

    _check(u, delta, A, B, C)
    if u.device.type != "cpu":
        raise ValueError(f"the native scan runs on the CPU, got {u.device}")
    dtype = u.dtype
    if u.shape[-1] == 0:
        return u.new_zeros(u.shape)
    with torch.autocast("cpu", enabled=False):
        uf = u.float()
        dt = _prepare_delta(delta, delta_bias, delta_softplus)
        y = native_scan(uf, dt, A.float(), B.float(), C.float())
        return _finish(y, uf, D, z, dtype)
