"""Typed settings for affinity training (with the prediction and segmentation sections it validates with).

These dataclasses are what a YAML config under `configs/` is checked into
(see `tokenunify.config`). Defaults suit isotropic FIB-SEM at ~10 nm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tokenunify.data.augment import AugmentConfig
from tokenunify.finetune.affinities import check_balance_clip
from tokenunify.offsets import MODEL_DEFAULT, Offset
from tokenunify.postprocess.settings import SegmentSettings
from tokenunify.predict.settings import PredictSettings
from tokenunify.training.settings import LoopBase


@dataclass
class DataSettings:
    """Where the labelled data lives. Volumes are `PATH:DATASET` names."""

    raw: str = ""
    labels: str = ""
    train_z: tuple[int, int] | None = None
    val_raw: str | None = None
    val_labels: str | None = None
    val_z: tuple[int, int] | None = None
    # A second labelled volume no run trains or validates on, scored once
    # after training at the threshold chosen on the validation part.
    test_raw: str | None = None
    test_labels: str | None = None


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
    # TokenUnify only: the full-resolution level, "block" or "lean" (tokenunify.models.encoder.FULL_RES)
    full_res: Literal["block", "lean"] = "block"
    anisotropic: bool = False
    offsets: list[Offset] = field(default_factory=lambda: list(MODEL_DEFAULT))


@dataclass
class LoopSettings(LoopBase):
    """The optimisation loop (shared fields and defaults: `LoopBase`); validation every `val_every` steps.

    `freeze_encoder`: train only the decoder (a linear-probe-like test of what
    a pretrained, or a random, encoder carries); TokenUnify networks only.
    """

    val_every: int = 500
    freeze_encoder: bool = False
    # Bounds on the positive-edge fraction that sets the class-balancing loss
    # weights (`finetune.affinities.balance_weights`). With the default a
    # boundary edge can weigh up to 19x a same-object edge (about 9x on FIB
    # crops, where ~90% of nearest-neighbour edges are positive); [0.5, 0.5]
    # weighs every edge 1, i.e. plain BCE.
    balance_clip: tuple[float, float] = (0.05, 0.95)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_balance_clip(self.balance_clip, "train.balance_clip")


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
    # Name prefixes that stay freshly initialised although `init` holds them,
    # e.g. ["decoder."] to transfer a pretrained encoder without its decoder.
    init_keep_fresh: list[str] = field(default_factory=list)
    out_dir: str = "runs/train"
