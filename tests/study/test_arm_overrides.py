"""Investigation arms: per-arm config overrides, shared pretraining, paired references, `extends:`."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_study import _raw, _row

from tokenunify.config import from_dict
from tokenunify.errors import ConfigError
from tokenunify.study import aggregate as agg
from tokenunify.study.plan import plan_study
from tokenunify.study.run_study import load_study
from tokenunify.study.settings import StudySettings

STAGED = {"kind": "staged", "objectives": ["random", "next_all"], "shares": [0.5, 0.5]}


def _arms(tmp_path, arms, **extra):
    return from_dict(StudySettings, _raw(tmp_path, arms=arms, curve={"arms": []}, **extra))


def test_overrides_change_only_their_arm_and_identical_pretraining_is_shared(tmp_path):
    study = _arms(tmp_path, [
        {"name": "scratch"},
        {"name": "tokenunify", "schedule": STAGED},
        {"name": "enc03", "schedule": STAGED, "finetune_overrides": ["train.encoder_lr_scale=0.3"]},
        {"name": "long", "schedule": STAGED, "pretrain_overrides": ["train.steps=8"]},
        {"name": "mask50", "schedule": STAGED, "pretrain_overrides": ["samplers.random.ratio=0.5"]},
    ])
    stages = plan_study(study)
    pre = {s.arm: s for s in stages if s.kind == "pretrain"}
    # enc03 pretrains exactly like tokenunify, so it has no stage of its own
    assert sorted(pre) == ["long", "mask50", "tokenunify"]
    assert pre["long"].settings.train.steps == 8 and pre["tokenunify"].settings.train.steps == 2
    assert pre["mask50"].settings.samplers["random"]["ratio"] == 0.5
    assert pre["tokenunify"].settings.samplers == study.pretrain.samplers
    fine = {s.arm: s for s in stages if s.kind == "finetune" and s.budget == "scarce"}
    assert fine["enc03"].needs == pre["tokenunify"].key == fine["tokenunify"].needs
    assert fine["long"].needs == pre["long"].key
    assert fine["enc03"].settings.train.encoder_lr_scale == 0.3
    assert all(fine[a].settings.train.encoder_lr_scale == study.finetune.train.encoder_lr_scale
               for a in ("scratch", "tokenunify", "long", "mask50"))
    # the study's own settings stay as they were
    assert study.finetune.train.encoder_lr_scale != 0.3 and study.pretrain.train.steps == 2


def test_bad_overrides_are_config_errors_naming_the_arm(tmp_path):
    with pytest.raises(ConfigError, match="arms.bad.finetune_overrides.*stepz"):
        plan_study(_arms(tmp_path, [{"name": "bad", "finetune_overrides": ["train.stepz=3"]}]))
    with pytest.raises(ConfigError, match="'bad'.*key=value"):
        _arms(tmp_path, [{"name": "bad", "finetune_overrides": ["train.steps"]}])
    with pytest.raises(ConfigError, match="'bad'.*need a pretraining schedule"):
        _arms(tmp_path, [{"name": "bad", "pretrain_overrides": ["train.steps=3"]}])
    with pytest.raises(ConfigError, match="paired_refs names unknown arm"):
        _arms(tmp_path, [{"name": "scratch"}], paired_refs=["tokenunify"])


def test_paired_refs_choose_the_reference_arms(tmp_path):
    study = _arms(tmp_path, [{"name": "scratch"}, {"name": "tokenunify", "schedule": STAGED},
                             {"name": "long", "schedule": STAGED, "pretrain_overrides": ["train.steps=8"]}],
                  paired_refs=["tokenunify"])
    assert study.refs() == ["tokenunify"]
    assert _arms(tmp_path, [{"name": "scratch"}, {"name": "x", "schedule": STAGED}]).refs() == ["scratch"]
    rows = [_row(a, "scarce", s, v) for a, vs in {"scratch": [2.0, 2.2], "tokenunify": [1.8, 1.9], "long": [1.6, 1.8]}.items()
            for s, v in enumerate(vs)]
    paired = agg.paired_differences(rows, ["scratch", "tokenunify", "long"], ["scarce"], "tiny", refs=study.refs())
    assert {(p["arm"], p["ref"]) for p in paired} == {("scratch", "tokenunify"), ("long", "tokenunify")}
    long = next(p for p in paired if p["arm"] == "long")
    assert long["diffs"] == pytest.approx([-0.2, -0.1])


def test_the_investigation_config_extends_the_default(monkeypatch):
    monkeypatch.setenv("TOKENUNIFY_DATA", "/nonexistent")
    config = Path(__file__).parents[2] / "configs" / "study_fib_investigate.yaml"
    study = load_study(config, [], quick=False)
    default = load_study(config.parent / "study_fib.yaml", [], quick=False)
    assert study.finetune == default.finetune and study.budgets == default.budgets
    assert study.out_dir != default.out_dir and study.report_dir != default.report_dir
    stages = plan_study(study)
    # every investigation arm pretrains differently from the default TokenUnify arm, except the encoder-rate arm
    pre = [s for s in stages if s.kind == "pretrain"]
    assert len(pre) == len({s.arm for s in pre}) == sum(1 for a in study.arms if a.pretrained) - 1
    steps = {s.arm: s.settings.train.steps for s in pre}
    # 4x the 2026-12-02 study's 400 steps, as the default now pretrains; twice the other arms'
    assert steps["tokenunify_4x"] == 2 * steps["tokenunify"] == default.pretrain.train.steps == 1600


def test_the_report_lists_each_arms_overrides():
    from tokenunify.study.report import _override_lines

    config = {"arms": [{"name": "scratch"}, {"name": "long", "pretrain_overrides": ["train.steps=8"]},
                       {"name": "enc", "finetune_overrides": ["train.encoder_lr_scale=0.3", "train.warmup_steps=0"]}]}
    lines = _override_lines(config)
    assert "- `long` differs from the shared config in its pretraining `train.steps=8`" in lines
    assert "- `enc` differs from the shared config in its fine-tuning `train.encoder_lr_scale=0.3, train.warmup_steps=0`" in lines
    assert not any("scratch" in line for line in lines)
