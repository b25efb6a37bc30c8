"""Region-graph edge statistics: per block, additive, each voxel edge counted once.

A voxel edge joins voxel ``v`` and ``v - e_c`` (the nearest-neighbour
convention of `tokenunify.offsets`); its affinity is stored at ``v``. The
block whose write region holds ``v`` owns the edge, so a block reads its
fragments one voxel further on the low side of each axis and nothing else:
every edge of the volume is counted by exactly one block, including the edges
that cross a block face.

For each pair of fragments (u < v) that touch, a block records what every
scoring function of the agglomeration needs, all of it additive across
blocks:

- ``sum`` and ``count`` of the boundary affinities (mean affinity);
- the sparse 256-bin histogram of the affinities (waterz's
  ``HistogramQuantileAffinity``), as (edge, bin, count) triples; the maximum
  bin and its count (waterz's ``InitWithMax`` start) follow from it.

Bins are computed exactly as waterz's ``discretize`` does: ``int(a * 256)``
in float32, clamped to [0, 255], with everything not above 0 in bin 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenunify.io.atomic import atomic_path

BINS = 256


@dataclass
class EdgeTable:
    """Statistics of the fragment pairs that touch; `u < v`, rows sorted by (u, v), each pair once.

    `hist_edge`, `hist_bin`, `hist_count` are the non-zero cells of the
    per-edge affinity histograms (sorted by edge, then bin). `nodes` are all
    fragment ids seen, including fragments without any edge.
    """

    u: np.ndarray
    v: np.ndarray
    sum: np.ndarray
    count: np.ndarray
    hist_edge: np.ndarray
    hist_bin: np.ndarray
    hist_count: np.ndarray
    nodes: np.ndarray

    def __len__(self) -> int:
        return int(self.u.size)


def discretize(affinity: np.ndarray) -> np.ndarray:
    """waterz's 256-level bin of each affinity (float32 arithmetic, like its C++)."""
    a = np.asarray(affinity, dtype=np.float32)
    bins = np.zeros(a.shape, dtype=np.int16)
    inside = a > 0
    scaled = (a[inside] * np.float32(BINS)).astype(np.int64)
    bins[inside] = np.minimum(scaled, BINS - 1)
    return bins


