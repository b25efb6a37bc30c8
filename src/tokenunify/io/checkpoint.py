"""Checkpoints written atomically: a crash mid-write never leaves a broken file.

A checkpoint is one `torch.save` dict holding the model spec (to rebuild the
network), its weights, the optimiser state, the step, the config it was
trained with, RNG states and the loss history, so `--resume` continues exactly
and `predict` needs nothing but the file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

from tokenunify.errors import InputError

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save({"format_version": FORMAT_VERSION, **payload}, staging)
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; a missing or foreign file is an InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt file
        raise InputError(path, f"not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or "model_spec" not in payload or "model" not in payload:
        raise InputError(path, "not a tokenunify checkpoint (no model_spec/model entries)")
    return payload
