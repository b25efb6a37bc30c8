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


# Keys of the pretraining / fine-tuning configs the study sets for every run
# itself (the arm's schedule, preset, seed, folder, initialisation, and the
# network, which pretraining and fine-tuning must share): an arm override of
# one of them would be overwritten or would break the checkpoint hand-over.
PRETRAIN_FIXED = ("schedule", "model", "train.seed", "out_dir")
FINETUNE_FIXED = ("model.name", "model.preset", "model.mixer", "model.full_res", "model.anisotropic", "model.patch",
                  "data.train_z", "train.seed", "train.val_every", "init", "init_allow_mismatch", "out_dir")


def _fixed_keys(overrides: list[str], fixed: tuple[str, ...]) -> list[str]:
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    return [k for k in keys if any(k == f or k.startswith(f + ".") for f in fixed)]


@dataclass
class ArmSettings:
    """One arm: a name, its pretraining (none: trained from scratch) and its network.

    `network: unet` is the field's baseline, the project's U-Net trained from
    scratch (no schedule allowed); `finetune_steps_scale` multiplies the
    study's fine-tuning steps for this arm (rounded), so that a network with
    a cheaper step gets the same wall-clock minutes as the others
    (docs/study.md), under `--quick` too; `pretrain_steps_scale` does the
    same for the arm's pretraining steps.

    `pretrain_overrides` and `finetune_overrides` are `key=value` overrides
    (as on the command line) of the study's pretraining and fine-tuning
    configs for this arm alone (not of the keys the study sets per run, see
    `PRETRAIN_FIXED` and `FINETUNE_FIXED`). `pretrain_from: other` fine-tunes
    from arm `other`'s pretraining instead of pretraining again: the
    encoder-rate arm of configs/study_fib_investigate.yaml is
    `{pretrain_from: tokenunify, finetune_overrides: [train.encoder_lr_scale=0.3]}`.
    """

    name: str = ""
    schedule: ScheduleSettings | None = None
    network: Literal["tokenunify", "unet"] = "tokenunify"
    finetune_steps_scale: float = 1.0
    pretrain_steps_scale: float = 1.0
    pretrain_overrides: list[str] = field(default_factory=list)
    finetune_overrides: list[str] = field(default_factory=list)
    pretrain_from: str = ""

    def __post_init__(self) -> None:
        if self.network == "unet" and self.pretrained:
            raise ValueError(f"arm {self.name!r}: a unet arm trains from scratch; it takes no pretraining schedule")
        if self.pretrain_from and (self.schedule is not None or self.pretrain_overrides
                                   or self.pretrain_steps_scale != 1.0):
            raise ValueError(f"arm {self.name!r}: an arm with pretrain_from uses that arm's pretraining; it takes "
                             "no schedule, pretrain_overrides or pretrain_steps_scale of its own")
        if (self.pretrain_overrides or self.pretrain_steps_scale != 1.0) and self.schedule is None:
            raise ValueError(f"arm {self.name!r}: pretrain_overrides and pretrain_steps_scale need a pretraining schedule")
        bad = [o for o in (*self.pretrain_overrides, *self.finetune_overrides) if "=" not in o]
        if bad:
            raise ValueError(f"arm {self.name!r}: override(s) {bad} are not of the form key=value")
        for where, overrides, fixed in (("pretrain_overrides", self.pretrain_overrides, PRETRAIN_FIXED),
                                        ("finetune_overrides", self.finetune_overrides, FINETUNE_FIXED)):
            clashes = _fixed_keys(overrides, fixed)
            if clashes:
                raise ValueError(f"arm {self.name!r}: {where} may not set {', '.join(clashes)}; "
                                 f"the study sets {', '.join(fixed)} for every run itself")
        for what, scale in (("finetune_steps_scale", self.finetune_steps_scale),
                            ("pretrain_steps_scale", self.pretrain_steps_scale)):
            if scale <= 0:
                raise ValueError(f"arm {self.name!r}: {what} must be > 0, got {scale}")

    def finetune_steps(self, steps: int) -> int:
        """This arm's fine-tuning steps when the study's are `steps`."""
        return max(1, round(steps * self.finetune_steps_scale))

    def pretrain_steps(self, steps: int) -> int:
        """This arm's pretraining steps when the study's are `steps`."""
        return max(1, round(steps * self.pretrain_steps_scale))

    @property
    def pretrained(self) -> bool:
        """Whether the arm fine-tunes from a pretraining (its own or `pretrain_from`'s)."""
        return self.schedule is not None or bool(self.pretrain_from)


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
        for arm in (a for a in self.arms if a.pretrain_from):
            source = next((a for a in self.arms if a.name == arm.pretrain_from), None)
            if source is None or source.schedule is None:
                raise ValueError(f"arm {arm.name!r}: pretrain_from names {arm.pretrain_from!r}, which is not an arm "
                                 "with a pretraining schedule of its own")
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
