"""Process-level tuning that must happen before heavy tensor work starts."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4


def tune_malloc() -> bool:
    """Keep freed tensor memory in the heap instead of returning it to the OS.

    With glibc's defaults every large tensor is an mmap/munmap pair and the
    page faults of re-touching fresh pages cost a large share of CPU time in a
    training step. Serving every allocation from the heap (no mmap) with a
    high trim threshold and top pad avoids that: blockwise prediction ran
    about 1.55x faster with it (benchmarks/bench_predict.py --tune-malloc).
    Environment variables (MALLOC_*_) set by the user take precedence.
    Returns whether mallopt was applied.
    """
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_MAX, 0)
    ok &= mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    ok &= mallopt(_M_TOP_PAD, 256 * 1024 * 1024)
    return bool(ok)


def tune_runtime() -> None:
    """Apply every process-level setting the CLI wants."""
    tune_malloc()
