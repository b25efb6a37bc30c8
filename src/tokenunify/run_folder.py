"""The pieces every training loop shares: the run folder, resume checks, LR schedule, RNG state.

A run folder holds `config.yaml`, `checkpoints/last.pt` (rewritten atomically),
`metrics.jsonl` and the PNGs. An existing run is never started over unless
asked to (`overwrite`), and `resume` needs a checkpoint to resume from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tokenunify.config import to_dict
from tokenunify.errors import InputError, OutputError


@dataclass
class RunFolder:
    """Paths of one run."""

    root: Path

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def file(self, name: str) -> Path:
        """Any other file of the run, e.g. `loss.png`."""
        return self.root / name

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse to clobber a run, or to resume one that has no checkpoint."""
        if self.last.exists() and not (resume or overwrite):
            raise OutputError(self.root, "already holds a run; pass --resume to continue it or --overwrite to start again")
        if resume and not self.last.exists():
            raise InputError(self.last, "nothing to resume: no checkpoint in this run folder")

    def write_config(self, settings: Any) -> None:
        """Record the full, resolved config next to the checkpoints."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.file("config.yaml").write_text(yaml.safe_dump(to_dict(settings), sort_keys=False))

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite `metrics.jsonl` from the history (atomically, so resumes never duplicate rows)."""
        staging = self.metrics.with_name(f".{self.metrics.name}.tmp")
        staging.write_text("".join(json.dumps(row, default=float) + "\n" for row in rows))
        staging.replace(self.metrics)


def cosine_lr(step: int, total: int, lr: float, lr_final: float, warmup: int | None = None) -> float:
    """Linear warm-up, then cosine decay from `lr` to `lr_final` at `total` steps."""
    warmup = min(100, total // 10) if warmup is None else warmup
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * progress))


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """Numpy and torch generator states, for an exact resume."""
    return {"numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}


def restore_rng(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Undo `rng_state`."""
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])


def guarded_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float | None) -> tuple[float, bool]:
    """Clip the gradient norm and step, unless the gradients are not finite.

    A step whose gradient norm is NaN or infinite is skipped (as mixed-precision
    loss scalers do) rather than allowed to write NaN into the weights; the
    caller records it, so skipped steps are reported, not hidden. Returns
    (gradient norm before clipping, whether the step was taken).
    """
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm else float("inf"))
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return float(norm), False
    optimizer.step()
    return float(norm), True
