"""SafeConv3d: right weight gradients under CPU bf16 autocast where plain Conv3d's are wrong."""

from __future__ import annotations

import torch

from tokenunify.models.safe_conv import SafeConv3d, needs_fp32


def _bf16_weight_grad(layer: torch.nn.Conv3d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.backward(g.to(y.dtype))
    return layer.weight.grad.clone()


def test_depth_two_weight_gradient_matches_fp32_reference():
    torch.manual_seed(0)
    layer = SafeConv3d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 2, 6, 6).bfloat16().float()
    g = torch.randn(2, 8, 2, 6, 6).bfloat16().float()
    got = _bf16_weight_grad(layer, x, g)
    ref = torch.nn.grad.conv3d_weight(x, layer.weight.shape, g, padding=1)
    assert torch.isfinite(got).all()
    assert float((got - ref).norm() / ref.norm()) < 1e-5  # computed in fp32: exact up to summation order


def test_other_depths_stay_in_bf16_and_agree():
    torch.manual_seed(1)
    layer = SafeConv3d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 4, 6, 6).bfloat16().float()
    g = torch.randn(2, 8, 4, 6, 6).bfloat16().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
        assert not needs_fp32(x, 3)
        assert needs_fp32(x[:, :, :2], 3) and not needs_fp32(x[:, :, :2], 1)
    assert not needs_fp32(x[:, :, :2], 3)  # no autocast, nothing to avoid
    got = _bf16_weight_grad(layer, x, g)
    ref = torch.nn.grad.conv3d_weight(x, layer.weight.shape, g, padding=1)
    assert float((got - ref).norm() / ref.norm()) < 1e-2


def test_forward_equals_plain_conv_in_fp32():
    torch.manual_seed(2)
    safe = SafeConv3d(4, 5, 3, padding=1)
    plain = torch.nn.Conv3d(4, 5, 3, padding=1)
    plain.load_state_dict(safe.state_dict())
    x = torch.randn(1, 4, 2, 5, 5)
    assert torch.equal(safe(x), plain(x))
