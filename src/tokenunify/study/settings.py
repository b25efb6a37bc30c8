"""Typed settings of `tokenunify study` (checked from YAML by `tokenunify.config`).

A study config holds a complete pretraining config and a complete fine-tuning
config; the study varies only what the comparison is about (the objective
schedule, the label budget, the seed and, for the scaling part, the preset)
and keeps everything else identical across arms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tokenunify.finetune.settings import TrainSettings
from tokenunify.pretrain.schedule import ScheduleSettings
from tokenunify.pretrain.settings import PretrainSettings

SCRATCH = "scratch"


@dataclass
class ArmSettings:
    """One arm: a name, its pretraining schedule (none: trained from scratch) and its network.

    `network: unet` is the field's baseline, the project's U-Net trained from
    scratch (no schedule allowed); `finetune_steps_scale` multiplies the
    study's fine-tuning steps for this arm (rounded), so that a network with
    a cheaper step gets the same wall-clock minutes as the others
    (docs/study.md), under `--quick` too.

    `pretrain_overrides` and `finetune_overrides` are `key=value` overrides
    (as on the command line) of the study's pretraining and fine-tuning
    configs for this arm alone: the investigation arms of
    configs/study_fib_investigate.yaml vary pretraining length, mask ratio
    or the encoder's learning rate this way. Arms whose pretraining configs
    come out identical share one pretraining stage.
    """

    name: str = ""
    schedule: ScheduleSettings | None = None
    network: Literal["tokenunify", "unet"] = "tokenunify"
    finetune_steps_scale: float = 1.0
    pretrain_overrides: list[str] = field(default_factory=list)
    finetune_overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.network == "unet" and self.schedule is not None:
            raise ValueError(f"arm {self.name!r}: a unet arm trains from scratch; it takes no pretraining schedule")
        if self.pretrain_overrides and self.schedule is None:
            raise ValueError(f"arm {self.name!r}: pretrain_overrides need a pretraining schedule")
        bad = [o for o in (*self.pretrain_overrides, *self.finetune_overrides) if "=" not in o]
        if bad:
            raise ValueError(f"arm {self.name!r}: override(s) {bad} are not of the form key=value")
        if self.finetune_steps_scale <= 0:
            raise ValueError(f"arm {self.name!r}: finetune_steps_scale must be > 0, got {self.finetune_steps_scale}")

    def finetune_steps(self, steps: int) -> int:
        """This arm's fine-tuning steps when the study's are `steps`."""
        return max(1, round(steps * self.finetune_steps_scale))

    @property
    def pretrained(self) -> bool:
        return self.schedule is not None


@dataclass
class LabelBudget:
    """Labelled sections [z0, z1) of the training part used for fine-tuning."""

    name: str = ""
    train_z: tuple[int, int] = (0, 120)


@dataclass
class ScalingSettings:
    """VOI against model size: more presets for a few arms at one label budget."""

    presets: list[str] = field(default_factory=list)
    arms: list[str] = field(default_factory=lambda: [SCRATCH, "tokenunify"])
    budget: str = "scarce"
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class CurveSettings:
    """VOI against fine-tuning steps for `arms`, validated every `every` steps."""

    arms: list[str] = field(default_factory=lambda: [SCRATCH, "tokenunify"])
    every: int = 100


@dataclass
class FloorSettings:
    """The intensity-only floor every arm must beat on the validation part."""

    voi: float = 2.36
    arand: float = 0.197


@dataclass
class StudySettings:
    """Everything `tokenunify study` needs.

    `pretrain` and `finetune` are full configs of `tokenunify pretrain` and
    `tokenunify train`; their `out_dir`, `schedule`, seeds, `data.train_z`,
    `init` and `model.preset` are set per run by the study. `quick` lists
    `key=value` overrides that `--quick` applies on top of the config.
    """

    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    finetune: TrainSettings = field(default_factory=TrainSettings)
    arms: list[ArmSettings] = field(default_factory=list)
    budgets: list[LabelBudget] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    # the arms every other arm's per-seed differences are taken against (report, "Paired
    # differences"); empty: scratch and mae, those of them the study has
    paired_refs: list[str] = field(default_factory=list)
    # One pretraining per arm (seed = seeds[0]) shared by all fine-tuning
    # seeds, or one per seed; see docs/study.md.
    pretrain_per_seed: bool = False
    curve: CurveSettings = field(default_factory=CurveSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    floor: FloorSettings = field(default_factory=FloorSettings)
    # Stages run this many at a time, each in its own process with an equal
    # share of the CPU threads; see docs/study.md ("Stages in parallel").
    workers: int = 1
    out_dir: str = "runs/study"
    # a folder of finished pretraining runs by config and data fingerprint, shared by studies ("": none)
    pretrain_cache: str = ""
    report_dir: str = "docs"
    quick: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if not names or any(not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"arms need unique, non-empty names, got {names}")
        budgets = [b.name for b in self.budgets]
        if not budgets or len(set(budgets)) != len(budgets) or any(not b for b in budgets):
            raise ValueError(f"budgets need unique, non-empty names, got {budgets}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        checked = [("curve.arms", self.curve.arms), ("paired_refs", self.paired_refs)] + ([("scaling.arms", self.scaling.arms)] if self.scaling.presets else [])
        for where, listed in checked:
            unknown = sorted(set(listed) - set(names))
            if unknown:
                raise ValueError(f"{where} names unknown arm(s) {', '.join(unknown)}; arms: {', '.join(names)}")
        unets = sorted(set(self.scaling.arms) & {a.name for a in self.arms if a.network == "unet"})
        if self.scaling.presets and unets:
            raise ValueError(f"scaling.arms names unet arm(s) {', '.join(unets)}; scaling varies TokenUnify presets")
        if self.scaling.presets and self.scaling.budget not in budgets:
            raise ValueError(f"scaling.budget {self.scaling.budget!r} is not one of the budgets {budgets}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.curve.every < 1:
            raise ValueError(f"curve.every must be >= 1, got {self.curve.every}")

    def refs(self) -> list[str]:
        """The arms of the paired differences (`paired_refs`, or scratch and mae where present)."""
        names = {a.name for a in self.arms}
        return list(self.paired_refs) or [r for r in (SCRATCH, "mae") if r in names]

    def arm(self, name: str) -> ArmSettings:
        """The arm called `name`."""
        return next(a for a in self.arms if a.name == name)
