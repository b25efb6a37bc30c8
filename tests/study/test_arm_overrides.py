"""Investigation arms: per-arm overrides and steps scales, `pretrain_from`, paired references, quick folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from test_study import _raw, _row

from tokenunify.config import from_dict, to_dict
from tokenunify.errors import ConfigError
from tokenunify.study import aggregate as agg
from tokenunify.study import runner
from tokenunify.study.plan import plan_study
from tokenunify.study.run_study import load_study
from tokenunify.study.settings import StudySettings

STAGED = {"kind": "staged", "objectives": ["random", "next_all"], "shares": [0.5, 0.5]}


def _arms(tmp_path, arms, **extra):
    return from_dict(StudySettings, _raw(tmp_path, arms=arms, curve={"arms": []}, **extra))


def test_overrides_change_only_their_arm_and_pretrain_from_shares_a_pretraining(tmp_path):
    study = _arms(tmp_path, [
        {"name": "scratch"},
        {"name": "tokenunify", "schedule": STAGED},
        {"name": "enc03", "pretrain_from": "tokenunify", "finetune_overrides": ["train.encoder_lr_scale=0.3"]},
        {"name": "long", "schedule": STAGED, "pretrain_steps_scale": 4.0},
        {"name": "mask50", "schedule": STAGED, "pretrain_overrides": ["samplers.random.ratio=0.5"]},
        {"name": "slow", "schedule": STAGED, "pretrain_overrides": ["train.lr=0.0001"],
         "finetune_overrides": ["train.steps=6"]},
    ])
    stages = plan_study(study)
    pre = {s.arm: s for s in stages if s.kind == "pretrain"}
    # enc03 fine-tunes from tokenunify's pretraining, so it has no stage of its own
    assert sorted(pre) == ["long", "mask50", "slow", "tokenunify"]
    assert pre["long"].settings.train.steps == 8 and pre["tokenunify"].settings.train.steps == 2
    assert pre["mask50"].settings.samplers["random"]["ratio"] == 0.5
    assert pre["tokenunify"].settings.samplers == study.pretrain.samplers
    assert pre["slow"].settings.train.lr == 0.0001 and pre["tokenunify"].settings.train.lr == study.pretrain.train.lr
    fine = {s.arm: s for s in stages if s.kind == "finetune" and s.budget == "scarce"}
    assert fine["enc03"].needs == pre["tokenunify"].key == fine["tokenunify"].needs
    assert fine["long"].needs == pre["long"].key
    assert fine["enc03"].settings.train.encoder_lr_scale == 0.3
    assert all(fine[a].settings.train.encoder_lr_scale == study.finetune.train.encoder_lr_scale
               for a in ("scratch", "tokenunify", "long", "mask50"))
    # an overridden step count moves the run's single validation to its own end
    assert fine["slow"].settings.train.steps == fine["slow"].settings.train.val_every == 6
    # the study's own settings stay as they were
    assert study.finetune.train.encoder_lr_scale != 0.3 and study.pretrain.train.steps == 2


def test_pretrain_from_does_not_depend_on_the_order_of_the_arms(tmp_path):
    arms = [{"name": "tokenunify", "schedule": STAGED},
            {"name": "enc03", "pretrain_from": "tokenunify", "finetune_overrides": ["train.encoder_lr_scale=0.3"]}]
    keyed = [{s.key: (s.needs, runner.fingerprint(s)) for s in plan_study(_arms(tmp_path, order))}
             for order in (arms, arms[::-1])]
    assert keyed[0] == keyed[1]


def test_encoder_only_arm_and_fingerprints_of_fields_added_later(tmp_path):
    """`init_keep_fresh` as an arm override; at its default it leaves the fingerprint as it was before it existed."""
    arms = [{"name": "tokenunify", "schedule": STAGED},
            {"name": "enconly", "pretrain_from": "tokenunify", "finetune_overrides": ["init_keep_fresh=[decoder.]"]}]
    fine = {s.arm: s for s in plan_study(_arms(tmp_path, arms)) if s.kind == "finetune" and s.budget == "scarce"}
    assert fine["enconly"].settings.init_keep_fresh == ["decoder."] and fine["tokenunify"].settings.init_keep_fresh == []
    assert fine["enconly"].needs == fine["tokenunify"].needs
    stage = fine["tokenunify"]
    before = runner.fingerprint(stage)
    # what the fingerprint hashed before the field existed
    old = to_dict(stage.settings)
    old.pop("out_dir")
    old.pop("init_keep_fresh")
    old["train"].pop("balance_clip")
    old["init"] = stage.needs
    assert before == hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert runner.fingerprint(fine["enconly"]) != before


def test_nested_field_added_later_hashes_only_when_changed(tmp_path):
    """`train.balance_clip` at its default leaves the fingerprint alone; another value changes it."""
    arms = [{"name": "scratch"}, {"name": "plain", "finetune_overrides": ["train.balance_clip=[0.5,0.5]"]}]
    fine = {s.arm: s for s in plan_study(_arms(tmp_path, arms)) if s.kind == "finetune" and s.budget == "scarce"}
    assert tuple(fine["plain"].settings.train.balance_clip) == (0.5, 0.5)
    old = to_dict(fine["scratch"].settings)
    old.pop("out_dir")
    old.pop("init_keep_fresh")
    old["train"].pop("balance_clip")
    assert runner.fingerprint(fine["scratch"]) == hashlib.sha256(
        json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert runner.fingerprint(fine["plain"]) != runner.fingerprint(fine["scratch"])


def test_bad_overrides_are_config_errors_naming_the_arm(tmp_path):
    with pytest.raises(ConfigError, match="arms.bad.finetune_overrides.*stepz"):
        plan_study(_arms(tmp_path, [{"name": "bad", "finetune_overrides": ["train.stepz=3"]}]))
    with pytest.raises(ConfigError, match="arms.bad.finetune_overrides: override 'train.steps.x=1'"):
        plan_study(_arms(tmp_path, [{"name": "bad", "finetune_overrides": ["train.steps.x=1"]}]))
    with pytest.raises(ConfigError, match="'bad'.*key=value"):
        _arms(tmp_path, [{"name": "bad", "finetune_overrides": ["train.steps"]}])
    with pytest.raises(ConfigError, match="'bad'.*need a pretraining schedule"):
        _arms(tmp_path, [{"name": "bad", "pretrain_overrides": ["train.steps=3"]}])
    with pytest.raises(ConfigError, match="paired_refs names unknown arm"):
        _arms(tmp_path, [{"name": "scratch"}], paired_refs=["tokenunify"])
    # keys the study sets per run would be overwritten silently: refused
    with pytest.raises(ConfigError, match="'bad': pretrain_overrides may not set model.preset"):
        _arms(tmp_path, [{"name": "bad", "schedule": STAGED, "pretrain_overrides": ["model.preset=small"]}])
    with pytest.raises(ConfigError, match="'bad': finetune_overrides may not set train.seed, init"):
        _arms(tmp_path, [{"name": "bad", "finetune_overrides": ["train.seed=3", "init=x.pt", "train.lr=0.1"]}])
    with pytest.raises(ConfigError, match="'bad': pretrain_from names 'scratch', which is not an arm with a"):
        _arms(tmp_path, [{"name": "scratch"}, {"name": "bad", "pretrain_from": "scratch"}])
    with pytest.raises(ConfigError, match="'bad': an arm with pretrain_from uses that arm's pretraining"):
        _arms(tmp_path, [{"name": "t", "schedule": STAGED},
                         {"name": "bad", "pretrain_from": "t", "pretrain_steps_scale": 2.0}])


def test_a_config_with_a_bad_override_names_its_file(tmp_path):
    raw = _raw(tmp_path, arms=[{"name": "bad", "finetune_overrides": ["train.stepz=3"]}], curve={"arms": []})
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="bad.yaml: arms.bad.finetune_overrides"):
        load_study(config, [], quick=False)


def test_quick_runs_in_a_folder_of_its_own(tmp_path):
    raw = _raw(tmp_path, arms=[{"name": "scratch"}, {"name": "t", "schedule": STAGED, "pretrain_steps_scale": 2.0}],
               curve={"arms": []}, quick=["pretrain.train.steps=3", "finetune.train.steps=1"])
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump(raw))
    quick = load_study(config, [], quick=True)
    assert quick.out_dir == f"{raw['out_dir']}_quick" and quick.report_dir == f"{raw['out_dir']}_quick/report"
    assert load_study(config, ["out_dir=elsewhere"], quick=True).out_dir == "elsewhere"
    # the steps scale follows the quick budget
    assert [s.settings.train.steps for s in plan_study(quick) if s.kind == "pretrain"] == [6]
    raw["quick"].append("out_dir=mine")
    config.write_text(yaml.safe_dump(raw))
    assert load_study(config, [], quick=True).report_dir == "mine/report"


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
    assert study.budgets == default.budgets
    # apart from what the investigation ran with (pinned so its stages keep their fingerprints), the
    # default's fine-tuning
    tuned, base = to_dict(study.finetune), to_dict(default.finetune)
    assert (tuned["train"].pop("steps"), base["train"].pop("steps")) == (400, 1200)
    assert (tuned["train"].pop("encoder_lr_scale"), base["train"].pop("encoder_lr_scale")) == (1.0, 3.0)
    assert "HistogramQuantileAffinity" in tuned["segment"].pop("scoring")
    assert "MeanAffinity" in base["segment"].pop("scoring")
    coarse, fine = tuned["segment"].pop("thresholds"), base["segment"].pop("thresholds")
    assert set(coarse) < set(fine) and 0.65 in fine and 0.65 not in coarse
    assert tuned == base
    assert study.out_dir != default.out_dir and study.report_dir != default.report_dir
    stages = plan_study(study)
    # one pretraining per arm with a schedule of its own; the arms that share another's have none
    pre = [s for s in stages if s.kind == "pretrain"]
    assert {s.arm for s in pre} == {a.name for a in study.arms if a.schedule is not None}
    sharing = [a for a in study.arms if a.pretrain_from]
    assert sharing and len(pre) == sum(1 for a in study.arms if a.pretrained) - len(sharing)
    # apart from its length, the shared pretraining config is the default study's
    shared, base = to_dict(study.pretrain), to_dict(default.pretrain)
    shared["train"].pop("steps"), base["train"].pop("steps")
    assert shared == base
    steps = {s.arm: s.settings.train.steps for s in pre}
    # 4x the 2026-12-02 study's 400 steps, as the default now pretrains; twice the other arms'
    assert steps["tokenunify_4x"] == 2 * steps["tokenunify"] == default.pretrain.train.steps == 1600


def test_the_report_lists_each_arms_overrides():
    from tokenunify.study.report import _override_lines

    config = {"arms": [{"name": "scratch"}, {"name": "long", "pretrain_overrides": ["train.steps=8"]},
                       {"name": "shared", "pretrain_from": "long"}, {"name": "x2", "pretrain_steps_scale": 2.0},
                       {"name": "enc", "finetune_overrides": ["train.encoder_lr_scale=0.3", "train.warmup_steps=0"]}]}
    lines = _override_lines(config)
    assert "- `long` differs from the shared config in its pretraining `train.steps=8`" in lines
    assert "- `enc` differs from the shared config in its fine-tuning `train.encoder_lr_scale=0.3, train.warmup_steps=0`" in lines
    assert "- `shared` differs from the shared config in its pretraining (none of its own: it fine-tunes from `long`'s)" in lines
    assert "- `x2` differs from the shared config in its pretraining steps (x 2)" in lines
    assert not any("scratch" in line for line in lines)
