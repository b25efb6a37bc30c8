"""Cut (B, C, D, H, W) crops into sequences of non-overlapping 3D patch tokens.

The sequence order is z slowest, x fastest: token ``k = (iz * Ny + iy) * Nx + ix``
for patch grid position (iz, iy, ix) on a grid of (Nz, Ny, Nx) patches.  Within
a token the features are ordered (c, z, y, x), channel slowest, so a token is
the C x pz x py x px block flattened in C order.  The next-token objectives
depend on this order (a "prefix" is a run of whole z-slabs of patches first),
so it is part of the contract and tested.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "Patch",
    "patchify",
    "unpatchify",
    "token_grid",
    "default_patch",
    "per_patch_normalize",
    "ANISOTROPIC_PATCH",
    "ISOTROPIC_PATCH",
]

Patch = tuple[int, int, int]

#: The paper's patch for ssTEM-like data (40 x 4 x 4 nm): thin in z, wide in xy,
#: so a patch covers a roughly isotropic physical extent.
ANISOTROPIC_PATCH: Patch = (4, 16, 16)
#: Patch for FIB-SEM-like data, where voxels are (close to) cubes.
ISOTROPIC_PATCH: Patch = (8, 8, 8)


def _check_patch(patch: Sequence[int]) -> Patch:
    if len(patch) != 3 or any(int(p) != p or p < 1 for p in patch):
        raise ValueError(f"patch must be three positive integers (z, y, x), got {tuple(patch)}")
    return (int(patch[0]), int(patch[1]), int(patch[2]))


def token_grid(shape: Sequence[int], patch: Sequence[int]) -> Patch:
    """Number of patches (Nz, Ny, Nx) along z, y, x.

    Args:
        shape: a spatial shape (D, H, W) or any longer shape whose last three
            entries are spatial, e.g. a full (B, C, D, H, W) tensor shape.
        patch: patch size (pz, py, px).

    Raises:
        ValueError: when the spatial shape is not divisible by the patch.
    """
    pz, py, px = _check_patch(patch)
    if len(shape) < 3:
        raise ValueError(f"shape {tuple(shape)} has fewer than three (z, y, x) axes")
    d, h, w = (int(s) for s in shape[-3:])
    if d % pz or h % py or w % px or min(d, h, w) < 1:
        raise ValueError(
            f"spatial shape {(d, h, w)} (from shape {tuple(shape)}) is not divisible "
            f"by patch {(pz, py, px)}"
        )
    return (d // pz, h // py, w // px)


def patchify(x: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """Split a (B, C, D, H, W) tensor into (B, K, C*pz*py*px) patch tokens.

    K = Nz * Ny * Nx, ordered z slowest, x fastest (see the module docstring).

    Raises:
        ValueError: when ``x`` is not 5-D or D, H, W are not divisible by the patch.
    """
    if x.ndim != 5:
        raise ValueError(f"patchify expects a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")
    pz, py, px = _check_patch(patch)
    nz, ny, nx = token_grid(x.shape, (pz, py, px))
    b, c = x.shape[:2]
    blocks = x.reshape(b, c, nz, pz, ny, py, nx, px)
    # Grid axes first (in z, y, x order) so the flattened token index has z slowest;
    # then (c, pz, py, px) so each token is one contiguous block in C order.
    blocks = blocks.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return blocks.reshape(b, nz * ny * nx, c * pz * py * px)


def unpatchify(
    tokens: torch.Tensor, patch: Sequence[int], grid: Sequence[int], channels: int
) -> torch.Tensor:
    """Exact inverse of :func:`patchify`: (B, K, C*pz*py*px) -> (B, C, D, H, W).

    Args:
        tokens: patch tokens in the order :func:`patchify` produces.
        patch: patch size (pz, py, px).
        grid: token grid (Nz, Ny, Nx), as from :func:`token_grid`.
        channels: number of channels C.

    Raises:
        ValueError: when the token tensor does not match grid, patch and channels.
    """
    pz, py, px = _check_patch(patch)
    if len(grid) != 3 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid must be three positive integers (Nz, Ny, Nx), got {tuple(grid)}")
    nz, ny, nx = (int(g) for g in grid)
    expected = (nz * ny * nx, channels * pz * py * px)
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != expected:
        raise ValueError(
            f"tokens of shape {tuple(tokens.shape)} do not match (B, {expected[0]}, {expected[1]}) "
            f"for grid {(nz, ny, nx)}, patch {(pz, py, px)} and {channels} channel(s)"
        )
    b = tokens.shape[0]
    blocks = tokens.reshape(b, nz, ny, nx, channels, pz, py, px)
    blocks = blocks.permute(0, 4, 1, 5, 2, 6, 3, 7)
    return blocks.reshape(b, channels, nz * pz, ny * py, nx * px)


def default_patch(voxel_size: Sequence[float]) -> Patch:
    """The paper's patch size for a voxel size given in nm, z first.

    Anisotropic data (z voxel size at least twice the larger xy size, e.g.
    ssTEM at 40 x 4 x 4 nm) gets 4 x 16 x 16; near-isotropic data (FIB-SEM)
    gets 8 x 8 x 8.

    Raises:
        ValueError: when ``voxel_size`` is not three positive numbers.
    """
    if len(voxel_size) != 3 or any(not v > 0 for v in voxel_size):
        raise ValueError(f"voxel_size must be three positive numbers (z, y, x) in nm, got {tuple(voxel_size)}")
    z, y, x = (float(v) for v in voxel_size)
    return ANISOTROPIC_PATCH if z >= 2.0 * max(y, x) else ISOTROPIC_PATCH


def per_patch_normalize(tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise each token to zero mean and unit variance over its features.

    This is MAE's ``norm_pix_loss`` target: the loss then scores structure, not
    a patch's absolute brightness, which in EM varies from section to section.
    The variance is the population variance (MAE uses the unbiased one; the two
    differ by F / (F - 1), negligible for real patch sizes, and the population
    form stays finite for one-feature tokens).  ``eps`` keeps constant patches
    (empty resin, padding) at zero instead of dividing by zero.
    """
    mean = tokens.mean(dim=-1, keepdim=True)
    var = tokens.var(dim=-1, keepdim=True, unbiased=False)
    return (tokens - mean) / torch.sqrt(var + eps)
