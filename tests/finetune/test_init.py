"""Fine-tuning initialisation: the head is only loaded when it predicts the same thing, the rest must load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tokenunify.errors import InputError
from tokenunify.finetune.init import format_init_report, load_pretrained
from tokenunify.io.checkpoint import save_checkpoint
from tokenunify.models.registry import build_model

HEAD = ("decoder.head.", "head.")
NEAREST = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
UNET = {"name": "unet", "in_channels": 1, "out_channels": 3, "anisotropic": True, "width": (4, 8)}
NET = {"name": "tokenunify", "preset": "tiny", "mixer": "vit", "in_channels": 1, "out_channels": 1,
       "anisotropic": False}
PRE = {**NET, "pretraining": True}


def _build(spec: dict[str, Any], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec)


def _save(path: Path, spec: dict[str, Any], state: dict[str, torch.Tensor], **extra: Any) -> Path:
    return save_checkpoint(path, {"model_spec": spec, "model": state, **extra})


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A pretraining checkpoint (kind "pretrain", reconstruction head with 1 channel)."""
    state = _build(PRE, seed=1).state_dict()
    path = _save(tmp_path_factory.mktemp("pre") / "pre.pt", PRE, state, kind="pretrain")
    return path, state


def test_pretrained_backbone_loads_into_three_offset_model(pretrained) -> None:
    path, source = pretrained
    model = _build({**NET, "out_channels": 3}, seed=2)
    before = _snapshot(model)
    report = load_pretrained(model, path, head_prefixes=HEAD, offsets=NEAREST)
    after = model.state_dict()
    for name, value in after.items():
        if name.startswith("decoder.head."):
            assert torch.equal(value, before[name]), name
        else:
            assert torch.equal(value, source[name]), name
    assert report["source"] == "pretrain"
    assert report["fresh"] == report["head_reinitialised"] == ["decoder.head.bias", "decoder.head.weight"]
    assert "pretraining checkpoint" in report["head_reason"]
    assert not report["missing"] and not report["mismatched"] and not report["head_loaded"]
    assert {"mask_token", "perceiver", "next_head"} <= {k.split(".")[0] for k in report["unused"]}
    assert len(report["loaded"]) == len(after) - 2


def test_keep_fresh_transfers_the_encoder_alone(tmp_path: Path, pretrained) -> None:
    """`keep_fresh=("decoder.",)`: the encoder comes from the checkpoint, the decoder keeps its fresh init.

    The same as loading a copy of the checkpoint without its decoder tensors
    while allowing them to be missing (how the option was first tried).
    """
    path, source = pretrained
    model = _build({**NET, "out_channels": 3}, seed=2)
    before = _snapshot(model)
    report = load_pretrained(model, path, head_prefixes=HEAD, offsets=NEAREST, keep_fresh=("decoder.",))
    after = model.state_dict()
    decoder = sorted(n for n in after if n.startswith("decoder."))
    assert decoder and report["kept_fresh"] == decoder and report["fresh"] == decoder
    for name, value in after.items():
        assert torch.equal(value, before[name] if name.startswith("decoder.") else source[name]), name
    assert not report["missing"] and not report["mismatched"]
    assert "kept fresh by init_keep_fresh" in format_init_report(report)

    stripped = _save(tmp_path / "encoder_only.pt", PRE, {k: v for k, v in source.items() if not k.startswith("decoder.")},
                     kind="pretrain")
    other = _build({**NET, "out_channels": 3}, seed=2)
    load_pretrained(other, stripped, allow_mismatch=True, head_prefixes=HEAD, offsets=NEAREST)
    for name, value in other.state_dict().items():
        assert torch.equal(value, after[name]), name


