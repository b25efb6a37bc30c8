"""`pretrain` end to end on synthetic volumes: files, resume, errors, fine-tuning from it."""

from __future__ import annotations

import pytest
import torch

from tokenunify.config import from_dict
from tokenunify.data.synthetic import make_synthetic_volume
from tokenunify.errors import ConfigError
from tokenunify.finetune.settings import TrainSettings
from tokenunify.finetune.train import train
from tokenunify.io import write_volume
from tokenunify.io.checkpoint import load_checkpoint
from tokenunify.pretrain.loop import pretrain
from tokenunify.pretrain.settings import PretrainSettings


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    a = make_synthetic_volume((16, 48, 48), (10, 10, 10), seed=1)
    b = make_synthetic_volume((20, 40, 56), (8, 8, 8), seed=2)
    write_volume(f"{folder}/a.h5:raw", a.raw, a.voxel_size)
    write_volume(f"{folder}/b.zarr:raw", b.raw, b.voxel_size)
    write_volume(f"{folder}/a.h5:labels", a.labels, a.voxel_size)
    return folder


def settings(volumes, out_dir, steps=4, **extra) -> PretrainSettings:
    return from_dict(PretrainSettings, {
        "data": {"volumes": [f"{volumes}/a.h5:raw", f"{volumes}/b.zarr:raw"]},
        "model": {"preset": "tiny", "mixer": "vit", "anisotropic": False},
        "train": {"steps": steps, "batch_size": 1, "crop": [16, 32, 32], "bf16": False, "checkpoint_every": 2, "preview_every": 2},
        "schedule": {"kind": "staged", "objectives": ["random", "next", "next_all"], "shares": [0.5, 0.25, 0.25]},
        "augment": {"rotate_prob": 0.0, "elastic_prob": 0.0, "isotropic": True},
        "out_dir": str(out_dir),
        **extra,
    })


def test_run_resume_and_files(volumes, tmp_path, monkeypatch):
    straight = pretrain(settings(volumes, tmp_path / "a"), progress=False)
    assert straight["steps"] == 4 and set(straight["loss_by_objective"]) == {"random", "next", "next_all"}
    for name in ("preview_step0.png", "preview_random.png", "preview_next_all.png", "loss_per_objective.png", "config.yaml"):
        assert (tmp_path / "a" / name).exists(), name
    from tokenunify.pretrain import loop as loop_module

    real_batch = loop_module.UnlabeledCrops.batch
    calls = {"n": 0}

    def dies_at_step_3(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the step-0 preview draws one batch first
            raise KeyboardInterrupt("killed")
        return real_batch(self, *args, **kwargs)

    monkeypatch.setattr(loop_module.UnlabeledCrops, "batch", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(settings(volumes, tmp_path / "b"), progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 2
    pretrain(settings(volumes, tmp_path / "b"), resume=True, progress=False)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert [h["objective"] for h in a["history"]] == [h["objective"] for h in b["history"]]
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-4)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][name], rtol=1e-4, atol=1e-5)


def test_config_errors(volumes, tmp_path):
    with pytest.raises(ConfigError, match="unknown objective 'magic'"):
        pretrain(settings(volumes, tmp_path / "x", schedule={"kind": "single", "objectives": ["magic"], "shares": [1.0]}), progress=False)
    bad = settings(volumes, tmp_path / "y")
    bad.train.crop = (16, 40, 40)
    with pytest.raises(ConfigError, match="divisible"):
        pretrain(bad, progress=False)


def test_fine_tune_from_pretrained(volumes, tmp_path, capsys, monkeypatch):
    pretrain(settings(volumes, tmp_path / "pre", steps=2), progress=False)
    fine = from_dict(TrainSettings, {
        "data": {"raw": f"{volumes}/a.h5:raw", "labels": f"{volumes}/a.h5:labels", "train_z": [0, 16]},
        "model": {"name": "tokenunify", "preset": "tiny", "mixer": "vit", "anisotropic": False},
        "train": {"steps": 2, "batch_size": 1, "crop": [16, 32, 32], "bf16": False},
        "augment": {"rotate_prob": 0.0, "elastic_prob": 0.0},
        "init": str(tmp_path / "pre" / "checkpoints" / "last.pt"),
        "out_dir": str(tmp_path / "fine"),
    })
    from tokenunify.finetune import train as train_module

    printed_before_first_step = []
    real_make_batch = train_module.make_batch

    def first_batch(*args, **kwargs):
        if not printed_before_first_step:
            printed_before_first_step.append(capsys.readouterr().out)
        return real_make_batch(*args, **kwargs)

    monkeypatch.setattr(train_module, "make_batch", first_batch)
    summary = train(fine, progress=False)
    assert "initialised from" in printed_before_first_step[0] and "head re-initialised" in printed_before_first_step[0]
    report = summary["init"]
    assert len(report["loaded"]) > 50
    assert report["fresh"] == ["decoder.head.bias", "decoder.head.weight"]
    assert {"mask_token"} <= set(report["unused"])
    # a resumed call loads the run's own checkpoint, yet its summary still says what the first call loaded
    from tokenunify.finetune.train import init_report

    assert init_report(fine) == report
    assert train(fine, resume=True, progress=False)["init"] == report
    # the fine-tuned run started from the pretrained encoder: its step-0 weights are the checkpoint's
    pre = load_checkpoint(tmp_path / "pre" / "checkpoints" / "last.pt")["model"]
    from tokenunify.finetune.init import load_pretrained
    from tokenunify.finetune.train import HEAD_PREFIXES, model_spec
    from tokenunify.models.registry import build_model

    fresh = build_model(model_spec(fine))
    load_pretrained(fresh, fine.init, head_prefixes=HEAD_PREFIXES, offsets=fine.model.offsets)
    encoder = [n for n in report["loaded"] if n.startswith("encoder.")]
    assert len(encoder) > 40
    for name in encoder:
        assert torch.equal(fresh.state_dict()[name], pre[name]), name
    # and differs from a network built from scratch with the same seed
    torch.manual_seed(0)
    scratch = build_model(model_spec(fine)).state_dict()
    assert any(not torch.equal(scratch[n], pre[n]) for n in encoder if scratch[n].is_floating_point())
