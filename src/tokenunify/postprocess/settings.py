"""Typed settings of fragments and agglomeration (the `segment:` section of a config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SegmentSettings:
    """Fragments and agglomeration. `fragments` is 2d for anisotropic ssTEM, 3d for FIB-SEM."""

    method: Literal["waterz", "mws"] = "waterz"
    fragments: Literal["2d", "3d"] = "3d"
    boundary_threshold: float = 0.5
    # Seeds at distance-transform maxima at least this far apart (voxels).
    min_seed_distance: int = 10
    # Cutting fragments along every low edge makes them pure on ideal
    # affinities but shatters membranes into single voxels on real predictions.
    split_by_affinity: bool = False
    thresholds: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    # Median affinity along the boundary (a prebuilt waterz scorer: no compiler needed).
    scoring: str = "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, true>>"
    mws_bias: float = -0.5
    # VOI and ARAND jump when a single merge of two large objects flips, and
    # on a small validation cube such merges sit at a knife edge: uniform
    # noise of +-0.001 on the affinities moved the best VOI of one FIB
    # checkpoint by up to 0.39 (docs/study_runs.md). With jitter_repeats R > 1
    # every threshold is scored on the affinities and on R-1 copies jittered
    # by +-jitter (fixed seeds), and the mean over the R copies is reported.
    jitter_repeats: int = 1
    jitter: float = 1e-3
    # Cross-fitting: with P > 1 the scored volume is cut into P slabs along
    # z, every threshold is also scored on each slab, and each slab is then
    # scored at the threshold that is best on the other slabs (`cross_fit`),
    # so the reported figure comes from a threshold chosen on data it does
    # not score. The best-of-sweep row stays beside it as the oracle.
    cross_fit_parts: int = 1

    def __post_init__(self) -> None:
        if self.jitter_repeats < 1:
            raise ValueError(f"segment.jitter_repeats must be >= 1, got {self.jitter_repeats}")
        if not 0.0 <= self.jitter < 0.5:
            raise ValueError(f"segment.jitter must lie in [0, 0.5), got {self.jitter}")
        if self.cross_fit_parts < 1:
            raise ValueError(f"segment.cross_fit_parts must be >= 1, got {self.cross_fit_parts}")