def test_reconstruction_head_never_fills_single_offset_head(tmp_path: Path, pretrained) -> None:
    """Same shape (1 output channel), different meaning: the head must stay at its fresh init."""
    _, source = pretrained
    source = {k: torch.full_like(v, 7.0) if k.startswith("decoder.head.") else v for k, v in source.items()}
    path = _save(tmp_path / "pre.pt", PRE, source, kind="pretrain", offsets=[[-1, 0, 0]])  # even with offsets
    model = _build(NET, seed=2)
    fresh = _build(NET, seed=2).state_dict()  # the same init, built independently
    assert model.state_dict()["decoder.head.weight"].shape == source["decoder.head.weight"].shape
    report = load_pretrained(model, path, head_prefixes=HEAD, offsets=[[-1, 0, 0]])
    for name in ("decoder.head.weight", "decoder.head.bias"):
        assert torch.equal(model.state_dict()[name], fresh[name])
        assert not torch.equal(model.state_dict()[name], source[name])
        assert name not in report["loaded"]
    assert report["head_reinitialised"] == ["decoder.head.bias", "decoder.head.weight"]
    assert report["fresh"] == ["decoder.head.bias", "decoder.head.weight"]


def test_pretraining_spec_flag_alone_marks_a_pretraining_checkpoint(tmp_path: Path, pretrained) -> None:
    _, source = pretrained
    path = _save(tmp_path / "pre.pt", PRE, source, offsets=[[-1, 0, 0]])  # no "kind", but model_spec says so
    model = _build(NET, seed=2)
    report = load_pretrained(model, path, head_prefixes=HEAD, offsets=[[-1, 0, 0]])
    assert report["source"] == "pretrain"
    assert report["head_reinitialised"] == ["decoder.head.bias", "decoder.head.weight"]


