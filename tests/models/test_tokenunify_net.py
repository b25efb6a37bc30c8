"""TokenUnify network: shape contract, presets, pretrain/fine-tune compatibility, next-token head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tokenunify.finetune.init import load_pretrained
from tokenunify.io.checkpoint import save_checkpoint
from tokenunify.models.mixers import make_mixer, sincos_position_encoding
from tokenunify.models.next_head import CausalNextHead
from tokenunify.models.perceiver import PerceiverResampler
from tokenunify.models.registry import build_model
from tokenunify.models.tokenunify_net import (
    PRESETS,
    TokenUnifyNet,
    build_tokenunify,
    count_parameters,
    list_presets,
)
from tokenunify.tokens.patchify import patchify, token_grid

MIXERS = ("mamba", "vit")
# Small widths keep every test well under a second on one core.
SMALL: dict[str, Any] = {"stem_width": 4, "dims": (8, 16, 16, 24), "depths": (1, 1, 1, 1), "n_latents": 4}
# (anisotropic, input shape): the smallest crops divisible by each downsample factor, x made non-square.
SHAPES = {True: (2, 1, 4, 16, 32), False: (2, 1, 16, 16, 32)}


def _small(mixer: str, anisotropic: bool = True, **kw: Any) -> TokenUnifyNet:
    torch.manual_seed(0)
    return TokenUnifyNet(mixer=mixer, anisotropic=anisotropic, **{**SMALL, **kw})


@pytest.mark.parametrize("anisotropic", [True, False])
@pytest.mark.parametrize("mixer", MIXERS)
def test_forward_shape_and_backward(mixer: str, anisotropic: bool) -> None:
    model = _small(mixer, anisotropic)
    assert model.downsample_factor == ((4, 16, 16) if anisotropic else (16, 16, 16))
    shape = SHAPES[anisotropic]
    y = model(torch.randn(shape))
    assert y.shape == (shape[0], 3, *shape[2:])
    assert y.is_contiguous() and torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # every layer (bar bias-free corner cases) must actually be trained
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("weight")), "dead weights"


@pytest.mark.parametrize("mixer", MIXERS)
def test_tiny_preset_runs(mixer: str) -> None:
    torch.manual_seed(0)
    model = build_tokenunify("tiny", mixer=mixer)
    with torch.inference_mode():
        y = model(torch.randn(1, 1, 4, 16, 16))
    assert y.shape == (1, 3, 4, 16, 16)


def test_bf16_autocast_forward() -> None:
    model = _small("vit")
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        y = model(torch.randn(SHAPES[True]))
    assert y.shape == (2, 3, 4, 16, 32) and torch.isfinite(y.float()).all()


@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 6, 16, 16),  # z not a multiple of 4
        (1, 1, 4, 24, 16),  # y not a multiple of 16
        (1, 1, 4, 16, 17),  # x not a multiple of 16
        (1, 2, 4, 16, 16),  # wrong channel count
        (1, 4, 16, 16),  # 4D
    ],
)
def test_bad_shape_raises(shape: tuple[int, ...]) -> None:
    model = _small("vit")
    with pytest.raises(ValueError):
        model(torch.randn(*shape))
    with pytest.raises(ValueError):
        model.check_input_shape(shape)


def test_isotropic_rejects_anisotropic_crop() -> None:
    with pytest.raises(ValueError, match="downsample factor"):
        _small("vit", anisotropic=False).check_input_shape((1, 1, 4, 16, 16))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        build_tokenunify("huge")
    with pytest.raises(ValueError):
        TokenUnifyNet(mixer="rnn", **SMALL)
    with pytest.raises(ValueError):
        TokenUnifyNet(depths=(1, 1), **{k: v for k, v in SMALL.items() if k != "depths"})


# Paper sizes (EMmamba base 28M and the scaling study); tiny only has an upper bound.
TARGETS = {"base": 28e6, "100M": 100e6, "200M": 200e6, "500M": 500e6, "1B": 1e9}


def test_preset_parameter_counts() -> None:
    rows = list_presets()
    assert {(r["name"], r["mixer"]) for r in rows} == {(n, m) for n in PRESETS for m in MIXERS}
    for row in rows:
        n = row["parameters"]
        if row["name"] == "tiny":
            assert 1e6 < n < 3e6, row
        elif row["name"] == "micro":
            assert 0.5e6 < n < 1e6, row
        elif row["name"] in TARGETS:
            assert abs(n / TARGETS[row["name"]] - 1) <= 0.15, row
    # meta-device counting agrees with a real build
    real = count_parameters(build_tokenunify("tiny", mixer="vit"))
    assert real == next(r["parameters"] for r in rows if r["name"] == "tiny" and r["mixer"] == "vit")


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mixer", MIXERS)
def test_pretraining_and_finetuning_share_backbone(mixer: str) -> None:
    with torch.device("meta"):
        pre = build_tokenunify("base", mixer=mixer, out_channels=1, pretraining=True)
        fine = build_tokenunify("base", mixer=mixer, out_channels=3)
    pre_s, fine_s = _shapes(pre), _shapes(fine)
    backbone = {k for k in fine_s if k.startswith(("encoder.", "decoder.")) and not k.startswith("decoder.head.")}
    assert backbone and backbone == {k for k in pre_s if k.startswith(("encoder.", "decoder."))} - {
        "decoder.head.weight", "decoder.head.bias"
    }
    assert all(pre_s[k] == fine_s[k] for k in backbone)
    assert set(fine_s) - backbone == {"decoder.head.weight", "decoder.head.bias"}
    extra = {k.split(".")[0] for k in set(pre_s) - set(fine_s)}
    assert extra == {"mask_token", "perceiver", "next_head"}


def test_pretrained_checkpoint_loads_into_segmentation_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pre = build_tokenunify("tiny", out_channels=1, pretraining=True)
    spec = {"name": "tokenunify", "preset": "tiny", "out_channels": 1, "pretraining": True}
    path = save_checkpoint(tmp_path / "pre.pt", {"model_spec": spec, "model": pre.state_dict()})
    fine = build_tokenunify("tiny", out_channels=3)
    report = load_pretrained(fine, path, allow_mismatch=True)
    assert report["fresh"] == ["decoder.head.bias", "decoder.head.weight"]
    assert {k.split(".")[0] for k in report["unused"]} == {"mask_token", "perceiver", "next_head"}
    for name, value in fine.state_dict().items():
        if not name.startswith("decoder.head."):
            assert torch.equal(value, pre.state_dict()[name]), name


def test_registry_rebuilds_from_spec() -> None:
    spec = {"name": "tokenunify", "preset": "tiny", "mixer": "vit", "out_channels": 2, "depths": [1, 1, 1, 1]}
    model = build_model(spec)
    assert isinstance(model, TokenUnifyNet) and model.out_channels == 2 and model.encoder.depths == (1, 1, 1, 1)


def test_perceiver_and_head_shapes() -> None:
    torch.manual_seed(0)
    perceiver = PerceiverResampler(32, n_latents=8, depth=2)
    deep = torch.randn(2, 32, 2, 3, 5)
    latents = perceiver(deep)
    assert latents.shape == (2, 8, 32)
    assert perceiver(torch.randn(2, 11, 32)).shape == (2, 8, 32)
    assert PerceiverResampler(32, n_latents=4, context_dim=24)(torch.randn(3, 24, 1, 2, 2)).shape == (3, 4, 32)
    with pytest.raises(ValueError):
        perceiver(torch.randn(2, 16, 2, 3, 5))
    for mixer in MIXERS:
        head = CausalNextHead(32, token_features=64, mixer=mixer)
        out = head(torch.randn(2, 10, 64), torch.tensor([1, 7]), latents, torch.randn(10, 3))
        assert out.shape == (2, 10, 64)
        with pytest.raises(ValueError, match="prefix"):
            head(torch.randn(2, 10, 64), torch.tensor([1]), latents, torch.randn(10, 3))


def _pretrain_model(mixer: str, **kw: Any) -> TokenUnifyNet:
    return _small(mixer, out_channels=1, pretraining=True, **kw)


@pytest.mark.parametrize("context", ["perceiver", "features"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_predict_next_shapes_and_purity(mixer: str, context: str) -> None:
    model = _pretrain_model(mixer, next_context=context)
    x = torch.rand(2, 1, 8, 32, 32)
    k = int(torch.tensor(token_grid(x.shape, model.patch)).prod())
    tokens = patchify(x, model.patch)
    prefix = torch.tensor([1, k - 1])
    hidden = model.hide(x, torch.arange(k)[None] < prefix[:, None])
    with torch.no_grad():
        first = model.predict_next(hidden, tokens, prefix)
        model.predict_next(torch.rand(3, 1, 4, 16, 32), torch.rand(3, 2, 1024), 1)  # an unrelated call between
        again = model.predict_next(hidden, tokens, prefix)
        singles = torch.cat([model.predict_next(hidden[i : i + 1], tokens[i : i + 1], prefix[i : i + 1]) for i in range(2)])
    assert first.shape == (2, k, model.token_features)
    assert torch.equal(first, again), "state leaked between calls"
    torch.testing.assert_close(singles, first, rtol=1e-4, atol=1e-5)  # no batch coupling


@pytest.mark.parametrize("mixer", MIXERS)
def test_predict_next_gradient_never_reaches_a_token_from_its_own_on(mixer: str) -> None:
    model = _pretrain_model(mixer)
    x = torch.rand(1, 1, 8, 32, 32, requires_grad=True)
    k, n, t = 8, 2, 5
    hidden = model.hide(x, torch.arange(k)[None] < n)
    pred = model.predict_next(hidden, patchify(x, model.patch), torch.tensor([n]))
    pred[0, t].sum().backward()
    token_grad = patchify(x.grad, model.patch)[0].abs().amax(-1)
    assert (token_grad[t:] == 0).all(), "the prediction of token t depends on token t or later"
    assert (token_grad[:n] > 0).all(), "the prefix does not reach the prediction"
    assert (token_grad[n:t] > 0).all(), "the teacher-forced tokens n..t-1 do not reach the prediction"
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


def test_predict_next_errors() -> None:
    model = _pretrain_model("vit")
    x = torch.randn(SHAPES[True])
    tokens = patchify(x, model.patch)
    with pytest.raises(ValueError, match="prefix"):
        model.predict_next(x, tokens, 2)  # only 2 tokens: the prefix must leave one
    with pytest.raises(ValueError, match="prefix"):
        model.predict_next(x, tokens, torch.tensor([1, 1, 1]))
    with pytest.raises(RuntimeError):
        _small("vit").predict_next(x, tokens, 1)
    with pytest.raises(ValueError, match="next_context"):
        _pretrain_model("vit", next_context="pooled")


def test_token_positions_align_with_deepest_grid() -> None:
    aniso = _pretrain_model("vit")  # patch == downsample factor: centres are grid indices
    positions = aniso.token_positions((2, 1, 8, 32, 32))
    assert positions.shape == (8, 3)
    assert torch.equal(positions[[0, 7]], torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    iso = _small("vit", anisotropic=False, pretraining=True)  # 8^3 tokens on a 16^3 grid
    assert torch.allclose(iso.token_positions((1, 1, 16, 16, 16)), torch.full((8, 3), -0.25) + torch.tensor(
        [[z, y, x] for z in (0, 0.5) for y in (0, 0.5) for x in (0, 0.5)]))


def test_hide_uses_mask_token() -> None:
    model = _pretrain_model("vit")
    with torch.no_grad():
        model.mask_token.fill_(7.0)
    x = torch.randn(1, 1, 4, 16, 32)
    hidden = patchify(model.hide(x, torch.tensor([[True, False]])), model.patch)
    assert torch.equal(hidden[0, 0], patchify(x, model.patch)[0, 0])
    assert (hidden[0, 1] == 7.0).all()


@pytest.mark.parametrize("kind", MIXERS)
def test_mixers_keep_shape_on_odd_grids(kind: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 12, 3, 5, 7)
    assert make_mixer(kind, 12)(x).shape == x.shape
    assert make_mixer(kind, 12, kv_reduction=(2, 2, 2))(x).shape == x.shape
    with pytest.raises(ValueError):
        make_mixer("conv", 12)


def test_sincos_position_encoding() -> None:
    enc = sincos_position_encoding(torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), 20)
    assert enc.shape == (2, 20)
    assert (enc[:, 18:] == 0).all()  # 20 = 3 axes * 6 + 2 spare channels
    assert not torch.equal(enc[0], enc[1])
    with pytest.raises(ValueError):
        sincos_position_encoding(torch.zeros(1, 3), 4)