def _pairs(fragments: np.ndarray, affs: np.ndarray, low: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """(u, v, affinity) of every voxel edge whose later voxel lies in the write region.

    `fragments` covers the write region grown by `low[c]` (0 or 1) voxels on
    the low side of axis c; `affs` (3, ...) covers the write region only.
    `low[c]` is 0 only where the write region starts at the volume's low face,
    whose first layer has no earlier neighbour on that axis.
    """
    us, vs, values = [], [], []
    for c in range(3):
        later = [slice(lo, None) for lo in low]
        earlier = list(later)
        on_affs = [slice(None)] * 3
        if low[c] == 1:
            earlier[c] = slice(0, -1)
        else:
            later[c] = slice(1, None)
            earlier[c] = slice(0, -1)
            on_affs[c] = slice(1, None)
        a, b = fragments[tuple(later)], fragments[tuple(earlier)]
        differ = a != b
        if not differ.any():
            continue
        x, y = a[differ], b[differ]
        us.append(np.minimum(x, y))
        vs.append(np.maximum(x, y))
        values.append(affs[c][tuple(on_affs)][differ])
    if not us:
        empty = np.zeros(0, np.uint64)
        return empty, empty.copy(), np.zeros(0, np.float32)
    return np.concatenate(us), np.concatenate(vs), np.concatenate(values).astype(np.float32)


def block_edges(fragments: np.ndarray, affs: np.ndarray, low: tuple[int, int, int]) -> EdgeTable:
    """The edge table of one block (see the module documentation for the regions)."""
    fragments = np.asarray(fragments, dtype=np.uint64)
    core = fragments[tuple(slice(lo, None) for lo in low)]
    if tuple(affs.shape[1:]) != core.shape:
        raise ValueError(f"affinities {affs.shape[1:]} must cover the write region {core.shape}")
    u, v, values = _pairs(fragments, np.asarray(affs, dtype=np.float32), low)
    nodes = np.unique(core)
    nodes = nodes[nodes != 0]
    # background (0) is never merged, as in waterz
    keep = u != 0
    u, v, values = u[keep], v[keep], values[keep]
    return table_from_samples(u, v, values.astype(np.float64), np.ones(u.size, np.int64), discretize(values), nodes)


def table_from_samples(u, v, sums, counts, bins, nodes) -> EdgeTable:
    """Aggregate samples (u, v, affinity sum, count, bin) into one row per pair.

    Used for voxel edges (one sample per voxel edge, count 1) and, with
    `merge_tables`, for rows of several blocks' tables.
    """
    if u.size == 0:
        z = np.zeros(0, np.uint64)
        return EdgeTable(z, z.copy(), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16),
                         np.zeros(0, np.int64), np.asarray(nodes, np.uint64))
    pairs, inverse = np.unique(np.stack([u, v], axis=1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    n = pairs.shape[0]
    total = np.bincount(inverse, weights=sums, minlength=n)
    number = np.bincount(inverse, weights=counts, minlength=n).round().astype(np.int64)
    cells, cell_inverse = np.unique(inverse.astype(np.int64) * BINS + bins, return_inverse=True)
    cell_count = np.bincount(cell_inverse.ravel(), weights=counts, minlength=cells.size).round().astype(np.int64)
    return EdgeTable(pairs[:, 0].copy(), pairs[:, 1].copy(), total, number, cells // BINS, (cells % BINS).astype(np.int16),
                     cell_count, np.asarray(nodes, np.uint64))


def merge_tables(tables: list[EdgeTable]) -> EdgeTable:
    """One table for the union of blocks: rows of the same pair are summed, and so are their histogram cells.

    Edge sums and counts and histogram cells are merged separately, so a
    table whose histograms were cut by `keep_top_bins` keeps its true counts.
    """
    nodes = np.unique(np.concatenate([t.nodes for t in tables])) if tables else np.zeros(0, np.uint64)
    rows = [t for t in tables if len(t)]
    if not rows:
        return table_from_samples(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0), np.zeros(0),
                                  np.zeros(0), nodes)
    u = np.concatenate([t.u for t in rows])
    v = np.concatenate([t.v for t in rows])
    pairs, inverse = np.unique(np.stack([u, v], axis=1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    n = pairs.shape[0]
    total = np.bincount(inverse, weights=np.concatenate([t.sum for t in rows]), minlength=n)
    number = np.bincount(inverse, weights=np.concatenate([t.count for t in rows]), minlength=n).round().astype(np.int64)
    # each table's cells point at its own rows; move them to the merged rows
    starts = np.cumsum([0] + [len(t) for t in rows[:-1]])
    cell_edge = np.concatenate([inverse[start + t.hist_edge.astype(np.int64)] for start, t in zip(starts, rows)])
    cell_bin = np.concatenate([t.hist_bin for t in rows]).astype(np.int64)
    cells, cell_inverse = np.unique(cell_edge * BINS + cell_bin, return_inverse=True)
    cell_count = np.bincount(cell_inverse.ravel(), weights=np.concatenate([t.hist_count for t in rows]),
                             minlength=cells.size).round().astype(np.int64)
    return EdgeTable(pairs[:, 0].copy(), pairs[:, 1].copy(), total, number, cells // BINS,
                     (cells % BINS).astype(np.int16), cell_count, nodes.astype(np.uint64))


def keep_top_bins(table: EdgeTable) -> EdgeTable:
    """The table with each edge's histogram cut to its highest non-empty bin (count kept).

    All that waterz's ``InitWithMax`` histograms and the mean scorer need; the
    top bin of merged tables is the top of their top bins, so the reduction is
    safe before `merge_tables`. It keeps a block's table to a few numbers per
    edge instead of one cell per distinct affinity bin.
    """
    if len(table) == 0:
        return table
    last = np.r_[table.hist_edge[1:] != table.hist_edge[:-1], True]
    return EdgeTable(table.u, table.v, table.sum, table.count, table.hist_edge[last], table.hist_bin[last],
                     table.hist_count[last], table.nodes)


def save_table(path: str | Path, table: EdgeTable) -> None:
    """Write a table as .npz, atomically (a killed worker leaves no half file)."""
    with atomic_path(path) as staging, open(staging, "wb") as handle:
        np.savez(handle, **{k: getattr(table, k) for k in EdgeTable.__dataclass_fields__})


def load_table(path: str | Path) -> EdgeTable:
    """Read a table written by `save_table`."""
    with np.load(path) as data:
        return EdgeTable(**{k: data[k] for k in EdgeTable.__dataclass_fields__})