@pytest.fixture()
def affinity(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A U-Net affinity checkpoint trained for the three nearest-neighbour offsets."""
    state = _build(UNET, seed=3).state_dict()
    return _save(tmp_path / "aff.pt", UNET, state, offsets=NEAREST), state


def test_affinity_head_loads_for_the_same_offsets(affinity) -> None:
    path, source = affinity
    model = _build(UNET, seed=4)
    report = load_pretrained(model, path, head_prefixes=HEAD, offsets=[tuple(o) for o in NEAREST])
    for name, value in model.state_dict().items():
        assert torch.equal(value, source[name]), name
    assert report["source"] == "affinity" and report["head_loaded"] == ["head.bias", "head.weight"]
    assert not report["fresh"] and not report["head_reinitialised"] and report["head_reason"] is None


@pytest.mark.parametrize("offsets, reason", [
    ([[0, 0, -1], [0, -1, 0], [-1, 0, 0]], "predicts offsets"),  # same set, other channel order
    ([[-1, 0, 0], [0, -1, 0], [0, 0, -3]], "predicts offsets"),
    (None, "were not given"),
])
def test_affinity_head_stays_fresh_for_other_or_unknown_offsets(affinity, offsets, reason) -> None:
    path, source = affinity
    model = _build(UNET, seed=4)
    before = _snapshot(model)
    report = load_pretrained(model, path, head_prefixes=HEAD, offsets=offsets)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name] if name.startswith("head.") else source[name]), name
    assert report["fresh"] == report["head_reinitialised"] == ["head.bias", "head.weight"]
    assert reason in report["head_reason"]


def test_affinity_checkpoint_without_offsets_keeps_head_fresh(tmp_path: Path, affinity) -> None:
    _, source = affinity
    path = _save(tmp_path / "old.pt", UNET, source)
    report = load_pretrained(_build(UNET, seed=4), path, head_prefixes=HEAD, offsets=NEAREST)
    assert report["head_reinitialised"] == ["head.bias", "head.weight"]
    assert "does not record" in report["head_reason"]


def test_missing_backbone_tensor_fails_unless_allowed(tmp_path: Path, pretrained) -> None:
    _, source = pretrained
    gone = next(name for name in source if name.startswith("encoder.") and name.endswith(".weight"))
    path = _save(tmp_path / "cut.pt", PRE, {k: v for k, v in source.items() if k != gone}, kind="pretrain")
    with pytest.raises(InputError) as err:
        load_pretrained(_build({**NET, "out_channels": 3}, seed=2), path, head_prefixes=HEAD, offsets=NEAREST)
    message = str(err.value)
    assert "\n" not in message and gone in message and "missing from the checkpoint" in message
    assert message.startswith(f"{path}: 1 tensor(s)") and "--allow-mismatch" in message

    model = _build({**NET, "out_channels": 3}, seed=2)
    before = _snapshot(model)
    report = load_pretrained(model, path, allow_mismatch=True, head_prefixes=HEAD, offsets=NEAREST)
    assert torch.equal(model.state_dict()[gone], before[gone])
    assert report["missing"] == [gone] and gone in report["fresh"] and gone not in report["loaded"]
    assert report["fresh"] == sorted([gone, "decoder.head.bias", "decoder.head.weight"])


def test_shape_mismatch_outside_head_fails_unless_allowed(tmp_path: Path, pretrained) -> None:
    _, source = pretrained
    name = next(n for n in source if n.startswith("decoder.") and not n.startswith("decoder.head.")
                and n.endswith(".weight") and source[n].ndim > 1)
    bad = dict(source)
    bad[name] = torch.zeros(tuple(s + 1 for s in source[name].shape))
    path = _save(tmp_path / "bad.pt", PRE, bad, kind="pretrain")
    with pytest.raises(InputError, match="differ in shape") as err:
        load_pretrained(_build({**NET, "out_channels": 3}, seed=2), path, head_prefixes=HEAD, offsets=NEAREST)
    assert "\n" not in str(err.value) and name in str(err.value)

    model = _build({**NET, "out_channels": 3}, seed=2)
    before = _snapshot(model)
    report = load_pretrained(model, path, allow_mismatch=True, head_prefixes=HEAD, offsets=NEAREST)
    assert torch.equal(model.state_dict()[name], before[name])
    assert [m.split(":")[0] for m in report["mismatched"]] == [name] and name in report["fresh"]


def test_many_missing_tensors_are_counted_on_one_line(tmp_path: Path, pretrained) -> None:
    _, source = pretrained
    gone = [n for n in source if n.startswith("encoder.")][:5]
    path = _save(tmp_path / "cut.pt", PRE, {k: v for k, v in source.items() if k not in gone}, kind="pretrain")
    with pytest.raises(InputError, match=r"5 tensor\(s\) .*\(\+2 more\)") as err:
        load_pretrained(_build(NET, seed=2), path, head_prefixes=HEAD, offsets=[[-1, 0, 0]])
    assert "\n" not in str(err.value) and sum(name in str(err.value) for name in gone) == 3


def test_nothing_matching_is_still_an_error(tmp_path: Path) -> None:
    path = _save(tmp_path / "foreign.pt", UNET, {"something.else": torch.ones(2)})
    with pytest.raises(InputError, match="no tensor of this checkpoint matches"):
        load_pretrained(_build(UNET, seed=0), path, allow_mismatch=True, head_prefixes=HEAD, offsets=NEAREST)


def test_format_init_report(tmp_path: Path, pretrained) -> None:
    path, source = pretrained
    report = load_pretrained(_build({**NET, "out_channels": 3}, seed=2), path, head_prefixes=HEAD, offsets=NEAREST)
    text = format_init_report(report)
    lines = text.splitlines()
    assert lines[0] == f"initialised from {path} (pretrain checkpoint): {len(report['loaded'])} tensors loaded"
    assert "head re-initialised: decoder.head.bias, decoder.head.weight" in text
    assert "fresh: 2 (decoder.head.bias, decoder.head.weight)" in text
    assert f"unused checkpoint tensors: {len(report['unused'])} (" in text and "more)" in text
    assert "allowed" not in text

    cut = _save(tmp_path / "cut.pt", PRE, {k: v for k, v in source.items() if k != "encoder.stem.conv1.weight"},
                kind="pretrain")
    allowed = load_pretrained(_build({**NET, "out_channels": 3}, seed=2), cut, allow_mismatch=True,
                              head_prefixes=HEAD, offsets=NEAREST)
    assert "missing from the checkpoint (allowed): 1 (encoder.stem.conv1.weight)" in format_init_report(allowed)

    aff = _build(UNET, seed=3).state_dict()
    loaded = load_pretrained(_build(UNET, seed=4), _save(tmp_path / "aff.pt", UNET, aff, offsets=NEAREST),
                             head_prefixes=HEAD, offsets=NEAREST)
    text = format_init_report(loaded)
    assert "head loaded from the checkpoint: head.bias, head.weight" in text
    assert "fresh: 0" in text and "unused checkpoint tensors: 0" in text
