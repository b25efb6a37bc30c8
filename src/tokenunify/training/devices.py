"""Which device a run uses, and autocast for it.

`auto` is the first CUDA device where one is present, else the CPU. Under
torchrun with CUDA every process takes the GPU of its local rank.

bf16 autocast on a CPU is only worth it where oneDNN has native bf16
kernels (AVX-512 or AMX). On an AVX2-only CPU torch 2.13 still accepts
bf16 autocast, but its 3D convolutions fall to a reference path: 40 to 500
times slower than fp32 on the 2026-12-06 machine (AMD EPYC, AVX2), which
made a pretraining step take 45 s instead of 1.1 s. `autocast` therefore
runs fp32 there, says so once, and `effective_bf16` tells callers what ran.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import ContextManager

import torch

from tokenunify.errors import ConfigError

__all__ = ["autocast", "cpu_has_fast_bf16", "effective_bf16", "precision", "resolve_device"]


def resolve_device(name: str = "auto", world_size: int = 1) -> torch.device:
    """Turn `auto`, `cpu`, `cuda` or `cuda:N` into a torch device, checking it exists."""
    name = (name or "auto").strip().lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available (CPU-only torch build or no GPU); use --device cpu")
        if name == "cuda":
            index = local_rank if world_size > 1 else torch.cuda.current_device()
        else:
            if world_size > 1:
                raise ConfigError(f"--device {name}: under torchrun each process uses the GPU of its local rank; pass --device cuda")
            try:
                index = int(name.split(":", 1)[1])
            except ValueError:
                raise ConfigError(f"--device {name}: expected cuda:N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    raise ConfigError(f"--device {name}: expected auto, cpu, cuda or cuda:N")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has the native bf16 kernels (oneDNN's AVX-512 / AMX paths) that make bf16 autocast pay.

    `TOKENUNIFY_CPU_BF16=1` (or `0`) overrides the check, for tests and for
    machines where it is wrong.
    """
    if os.environ.get("TOKENUNIFY_CPU_BF16") in ("0", "1"):
        return os.environ["TOKENUNIFY_CPU_BF16"] == "1"
    return _native_bf16()


@functools.cache
def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # the private check moved: fall back to the dispatch level
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def effective_bf16(device: torch.device, requested: bool) -> bool:
    """Whether a run that asks for bf16 on `device` gets it: always on CUDA, on a CPU only with native bf16."""
    if not requested or device.type != "cpu" or cpu_has_fast_bf16():
        return requested
    _warn_cpu_fp32()
    return False


def precision(device: torch.device, requested_bf16: bool) -> str:
    """"bf16" or "fp32": what a run asking for `requested_bf16` on `device` computes in (for its records)."""
    return "bf16" if effective_bf16(device, requested_bf16) else "fp32"


@functools.cache
def _warn_cpu_fp32() -> None:
    warnings.warn("bf16 was asked for, but this CPU has no native bf16 kernels (no AVX-512/AMX; "
                  f"torch dispatches {torch.backends.cpu.get_cpu_capability()}), where bf16 convolutions are "
                  "40-500x slower than fp32: running fp32 (set TOKENUNIFY_CPU_BF16=1 to force bf16)",
                  RuntimeWarning, stacklevel=3)


def autocast(device: torch.device, enabled: bool) -> ContextManager:
    """bf16 autocast on the device's type where it is asked for and pays (see `effective_bf16`), or nothing."""
    if not effective_bf16(device, enabled):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
