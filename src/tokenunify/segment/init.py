"""Initialise a network from another checkpoint's weights (fine-tuning)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tokenunify.errors import InputError
from tokenunify.io.checkpoint import load_checkpoint


def load_pretrained(
    model: torch.nn.Module, path: str | Path, allow_mismatch: bool = False, head_prefixes: Sequence[str] = ()
) -> dict[str, Any]:
    """Copy every tensor of the checkpoint whose name and shape match into `model`.

    A tensor with the right name but another shape is an error unless
    `allow_mismatch` is set (then it is skipped and listed) or it belongs to
    the task head (`head_prefixes`), which is expected to change between
    pretraining and fine-tuning. Returns a report: which tensors loaded, which
    were skipped, which model tensors kept their fresh initialisation.
    """
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    loaded, mismatched, head_changed = [], [], []
    for name, tensor in state.items():
        if name not in own:
            continue
        if own[name].shape != tensor.shape:
            note = f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(own[name].shape)}"
            (head_changed if name.startswith(tuple(head_prefixes)) else mismatched).append(note)
            continue
        own[name] = tensor
        loaded.append(name)
    if mismatched and not allow_mismatch:
        raise InputError(path, f"{len(mismatched)} tensor(s) differ in shape, e.g. {mismatched[0]}; allow it explicitly to skip them")
    if not loaded:
        raise InputError(path, "no tensor of this checkpoint matches the model; is it for another architecture?")
    model.load_state_dict(own)
    return {
        "checkpoint": str(path),
        "loaded": loaded,
        "mismatched": mismatched,
        "head_reinitialised": head_changed,
        "unused": sorted(set(state) - set(own)),
        "fresh": sorted(set(own) - set(loaded)),
    }
