"""Which objective a pretraining step uses: a single one, a staged schedule or a mixture.

TokenUnify combines random, next and next-all token prediction. The paper runs
them in sequence; a per-step mixture is the alternative. Both are a pure
function of the step (and, for the mixture, a seeded generator), so a resumed
run makes the same choices as an unbroken one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


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


def objective_for_step(step: int, total_steps: int, schedule: ScheduleSettings, seed: int = 0) -> str:
    """The objective of (0-based) `step` of a run of `total_steps`."""
    if schedule.kind == "single":
        return schedule.objectives[0]
    shares = np.asarray(schedule.shares, dtype=float)
    shares = shares / shares.sum()
    if schedule.kind == "staged":
        bounds = np.cumsum(shares) * total_steps
        stage = int(np.searchsorted(bounds, step, side="right"))
        return schedule.objectives[min(stage, len(schedule.objectives) - 1)]
    # A generator seeded by (seed, step) makes the draw independent of history.
    rng = np.random.default_rng([seed, step])
    return schedule.objectives[int(rng.choice(len(shares), p=shares))]
