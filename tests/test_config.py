"""YAML configs, key=value overrides and strict key checking."""

from __future__ import annotations

import pytest

from tokenunify.config import apply_overrides, from_dict, load_yaml
from tokenunify.errors import ConfigError
from tokenunify.finetune.settings import TrainSettings


def test_overrides_parse_yaml_values():
    cfg = apply_overrides({"train": {"steps": 10}}, ["train.steps=500", "train.bf16=false", "model.width=[4,8]", "out_dir=runs/x"])
    settings = from_dict(TrainSettings, cfg)
    assert settings.train.steps == 500 and settings.train.bf16 is False
    assert settings.model.width == (4, 8) and settings.out_dir == "runs/x"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="train.*stepz"):
        from_dict(TrainSettings, {"train": {"stepz": 3}})


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match="train.steps"):
        from_dict(TrainSettings, {"train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="segment.method"):
        from_dict(TrainSettings, {"segment": {"method": "magic"}})


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.steps"])


def test_data_variable_expands(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENUNIFY_DATA", str(tmp_path))
    settings = from_dict(TrainSettings, {"data": {"raw": "${TOKENUNIFY_DATA}/a.h5:raw"}})
    assert settings.data.raw == f"{tmp_path}/a.h5:raw"


def test_shipped_configs_load():
    """Every config in configs/ checks against its command's settings.

    pretrain_* belongs to `pretrain`, study_* to `study` (checked with and without its
    --quick overrides), the rest to `train`/`segment`.
    """
    from pathlib import Path

    from tokenunify.pretrain.settings import PretrainSettings
    from tokenunify.study.run_study import load_study

    paths = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))
    assert paths
    for path in paths:
        if path.name.startswith("study"):
            for quick in (False, True):
                assert load_study(path, [], quick).arms
        elif path.name.startswith("pretrain"):
            from_dict(PretrainSettings, load_yaml(path), str(path))
        else:
            from_dict(TrainSettings, load_yaml(path), str(path))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config"):
        load_yaml(tmp_path / "none.yaml")


def test_extends_merges_sections_and_replaces_lists(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {steps: 10, lr: 0.1, crop: [8, 8, 8]}\nseeds: [0, 1]\nout_dir: a\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrain: {steps: 20, crop: [4, 4]}\nseeds: [5]\n")
    loaded = load_yaml(tmp_path / "child.yaml")
    assert loaded == {"train": {"steps": 20, "lr": 0.1, "crop": [4, 4]}, "seeds": [5], "out_dir": "a"}


def test_extends_chain_is_relative_to_each_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("a: 1\nb: 1\n")
    (tmp_path / "sub" / "mid.yaml").write_text("extends: ../root.yaml\nb: 2\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("extends: mid.yaml\nc: 3\n")
    assert load_yaml(tmp_path / "sub" / "leaf.yaml") == {"a": 1, "b": 2, "c": 3}


def test_extends_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="[ab].yaml: `extends: [ab].yaml` makes a cycle"):
        load_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="c.yaml: `extends: missing.yaml` names no config file"):
        load_yaml(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [x.yaml]\n")
    with pytest.raises(ConfigError, match="d.yaml: `extends` must name one config file"):
        load_yaml(tmp_path / "d.yaml")
