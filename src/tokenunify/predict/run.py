"""`tokenunify predict`: a checkpoint and a raw volume in, an affinity volume out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenunify.io import check_output, create_volume, open_volume
from tokenunify.io.checkpoint import load_checkpoint
from tokenunify.io.validate import require_raw
from tokenunify.models.registry import build_model
from tokenunify.offsets import NEAREST
from tokenunify.predict.inference import predict_blockwise
from tokenunify.training.devices import resolve_device


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a checkpoint on `device`, in eval mode, with its metadata."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    model = build_model(state["model_spec"])
    model.load_state_dict(state["model"])
    model.to(device)
    model.eval()
    return model, state


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
) -> dict[str, Any]:
    """Predict affinities for every voxel of `input_spec` into `output_spec` (float32, C,z,y,x).

    The output is written blockwise and appears only once complete. Block and
    overlap default to the training config stored in the checkpoint.
    """
    check_output(output_spec, overwrite)
    raw = open_volume(input_spec)
    require_raw(raw)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model, state = load_model(checkpoint, dev)
    predict_cfg = state.get("config", {}).get("predict", {})
    block = tuple(block or predict_cfg.get("block", (48, 128, 128)))
    overlap = tuple(overlap or predict_cfg.get("overlap", (8, 24, 24)))
    bf16 = bool(predict_cfg.get("bf16", False) if bf16 is None else bf16)
    offsets = state.get("offsets") or [list(o) for o in NEAREST]
    shape = (len(offsets),) + raw.shape
    started = time.monotonic()
    attrs = {"offsets": offsets, "model": str(checkpoint), "convention": "1 = same non-zero label (waterz/gunpowder)"}
    with create_volume(output_spec, shape, np.float32, raw.voxel_size, chunks=(1, 32, 128, 128), overwrite=overwrite, attrs=attrs,
                       offset=raw.offset) as out:
        predict_blockwise(model, raw, out, block, overlap, device=dev, bf16=bf16, progress=progress)
    seconds = time.monotonic() - started
    voxels = int(np.prod(raw.shape))
    return {"output": output_spec, "shape": list(shape), "seconds": seconds, "voxels_per_second": voxels / max(seconds, 1e-9), "offsets": offsets,
            "device": str(dev)}
