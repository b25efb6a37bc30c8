"""Typed settings for `tokenunify pretrain` (checked from YAML by `tokenunify.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tokenunify.data.augment import AugmentConfig
from tokenunify.pretrain.schedule import ScheduleSettings
from tokenunify.training.settings import LoopBase


@dataclass
class PretrainData:
    """Unlabelled volumes (`PATH:DATASET`, regions allowed); crops are drawn in proportion to size."""

    volumes: list[str] = field(default_factory=list)


@dataclass
class PretrainModel:
    """The TokenUnify network: a size preset and the mixer (`mamba` or `vit`).

    `next_context`: what the next-token head reads of the prefix, the
    Perceiver latents or (the ablation) the deepest features themselves.
    `full_res`: how the full-resolution level is built
    (`tokenunify.models.encoder.FULL_RES`).
    """

    preset: str = "tiny"
    mixer: Literal["mamba", "vit"] = "mamba"
    anisotropic: bool = False
    patch: tuple[int, int, int] | None = None
    next_context: Literal["perceiver", "features"] = "perceiver"
    # the full-resolution level: "block" (residual conv blocks) or "lean" (one
    # conv in the stem, an added skip in the decoder; docs/study.md)
    full_res: Literal["block", "lean"] = "block"


@dataclass
class PretrainLoop(LoopBase):
    """The optimisation loop (shared fields: `LoopBase`). `normalize_targets`: per-patch normalised targets (MAE)."""

    steps: int = 1000
    crop: tuple[int, int, int] = (32, 64, 64)
    lr_final: float = 1e-5
    weight_decay: float = 0.05
    clip_grad_norm: float | None = 1.0
    checkpoint_every: int = 50
    normalize_targets: bool = True
    preview_every: int = 250


@dataclass
class PretrainSettings:
    """Everything `tokenunify pretrain` needs. `samplers` holds keyword arguments per objective."""

    data: PretrainData = field(default_factory=PretrainData)
    model: PretrainModel = field(default_factory=PretrainModel)
    train: PretrainLoop = field(default_factory=PretrainLoop)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    samplers: dict[str, Any] = field(default_factory=lambda: {"random": {"ratio": 0.75}, "next": {}, "next_all": {}})
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    out_dir: str = "runs/pretrain"
