"""Affinity targets, masks and class-balancing weights computed from label volumes.

Convention (gunpowder / waterz): axes are ``(z, y, x)``; affinity channel ``i``
belongs to offset ``o_i`` and is 1 at voxel ``v`` exactly when ``v`` and
``v + o_i`` both lie inside the volume and carry the same *non-zero* label.
Everything else -- different labels, background (0), or a neighbour outside the
volume -- is 0. Arrays are float32 with shape ``(C, *labels.shape)``.

These are plain numpy functions because they run per training crop inside the
data loader workers, where torch tensors would only add conversion overhead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tokenunify.offsets import NEAREST, check_offsets

# kept for callers of the old name; the convention lives in tokenunify.offsets
Offset = tuple[int, ...]


def edge_slices(
    shape: Sequence[int], offset: Offset
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Slices selecting every ``v`` with ``v + offset`` inside, and those neighbours.

    Returns ``None`` when no voxel has its neighbour inside the volume (the
    offset is at least as long as the axis), so callers can leave the channel 0.
    """
    src: list[slice] = []
    dst: list[slice] = []
    for n, d in zip(shape, offset):
        lo = max(0, -d)
        hi = n - max(0, d)
        if hi <= lo:
            return None
        src.append(slice(lo, hi))
        dst.append(slice(lo + d, hi + d))
    return tuple(src), tuple(dst)


def affinities_from_labels(
    labels: np.ndarray,
    offsets: Sequence[Sequence[int]] = NEAREST,
) -> np.ndarray:
    """Binary affinities of a label volume.

    Args:
        labels: integer label array (usually uint64, ``(z, y, x)``); 0 means
            background / unknown and never forms a positive edge.
        offsets: one offset per output channel, each with ``labels.ndim``
            components. Long-range offsets such as ``(0, -8, 0)`` are allowed.

    Returns:
        float32 array of shape ``(len(offsets), *labels.shape)``: 1 where ``v``
        and ``v + offset`` have the same non-zero label, 0 elsewhere, including
        voxels whose neighbour falls outside the volume.
    """
    labels = np.asarray(labels)
    offs = check_offsets(offsets, labels.ndim)
    affs = np.zeros((len(offs),) + labels.shape, dtype=np.float32)
    for c, off in enumerate(offs):
        sl = edge_slices(labels.shape, off)
        if sl is None:
            continue
        src, dst = sl
        a = labels[src]
        same = (a == labels[dst]) & (a != 0)
        affs[(c,) + src] = same
    return affs


def affinity_mask(
    labels: np.ndarray,
    offsets: Sequence[Sequence[int]] = NEAREST,
    ignore_zero: bool = False,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Which affinity edges carry a trustworthy target.

    An edge ``(v, v + offset)`` is kept (mask 1) when the neighbour lies inside
    the volume. Edges leaving the volume get 0: their target is 0 only by
    convention, and training on them would teach the net to predict
    boundaries at every crop border.

    Args:
        labels: label array as for :func:`affinities_from_labels`.
        offsets: the same offsets used to build the affinities.
        ignore_zero: if True, also drop edges where either voxel is 0. Use it
            when 0 means *unlabelled* (sparse or partially proofread ground
            truth). The default False keeps them, because in boundary-labelled
            data 0 marks membrane / extracellular space and edges into it are
            genuine negatives the net has to learn; for dense FIB labels 0 is
            rare and the choice hardly matters.
        valid: optional boolean voxel mask of ``labels.shape`` (e.g. the part of
            a padded crop that actually has ground truth); edges with either
            end outside ``valid`` are dropped.

    Returns:
        float32 array ``(len(offsets), *labels.shape)`` of 0 / 1.
    """
    labels = np.asarray(labels)
    offs = check_offsets(offsets, labels.ndim)
    voxel_ok: np.ndarray | None = None
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != labels.shape:
            raise ValueError(f"valid has shape {valid.shape}, labels have {labels.shape}")
        voxel_ok = valid
    if ignore_zero:
        nonzero = labels != 0
        voxel_ok = nonzero if voxel_ok is None else (voxel_ok & nonzero)

    mask = np.zeros((len(offs),) + labels.shape, dtype=np.float32)
    for c, off in enumerate(offs):
        sl = edge_slices(labels.shape, off)
        if sl is None:
            continue
        src, dst = sl
        if voxel_ok is None:
            mask[(c,) + src] = 1.0
        else:
            mask[(c,) + src] = voxel_ok[src] & voxel_ok[dst]
    return mask


def check_balance_clip(clip: Sequence[float], name: str = "clip") -> tuple[float, float]:
    """`clip` as a (min, max) pair of floats; ValueError naming `name` unless ``0 < min <= max < 1``."""
    lo, hi = (float(v) for v in clip)
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"{name} must satisfy 0 < min <= max < 1, got {list(clip)}")
    return lo, hi


def balance_weights(
    affs: np.ndarray,
    mask: np.ndarray | None = None,
    clip: tuple[float, float] = (0.05, 0.95),
) -> np.ndarray:
    """Per-channel class-balancing loss weights (gunpowder ``BalanceLabels`` recipe).

    For each channel the fraction ``f`` of positive edges among the masked
    edges is computed; positives get weight ``0.5 / f`` and negatives
    ``0.5 / (1 - f)``, so both classes contribute the same total weight (half
    the number of masked edges each). ``f`` is first clipped to ``clip`` so
    that a class that is almost absent in a crop does not get an enormous
    weight; when clipping happens the totals are no longer exactly equal.

    Args:
        affs: affinity targets ``(C, ...)``; values > 0.5 count as positive, so
            soft targets are accepted.
        mask: optional ``(C, ...)`` array (or broadcastable to ``affs``) of
            0 / 1; masked-out edges get weight 0 and do not count in ``f``.
        clip: ``(min, max)`` bounds for the positive fraction, ``0 < min <=
            max < 1``.

    Returns:
        float32 weights with the shape of ``affs``. A channel without any
        masked-in edge gets all-zero weights.
    """
    affs = np.asarray(affs)
    lo, hi = check_balance_clip(clip)
    if affs.ndim < 1:
        raise ValueError("affs needs a leading channel axis")
    pos = affs > 0.5
    if mask is None:
        m = np.ones(affs.shape, dtype=bool)
    else:
        m = np.broadcast_to(np.asarray(mask) > 0.5, affs.shape)

    weights = np.zeros(affs.shape, dtype=np.float32)
    for c in range(affs.shape[0]):
        mc = m[c]
        total = int(np.count_nonzero(mc))
        if total == 0:
            continue
        pc = pos[c]
        frac = np.count_nonzero(pc & mc) / total
        frac = min(max(frac, lo), hi)
        w_pos = np.float32(0.5 / frac)
        w_neg = np.float32(0.5 / (1.0 - frac))
        weights[c] = np.where(pc, w_pos, w_neg) * mc
    return weights
