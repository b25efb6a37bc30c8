"""Mamba mixer, block, stack and the multi-direction 3D module: shapes, gradients, directionality."""

from __future__ import annotations

import pytest
import torch

from tokenunify.models.mamba import MambaBlock, MambaMixer, MambaStack, MultiDirectionMamba
from tokenunify.models.scan import selective_scan_ref


def test_stack_shapes_and_backward() -> None:
    torch.manual_seed(0)
    model = MambaStack(16, 2, d_state=4)
    x = torch.randn(2, 23, 16, requires_grad=True)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.layers[0].mixer.A_log.grad.abs().sum() > 0


def test_mixer_chunked_scan_matches_reference_scan() -> None:
    torch.manual_seed(1)
    fast = MambaMixer(8, d_state=4)
    ref = MambaMixer(8, d_state=4, scan_fn=selective_scan_ref)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 19, 8)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-5)


def test_block_is_causal() -> None:
    torch.manual_seed(2)
    block = MambaBlock(8, d_state=4, norm="layer")
    x = torch.randn(1, 12, 8, requires_grad=True)
    block(x)[0, 5].sum().backward()
    assert x.grad[0, 6:].abs().max() == 0  # nothing from the future
    assert x.grad[0, :5].abs().max() > 0


def test_bf16_autocast_runs() -> None:
    model = MambaStack(16, 1, d_state=4)
    x = torch.randn(1, 10, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    y.float().sum().backward()
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("orders", [("zyx",), ("zyx", "zxy", "yxz")])
def test_multi_direction_shapes_on_odd_grid(share: bool, orders: tuple[str, ...]) -> None:
    torch.manual_seed(3)
    module = MultiDirectionMamba(8, orders=orders, share_weights=share, d_state=4)
    assert len(module.paths) == 2 * len(orders)
    assert len(module.mixers) == (1 if share else 2 * len(orders))
    x = torch.randn(2, 8, 3, 5, 7, requires_grad=True)  # L = 105, prime factors 3, 5, 7
    y = module(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_backward_direction_sees_the_future() -> None:
    torch.manual_seed(4)
    x = torch.randn(1, 8, 3, 5, 7, requires_grad=True)
    forward_only = MultiDirectionMamba(8, bidirectional=False, d_state=4)
    forward_only(x)[0, :, 0, 0, 0].sum().backward()
    # the first voxel in raster order only sees itself (plus the residual)
    grad = x.grad.clone()
    grad[0, :, 0, 0, 0] = 0
    assert grad.abs().max() == 0
    x.grad = None
    both = MultiDirectionMamba(8, bidirectional=True, d_state=4)
    both(x)[0, :, 0, 0, 0].sum().backward()
    assert x.grad[0, :, 2, 4, 6].abs().max() > 0  # the last voxel reaches the first


def test_orders_round_trip_and_differ() -> None:
    torch.manual_seed(5)
    x = torch.randn(1, 4, 2, 3, 4)
    m = MultiDirectionMamba(4, orders=("zyx", "yxz"), bidirectional=False, d_state=2)
    for axes, rev in m.paths:
        assert torch.equal(m._from_seq(m._to_seq(x, axes, rev), x.shape, axes, rev), x)
    raster = m._to_seq(x, m.paths[0][0], False)
    z_fast = m._to_seq(x, m.paths[1][0], False)
    assert torch.equal(raster[0, 1], x[0, :, 0, 0, 1])  # x fastest
    assert torch.equal(z_fast[0, 1], x[0, :, 1, 0, 0])  # z fastest
    with pytest.raises(ValueError, match="permutation"):
        MultiDirectionMamba(4, orders=("zzx",))


def test_causal_conv_matches_conv1d() -> None:
    torch.manual_seed(6)
    mixer = MambaMixer(8, d_state=4)
    x = torch.randn(2, 11, mixer.d_inner)
    ref = mixer.conv1d(torch.nn.functional.pad(x.transpose(1, 2), (mixer.d_conv - 1, 0))).transpose(1, 2)
    torch.testing.assert_close(mixer._causal_conv(x), ref)
