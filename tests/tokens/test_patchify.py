"""Tests for tokenunify.tokens.patchify."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenunify.tokens.patchify import (
    default_patch,
    patchify,
    per_patch_normalize,
    token_grid,
    unpatchify,
)

small = st.integers(min_value=1, max_value=3)


@settings(max_examples=60, deadline=None)
@given(
    b=small, c=small, pz=small, py=small, px=small, nz=small, ny=small, nx=small,
    seed=st.integers(0, 2**16),
)
def test_round_trip(b, c, pz, py, px, nz, ny, nx, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, nz * pz, ny * py, nx * px, generator=g)
    tokens = patchify(x, (pz, py, px))
    assert tokens.shape == (b, nz * ny * nx, c * pz * py * px)
    assert token_grid(x.shape, (pz, py, px)) == (nz, ny, nx)
    back = unpatchify(tokens, (pz, py, px), (nz, ny, nx), c)
    assert torch.equal(back, x)
    # The inverse also holds the other way round.
    assert torch.equal(patchify(back, (pz, py, px)), tokens)


def test_order_z_slowest_x_fastest():
    patch = (2, 3, 4)
    grid = (3, 2, 5)
    c = 2
    # Every voxel holds the linear index of its patch, plus a channel offset; a
    # token must then be constant and equal to its own sequence index.
    iz, iy, ix = torch.meshgrid(
        torch.arange(grid[0]).repeat_interleave(patch[0]),
        torch.arange(grid[1]).repeat_interleave(patch[1]),
        torch.arange(grid[2]).repeat_interleave(patch[2]),
        indexing="ij",
    )
    patch_index = (iz * grid[1] + iy) * grid[2] + ix
    x = torch.stack([patch_index, patch_index + 1000])[None].float()  # (1, C, D, H, W)
    tokens = patchify(x, patch)
    k_total = grid[0] * grid[1] * grid[2]
    per_channel = patch[0] * patch[1] * patch[2]
    for k in range(k_total):
        # Features are (c, z, y, x) with channel slowest.
        assert torch.all(tokens[0, k, :per_channel] == k)
        assert torch.all(tokens[0, k, per_channel:] == k + 1000)
    assert c * per_channel == tokens.shape[-1]


def test_within_token_feature_order():
    patch = (2, 2, 3)
    x = torch.arange(2 * 2 * 2 * 3, dtype=torch.float32).reshape(1, 2, 2, 2, 3)
    tokens = patchify(x, patch)
    # One patch covers the whole crop, so the token is the crop flattened in C order.
    assert tokens.shape == (1, 1, 24)
    assert torch.equal(tokens[0, 0], x.flatten())


def test_bad_shape_names_shapes():
    x = torch.zeros(1, 1, 5, 16, 16)
    with pytest.raises(ValueError, match=r"\(5, 16, 16\).*\(4, 16, 16\)"):
        patchify(x, (4, 16, 16))
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        patchify(torch.zeros(1, 8, 16, 16), (4, 16, 16))
    with pytest.raises(ValueError, match="patch"):
        patchify(torch.zeros(1, 1, 4, 4, 4), (0, 2, 2))
    with pytest.raises(ValueError, match="do not match"):
        unpatchify(torch.zeros(1, 7, 8), (2, 2, 2), (1, 2, 4), 1)


def test_paper_sizes():
    assert token_grid((16, 160, 160), (4, 16, 16)) == (4, 10, 10)  # the paper's 400 tokens
    assert default_patch((40, 4, 4)) == (4, 16, 16)
    assert default_patch((50.0, 5.0, 5.0)) == (4, 16, 16)
    assert default_patch((8, 8, 8)) == (8, 8, 8)
    assert default_patch((10, 8, 8)) == (8, 8, 8)
    with pytest.raises(ValueError):
        default_patch((0, 4, 4))


def test_per_patch_normalize():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 5, 64, generator=g) * 7 + 3
    tokens[0, 0] = 4.0  # a constant patch must not divide by zero
    out = per_patch_normalize(tokens)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0, 0], torch.zeros(64))
    rest = out.reshape(-1, 64)[1:]
    assert torch.allclose(rest.mean(-1), torch.zeros(9), atol=1e-5)
    assert torch.allclose(rest.var(-1, unbiased=False), torch.ones(9), atol=1e-4)
