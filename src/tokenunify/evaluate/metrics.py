"""Segmentation metrics from a sparse contingency table: VOI and adapted Rand.

Conventions (CREMI / SNEMI3D, and DESIGN.md):

- VOI split = H(seg | gt) (over-segmentation), VOI merge = H(gt | seg)
  (under-segmentation), both in bits.
- Voxels whose ground-truth label is in ``ignore_gt`` (default: 0) are left out
  of every count. A segmentation label 0 is an ordinary label, as in
  ``skimage.metrics``.
- ARAND = 1 - Rand F-score with equal weight on precision and recall, counting
  pairs of distinct voxels, exactly as ``skimage.metrics.adapted_rand_error``.
- CREMI score = sqrt(VOI_total * ARAND).

Gotcha: ``skimage.metrics.variation_of_information(image0, image1)`` returns
``[H(image1 | image0), H(image0 | image1)]``; called as ``(gt, seg)`` that is
``(split, merge)``, while the argument order of this module is ``(seg, gt)``.

skimage builds its table with the label values as sparse indices, which is slow
and fails for large uint64 ids; here both volumes are first renumbered to
contiguous ids with fastremap, so the table costs a few linear passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import fastremap
import numpy as np

__all__ = [
    "Contingency",
    "contingency",
    "variation_of_information",
    "adapted_rand_error",
    "evaluate_segmentation",
    "rand_pairs",
    "scores_from_table",
    "table_from_pairs",
]

# above this many cells a dense bincount of the pair keys would allocate far
# more than the volume itself; a hash/sort based count is used instead
_DENSE_CELLS_PER_VOXEL = 4


@dataclass(frozen=True)
class Contingency:
    """Sparse contingency table of a segmentation against a ground truth.

    Only the voxels that are not ignored are counted. Ids are renumbered, so
    the table does not say which original label a row belongs to; the metrics
    do not need it.

    Attributes:
        pair_counts: voxel count of every (seg id, gt id) pair that occurs.
        seg_sizes: voxel count of every segmentation id that occurs.
        gt_sizes: voxel count of every ground-truth id that occurs.
        n_voxels: number of counted voxels (the sum of each of the above).
    """

    pair_counts: np.ndarray
    seg_sizes: np.ndarray
    gt_sizes: np.ndarray
    n_voxels: int


def _check_labels(seg: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    seg = np.asarray(seg)
    gt = np.asarray(gt)
    if seg.shape != gt.shape:
        raise ValueError(
            f"seg and gt must have the same shape, got seg {seg.shape} and gt {gt.shape}"
        )
    for name, arr in (("seg", seg), ("gt", gt)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must hold integer labels, not dtype {arr.dtype}")
    return seg, gt


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, dict]:
    """Labels renumbered to 0..n-1 (any order), and the map old id -> new id."""
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    # preserve_zero=False: 0 is an ordinary id here and must not be special
    renumbered, mapping = fastremap.renumber(
        np.ascontiguousarray(labels), start=0, preserve_zero=False, in_place=False
    )
    return renumbered, mapping


def _pair_counts(keys: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``keys`` (all in 0..n_cells-1) and their counts."""
    if n_cells <= max(_DENSE_CELLS_PER_VOXEL * keys.size, 1 << 16):
        counts = np.bincount(keys, minlength=n_cells)
        present = np.flatnonzero(counts)
        return present, counts[present]
    present, counts = fastremap.unique(keys, return_counts=True)
    return np.asarray(present, dtype=np.int64), np.asarray(counts, dtype=np.int64)


