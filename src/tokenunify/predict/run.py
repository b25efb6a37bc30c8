"""`tokenunify predict`: a checkpoint and a raw volume in, an affinity volume out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenunify.config import from_dict
from tokenunify.io import check_output, create_volume, open_volume
from tokenunify.io.checkpoint import load_checkpoint
from tokenunify.io.validate import require_raw
from tokenunify.models.registry import build_model
from tokenunify.offsets import NEAREST
from tokenunify.predict.inference import predict_blockwise
from tokenunify.predict.settings import PredictSettings
from tokenunify.training.devices import resolve_device


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a checkpoint on `device`, in eval mode, with its metadata."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    model = build_model(state["model_spec"])
    model.load_state_dict(state["model"])
    model.to(device)
    model.eval()
    return model, state


def predict_settings(state: dict[str, Any], where: str, overrides: dict[str, Any] | None = None) -> PredictSettings:
    """The checkpoint's `predict:` section, then `overrides` (config file, CLI), through PredictSettings.

    A checkpoint written before a key existed gets the dataclass default, the
    same one a new config gets; there are no separate fallbacks.
    """
    stored = dict((state.get("config") or {}).get("predict") or {})
    return from_dict(PredictSettings, {**stored, **{k: v for k, v in (overrides or {}).items() if v is not None}}, where)


def predict_volume(
    checkpoint: str | Path,
    input_spec: str,
    output_spec: str,
    block: tuple[int, int, int] | None = None,
    overlap: tuple[int, int, int] | None = None,
    bf16: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
    device: str | torch.device = "auto",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict affinities for every voxel of `input_spec` into `output_spec` (float32, C,z,y,x).

    The output is written blockwise and appears only once complete. Block,
    overlap and bf16 come from the checkpoint's `predict:` settings, then
    `overrides` (a `predict:` section), then the explicit arguments.
    """
    check_output(output_spec, overwrite)
    raw = open_volume(input_spec)
    require_raw(raw)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model, state = load_model(checkpoint, dev)
    settings = predict_settings(state, str(checkpoint), {**(overrides or {}), "block": block, "overlap": overlap,
                                                         "bf16": bf16})
    offsets = state.get("offsets") or [list(o) for o in NEAREST]
    shape = (len(offsets),) + raw.shape
    started = time.monotonic()
    attrs = {"offsets": offsets, "model": str(checkpoint), "convention": "1 = same non-zero label (waterz/gunpowder)"}
    with create_volume(output_spec, shape, np.float32, raw.voxel_size, chunks=(1, 32, 128, 128), overwrite=overwrite, attrs=attrs,
                       offset=raw.offset) as out:
        predict_blockwise(model, raw, out, settings.block, settings.overlap, batch_size=settings.batch_size,
                          device=dev, bf16=settings.bf16, progress=progress)
    seconds = time.monotonic() - started
    voxels = int(np.prod(raw.shape))
    return {"output": output_spec, "shape": list(shape), "seconds": seconds, "voxels_per_second": voxels / max(seconds, 1e-9), "offsets": offsets,
            "device": str(dev)}
