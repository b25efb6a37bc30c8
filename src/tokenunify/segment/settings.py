"""Typed settings for affinity training, prediction and segmentation.

These dataclasses are what a YAML config under `configs/` is checked into
(see `tokenunify.config`). Defaults suit isotropic FIB-SEM at ~10 nm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tokenunify.data.augment import AugmentConfig
from tokenunify.training.settings import LoopBase

Offset = tuple[int, int, int]
NEAREST: list[Offset] = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]


@dataclass
class DataSettings:
    """Where the labelled data lives. Volumes are `PATH:DATASET` names."""

    raw: str = ""
    labels: str = ""
    train_z: tuple[int, int] | None = None
    val_raw: str | None = None
    val_labels: str | None = None
    val_z: tuple[int, int] | None = None


@dataclass
class ModelSettings:
    """Network choice. `offsets` sets the output channels; the first three must be nearest neighbours.

    `unet` is the Superhuman-style baseline (`width` per level); `tokenunify`
    is the pretrainable Mamba/ViT network (`preset`, `mixer`), which is what
    `init` checkpoints from `tokenunify pretrain` load into.
    """

    name: Literal["unet", "tokenunify"] = "unet"
    width: tuple[int, ...] = (16, 32, 64, 96)
    preset: str = "tiny"
    mixer: Literal["mamba", "vit"] = "mamba"
    anisotropic: bool = False
    offsets: list[Offset] = field(default_factory=lambda: list(NEAREST) + [(-3, 0, 0), (0, -3, 0), (0, 0, -3), (-9, 0, 0), (0, -9, 0), (0, 0, -9)])


@dataclass
class LoopSettings(LoopBase):
    """The optimisation loop (shared fields and defaults: `LoopBase`); validation every `val_every` steps.

    `freeze_encoder`: train only the decoder (a linear-probe-like test of what
    a pretrained, or a random, encoder carries); TokenUnify networks only.
    """

    val_every: int = 500
    freeze_encoder: bool = False


@dataclass
class PredictSettings:
    """Blockwise prediction: block and overlap in voxels (z,y,x)."""

    block: tuple[int, int, int] = (48, 128, 128)
    overlap: tuple[int, int, int] = (8, 24, 24)
    batch_size: int = 1
    bf16: bool = True

    def __post_init__(self) -> None:
        # Checked here so a bad pair fails when the config loads, not at the first validation.
        if any(b < 1 or not 0 <= o < b for b, o in zip(self.block, self.overlap)):
            raise ValueError(f"predict.overlap {tuple(self.overlap)} must satisfy 0 <= overlap < block {tuple(self.block)}")


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
    # checkpoint by up to 0.39 (docs/study.md). With jitter_repeats R > 1
    # every threshold is scored on the affinities and on R-1 copies jittered
    # by +-jitter (fixed seeds), and the mean over the R copies is reported.
    jitter_repeats: int = 1
    jitter: float = 1e-3

    def __post_init__(self) -> None:
        if self.jitter_repeats < 1:
            raise ValueError(f"segment.jitter_repeats must be >= 1, got {self.jitter_repeats}")
        if not 0.0 <= self.jitter < 0.5:
            raise ValueError(f"segment.jitter must lie in [0, 0.5), got {self.jitter}")


@dataclass
class TrainSettings:
    """Everything `tokenunify train` needs."""

    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: LoopSettings = field(default_factory=LoopSettings)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    predict: PredictSettings = field(default_factory=PredictSettings)
    segment: SegmentSettings = field(default_factory=SegmentSettings)
    init: str | None = None
    # Tensors outside the task head whose shapes differ from the checkpoint's
    # are an error unless this is set (then they keep their fresh values).
    init_allow_mismatch: bool = False
    out_dir: str = "runs/train"