def _sizes(index: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    # float weights are exact below 2**53 voxels
    sizes = np.rint(np.bincount(index, weights=counts, minlength=n)).astype(np.int64)
    return sizes[sizes > 0]


def contingency(
    seg: np.ndarray, gt: np.ndarray, ignore_gt: Sequence[int] = (0,)
) -> Contingency:
    """Count voxels per (seg, gt) label pair, leaving out ignored gt labels.

    Args:
        seg: segmentation, any integer dtype (uint64 ids of any size work).
        gt: ground truth of the same shape.
        ignore_gt: ground-truth labels whose voxels are not counted.

    Raises:
        ValueError: for a shape mismatch or non-integer labels.
    """
    seg, gt = _check_labels(seg, gt)
    if seg.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Contingency(empty, empty, empty, 0)

    seg_ids, seg_map = _dense_ids(seg.reshape(-1))
    gt_ids, gt_map = _dense_ids(gt.reshape(-1))
    n_seg, n_gt = len(seg_map), len(gt_map)
    keys = gt_ids.astype(np.int64) * n_seg
    keys += seg_ids
    del seg_ids, gt_ids
    present, counts = _pair_counts(keys, n_seg * n_gt)
    rows, cols = np.divmod(present, n_seg)

    # ignored labels are dropped from the (small) table, not from the volume:
    # that saves two masked copies of it. A label the dtype cannot hold (-1
    # for uint64) is simply not in the map.
    ignored = [gt_map[label] for label in ignore_gt if label in gt_map]
    if ignored:
        keep = ~np.isin(rows, ignored)
        rows, cols, counts = rows[keep], cols[keep], counts[keep]

    return Contingency(
        pair_counts=counts.astype(np.int64, copy=False),
        seg_sizes=_sizes(cols, counts, n_seg),
        gt_sizes=_sizes(rows, counts, n_gt),
        n_voxels=int(counts.sum()),
    )


def _sum_nlogn(counts: np.ndarray) -> float:
    # fsum is exactly rounded, so equal multisets of counts give bit-identical
    # sums and a perfect segmentation scores exactly 0, not 1e-16
    counts = counts[counts > 1].astype(np.float64)
    return math.fsum(counts * np.log2(counts))


def _voi_from_table(table: Contingency) -> tuple[float, float]:
    if table.n_voxels == 0:
        return 0.0, 0.0
    # H(seg|gt) = H(seg, gt) - H(gt); with p = n/N the log2(N) terms cancel
    joint = _sum_nlogn(table.pair_counts)
    split = (_sum_nlogn(table.gt_sizes) - joint) / table.n_voxels
    merge = (_sum_nlogn(table.seg_sizes) - joint) / table.n_voxels
    return max(split, 0.0), max(merge, 0.0)


def rand_pairs(table: Contingency) -> tuple[int, int, int]:
    """Ordered pairs of distinct voxels in the same (segment and gt object, segment, gt object).

    Pairs are counted as sum n(n-1), as skimage (and SNEMI3D) count them;
    ARAND is ``1 - same_both / mean(same_seg, same_gt)``.
    """
    def pairs(counts: np.ndarray) -> int:
        c = counts.astype(np.int64)
        return int(np.dot(c, c) - c.sum())

    return pairs(table.pair_counts), pairs(table.seg_sizes), pairs(table.gt_sizes)


def _arand_from_table(table: Contingency) -> float:
    same_both, same_seg, same_gt = rand_pairs(table)
    denominator = 0.5 * (same_seg + same_gt)
    if denominator == 0:
        # every counted voxel is a singleton in both: the partitions agree
        return 0.0
    return float(1.0 - same_both / denominator)


def variation_of_information(
    seg: np.ndarray, gt: np.ndarray, ignore_gt: Sequence[int] = (0,)
) -> tuple[float, float]:
    """VOI of ``seg`` against ``gt`` in bits, as ``(split, merge)``.

    split = H(seg | gt) grows when a gt object is cut into pieces, merge =
    H(gt | seg) when a segment spans several gt objects. Voxels with a gt label
    in ``ignore_gt`` are left out. An empty comparison scores (0.0, 0.0).
    """
    return _voi_from_table(contingency(seg, gt, ignore_gt))


def adapted_rand_error(
    seg: np.ndarray, gt: np.ndarray, ignore_gt: Sequence[int] = (0,)
) -> float:
    """Adapted Rand error, 1 - Rand F-score (same value as skimage's).

    Voxels with a gt label in ``ignore_gt`` are left out; a segmentation label
    0 is an ordinary label.
    """
    return _arand_from_table(contingency(seg, gt, ignore_gt))


def evaluate_segmentation(
    seg: np.ndarray, gt: np.ndarray, ignore_gt: Sequence[int] = (0,)
) -> dict[str, float | int]:
    """All metrics of ``seg`` against ``gt`` from one contingency table.

    Returns a JSON-serialisable dict with the keys ``voi_split``,
    ``voi_merge``, ``voi`` (their sum), ``arand``, ``cremi_score``
    (sqrt(voi * arand)), ``n_seg_ids`` and ``n_gt_ids`` (distinct ids among the
    counted voxels) and ``n_voxels`` (counted voxels).

    Raises:
        ValueError: for a shape mismatch or non-integer labels.
    """
    return scores_from_table(contingency(seg, gt, ignore_gt))


def table_from_pairs(
    seg_ids: np.ndarray, gt_ids: np.ndarray, counts: np.ndarray, ignore_gt: Sequence[int] = (0,)
) -> Contingency:
    """A contingency table from voxel counts of (seg id, gt id) pairs, repeats summed.

    This is how a volume too large for memory is scored: count (fragment, gt)
    pairs block by block, map the fragments to their segments, and build the
    table from the pairs (`evaluate_segmentation` of the whole volume gives
    the same numbers).
    """
    seg_ids, gt_ids = np.asarray(seg_ids, np.uint64), np.asarray(gt_ids, np.uint64)
    counts = np.asarray(counts, np.int64)
    keep = ~np.isin(gt_ids, np.asarray([g for g in ignore_gt if g >= 0], np.uint64))
    seg_ids, gt_ids, counts = seg_ids[keep], gt_ids[keep], counts[keep]
    if counts.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Contingency(empty, empty, empty, 0)
    pairs, inverse = np.unique(np.stack([seg_ids, gt_ids], axis=1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    pair_counts = np.bincount(inverse, weights=counts, minlength=len(pairs))
    seg_index = np.unique(pairs[:, 0], return_inverse=True)[1].ravel()
    gt_index = np.unique(pairs[:, 1], return_inverse=True)[1].ravel()
    pair_counts = np.rint(pair_counts).astype(np.int64)
    return Contingency(
        pair_counts=pair_counts,
        seg_sizes=_sizes(seg_index, pair_counts, int(seg_index.max()) + 1),
        gt_sizes=_sizes(gt_index, pair_counts, int(gt_index.max()) + 1),
        n_voxels=int(pair_counts.sum()),
    )


def scores_from_table(table: Contingency) -> dict[str, float | int]:
    """The metrics of `evaluate_segmentation` from a contingency table."""
    split, merge = _voi_from_table(table)
    arand = _arand_from_table(table)
    voi = split + merge
    return {
        "voi_split": float(split),
        "voi_merge": float(merge),
        "voi": float(voi),
        "arand": float(arand),
        "cremi_score": float(math.sqrt(max(voi * arand, 0.0))),
        "n_seg_ids": int(table.seg_sizes.size),
        "n_gt_ids": int(table.gt_sizes.size),
        "n_voxels": int(table.n_voxels),
    }
