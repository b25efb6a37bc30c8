"""Training loop: checkpoints, resume, run-folder safety, fine-tuning initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenunify.config import from_dict
from tokenunify.errors import ConfigError, InputError, OutputError
from tokenunify.finetune.init import load_pretrained
from tokenunify.finetune.settings import TrainSettings
from tokenunify.finetune.train import model_spec, train
from tokenunify.io.checkpoint import load_checkpoint, save_checkpoint
from tokenunify.models.registry import build_model


@pytest.fixture
def volume(small_labelled_volume):
    return small_labelled_volume


def tiny_settings(volume, out_dir, steps=4, **train) -> TrainSettings:
    return from_dict(TrainSettings, {
        "data": {"raw": f"{volume}:raw", "labels": f"{volume}:labels", "train_z": [0, 6], "val_z": [6, 8]},
        "model": {"width": [4, 8], "anisotropic": True, "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -4, 0]]},
        "train": {"steps": steps, "batch_size": 1, "crop": [4, 32, 32], "bf16": False, "checkpoint_every": 2, "val_every": 1000, **train},
        "augment": {"rotate_prob": 0.0, "elastic_prob": 0.0},
        "predict": {"block": [4, 32, 32], "overlap": [0, 8, 8], "bf16": False},
        "segment": {"thresholds": [0.3, 0.7]},
        "out_dir": str(out_dir),
    })


def test_run_writes_checkpoint_metrics_and_plot(volume, tmp_path):
    summary = train(tiny_settings(volume, tmp_path / "run"), progress=False)
    assert summary["steps"] == 4
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 4 and len(state["history"]) == 4
    assert state["config"]["train"]["steps"] == 4
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    assert (tmp_path / "run" / "config.yaml").exists()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) >= 4
    # validation at the last step produced scores and a best checkpoint
    assert summary["best_val"] is not None and np.isfinite(summary["best_val"]["voi"])
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_continues_exactly(volume, tmp_path, monkeypatch, ema_decay):
    """A run killed after its step-2 checkpoint and resumed ends where an unbroken run does."""
    from tokenunify.finetune import train as train_module

    straight = train(tiny_settings(volume, tmp_path / "a", steps=4, ema_decay=ema_decay), progress=False)
    real_make_batch = train_module.make_batch
    calls = {"n": 0}

    def dies_at_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_make_batch(*args, **kwargs)

    monkeypatch.setattr(train_module, "make_batch", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_settings(volume, tmp_path / "b", steps=4, ema_decay=ema_decay), progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 2
    resumed = train(tiny_settings(volume, tmp_path / "b", steps=4, ema_decay=ema_decay), resume=True, progress=False)
    assert straight["steps"] == resumed["steps"] == 4
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-5)
    for key in ("model", "online_model") if ema_decay else ("model",):
        for name, tensor in a[key].items():
            torch.testing.assert_close(tensor, b[key][name], rtol=1e-5, atol=1e-6)
    if ema_decay:
        assert a["ema_updates"] == b["ema_updates"] == 4


def test_ema_weights_are_validated_and_saved(volume, tmp_path, monkeypatch):
    """With ema_decay the checkpoint's "model" (what predict loads) is the average, not the last iterate."""
    from tokenunify.finetune import train as train_module
    from tokenunify.training.ema import WeightAverage

    validated = []
    real_validate = train_module.validate
    monkeypatch.setattr(train_module, "validate", lambda m, *a: validated.append(m) or real_validate(m, *a))
    train(tiny_settings(volume, tmp_path / "e", steps=4, ema_decay=0.5), progress=False)
    state = load_checkpoint(tmp_path / "e" / "checkpoints" / "last.pt")
    model = build_model(state["model_spec"])
    model.load_state_dict(state["online_model"])
    assert validated and all(m is not None for m in validated)
    reference = WeightAverage(model, 0.5)
    reference.load(state["model"], state["ema_updates"])
    torch.testing.assert_close(dict(validated[-1].state_dict()), dict(reference.state_dict()))
    differs = [not torch.equal(state["model"][k], state["online_model"][k]) for k in state["model"]]
    assert any(differs)


def test_ema_resume_of_a_plain_run_is_refused(volume, tmp_path):
    train(tiny_settings(volume, tmp_path / "p", steps=2), progress=False)
    with pytest.raises(ConfigError, match=r"train.ema_decay: None -> 0.9"):
        train(tiny_settings(volume, tmp_path / "p", steps=4, ema_decay=0.9), resume=True, progress=False)


def test_existing_run_is_protected(volume, tmp_path):
    train(tiny_settings(volume, tmp_path / "run", steps=2), progress=False)
    with pytest.raises(OutputError, match="--resume"):
        train(tiny_settings(volume, tmp_path / "run", steps=2), progress=False)
    with pytest.raises(InputError, match="nothing to resume"):
        train(tiny_settings(volume, tmp_path / "other", steps=2), resume=True, progress=False)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model_spec": {"name": "unet"}, "model": {"w": torch.ones(3)}})

    def crash(obj, target, *args, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model_spec": {"name": "unet"}, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_load_pretrained_reports_and_checks_shapes(volume, tmp_path):
    settings = tiny_settings(volume, tmp_path / "run")
    source = build_model(model_spec(settings))
    save_checkpoint(tmp_path / "src.pt", {"model_spec": model_spec(settings), "model": source.state_dict()})
    target = build_model(model_spec(settings))
    report = load_pretrained(target, tmp_path / "src.pt")
    assert len(report["loaded"]) == len(source.state_dict()) and not report["fresh"]
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor)
    # a head with another number of channels: an error unless explicitly allowed
    other = build_model({**model_spec(settings), "out_channels": 7})
    with pytest.raises(InputError, match="differ in shape"):
        load_pretrained(other, tmp_path / "src.pt")
    report = load_pretrained(other, tmp_path / "src.pt", allow_mismatch=True)
    assert report["mismatched"] and report["fresh"]


def test_balance_clip_sets_the_loss_weights(volume, tmp_path):
    """`train.balance_clip` reaches the batch weights: [0.5, 0.5] weighs every masked edge 1 (plain BCE)."""
    from tokenunify.finetune.affinities import balance_weights
    from tokenunify.finetune.train import make_batch, open_training_data

    plain = tiny_settings(volume, tmp_path / "a", balance_clip=[0.5, 0.5])
    balanced = tiny_settings(volume, tmp_path / "b")
    shape = tuple(plain.train.crop)
    batches = [make_batch(open_training_data(s, shape), s, np.random.default_rng(3)) for s in (plain, balanced)]
    (_, target, weight), (_, target_b, weight_b) = batches
    assert torch.equal(target, target_b)
    masked = weight > 0
    assert masked.any() and torch.all(weight[masked] == 1.0)
    assert torch.equal(masked, weight_b > 0)
    # the default clip gives the two classes equal totals per channel, as balance_weights does
    np.testing.assert_allclose(weight_b[0].numpy(),
                               balance_weights(target_b[0].numpy(), (weight_b[0] > 0).numpy()), rtol=1e-6)


def test_bad_balance_clip_is_refused(volume, tmp_path):
    with pytest.raises((ConfigError, ValueError), match="balance_clip"):
        tiny_settings(volume, tmp_path, balance_clip=[0.6, 0.4])
