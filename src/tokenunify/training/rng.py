"""The random state of one rank: numpy (crops, augmentation), torch's global RNG and a torch generator (masks).

Rank r of a run seeded s uses s + r, so ranks draw different crops while a
single-process run (rank 0) draws exactly what it always did. The state of
every rank is saved in the checkpoint, so a resumed run continues each
rank's sequence where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tokenunify.errors import InputError

__all__ = ["Rngs", "rank_states"]


@dataclass
class Rngs:
    """The generators one rank draws from."""

    numpy: np.random.Generator
    generator: torch.Generator

    @classmethod
    def seeded(cls, seed: int) -> "Rngs":
        """Fresh generators for `seed`; also seeds torch's global RNG."""
        torch.manual_seed(seed)
        return cls(np.random.default_rng(seed), torch.Generator().manual_seed(seed))

    def state(self) -> dict[str, Any]:
        """Plain data and tensors only, so a checkpoint loads weights-only."""
        state = {"numpy": self.numpy.bit_generator.state, "torch": torch.get_rng_state(),
                 "generator": self.generator.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Undo `state`."""
        self.numpy.bit_generator.state = state["numpy"]
        torch.set_rng_state(state["torch"])
        self.generator.set_state(state["generator"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def rank_states(checkpoint: dict[str, Any], path: Any, world_size: int) -> list[dict[str, Any]]:
    """The per-rank RNG states of a checkpoint, for a run of `world_size` ranks.

    Checkpoints of earlier versions hold one process's state at the top level
    (`numpy_rng`, `torch_rng`, optionally `mask_rng`); they resume as rank 0.
    """
    if "rng" in checkpoint:
        states = checkpoint["rng"]
    else:
        legacy = {"numpy": checkpoint["numpy_rng"], "torch": checkpoint["torch_rng"]}
        legacy["generator"] = checkpoint.get("mask_rng", torch.Generator().get_state())
        states = [legacy]
    if len(states) != world_size:
        raise InputError(path, f"this run was trained with {len(states)} process(es) and is resumed with {world_size}; "
                               f"resume it with the same number (torchrun --nproc_per_node {len(states)})")
    return states
