"""Checks that turn bad input into one clear line naming the file and the problem."""

from __future__ import annotations

import numpy as np

from tokenunify.errors import InputError
from tokenunify.io.volumes import Volume

# Scanning a terabyte volume for NaN would take hours; checks read it in slabs
# of this many voxels so memory stays bounded.
_SLAB_VOXELS = 64 * 1024 * 1024


def require_ndim(volume: Volume, ndim: int = 3, what: str = "volume") -> None:
    """The volume must have exactly `ndim` axes (z,y,x for 3)."""
    if volume.ndim != ndim:
        axes = "z,y,x" if ndim == 3 else f"{ndim} axes"
        raise InputError(volume.spec, f"{what} has {volume.ndim} dimensions {volume.shape}; expected {ndim} ({axes})")


def require_not_empty(volume: Volume) -> None:
    """No axis may have length 0."""
    if any(s == 0 for s in volume.shape):
        raise InputError(volume.spec, f"is empty (shape {volume.shape})")


def require_label_dtype(volume: Volume) -> None:
    """Labels are integer ids; float labels usually mean a probability map was passed."""
    if not (np.issubdtype(volume.dtype, np.integer) or volume.dtype == np.bool_):
        raise InputError(volume.spec, f"labels must be integer ids, found {volume.dtype}; is this a probability map?")
    if np.issubdtype(volume.dtype, np.signedinteger):
        _scan(volume, lambda block: bool((block < 0).any()), "labels contain negative ids")


def require_same_shape(a: Volume, b: Volume) -> None:
    """Raw and labels (or seg and gt) must cover the same voxels."""
    if a.shape != b.shape:
        raise InputError(b.spec, f"shape {b.shape} differs from {a.spec} shape {a.shape}")


def require_finite(volume: Volume) -> None:
    """Float input must hold no NaN or infinity (integer input cannot)."""
    if np.issubdtype(volume.dtype, np.floating):
        _scan(volume, lambda block: not bool(np.isfinite(block).all()), "contains NaN or infinite values")


def require_raw(volume: Volume) -> None:
    """A raw EM volume: 3D, not empty, numeric, finite."""
    require_ndim(volume, 3, "raw")
    require_not_empty(volume)
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise InputError(volume.spec, f"raw must be numeric, found {volume.dtype}")
    require_finite(volume)


def require_labels(volume: Volume) -> None:
    """A label volume: 3D, not empty, integer ids."""
    require_ndim(volume, 3, "labels")
    require_not_empty(volume)
    require_label_dtype(volume)


def require_affinities(volume: Volume, n_channels: int | None = None) -> None:
    """Affinities: (C, z, y, x), not empty, finite."""
    require_ndim(volume, 4, "affinities")
    require_not_empty(volume)
    if n_channels is not None and volume.shape[0] != n_channels:
        raise InputError(volume.spec, f"has {volume.shape[0]} affinity channels; expected {n_channels}")
    require_finite(volume)


def _scan(volume: Volume, bad, problem: str) -> None:
    plane = int(np.prod(volume.shape[1:])) or 1
    step = max(1, _SLAB_VOXELS // plane)
    for start in range(0, volume.shape[0], step):
        if bad(volume[start : start + step]):
            raise InputError(volume.spec, problem)
