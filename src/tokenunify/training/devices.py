"""Which device a run uses, and autocast for it.

`auto` is the first CUDA device where one is present, else the CPU. Under
torchrun with CUDA every process takes the GPU of its local rank.
"""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager

import torch

from tokenunify.errors import ConfigError

__all__ = ["autocast", "resolve_device"]


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


def autocast(device: torch.device, enabled: bool) -> ContextManager:
    """bf16 autocast on the device's type, or nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
