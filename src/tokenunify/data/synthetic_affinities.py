"""Synthetic affinities of any size, generated region by region with the same values as at once.

Blockwise post-processing is tested and benchmarked on volumes larger than
memory, so their affinities must be made piece by piece. Labels are a
Voronoi tessellation of random sites spread over the whole volume (nearest
site by a k-d tree, so a voxel's label depends only on its position), and the
noise on each voxel is a hash of its global index. Any region therefore gets
exactly the values it has in the whole volume, whatever the block layout.

Boundaries are not all clean: a share of cell pairs get a weak boundary
(affinities 0.3 to 0.5 across it, a shallow dip along it), so that agglomeration has decisions to make
and a wrong threshold merges neurons.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

Triple = tuple[int, int, int]
NEAREST_OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


def _hash01(index: np.ndarray, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) per integer (splitmix64 finaliser): noise that depends on position only."""
    with np.errstate(over="ignore"):
        x = index.astype(np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(40)).astype(np.float32) / np.float32(2**24)


@dataclass(frozen=True)
class SyntheticAffinities:
    """Affinities (3 nearest-neighbour channels, float32) and labels of a Voronoi volume of `shape` voxels.

    `cell` is the mean cell diameter in voxels (z, y, x); `noise` the spread
    of the affinities; `weak` the share of neighbouring cell pairs whose
    boundary is faint; `membrane` the half-width (voxels) of the band of low
    affinities along each face.
    """

    shape: Triple
    cell: Triple = (8, 24, 24)
    seed: int = 0
    noise: float = 0.3
    weak: float = 0.2
    membrane: float = 1.5

    def _sites(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        n = max(2, int(np.prod(self.shape) / np.prod(self.cell)))
        # stretched so the k-d tree's Euclidean distance gives cells of the asked (anisotropic) size
        return rng.uniform(0, 1, size=(n, 3)) * np.asarray(self.shape) / np.asarray(self.cell)

    def _tree(self) -> cKDTree:
        cached = getattr(self, "_cached_tree", None)
        if cached is None:
            cached = cKDTree(self._sites())
            object.__setattr__(self, "_cached_tree", cached)
        return cached

    def _nearest(self, region: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """Labels of `region` and each voxel's distance (in-plane voxels) to its cell's boundary."""
        axes = [(np.arange(r.start, r.stop) + 0.5) / c for r, c in zip(region, self.cell)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        tree = self._tree()
        (d1, d2), (i1, i2) = (a.T for a in tree.query(grid, k=2, workers=1))
        # distance to the bisector of the two nearest sites: the Voronoi face
        gap = np.linalg.norm(tree.data[i2] - tree.data[i1], axis=1)
        depth = (d2**2 - d1**2) / (2 * gap) * self.cell[1]
        size = [r.stop - r.start for r in region]
        return (i1.astype(np.uint64) + np.uint64(1)).reshape(size), depth.reshape(size).astype(np.float32)

    def labels(self, region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """uint64 labels (1..n sites) of `region` (voxel slices; default the whole volume)."""
        return self._nearest(region or tuple(slice(0, s) for s in self.shape))[0]

    def affinities(self, region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """float32 affinities (3, *region) in [0, 1]; 0 where the neighbour lies outside the volume."""
        region = region or tuple(slice(0, s) for s in self.shape)
        low = tuple(int(r.start > 0) for r in region)
        grown = tuple(slice(r.start - lo, r.stop) for r, lo in zip(region, low))
        # one voxel of low-side neighbours on every axis; 0 (no label) outside the volume
        labels, depth = self._nearest(grown)
        labels = np.pad(labels, [(1 - lo, 0) for lo in low])
        # membranes are a few voxels thick: affinities dip within `membrane` voxels of a face
        dip = np.pad(np.exp(-((depth / self.membrane) ** 2)), [(1 - lo, 0) for lo in low])
        size = [r.stop - r.start for r in region]
        core = labels[1:, 1:, 1:]
        index = np.ravel_multi_index(np.meshgrid(*[np.arange(r.start, r.stop) for r in region], indexing="ij"),
                                     self.shape).astype(np.uint64)
        affs = np.zeros((3, *size), np.float32)
        for c in range(3):
            shifted = tuple(slice(0, -1) if a == c else slice(1, None) for a in range(3))
            before = labels[shifted]
            band = np.maximum(dip[1:, 1:, 1:], dip[shifted])
            same = core == before
            # a pair of cells has a faint boundary when the hash of the pair says so (same on both sides)
            pair = np.minimum(core, before) * np.uint64(1_000_003) + np.maximum(core, before)
            faint = _hash01(pair, self.seed * 7 + 1) < self.weak
            u = _hash01(index * np.uint64(3) + np.uint64(c), self.seed)
            inside = (1.0 - self.noise * u) * (1.0 - np.where(faint, 0.5, 0.9) * band)
            boundary = np.where(faint, 0.3 + 0.2 * u, 0.15 * u)
            value = np.where(same, inside, boundary).astype(np.float32)
            value[before == 0] = 0.0
            affs[c] = value
        return affs

    def regions(self, block: Triple) -> Iterator[tuple[slice, slice, slice]]:
        """The voxel regions of a grid of `block`-sized pieces covering the volume (for writing it)."""
        for start in np.ndindex(*[int(np.ceil(s / b)) for s, b in zip(self.shape, block)]):
            yield tuple(slice(p * b, min((p + 1) * b, s)) for p, b, s in zip(start, block, self.shape))  # type: ignore[misc]
