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
