"""The study as an ordered list of runs (stages), each a complete pretrain or train config.

Every stage has a key that is also its folder under the study's `out_dir`, so
a stage is found again after a crash and its checkpoints stay available for
re-evaluation or continuation. Arms differ in the pretraining schedule, the
network, and whatever their own `pretrain_overrides` / `finetune_overrides`
/ steps scales change; otherwise the fine-tuning config of a (budget, seed)
pair is the same for every arm except for `init`. An arm with
`pretrain_from` shares the named arm's pretraining stage.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from tokenunify.config import apply_overrides, from_dict, to_dict
from tokenunify.errors import ConfigError
from tokenunify.finetune.settings import TrainSettings
from tokenunify.pretrain.settings import PretrainSettings
from tokenunify.study.settings import ArmSettings, StudySettings

Kind = Literal["pretrain", "finetune"]
RunSettings = TypeVar("RunSettings", PretrainSettings, TrainSettings)


@dataclass
class Stage:
    """One run of the study.

    Attributes:
        key: unique name, also the run folder relative to the study's out_dir.
        kind: "pretrain" or "finetune".
        arm, preset, seed: what the run belongs to.
        budget: label budget name (fine-tuning only).
        settings: the complete config of the run (its out_dir already set).
        needs: key of the pretraining stage whose checkpoint `init` names.
        part: "main" (the arm x budget x seed table) or "scaling".
    """

    key: str
    kind: Kind
    arm: str
    preset: str
    seed: int
    settings: PretrainSettings | TrainSettings
    budget: str | None = None
    needs: str | None = None
    part: str = "main"


def pretrain_key(arm: str, preset: str, seed: int) -> str:
    """Folder of an arm's pretraining run."""
    return f"pretrain/{arm}/{preset}/s{seed}"


def finetune_key(arm: str, preset: str, budget: str, seed: int) -> str:
    """Folder of a fine-tuning run."""
    return f"finetune/{arm}/{preset}/{budget}/s{seed}"


def tokens_per_pretraining(settings: PretrainSettings) -> int:
    """Tokens a pretraining run sees: steps x batch x tokens per crop (every token of a crop counts)."""
    loop = settings.train
    patch = settings.model.patch or ((8, 8, 8) if not settings.model.anisotropic else (4, 16, 16))
    per_crop = math.prod(c // p for c, p in zip(loop.crop, patch))
    return loop.steps * loop.batch_size * per_crop


def _overridden(settings: RunSettings, overrides: list[str], where: str) -> RunSettings:
    """A copy of `settings` with an arm's `key=value` overrides applied (checked like a config file)."""
    if not overrides:
        return copy.deepcopy(settings)
    try:  # from_dict names `where` itself; apply_overrides does not
        raw = apply_overrides(to_dict(settings), overrides)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return from_dict(type(settings), raw, where)


def _pretrain_settings(study: StudySettings, arm: ArmSettings, preset: str, seed: int, root: Path) -> PretrainSettings:
    s = _overridden(study.pretrain, arm.pretrain_overrides, f"arms.{arm.name}.pretrain_overrides")
    s.train.steps = arm.pretrain_steps(s.train.steps)
    s.schedule = copy.deepcopy(arm.schedule)
    s.model.preset = preset
    s.train.seed = seed
    s.out_dir = str(root / pretrain_key(arm.name, preset, seed))
    return s


def _finetune_settings(study: StudySettings, arm: ArmSettings, preset: str, budget: str, seed: int,
                       init: Path | None, root: Path, curve_every: int | None) -> TrainSettings:
    """The run's fine-tuning config; it validates every `curve_every` steps, or only at its end (None)."""
    s = _overridden(study.finetune, arm.finetune_overrides, f"arms.{arm.name}.finetune_overrides")
    s.model.name = arm.network
    s.train.steps = arm.finetune_steps(s.train.steps)
    s.model.preset = preset
    s.model.mixer = study.pretrain.model.mixer
    s.model.full_res = study.pretrain.model.full_res
    s.model.anisotropic = study.pretrain.model.anisotropic
    s.data.train_z = next(b.train_z for b in study.budgets if b.name == budget)
    s.train.seed = seed
    s.train.val_every = curve_every or s.train.steps
    s.init = None if init is None else str(init)
    s.init_allow_mismatch = False
    s.out_dir = str(root / finetune_key(arm.name, preset, budget, seed))
    return s


def plan_study(study: StudySettings) -> list[Stage]:
    """All stages in run order: pretraining first, then the main table, then the scaling runs.

    An arm with `pretrain_from` gets no pretraining stage: its fine-tuning
    starts from the named arm's, so its stage keys and fingerprints do not
    depend on the order of the arms.
    """
    root = Path(study.out_dir)
    main_preset = study.pretrain.model.preset
    pretrain_seeds = study.seeds if study.pretrain_per_seed else study.seeds[:1]
    stages: list[Stage] = []

    def source(arm: ArmSettings) -> ArmSettings:
        return study.arm(arm.pretrain_from) if arm.pretrain_from else arm

    def add_pretraining(arm: ArmSettings, preset: str, seed: int, part: str) -> None:
        key = pretrain_key(arm.name, preset, seed)
        if key not in {s.key for s in stages}:
            stages.append(Stage(key, "pretrain", arm.name, preset, seed,
                                _pretrain_settings(study, arm, preset, seed, root), part=part))

    for arm in (a for a in study.arms if a.schedule is not None):
        for seed in pretrain_seeds:
            add_pretraining(arm, main_preset, seed, "main")
    for preset in study.scaling.presets:
        for arm in dict.fromkeys(source(study.arm(n)).name for n in study.scaling.arms if study.arm(n).pretrained):
            for seed in (study.scaling.seeds if study.pretrain_per_seed else study.scaling.seeds[:1]):
                add_pretraining(study.arm(arm), preset, seed, "scaling")

    def add_finetuning(arm: ArmSettings, preset: str, budget: str, seed: int, part: str) -> None:
        needs = None
        if arm.pretrained:
            pseed = seed if study.pretrain_per_seed else (study.seeds[0] if part == "main" else study.scaling.seeds[0])
            needs = pretrain_key(source(arm).name, preset, pseed)
        init = None if needs is None else root / needs / "checkpoints" / "last.pt"
        every = study.curve.every if (arm.name in study.curve.arms and part == "main") else None
        settings = _finetune_settings(study, arm, preset, budget, seed, init, root, every)
        stages.append(Stage(finetune_key(arm.name, preset, budget, seed), "finetune", arm.name, preset, seed,
                            settings, budget=budget, needs=needs, part=part))

    for budget in study.budgets:
        for seed in study.seeds:
            for arm in study.arms:
                add_finetuning(arm, main_preset, budget.name, seed, "main")
    for preset in study.scaling.presets:
        for seed in study.scaling.seeds:
            for name in study.scaling.arms:
                add_finetuning(study.arm(name), preset, study.scaling.budget, seed, "scaling")
    return stages
