"""`tokenunify demo`: the TokenUnify demo runs its small study end to end (here on a few steps)."""

from __future__ import annotations

import math

from tokenunify.demo import run_tokenunify_demo

FEW_STEPS = ["pretrain.train.steps=2", "pretrain.train.checkpoint_every=1", "pretrain.train.preview_every=2",
             "finetune.train.steps=2", "finetune.train.checkpoint_every=1", "curve.every=1",
             "finetune.segment.thresholds=[0.3,0.6]"]


def test_tokenunify_demo_pretrains_finetunes_and_compares(tmp_path, capsys):
    report = run_tokenunify_demo(tmp_path / "demo", progress=False, overrides=FEW_STEPS)
    arms = {e["arm"]: e for e in report["summary"]}
    assert set(arms) == {"scratch", "tokenunify"}
    assert all(math.isfinite(e["cf_voi_mean"]) and math.isfinite(e["cf_arand_mean"]) for e in arms.values())
    loaded = {r["arm"]: r["init_loaded"] for r in report["runs"]}
    assert loaded["scratch"] is None and loaded["tokenunify"] > 50  # the pretrained backbone was used
    out = capsys.readouterr().out
    assert "TokenUnify pretraining changes the VOI by" in out and "scratch" in out
    assert (tmp_path / "demo" / "report" / "results.md").exists()
    previews = list((tmp_path / "demo" / "study" / "finetune").glob("*/*/*/s0/val_preview.png"))
    assert len(previews) == 2


def test_a_bad_demo_override_fails_before_anything_is_written(tmp_path):
    import pytest

    from tokenunify.errors import ConfigError

    with pytest.raises(ConfigError, match="not of the form key=value"):
        run_tokenunify_demo(tmp_path / "demo", progress=False, overrides=["/some/folder"])
    with pytest.raises(ConfigError, match="demo overrides.pretrain.train: unknown key.*stepz"):
        run_tokenunify_demo(tmp_path / "demo", progress=False, overrides=["pretrain.train.stepz=3"])
    assert not (tmp_path / "demo").exists()
