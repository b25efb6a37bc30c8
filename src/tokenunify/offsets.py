"""The affinity offsets convention, in one place.

Channel ``i`` of an affinity volume ``(C, z, y, x)`` holds, at voxel ``v``,
the affinity of the edge between ``v`` and ``v + offsets[i]`` (1 = same
non-zero label; gunpowder / waterz). The nearest-neighbour offsets point
backwards, one per axis in z, y, x order, which is the channel order waterz
reads. Training targets, prediction outputs, fragments, agglomeration and the
blockwise edges all take their offsets from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Offset = tuple[int, int, int]

#: The three nearest-neighbour offsets: the edges to the previous z, y, x voxel.
NEAREST: tuple[Offset, ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))

#: A Lee et al. (2017) style long-range set, for examples and tests.
LONG_RANGE_OFFSETS: tuple[Offset, ...] = NEAREST + ((-2, 0, 0), (0, -8, 0), (0, 0, -8))

#: What `tokenunify train` predicts by default: nearest neighbours plus steps
#: of 3 and 9 on each axis (the long-range channels mutex watershed uses).
MODEL_DEFAULT: tuple[Offset, ...] = NEAREST + ((-3, 0, 0), (0, -3, 0), (0, 0, -3), (-9, 0, 0), (0, -9, 0), (0, 0, -9))


def unit_affinities(affs: np.ndarray) -> np.ndarray:
    """Affinities as float32 in [0, 1]: uint8 storage (0..255, a compact form of predictions) is divided by 255."""
    affs = np.asarray(affs)
    if affs.dtype == np.uint8:
        return affs.astype(np.float32) / np.float32(255)
    return affs.astype(np.float32, copy=False)


def check_offsets(offsets: Sequence[Sequence[int]], ndim: int = 3, n_channels: int | None = None) -> list[tuple[int, ...]]:
    """Offsets as integer tuples, checked: `ndim` components each, none all zero, one per channel.

    Raises:
        ValueError: naming the offending offset or the count mismatch.
    """
    checked: list[tuple[int, ...]] = []
    for offset in offsets:
        values = tuple(int(o) for o in offset)
        if len(values) != ndim:
            raise ValueError(f"offset {values} has {len(values)} components; each offset must be {ndim} integers (z, y, x)")
        if not any(values):
            # A zero offset would make every voxel its own edge, which is never meant.
            raise ValueError(f"offset {values} is not a valid affinity offset: it must be {ndim} integers, not all 0")
        checked.append(values)
    if not checked:
        raise ValueError("at least one offset is required")
    if n_channels is not None and len(checked) != n_channels:
        raise ValueError(f"got {len(checked)} offsets for {n_channels} affinity channels; there must be one offset per channel")
    return checked


def nearest_index(offsets: Sequence[Sequence[int]]) -> list[int]:
    """Channel indices of the z, y, x nearest-neighbour offsets in `offsets`."""
    as_tuples = [tuple(int(v) for v in o) for o in offsets]
    try:
        return [as_tuples.index(o) for o in NEAREST]
    except ValueError:
        raise ValueError(f"affinity offsets {as_tuples} lack the nearest neighbours {list(NEAREST)}") from None


def nearest_channels(affs: np.ndarray, offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """The three nearest-neighbour channels (z, y, x order, float32, contiguous) that waterz expects."""
    return np.ascontiguousarray(affs[nearest_index(offsets)], dtype=np.float32)


def offsets_from_attrs(attrs: Mapping[str, Any] | Any, n_channels: int, where: str) -> list[Offset]:
    """Offsets stored with affinities by `predict` (attribute ``offsets``), or NEAREST for 3 channels.

    Raises:
        InputError: if the stored offsets do not match the channels, or a
            volume of more than 3 channels says nothing about them.
    """
    from tokenunify.errors import InputError

    stored = attrs.get("offsets") if hasattr(attrs, "get") else None
    if stored is not None:
        try:
            offsets = check_offsets(np.asarray(stored).tolist(), 3, n_channels)
        except ValueError as err:
            raise InputError(where, f"has a bad 'offsets' attribute: {err}") from None
        return [tuple(o) for o in offsets]  # type: ignore[misc]
    if n_channels == 3:
        return list(NEAREST)
    raise InputError(where, f"has {n_channels} channels but no 'offsets' attribute saying what they are")
