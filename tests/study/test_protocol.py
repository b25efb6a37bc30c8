"""The study's protocol pieces by hand: curve bands, steps-to-match, the paired target, the U-Net arm."""

from __future__ import annotations

import pytest
from test_study import _raw, _row

from tokenunify.config import from_dict
from tokenunify.errors import ConfigError
from tokenunify.study import aggregate as agg
from tokenunify.study.plan import plan_study
from tokenunify.study.run_study import wall_time
from tokenunify.study.settings import StudySettings


def _curve(values, key="voi"):
    return [{"step": 50 * (i + 1), key: v} for i, v in enumerate(values)]


def test_curve_bands_and_steps_to_match():
    curves = {"scratch/scarce/s0": _curve([3.0, 2.5, 2.0, 1.8]), "scratch/scarce/s1": _curve([3.2, 2.7, 2.2, 2.0]),
              "tokenunify/scarce/s0": _curve([2.4, 1.9, 1.8, 1.7]), "tokenunify/scarce/s1": _curve([2.6, 2.1, 2.0, 1.7]),
              "mae/scarce/s0": _curve([3.0, 2.9, 2.8, 2.7])}
    bands = {b["arm"]: b for b in agg.curve_bands(curves)}
    assert bands["scratch"]["steps"] == [50, 100, 150, 200] and bands["scratch"]["mean"] == pytest.approx([3.1, 2.6, 2.1, 1.9])
    low, high = bands["tokenunify"]["ci95"][0]
    assert 2.4 - 1e-12 <= low <= high <= 2.6 + 1e-12
    assert bands["mae"]["ci95"] == [None] * 4  # one seed: no interval
    match = {m["arm"]: m for m in agg.steps_to_match(list(bands.values()))}
    # scratch ends at 1.9; tokenunify's mean is 2.5, 2.0, 1.9, 1.7 -> reaches it at step 150
    assert match["tokenunify"]["steps_to_match"] == 150 and match["tokenunify"]["fraction"] == pytest.approx(0.75)
    assert match["mae"]["steps_to_match"] is None
    # cross-fitted points are preferred where every point has one
    cf = agg.curve_bands({"scratch/scarce/s0": [{"step": 1, "voi": 1.0, "cf_voi": 1.5}]})
    assert cf[0]["metric"] == "cf_voi" and cf[0]["mean"] == [1.5]


def test_target_needs_the_paired_interval_below_zero():
    rows = []
    for seed, (s, m, t) in enumerate([(2.0, 1.8, 1.4), (2.2, 1.9, 1.5), (2.1, 1.7, 1.5)]):
        rows += [{**_row("scratch", "scarce", seed, s), "cf_voi": s, "cf_arand": 0.1},
                 {**_row("mae", "scarce", seed, m), "cf_voi": m, "cf_arand": 0.1},
                 {**_row("tokenunify", "scarce", seed, t), "cf_voi": t, "cf_arand": 0.1}]
    arms = ["scratch", "mae", "tokenunify"]
    summary = agg.summarize(rows, arms, ["scarce"], "tiny")
    assert agg.headline(rows) == "cf_voi" and summary[0]["headline"] == "cf_voi"
    paired = agg.paired_differences(rows, arms, ["scarce"], "tiny", metric="cf_voi")
    (check,) = agg.target_check(summary, paired)
    assert check["metric"] == "cf_voi" and check["mae"]["target_pct"] == 10.0 and check["scratch"]["target_pct"] == 20.0
    assert check["scratch"]["paired_below_zero"] and check["mae"]["paired_below_zero"] and check["holds"]
    # one seed where TokenUnify loses to MAE: the paired interval reaches above zero, the target fails
    rows[-1] = {**_row("tokenunify", "scarce", 2, 1.9), "cf_voi": 1.9, "cf_arand": 0.1}
    summary = agg.summarize(rows, arms, ["scarce"], "tiny")
    (check,) = agg.target_check(summary, agg.paired_differences(rows, arms, ["scarce"], "tiny", metric="cf_voi"))
    assert not check["mae"]["paired_below_zero"] and not check["holds"]


def test_unet_arm_trains_from_scratch_for_its_own_steps(tmp_path):
    raw = _raw(tmp_path, arms=[{"name": "scratch"}, {"name": "unet", "network": "unet", "finetune_steps_scale": 2.4}],
               curve={"arms": ["scratch", "unet"], "every": 1})
    stages = plan_study(from_dict(StudySettings, raw))
    unet = [s for s in stages if s.arm == "unet"]
    assert unet and all(s.settings.model.name == "unet" and s.settings.train.steps == 5 and s.needs is None
                        for s in unet)
    assert all(s.settings.model.name == "tokenunify" and s.settings.train.steps == 2
               for s in stages if s.arm == "scratch")
    with pytest.raises(ConfigError, match="unet arm trains from scratch"):
        from_dict(StudySettings, _raw(tmp_path, curve={"arms": []}, arms=[{"name": "u", "network": "unet",
                                                       "schedule": {"kind": "single", "objectives": ["random"]}}]))


def test_wall_time_counts_a_stopped_invocation_up_to_its_last_stage():
    records = [{"event": "end", "minutes": 5.0},  # from before invocations had ids
               {"event": "start", "id": "a"}, {"event": "progress", "id": "a", "minutes": 10.0},
               {"event": "progress", "id": "a", "minutes": 30.0},  # then killed
               {"event": "start", "id": "b"}, {"event": "progress", "id": "b", "minutes": 4.0},
               {"event": "end", "id": "b", "minutes": 6.5},
               {"event": "start", "id": "c"},  # killed before any stage finished
               {"event": "start", "id": "d", "report_only": True},
               {"event": "end", "id": "d", "minutes": 0.2, "report_only": True}]  # runs no stage: not counted
    assert wall_time(records) == (41.5, 3, 1)
