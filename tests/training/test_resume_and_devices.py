"""Resume refuses a changed config (naming the keys); device selection; one step on CUDA equals one on the CPU."""

from __future__ import annotations

import pytest
import torch

from tokenunify.config import from_dict
from tokenunify.errors import ConfigError
from tokenunify.finetune.settings import TrainSettings
from tokenunify.finetune.train import fine_tune_step, train
from tokenunify.models.registry import build_model
from tokenunify.training.devices import resolve_device
from tokenunify.training.resume import changed_keys


@pytest.fixture
def volume(small_labelled_volume):
    return small_labelled_volume


def settings(volume, out_dir, **train) -> TrainSettings:
    return from_dict(TrainSettings, {
        "data": {"raw": f"{volume}:raw", "labels": f"{volume}:labels", "train_z": [0, 8]},
        "model": {"width": [4, 8], "anisotropic": True, "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]},
        "train": {"steps": 2, "batch_size": 1, "crop": [4, 32, 32], "bf16": False, "checkpoint_every": 1, **train},
        "augment": {"rotate_prob": 0.0, "elastic_prob": 0.0},
        "out_dir": str(out_dir),
    })


def test_changed_config_is_refused_on_resume_naming_the_keys(volume, tmp_path):
    train(settings(volume, tmp_path / "r"), progress=False)
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.001 -> 0\.002; train\.steps: 2 -> 3") as err:
        train(settings(volume, tmp_path / "r", steps=3, lr=2e-3), resume=True, progress=False)
    assert "\n" not in str(err.value)
    # the thread count and the time limit cannot change the numbers: allowed
    summary = train(settings(volume, tmp_path / "r", threads=1, max_minutes=5.0), resume=True, progress=False)
    assert summary["steps"] == 2


def test_changed_keys_rules():
    stored = {"out_dir": "a", "train": {"steps": 10, "lr": 1e-3, "crop": [4, 8, 8], "threads": 2},
              "schedule": {"shares": [0.5, 0.5]}}
    current = {"out_dir": "b", "train": {"steps": 10, "lr": 0.001, "crop": (4, 8, 8), "threads": 1, "new_key": 3},
               "schedule": {"shares": [0.4, 0.6]}}
    # a moved folder, a thread count, a key the stored config predates and int/float/tuple spellings are no change
    assert changed_keys(stored, current) == [("schedule.shares", [0.5, 0.5], [0.4, 0.6])]


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CPU path is the tested default")
@pytest.mark.parametrize("mixer", ["vit", "mamba"])
def test_one_step_on_cuda_matches_the_cpu(mixer):
    """Loss and gradients of one fine-tuning step agree between devices (Mamba: mamba-ssm's kernel if installed)."""
    spec = {"name": "tokenunify", "preset": "tiny", "mixer": mixer, "in_channels": 1, "out_channels": 3,
            "anisotropic": False}
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(2, 1, 16, 32, 32, generator=g), (torch.rand(2, 3, 16, 32, 32, generator=g) > 0.5).float(),
             torch.rand(2, 3, 16, 32, 32, generator=g))
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions differ from fp32 by ~1e-3
    grads = {}
    for device in (torch.device("cpu"), torch.device("cuda")):
        torch.manual_seed(0)
        net = build_model(spec).to(device)
        out = fine_tune_step(net, batch, device, bf16=False)
        out.loss.backward()
        grads[device.type] = (float(out.loss), {n: p.grad.cpu() for n, p in net.named_parameters() if p.grad is not None})
    (cpu_loss, cpu_grads), (gpu_loss, gpu_grads) = grads["cpu"], grads["cuda"]
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4)
    assert cpu_grads.keys() == gpu_grads.keys()
    for name, grad in cpu_grads.items():
        scale = float(grad.abs().max()) + 1e-12
        assert float((grad - gpu_grads[name]).abs().max()) / scale < 2e-3, name


def test_rng_states_of_earlier_checkpoints_resume_as_rank_0(tmp_path):
    import numpy as np

    from tokenunify.errors import InputError
    from tokenunify.training.rng import Rngs, rank_states

    rng = np.random.default_rng(5)
    rng.random(3)
    legacy = {"numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
              "mask_rng": torch.Generator().manual_seed(9).get_state()}
    (state,) = rank_states(legacy, tmp_path / "old.pt", 1)
    restored = Rngs.seeded(0)
    restored.restore(state)
    assert restored.numpy.random() == rng.random()
    assert torch.equal(restored.generator.get_state(), torch.Generator().manual_seed(9).get_state())
    with pytest.raises(InputError, match="nproc_per_node 1"):
        rank_states(legacy, tmp_path / "old.pt", 2)
