"""Shape contract, size and trainability of the residual 3D U-Net."""

from __future__ import annotations

import pytest
import torch

from tokenunify.models.unet import DEFAULT_WIDTH, UNet3D, build_unet, count_parameters


def test_default_model_size_and_factor() -> None:
    model = build_unet()
    assert isinstance(model, UNet3D)
    assert model.width == DEFAULT_WIDTH
    n = count_parameters(model)
    assert n == 1_529_187
    assert 1_200_000 <= n <= 1_800_000
    assert model.downsample_factor == (4, 16, 16)
    assert build_unet(anisotropic=False).downsample_factor == (16, 16, 16)


def test_output_shape_is_input_shape() -> None:
    torch.manual_seed(0)
    model = build_unet().eval()
    x = torch.rand(2, 1, 8, 32, 48)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (2, 3, 8, 32, 48)
    assert y.dtype == torch.float32 and y.is_contiguous()
    assert torch.isfinite(y).all()


def test_custom_channels_and_width() -> None:
    model = build_unet(in_channels=2, out_channels=6, width=(4, 8, 8), channels_last=False).eval()
    assert model.downsample_factor == (4, 4, 4)  # level 0 anisotropic, two iso levels
    with torch.inference_mode():
        y = model(torch.rand(1, 2, 4, 8, 12))
    assert y.shape == (1, 6, 4, 8, 12)
    single = build_unet(width=(4,))
    assert single.downsample_factor == (1, 1, 1)
    assert single(torch.rand(1, 1, 3, 5, 7)).shape == (1, 3, 3, 5, 7)


@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 6, 32, 32),  # z not a multiple of 4
        (1, 1, 8, 40, 32),  # y not a multiple of 16
        (1, 1, 8, 32, 33),  # x not a multiple of 16
        (1, 2, 8, 32, 32),  # wrong channel count
        (1, 8, 32, 32),  # 4D
    ],
)
def test_bad_shape_raises(shape: tuple[int, ...]) -> None:
    model = build_unet()
    with pytest.raises(ValueError):
        model(torch.rand(*shape))


def test_isotropic_variant() -> None:
    torch.manual_seed(0)
    model = build_unet(anisotropic=False, width=(8, 16, 16))
    assert model.downsample_factor == (4, 4, 4)
    kernels = {m.kernel_size for m in model.modules() if isinstance(m, torch.nn.Conv3d)}
    assert (1, 3, 3) not in kernels and (1, 5, 5) not in kernels
    y = model(torch.rand(1, 1, 8, 8, 8))
    assert y.shape == (1, 3, 8, 8, 8)


def test_backward_runs_fp32_and_bf16() -> None:
    torch.manual_seed(0)
    model = build_unet(width=(8, 16, 16)).train()
    x = torch.rand(2, 1, 8, 16, 16)
    target = (torch.rand(2, 3, 8, 16, 16) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), target)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem[0].weight.grad.abs().sum() > 0

    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), target)
    loss.backward()
    assert torch.isfinite(model.stem[0].weight.grad).all()


def test_channels_last_does_not_change_results() -> None:
    torch.manual_seed(0)
    a = build_unet(width=(8, 16), channels_last=False).eval()
    b = build_unet(width=(8, 16), channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 1, 4, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-4)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError):
        build_unet(width=())
    with pytest.raises(ValueError):
        build_unet(norm="group")
