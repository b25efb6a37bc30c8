"""Which objective a pretraining step uses: a single one, a staged schedule or a mixture.

TokenUnify combines random, next and next-all token prediction. The paper runs
them in sequence, each stage with its own warm-up and cosine
(`lr_for_step`) over an integer number of steps (`stage_lengths`); a
per-step mixture, on one curve, is the alternative. Both are a pure
function of the step (and, for the mixture, a seeded generator), so a resumed
run makes the same choices as an unbroken one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np

from tokenunify.training.step import cosine_lr


@dataclass
class ScheduleSettings:
    """`kind`: `single` (first objective only), `staged` or `mixture`.

    `objectives` are registered sampler names; `shares` are the fractions of
    the steps each stage gets (staged) or the sampling weights (mixture).
    """

    kind: Literal["single", "staged", "mixture"] = "single"
    objectives: list[str] = field(default_factory=lambda: ["random"])
    shares: list[float] = field(default_factory=lambda: [1.0])

    def __post_init__(self) -> None:
        if not self.objectives:
            raise ValueError("schedule.objectives must name at least one objective")
        if self.kind != "single" and len(self.shares) != len(self.objectives):
            raise ValueError(f"schedule.shares has {len(self.shares)} values for {len(self.objectives)} objectives")
        if any(s < 0 for s in self.shares) or sum(self.shares) <= 0:
            raise ValueError("schedule.shares must be non-negative and not all zero")


def stage_lengths(total_steps: int, shares: list[float]) -> list[int]:
    """Steps per stage: integers that sum to `total_steps`, in proportion to `shares`.

    Largest-remainder rounding on exact fractions (a share written as 0.1 is
    taken as 1/10, not as its binary float), so shares [0.1, 0.2, 0.7] over
    10 steps give [1, 2, 7]; ties go to the earlier stage.
    """
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    exact = [Fraction(repr(float(s))) for s in shares]
    whole = sum(exact)
    if whole <= 0 or any(s < 0 for s in exact):
        raise ValueError(f"shares must be non-negative and not all zero, got {shares}")
    quotas = [total_steps * s / whole for s in exact]
    lengths = [math.floor(q) for q in quotas]
    left = total_steps - sum(lengths)
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - lengths[i]), i))
    for i in by_remainder[:left]:
        lengths[i] += 1
    return lengths


def stage_of_step(step: int, total_steps: int, schedule: ScheduleSettings) -> tuple[int, int, int]:
    """For a staged schedule: (stage index, first step of the stage, its length) of (0-based) `step`."""
    start = 0
    lengths = stage_lengths(total_steps, schedule.shares)
    for index, length in enumerate(lengths):
        if step < start + length:
            return index, start, length
        start += length
    last = max(i for i, n in enumerate(lengths) if n > 0) if total_steps else len(lengths) - 1
    return last, start - lengths[last], lengths[last]


def objective_for_step(step: int, total_steps: int, schedule: ScheduleSettings, seed: int = 0) -> str:
    """The objective of (0-based) `step` of a run of `total_steps`."""
    if schedule.kind == "single":
        return schedule.objectives[0]
    if schedule.kind == "staged":
        return schedule.objectives[stage_of_step(step, total_steps, schedule)[0]]
    shares = np.asarray(schedule.shares, dtype=float)
    shares = shares / shares.sum()
    # A generator seeded by (seed, step) makes the draw independent of history.
    rng = np.random.default_rng([seed, step])
    return schedule.objectives[int(rng.choice(len(shares), p=shares))]


def lr_for_step(step: int, total_steps: int, schedule: ScheduleSettings, lr: float, lr_final: float) -> float:
    """The learning rate of `step`: per stage of a staged schedule, one curve otherwise.

    Each stage gets its own warm-up and cosine from `lr` to `lr_final`, so no
    objective is trained only at the tail of one long curve (with one cosine,
    the last of three stages saw a mean rate of a ninth of the first's).
    """
    if schedule.kind != "staged":
        return cosine_lr(step, total_steps, lr, lr_final)
    _, start, length = stage_of_step(step, total_steps, schedule)
    return cosine_lr(step - start, length, lr, lr_final)
