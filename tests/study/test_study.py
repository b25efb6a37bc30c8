"""`tokenunify study`: the plan, the aggregation, resume/skip, and a tiny real run on synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from tokenunify.config import from_dict, to_dict
from tokenunify.data.synthetic import make_synthetic_volume
from tokenunify.errors import ConfigError, InputError, OutputError
from tokenunify.io import write_volume
from tokenunify.study import aggregate as agg
from tokenunify.study import runner
from tokenunify.study.plan import plan_study, tokens_per_pretraining
from tokenunify.study.run_study import load_study, study
from tokenunify.study.settings import FloorSettings, StudySettings


def _raw(folder, **extra) -> dict:
    return {
        "pretrain": {
            "data": {"volumes": [f"{folder}/u.h5:raw"]},
            "model": {"preset": "tiny", "mixer": "vit", "anisotropic": False},
            "train": {"steps": 2, "batch_size": 1, "crop": [16, 32, 32], "bf16": False, "checkpoint_every": 1,
                      "preview_every": 2},
            "augment": {"rotate_prob": 0.0, "elastic_prob": 0.0, "isotropic": True},
        },
        "finetune": {
            "data": {"raw": f"{folder}/l.h5:raw", "labels": f"{folder}/l.h5:labels", "val_z": [16, 32],
                     "test_raw": f"{folder}/t.h5:raw", "test_labels": f"{folder}/t.h5:labels"},
            "model": {"offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]},
            "train": {"steps": 2, "batch_size": 1, "crop": [16, 32, 32], "bf16": False, "checkpoint_every": 1},
            "augment": {"rotate_prob": 0.0, "elastic_prob": 0.0, "isotropic": True},
            "predict": {"block": [16, 32, 32], "overlap": [0, 8, 8], "bf16": False},
            "segment": {"thresholds": [0.3, 0.6], "cross_fit_parts": 2},
        },
        "arms": [{"name": "scratch"}, {"name": "mae", "schedule": {"kind": "single", "objectives": ["random"]}},
                 {"name": "tokenunify", "schedule": {"kind": "staged", "objectives": ["random", "next_all"],
                                                     "shares": [0.5, 0.5]}}],
        "budgets": [{"name": "scarce", "train_z": [0, 4]}, {"name": "full", "train_z": [0, 16]}],
        "seeds": [0],
        "curve": {"arms": ["scratch", "tokenunify"], "every": 1},
        "out_dir": str(folder / "study"),
        "report_dir": str(folder / "report"),
        **extra,
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    u = make_synthetic_volume((16, 48, 48), (10, 10, 10), seed=3)
    lab = make_synthetic_volume((32, 32, 32), (10, 10, 10), seed=4)
    write_volume(f"{folder}/u.h5:raw", u.raw, u.voxel_size)
    write_volume(f"{folder}/l.h5:raw", lab.raw, lab.voxel_size)
    write_volume(f"{folder}/l.h5:labels", lab.labels, lab.voxel_size)
    held_out = make_synthetic_volume((16, 24, 40), (10, 10, 10), seed=5)
    write_volume(f"{folder}/t.h5:raw", held_out.raw, held_out.voxel_size)
    write_volume(f"{folder}/t.h5:labels", held_out.labels, held_out.voxel_size)
    return folder


def test_plan_keeps_everything_but_the_compared_factor_equal(tmp_path):
    raw = _raw(tmp_path, seeds=[0, 1], scaling={"presets": ["small"], "arms": ["scratch", "tokenunify"],
                                                 "budget": "scarce", "seeds": [0]})
    stages = plan_study(from_dict(StudySettings, raw))
    pre = [s for s in stages if s.kind == "pretrain"]
    fine = [s for s in stages if s.kind == "finetune"]
    assert [s.key for s in pre] == ["pretrain/mae/tiny/s0", "pretrain/tokenunify/tiny/s0", "pretrain/tokenunify/small/s0"]
    assert len({tokens_per_pretraining(s.settings) for s in pre}) == 1  # same tokens for every arm
    assert len(fine) == 3 * 2 * 2 + 2
    assert stages.index(pre[-1]) < stages.index(fine[0])  # pretraining runs first
    for budget in ("scarce", "full"):
        for seed in (0, 1):
            group = [s for s in fine if s.budget == budget and s.seed == seed and s.part == "main"]
            configs = []
            for s in group:
                c = to_dict(s.settings)
                assert c["train"]["seed"] == seed and c["data"]["train_z"] == ([0, 4] if budget == "scarce" else [0, 16])
                assert (c["init"] is None) == (s.arm == "scratch")
                for key in ("init", "out_dir"):
                    c.pop(key)
                c["train"].pop("val_every")  # validation frequency only: training is unaffected
                configs.append(c)
            assert all(c == configs[0] for c in configs), "arms differ in more than init"
    scaling = [s for s in fine if s.part == "scaling"]
    assert {(s.arm, s.preset) for s in scaling} == {("scratch", "small"), ("tokenunify", "small")}
    assert next(s for s in scaling if s.arm == "tokenunify").needs == "pretrain/tokenunify/small/s0"


def test_settings_reject_inconsistent_studies(tmp_path):
    with pytest.raises(ConfigError, match="unique"):
        from_dict(StudySettings, _raw(tmp_path, arms=[{"name": "a"}, {"name": "a"}]))
    with pytest.raises(ConfigError, match="curve.arms names unknown arm"):
        from_dict(StudySettings, _raw(tmp_path, curve={"arms": ["nope"]}))
    with pytest.raises(ConfigError, match="scaling.budget"):
        from_dict(StudySettings, _raw(tmp_path, scaling={"presets": ["small"], "budget": "nope", "arms": ["scratch"]}))


def _row(arm, budget, seed, voi, arand=0.1):
    return {"arm": arm, "budget": budget, "seed": seed, "preset": "tiny", "voi_split": voi / 2, "voi_merge": voi / 2,
            "voi": voi, "arand": arand}


def test_summary_and_target_check_by_hand():
    rows = [_row("scratch", "scarce", 0, 2.0), _row("scratch", "scarce", 1, 2.2),
            _row("mae", "scarce", 0, 1.9), _row("mae", "scarce", 1, 1.9),
            _row("tokenunify", "scarce", 0, 1.4), _row("tokenunify", "scarce", 1, 1.5)]
    summary = agg.summarize(rows, ["scratch", "mae", "tokenunify"], ["scarce"], "tiny")
    tu = next(e for e in summary if e["arm"] == "tokenunify")
    assert tu["voi_mean"] == pytest.approx(1.45) and tu["voi_std"] == pytest.approx(np.std([1.4, 1.5], ddof=1))
    assert tu["voi_vs_scratch_pct"] == pytest.approx(100 * (1.45 - 2.1) / 2.1)
    assert tu["voi_vs_mae_pct"] == pytest.approx(100 * (1.45 - 1.9) / 1.9)
    (check,) = agg.target_check(summary)
    assert check["scratch"]["meets_target"] and check["scratch"]["beyond_spread"]
    assert check["mae"]["reduction_pct"] == pytest.approx(100 * 0.45 / 1.9) and check["mae"]["meets_target"]
    assert check["holds"]
    rows[4] = _row("tokenunify", "scarce", 0, 1.0)  # larger spread than the gap to MAE? gap 0.65, spread 0.28
    rows[5] = _row("tokenunify", "scarce", 1, 1.9)
    (check,) = agg.target_check(agg.summarize(rows, ["scratch", "mae", "tokenunify"], ["scarce"], "tiny"))
    assert check["mae"]["beyond_spread"] is False and not check["holds"]
    failures = agg.floor_check([_row("a", "b", 0, 2.5), _row("a", "b", 1, 1.0, arand=0.3), _row("a", "b", 2, 1.0)],
                               FloorSettings(voi=2.36, arand=0.197))
    assert [f["seed"] for f in failures] == [0, 1]
    assert not agg.all_finite([_row("a", "b", 0, math.nan)])


def test_floor_along_curve_by_hand():
    point = lambda step, voi, arand: {"step": step, "voi": voi, "arand": arand}
    curves = {"mae/scarce/s0": [point(2, 2.5, 0.1), point(4, 1.0, 0.1)],
              "mae/scarce/s1": [point(2, 1.0, 0.3), point(4, 1.0, 0.197), point(6, 1.0, 0.1)],
              "scratch/scarce/s0": [point(2, 1.0, 0.1)]}
    mae, scratch = agg.floor_along_curve(curves, FloorSettings(voi=2.36, arand=0.197))
    assert mae == {"arm": "mae", "budget": "scarce", "seeds": 2, "steps": [2, 4],
                   "arand_mean": [pytest.approx(0.2), pytest.approx(0.1485)], "misses": [2, 1]}
    assert scratch["misses"] == [0] and scratch["seeds"] == 1


def test_study_runs_resumes_and_reports(data, monkeypatch):
    config = data / "study.yaml"
    config.write_text(yaml.safe_dump(_raw(data)))
    report = study(config, [], progress=False)
    assert report["meta"]["stages_finished"] == report["meta"]["stages_planned"] == 2 + 6
    assert report["all_finite"] and len(report["runs"]) == 6
    loaded = {r["arm"]: r["init_loaded"] for r in report["runs"]}
    assert loaded["scratch"] is None and loaded["mae"] > 100 and loaded["tokenunify"] > 100
    for name in ("results.json", "results.md", "study_voi.png", "study_curve.png"):
        assert (data / "report" / name).exists(), name
    on_disk = json.loads((data / "report" / "results.json").read_text())
    assert {(r["arm"], r["budget"], r["seed"]) for r in on_disk["runs"]} == {
        (a, b, 0) for a in ("scratch", "mae", "tokenunify") for b in ("scarce", "full")}
    assert [p["step"] for p in on_disk["curves"]["tokenunify/scarce/s0"]] == [1, 2]
    assert "| scarce | tokenunify | 1 |" in (data / "report" / "results.md").read_text()
    text = (data / "report" / "results.md").read_text()
    assert "| scarce | tokenunify | scratch | 1 |" in text and "n/a (one seed)" in text  # paired, one seed
    assert "| pretrain/mae/tiny/s0 | mae | mae | 2 |" in text and "ran in this study" in text
    assert {(p["arm"], p["ref"]) for p in on_disk["paired"]} >= {("tokenunify", "scratch"), ("tokenunify", "mae")}
    # cross-fitted and held-out scores reach every run, and the arms are compared on the cross-fitted VOI
    for r in on_disk["runs"]:
        assert all(np.isfinite(r[k]) for k in ("cf_voi", "cf_arand", "test_voi", "test_arand")), r
    assert all(p["metric"] == "cf_voi" for p in on_disk["paired"]) and on_disk["target"][0]["metric"] == "cf_voi"
    assert "**VOI (cross-fit)**" in text and "held-out VOI" in text and "Held-out volume: `" in text
    assert {(m["arm"], m["budget"]) for m in on_disk["steps_to_match"]} == {("tokenunify", "scarce"),
                                                                            ("tokenunify", "full")}
    assert "Steps to match" in text
    # the config asks for fp32, and every stage says what it computed in
    assert on_disk["precision"] == {"fp32": 8} and "Precision of the finished stages: fp32 8." in text
    assert "Arms with their own overrides" not in text
    # training minutes (steps alone) are measured per run and are part of its wall minutes
    assert all(0 < r["train_minutes"] <= r["minutes"] for r in on_disk["runs"])
    assert "Equal minutes" not in text  # no arm of another network

    # A rerun trains nothing: every stage is found finished.
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(runner, "pretrain", must_not_run)
    monkeypatch.setattr(runner, "train", must_not_run)
    again = study(config, [], progress=False)
    assert again["runs"] == report["runs"] and again["meta"]["invocations"] == 2
    # A result written before `train_minutes` and the resumed runs' init report existed is
    # filled in from the run folder and the config, once: the file then holds both.
    root = Path(again["meta"]["resolved_config"]).parent
    mae_result = root / "finetune/mae/tiny/scarce/s0/result.json"
    legacy = json.loads(mae_result.read_text())
    expected = {k: legacy[k] for k in ("train_minutes", "init_loaded", "init_fresh")}
    del legacy["train_minutes"]
    mae_result.write_text(json.dumps({**legacy, "resumed": True, "init_loaded": None, "init_fresh": None}))
    stage = next(s for s in plan_study(load_study(config, [], quick=False)) if s.key == "finetune/mae/tiny/scarce/s0")
    filled = runner.read_result(root, stage)
    assert {k: filled[k] for k in expected} == expected
    assert {k: json.loads(mae_result.read_text())[k] for k in expected} == expected
    # A changed config is refused rather than mixed with the old results.
    with pytest.raises(OutputError, match="different config"):
        study(config, ["finetune.train.lr=0.5"], progress=False)
    # The refused invocation was stopped before its end, yet its start is on record.
    records = [json.loads(line) for line in (Path(again["meta"]["resolved_config"]).parent / "invocations.jsonl").read_text().splitlines()]
    events = [r for r in records if r["event"] != "progress"]
    assert [r["event"] for r in events] == ["start", "end", "start", "end", "start"]
    assert all(r["commit"] for r in events)
    # the first invocation logged its minutes after every stage it finished (a killed one keeps them)
    first = events[0]["id"]
    assert sum(r["event"] == "progress" and r["id"] == first for r in records) == report["meta"]["stages_finished"]


def test_killed_stage_resumes_from_its_checkpoint(data, monkeypatch, tmp_path):
    raw = _raw(data, arms=[{"name": "scratch"}], budgets=[{"name": "full", "train_z": [0, 16]}],
               curve={"arms": ["scratch"], "every": 1}, out_dir=str(tmp_path / "study"), report_dir=str(tmp_path / "report"))
    raw["finetune"]["train"]["steps"] = 3
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw))
    from tokenunify.finetune import train as train_module

    real = train_module.make_batch
    calls = {"n": 0}

    def dies_at_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "make_batch", dies_at_third_batch)
    with pytest.raises(KeyboardInterrupt):
        study(config, [], progress=False)
    monkeypatch.setattr(train_module, "make_batch", real)
    report = study(config, [], progress=False)
    result = json.loads((tmp_path / "study" / "finetune/scratch/tiny/full/s0/result.json").read_text())
    assert result["resumed"] and result["steps"] == 3 and report["runs"][0]["steps"] == 3


def test_parallel_workers_give_the_sequential_results(data, tmp_path):
    """Two worker processes of one thread each must reproduce a one-thread sequential run exactly."""
    import torch

    threads = torch.get_num_threads()
    reports = {}
    try:
        for workers in (1, 2):
            config = tmp_path / f"study{workers}.yaml"
            # one pretraining and the two fine-tuning runs, one of which has to wait for it
            config.write_text(yaml.safe_dump(_raw(
                data, workers=workers, out_dir=str(tmp_path / f"s{workers}"), report_dir=str(tmp_path / f"r{workers}"),
                arms=[{"name": "scratch"}, {"name": "mae", "schedule": {"kind": "single", "objectives": ["random"]}}],
                budgets=[{"name": "scarce", "train_z": [0, 4]}], curve={"arms": ["scratch", "mae"], "every": 1})))
            # the sequential reference runs with the one thread each worker gets
            torch.set_num_threads(1 if workers == 1 else 2)
            reports[workers] = study(config, [], progress=False)
    finally:
        torch.set_num_threads(threads)
    seq, par = reports[1], reports[2]
    assert par["meta"]["stages_finished"] == par["meta"]["stages_planned"] == 3
    loaded = {r["arm"]: r["init_loaded"] for r in par["runs"]}
    assert loaded == {r["arm"]: r["init_loaded"] for r in seq["runs"]} and loaded["scratch"] is None and loaded["mae"] > 100
    for a, b in zip(seq["runs"], par["runs"]):
        assert (a["arm"], a["budget"], a["seed"]) == (b["arm"], b["budget"], b["seed"])
        for metric in ("voi", "voi_split", "voi_merge", "arand", "threshold"):
            assert a[metric] == b[metric], (a["arm"], a["budget"], metric)
    assert par["curves"] == seq["curves"]
    assert "2 stages ran at a time" in (tmp_path / "r2" / "results.md").read_text()


def test_a_failing_worker_stage_is_raised_by_name(data, tmp_path):
    raw = _raw(data, arms=[{"name": "scratch"}], budgets=[{"name": "full", "train_z": [0, 16]}],
               curve={"arms": ["scratch"], "every": 1}, workers=2, out_dir=str(tmp_path / "study"),
               report_dir=str(tmp_path / "report"))
    raw["finetune"]["data"]["raw"] = f"{tmp_path}/missing.h5:raw"
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw))
    # a user error comes back from the worker as itself, naming the file
    with pytest.raises(InputError, match="missing.h5"):
        study(config, [], progress=False)


def test_user_errors_survive_pickling():
    import pickle

    for error in (InputError("a.h5:raw", "no such dataset"), OutputError("runs/x", "exists")):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error) and again.where == error.where


def test_a_worker_bug_is_raised_naming_the_stage(data, tmp_path):
    # an unknown preset reaches the model builder in the worker as a plain ValueError, not a user error
    raw = _raw(data, arms=[{"name": "mae", "schedule": {"kind": "single", "objectives": ["random"]}}],
               budgets=[{"name": "full", "train_z": [0, 16]}], curve={"arms": ["mae"], "every": 1}, workers=2,
               out_dir=str(tmp_path / "study"), report_dir=str(tmp_path / "report"))
    raw["pretrain"]["model"]["preset"] = "no_such_preset"
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(runner.StageFailed, match="pretrain/mae/no_such_preset/s0 failed.*no_such_preset"):
        study(config, [], progress=False)
    # the fine-tuning stage that needed it never started
    assert not (tmp_path / "study" / "finetune").exists()


def test_pretraining_is_paid_once(data, monkeypatch, tmp_path):
    from tokenunify.study.report import _pretraining_lines
    from tokenunify.study.run_study import load_study

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(_raw(data, out_dir=str(tmp_path / "a"), pretrain_cache=str(tmp_path / "cache"))))

    def pretraining(*overrides):
        settings = load_study(config, list(overrides), False)
        return settings, [s for s in plan_study(settings) if s.kind == "pretrain"]

    settings, stages = pretraining()
    first = runner.run_study(Path(settings.out_dir), stages, progress=False, cache=Path(settings.pretrain_cache))
    assert all("cached_from" not in r and r["pretrain_minutes"] > 0 for r in first)
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == len(stages) == 2

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached pretraining ran again")

    monkeypatch.setattr(runner, "pretrain", must_not_run)
    # another study folder, the same pretraining configs and data: copied from the cache
    settings_b, stages_b = pretraining(f"out_dir={tmp_path / 'b'}")
    said: list[str] = []
    second = runner.run_study(Path(settings_b.out_dir), stages_b, progress=False, log=said.append,
                              cache=Path(settings_b.pretrain_cache))
    assert [r["tokens_seen"] for r in second] == [r["tokens_seen"] for r in first]
    assert all(r["cached_from"].startswith(str(tmp_path / "cache")) for r in second)
    assert all("reused from" in line for line in said)
    for stage in stages_b:
        assert (tmp_path / "b" / stage.key / "checkpoints" / "last.pt").exists()
    report = {"meta": {}, "pretraining": [{"stage": r["key"], "arm": r["arm"], "tokens": r["tokens_seen"],
                                           "steps": r["steps"], "minutes": r["pretrain_minutes"],
                                           "cached_from": r.get("cached_from")} for r in second]}
    assert any("reused from the cache" in line for line in _pretraining_lines(report))
    # the same pretraining under another arm's name is reused, and labelled with this study's arm
    renamed = _raw(data, out_dir=str(tmp_path / "d"), pretrain_cache=str(tmp_path / "cache"))
    renamed["arms"][1]["name"] = "random_only"
    config_d = tmp_path / "d.yaml"
    config_d.write_text(yaml.safe_dump(renamed))
    stages_d = [s for s in plan_study(load_study(config_d, [], False)) if s.kind == "pretrain"]
    third = runner.run_study(tmp_path / "d", stages_d, progress=False, cache=tmp_path / "cache")
    assert [(r["arm"], r["cached_arm"], r["key"]) for r in third] == [
        ("random_only", "mae", "pretrain/random_only/tiny/s0"), ("tokenunify", "tokenunify", "pretrain/tokenunify/tiny/s0")]
    # a changed pretraining config is a new key: it must run
    _, stages_c = pretraining(f"out_dir={tmp_path / 'c'}", "pretrain.train.steps=3")
    with pytest.raises(AssertionError, match="ran again"):
        runner.run_study(tmp_path / "c", stages_c, progress=False, cache=tmp_path / "cache")


def test_cache_key_follows_the_data(tmp_path):
    from tokenunify.study.cache import cache_key

    volume = make_synthetic_volume((8, 32, 32), (10, 10, 10), seed=1)
    write_volume(f"{tmp_path}/u.h5:raw", volume.raw, volume.voxel_size)
    key = cache_key("abc", [f"{tmp_path}/u.h5:raw"])
    assert key == cache_key("abc", [f"{tmp_path}/u.h5:raw"]) != cache_key("abd", [f"{tmp_path}/u.h5:raw"])
    assert key != cache_key("abc", [f"{tmp_path}/u.h5:raw[0:4]"])
    write_volume(f"{tmp_path}/u.h5:raw", 255 - volume.raw, volume.voxel_size, overwrite=True)
    assert key != cache_key("abc", [f"{tmp_path}/u.h5:raw"])


def test_paired_differences_and_their_bootstrap():
    rows = [_row(arm, "scarce", seed, voi) for arm, seed, voi in
            [("scratch", 0, 2.0), ("scratch", 1, 1.8), ("scratch", 2, 2.2),
             ("tokenunify", 0, 1.5), ("tokenunify", 1, 1.4), ("tokenunify", 2, 1.6), ("mae", 0, 1.9)]]
    paired = agg.paired_differences(rows, ["scratch", "mae", "tokenunify"], ["scarce"], "tiny")
    tu = next(p for p in paired if p["arm"] == "tokenunify" and p["ref"] == "scratch")
    assert tu["seeds"] == [0, 1, 2] and tu["diffs"] == pytest.approx([-0.5, -0.4, -0.6])
    assert tu["mean"] == pytest.approx(-0.5) and tu["mean_pct"] == pytest.approx(-25.0)
    low, high = tu["ci95"]
    assert -0.6 - 1e-12 <= low <= high <= -0.4 + 1e-12 and tu["excludes_zero"]
    # one shared seed with MAE: a difference, no interval
    vs_mae = next(p for p in paired if p["arm"] == "tokenunify" and p["ref"] == "mae")
    assert vs_mae["seeds"] == [0] and vs_mae["ci95"] is None and vs_mae["excludes_zero"] is None
    # the vectorised bootstrap against a plain loop with the same draws
    values = [0.3, -0.1, 0.2, 0.5]
    rng = np.random.default_rng(0)
    picks = rng.integers(0, 4, size=(10_000, 4))
    loop = sorted(sum(values[i] for i in row) / 4 for row in picks.tolist())
    got = agg.bootstrap_interval(values)
    assert got == pytest.approx((np.percentile(loop, 2.5), np.percentile(loop, 97.5)))
    assert agg.bootstrap_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)


def test_training_minutes_come_from_the_step_seconds(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    assert runner.train_minutes(metrics) is None
    rows = [{"step": 1, "loss": 1.0, "seconds": 30.0}, {"step": 2, "loss": 0.9, "seconds": 90.0},
            {"val": {"step": 2, "voi": 1.0}}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert runner.train_minutes(metrics) == pytest.approx(2.0)


def test_equal_minutes_note_checks_the_other_network():
    from tokenunify.study.report_sections import equal_minutes_note

    def report(unet_minutes):
        summary = [{"budget": "scarce", "arm": "scratch", "train_minutes_mean": 4.0},
                   {"budget": "scarce", "arm": "tokenunify", "train_minutes_mean": 4.2},
                   {"budget": "scarce", "arm": "unet", "train_minutes_mean": unet_minutes}]
        arms = [{"name": "scratch"}, {"name": "tokenunify"},
                {"name": "unet", "network": "unet", "finetune_steps_scale": 1.5}]
        return {"summary": summary, "meta": {"config": {"arms": arms}}}

    # the reference is the mean of the TokenUnify-network arms, (4.0 + 4.2) / 2
    same = "\n".join(equal_minutes_note(report(4.51)))
    assert "4.51 min per run against 4.10 for the TokenUnify-network arms (1.10x): the same minutes within 15%" in same
    # 2.05 min against 4.1: the steps should have been doubled, 1.5 -> 3.0
    off = "\n".join(equal_minutes_note(report(2.05)))
    assert "(0.50x): **not** the same minutes" in off and "`finetune_steps_scale: 3.00`" in off
    assert equal_minutes_note(report(None)) == []
