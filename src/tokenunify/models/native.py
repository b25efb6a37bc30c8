"""The project's C kernels (``csrc/*.c``): build on first use, load, and run over threads.

``selective_scan.c`` is the fused Mamba scan (:mod:`tokenunify.models.native_scan`),
``channel_norm.c`` the per-voxel channel norm (:mod:`tokenunify.models.channel_norm`).
Each entry point takes the number of row ranges to run in parallel (:func:`parts`).
They are compiled together with the system C compiler (``$CC``, else ``cc``)
into one library in a cache folder keyed by the sources, the flags and the
CPU, so a shared home folder on a mixed cluster never loads a build for
another CPU. Without a compiler, or when the build fails, the PyTorch
paths stay in use and one warning says why.

``TOKENUNIFY_NATIVE`` chooses: ``auto`` (default: the kernels when they
build), ``on`` (fail loudly when they do not) or ``off``.
``TOKENUNIFY_CACHE`` moves the cache (default ``~/.cache/tokenunify``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["NativeError", "failure", "library", "native_available", "native_mode", "openmp_runtimes", "parts"]

_SOURCES = tuple(Path(__file__).parent / "csrc" / name for name in ("selective_scan.c", "channel_norm.c"))
# no -ffast-math: results must not depend on the process's floating-point mode.
# -fopenmp links libgomp.so.1 by soname; torch has loaded its own copy under that
# soname before this library, so the kernels' parallel regions run on torch's
# OpenMP threads instead of competing with them for the cores
_FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno", "-std=c11"]
_NATIVE_FLAGS = ["-march=native"]
_MODES = ("auto", "on", "off")
_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
#: argument types of every exported function
_SIGNATURES = {
    "scan_forward": [_PTR] * 7 + [_I64] * 6,
    "scan_backward": [_PTR] * 12 + [_I64] * 7,
    "channel_norm_forward": [_PTR, _I64, _PTR, _PTR, _F32, _PTR, _PTR, _PTR, _I64, _I64, _I64],
    "channel_norm_backward": [_PTR] * 5 + [_I64, _PTR, _PTR, _I64, _I64, _I64],
}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failure: str | None = None


class NativeError(RuntimeError):
    """The kernels were asked for (``TOKENUNIFY_NATIVE=on``) and cannot be built or loaded."""


def native_mode() -> str:
    """``TOKENUNIFY_NATIVE``, checked: ``auto``, ``on`` or ``off``."""
    mode = os.environ.get("TOKENUNIFY_NATIVE", "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"TOKENUNIFY_NATIVE must be one of {', '.join(_MODES)}, got {mode!r}")
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
        # -march=native is unknown to some compilers / CPUs, OpenMP to some compilers
        # (then the kernels run their row ranges one after another, still correct)
        serial = [f for f in _FLAGS if f != "-fopenmp"]
        for flags in ([*_FLAGS, *_NATIVE_FLAGS], _FLAGS, serial):
            cmd = [compiler, *flags, *map(str, _SOURCES), "-o", str(target), "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                os.replace(target, out)  # atomic: concurrent builders (study workers) never see half a file
                return
            errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[-500:]}")
        raise NativeError("building the C kernels failed:\n" + "\n".join(errors))


def _load() -> ctypes.CDLL:
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise NativeError(f"no C compiler {compiler!r} on PATH (set CC, or TOKENUNIFY_NATIVE=off)")
    parts = [s.read_bytes() for s in _SOURCES] + [" ".join(_FLAGS + _NATIVE_FLAGS).encode(), compiler.encode(),
                                                  _cpu_key().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    cache = Path(os.environ.get("TOKENUNIFY_CACHE") or Path.home() / ".cache" / "tokenunify")
    path = cache / f"kernels_{key}.so"
    if not path.exists():
        _build(path, compiler)
    lib = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    runtimes = openmp_runtimes()
    if len(runtimes) > 1:
        warnings.warn(f"the C kernels and torch use different OpenMP runtimes ({', '.join(sorted(runtimes))}); their "
                      "thread pools will compete for the cores (set OMP_NUM_THREADS, or TOKENUNIFY_NATIVE=off)",
                      RuntimeWarning, stacklevel=4)
    return lib


def openmp_runtimes() -> set[str]:
    """Files of the OpenMP runtimes loaded in this process (Linux; empty elsewhere).

    One is the design: the kernels' library links ``libgomp.so.1`` by soname
    and so gets the copy torch loaded. Wheels that rename their runtime (or
    use LLVM / Intel OpenMP) would give a second pool.
    """
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    files = {line.split()[-1] for line in lines if len(line.split()) >= 6}
    return {f for f in files if re.search(r"/lib(gomp|omp|iomp5)[^/]*\.so", f)}


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (after one warning) when they cannot be had and the mode allows that."""
    global _lib, _failure
    mode = native_mode()
    if mode == "off":
        return None
    with _lock:
        if _lib is None and _failure is None:
            try:
                _lib = _load()
            except (NativeError, OSError, RuntimeError) as err:  # RuntimeError: no home folder for the cache
                _failure = str(err)
                if mode == "auto":
                    warnings.warn(f"C kernels unavailable, using the PyTorch paths: {err}", RuntimeWarning,
                                  stacklevel=3)
    if _lib is None and mode == "on":
        raise NativeError(f"TOKENUNIFY_NATIVE=on but the C kernels are unavailable: {_failure}")
    return _lib


def native_available() -> bool:
    """Whether the C kernels are in use (builds them on first call; honours ``TOKENUNIFY_NATIVE``)."""
    return library() is not None


def failure() -> str | None:
    """Why the last build or load failed, if it did."""
    return _failure


def parts(rows: int) -> int:
    """Into how many row ranges a kernel splits ``rows``: torch's thread count, at most one per row.

    Each range runs on one thread of torch's OpenMP team; reductions over
    rows go to one partial per range, so results do not depend on scheduling.
    """
    return max(1, min(torch.get_num_threads(), rows))
