"""The fine-tuning recipe: the encoder's own learning-rate scale and frozen phase, warm-up steps."""

from __future__ import annotations

import pytest
import torch

from tokenunify.config import from_dict
from tokenunify.errors import ConfigError
from tokenunify.finetune.settings import TrainSettings
from tokenunify.finetune.train import train
from tokenunify.io.checkpoint import load_checkpoint
from tokenunify.models.registry import build_model
from tokenunify.training.optim import build_optimizer, lr_of_group, parameter_groups, split_encoder
from tokenunify.training.step import cosine_lr


def _net() -> torch.nn.Module:
    return build_model({"name": "tokenunify", "preset": "micro", "mixer": "vit", "in_channels": 1, "out_channels": 3,
                        "anisotropic": True, "full_res": "lean"})


def test_split_keeps_every_parameter_once_and_the_decay_of_its_group():
    net = _net()
    groups = split_encoder(parameter_groups(net, 0.05))
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in net.named_parameters()) and len(set(names)) == len(names)
    for g in groups:
        assert all(n.startswith("encoder.") == (g["part"] == "encoder") for n in g["names"])
    assert {(g["part"], g["weight_decay"]) for g in groups} == {("encoder", 0.05), ("encoder", 0.0),
                                                                 ("rest", 0.05), ("rest", 0.0)}
    assert len(build_optimizer(net, 1e-3, 0.05).param_groups) == 2  # unsplit: as old checkpoints hold it
    assert len(build_optimizer(net, 1e-3, 0.05, split=True).param_groups) == 4


def test_group_learning_rates():
    enc, rest = {"part": "encoder"}, {"part": "rest"}
    assert lr_of_group(enc, 1e-3, 0, 0.1, 10) == 0.0 and lr_of_group(rest, 1e-3, 0, 0.1, 10) == 1e-3
    assert lr_of_group(enc, 1e-3, 10, 0.1, 10) == pytest.approx(1e-4)
    assert lr_of_group({}, 1e-3, 0, 0.1, 10) == 1e-3  # an unsplit group follows the schedule
    assert cosine_lr(0, 100, 1.0, 0.0, warmup=4) == 0.25 and cosine_lr(3, 100, 1.0, 0.0, warmup=4) == 1.0
    with pytest.raises(ConfigError, match="encoder_lr_scale"):
        from_dict(TrainSettings, {"train": {"encoder_lr_scale": -1.0}})


def test_a_frozen_encoder_stays_as_loaded_while_the_decoder_learns(small_labelled_volume, tmp_path):
    v = small_labelled_volume
    settings = from_dict(TrainSettings, {
        "data": {"raw": f"{v}:raw", "labels": f"{v}:labels", "train_z": [0, 8]},
        "model": {"name": "tokenunify", "preset": "micro", "mixer": "vit", "anisotropic": True, "full_res": "lean",
                  "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]},
        "train": {"steps": 3, "batch_size": 1, "crop": [4, 32, 32], "bf16": False, "checkpoint_every": 3,
                  "encoder_frozen_steps": 3, "encoder_lr_scale": 0.5, "warmup_steps": 1},
        "augment": {"rotate_prob": 0.0, "elastic_prob": 0.0},
        "out_dir": str(tmp_path / "run"),
    })
    torch.manual_seed(settings.train.seed)
    start = _net().state_dict()  # the loop builds its network from the same seed
    train(settings, progress=False)
    end = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(start[k], end[k]) for k in start if k.startswith("encoder."))
    assert any(not torch.equal(start[k], end[k]) for k in start if k.startswith("decoder."))
