"""Checkpoints load weights-only (no code runs), save only loadable data, and old files convert."""

from __future__ import annotations

import math
import pathlib
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch

from tokenunify.errors import InputError
from tokenunify.io.checkpoint import load_checkpoint, save_checkpoint, to_checkpoint_data


class TouchOnLoad:
    """Unpickling this creates `marker`: a stand-in for a checkpoint that runs code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))


def realistic_payload() -> dict:
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 1, 4, 4, 4)).sum().backward()
    optimizer.step()
    rng = np.random.default_rng(0)
    rng.random(5)
    return {
        "model_spec": {"name": "unet", "width": 2},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 7,
        "history": [{"step": 1, "loss": 0.5, "skipped": False}, {"step": 2, "loss": 0.25, "grad_norm": float("inf")}],
        "val_history": [{"step": 2, "voi": np.float64(1.25), "arand": np.float32(0.5), "n_seg_ids": np.int64(12)}],
        "best_voi": math.inf,
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "mask_rng": torch.Generator().manual_seed(3).get_state(),
        "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]],
        "patch": (2, 4, 4),
        "nested": {"a": {"b": [None, True, "x"]}},
        "out_dir": pathlib.Path("runs/x"),
        "mean": np.array([0.5, 0.25]),
    }


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model_spec": {"name": "unet"}, "model": {}, "payload": TouchOnLoad(marker)}, path)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert "convert-checkpoint" in message and "could run code" in message
    assert "(getattr)" in message  # the refused global is named (a pickled method is getattr(Path, "touch"))
    assert not marker.exists()


def test_realistic_payload_round_trips_weights_only(tmp_path):
    payload = realistic_payload()
    path = save_checkpoint(tmp_path / "c.pt", payload)
    # The file itself must load with torch's weights-only unpickler, not just through our wrapper.
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert load_checkpoint(path).keys() == state.keys()
    assert state["format_version"] == 1 and state["step"] == 7
    model = tiny_model()
    model.load_state_dict(state["model"])
    for name, tensor in payload["model"].items():
        assert torch.equal(state["model"][name], tensor), name
    assert isinstance(state["model"], OrderedDict) and state["model"]._metadata == payload["model"]._metadata
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.load_state_dict(state["optimizer"])
    assert state["optimizer"]["param_groups"] == payload["optimizer"]["param_groups"]
    for index, slots in payload["optimizer"]["state"].items():
        for slot, value in slots.items():
            assert torch.equal(state["optimizer"]["state"][index][slot], value)
    assert state["numpy_rng"] == payload["numpy_rng"]
    assert state["numpy_rng"]["state"]["state"] > 2**64  # a 128-bit PCG64 int survives as an int
    resumed = np.random.default_rng(1)
    resumed.bit_generator.state = state["numpy_rng"]
    original = np.random.default_rng(1)
    original.bit_generator.state = payload["numpy_rng"]
    assert resumed.random() == original.random()
    assert torch.equal(state["torch_rng"], payload["torch_rng"]) and state["torch_rng"].dtype == torch.uint8
    assert torch.equal(state["mask_rng"], payload["mask_rng"])
    assert state["history"] == payload["history"] and state["history"][1]["grad_norm"] == math.inf
    row = state["val_history"][0]
    assert row == {"step": 2, "voi": 1.25, "arand": 0.5, "n_seg_ids": 12}
    assert type(row["voi"]) is float and type(row["arand"]) is float and type(row["n_seg_ids"]) is int
    assert state["best_voi"] == math.inf
    assert state["patch"] == (2, 4, 4) and state["nested"] == {"a": {"b": [None, True, "x"]}}
    assert state["out_dir"] == "runs/x"
    assert torch.equal(state["mean"], torch.tensor([0.5, 0.25], dtype=torch.float64))


@pytest.mark.parametrize("bad, where, kind", [
    ({"history": [{}, {}, {}, {"voi": {1, 2}}]}, "history[3].voi", "set"),
    ({"extra": object()}, "extra", "object"),
    ({"model_spec": {"mixer": TouchOnLoad(pathlib.Path("x"))}}, "model_spec.mixer", "TouchOnLoad"),
    ({"ids": np.array(["a", "b"])}, "ids", "numpy.ndarray"),
])
def test_save_refuses_what_would_not_load(tmp_path, bad, where, kind):
    path = tmp_path / "sub" / "c.pt"
    with pytest.raises(TypeError) as info:
        save_checkpoint(path, {"model_spec": {"name": "unet"}, "model": {"w": torch.ones(2)}, **bad})
    assert str(info.value).startswith(f"{where}: ") and kind in str(info.value)
    assert not (tmp_path / "sub").exists() or not any((tmp_path / "sub").iterdir())


def test_to_checkpoint_data_names_keys_and_counts_conversions():
    conversions: Counter = Counter()
    out = to_checkpoint_data({"a": [np.float64(1.0), np.int32(2)], np.int64(3): "k"}, conversions=conversions)
    assert out == {"a": [1.0, 2], 3: "k"} and all(type(k) is not np.int64 for k in out)
    assert conversions == {"numpy.float64 -> float": 1, "numpy.int32 -> int": 1, "numpy.int64 -> int": 1}
    with pytest.raises(TypeError, match=r"^optimizer\.state\[0\]\.step: "):
        to_checkpoint_data({"optimizer": {"state": {0: {"step": frozenset()}}}})


def test_corrupt_and_foreign_files_are_one_line_input_errors(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(InputError, match="no such checkpoint"):
        load_checkpoint(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all\n\n\x80garbage")
    with pytest.raises(InputError, match="not a readable checkpoint") as info:
        load_checkpoint(corrupt)
    assert "\n" not in str(info.value)
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, {"model_spec": {"name": "unet"}, "model": {"w": torch.ones(100)}})
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(InputError, match="not a readable checkpoint") as info:
        load_checkpoint(truncated)
    assert "\n" not in str(info.value) and "convert-checkpoint" not in str(info.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(InputError, match="no model_spec/model"):
        load_checkpoint(foreign)


def test_old_checkpoint_converts_through_the_cli(tmp_path, run_cli):
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    model = tiny_model()
    # What the previous code wrote: plain torch.save with numpy scalars from the validation sweep.
    torch.save({"format_version": 1, "model_spec": {"name": "unet"}, "model": model.state_dict(), "step": 3,
                "val_history": [{"step": 3, "voi": np.float64(0.75), "arand": np.float64(0.125)}],
                "best_voi": np.float64(0.75), "numpy_rng": np.random.default_rng(0).bit_generator.state}, old)
    with pytest.raises(InputError) as info:
        load_checkpoint(old)
    message = str(info.value)
    assert "\n" not in message and "convert-checkpoint" in message and "numpy" in message

    code, out, err = run_cli("convert-checkpoint", old, new)
    assert code == 0, err
    assert "wrote" in out and "3 numpy.float64 -> float" in out
    state = load_checkpoint(new)
    assert state["val_history"] == [{"step": 3, "voi": 0.75, "arand": 0.125}] and state["best_voi"] == 0.75
    assert type(state["best_voi"]) is float
    assert state["numpy_rng"] == np.random.default_rng(0).bit_generator.state
    for name, tensor in model.state_dict().items():
        assert torch.equal(state["model"][name], tensor)
    written = new.read_bytes()

    code, out, err = run_cli("convert-checkpoint", old, new)
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1
    assert new.read_bytes() == written
    code, out, err = run_cli("convert-checkpoint", old, new, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.pt", "old.pt"]


def test_convert_reports_missing_and_unconvertible_files(tmp_path, run_cli):
    code, out, err = run_cli("convert-checkpoint", tmp_path / "nope.pt", tmp_path / "new.pt")
    assert code == 2 and "no such checkpoint" in err and err.count("\n") == 1
    odd = tmp_path / "odd.pt"
    torch.save({"model_spec": {"name": "unet"}, "model": {}, "tags": {"a", "b"}}, odd)
    code, out, err = run_cli("convert-checkpoint", odd, tmp_path / "new.pt")
    assert code == 2 and "tags: set" in err and err.count("\n") == 1
    assert not (tmp_path / "new.pt").exists()
