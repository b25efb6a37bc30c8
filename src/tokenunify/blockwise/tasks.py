"""The per-block steps of blockwise post-processing: fragments, edges, relabel.

Each step is a small picklable object: daisy spawns its workers as separate
processes and sends them the step, which opens its volumes itself. Every
block writes only its own write region (a zarr chunk-aligned region of
fragments or segments, or one ``.npz`` file written atomically), so a block
killed half-way and run again writes the same bytes: the steps are
idempotent, which is what makes daisy's "done" record enough for resuming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenunify.blockwise.edges import block_edges, keep_top_bins, save_table
from tokenunify.blockwise.geometry import BlockGrid, Triple
from tokenunify.errors import InputError
from tokenunify.io.atomic import atomic_path
from tokenunify.offsets import unit_affinities


def read_affinities(volume: Any, channels: list[int], region: tuple[slice, ...], where: str) -> np.ndarray:
    """Channels `channels` of `region` as float32 in [0, 1] (uint8 affinities are 0..255)."""
    stored = np.stack([np.asarray(volume[(c, *region)]) for c in channels])
    data = unit_affinities(stored)
    if stored.dtype != np.uint8 and not np.isfinite(data).all():
        raise InputError(where, f"holds NaN or infinite affinities in the region {_region_text(region)}")
    return data


def _region_text(region: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in region) + "]"


def _open(spec: str) -> Any:
    from tokenunify.io import open_volume

    return open_volume(spec)


def _open_zarr(path: Path, mode: str = "r") -> Any:
    import zarr

    return zarr.open_array(store=str(path), mode=mode)


def run_block(grid: BlockGrid, block: Any, process: Any) -> None:
    """`process(start)` for a daisy block; an error is raised again naming the block's index and voxels."""
    start = grid.start_of(block.write_roi)
    try:
        process(start)
    except Exception as err:
        # the block's index and voxels travel with the error to the run's summary
        region = _region_text(grid.write_region(start))
        raise RuntimeError(f"block {grid.index(start)} (voxels {region}): {type(err).__name__}: {err}") from err


class _Step:
    """Shared plumbing of the one-argument steps: the block's start voxel and an error that names the block."""

    grid: BlockGrid

    def __call__(self, block: Any) -> None:
        from tokenunify.runtime import tune_runtime

        tune_runtime()
        run_block(self.grid, block, self.process)

    def process(self, start: Triple) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class FragmentsStep(_Step):
    """Watershed fragments of a block's read region; the write region is kept, ids offset per block."""

    grid: BlockGrid
    affs: str
    channels: list[int]
    fragments: Path
    options: dict[str, Any] = field(default_factory=dict)

    def process(self, start: Triple) -> None:
        from tokenunify.postprocess.fragments import watershed_fragments

        read, write = self.grid.read_region(start), self.grid.write_region(start)
        affs = read_affinities(_open(self.affs), self.channels, read, self.affs)
        fragments = watershed_fragments(affs, **self.options)
        inner = tuple(slice(w.start - r.start, w.stop - r.start) for w, r in zip(write, read))
        crop = fragments[inner]
        # the crop holds only some of the ids of the read region: number them 1.. again, then lift them
        import fastremap

        crop, _ = fastremap.renumber(np.ascontiguousarray(crop), preserve_zero=True)
        crop = crop.astype(np.uint64)
        crop[crop > 0] += np.uint64(self.grid.id_offset(start))
        _open_zarr(self.fragments, "r+")[write] = crop


@dataclass
class EdgesStep(_Step):
    """Per block: the edge table of its write region and, with ground truth, its (fragment, gt) counts."""

    grid: BlockGrid
    affs: str
    channels: list[int]
    fragments: Path
    out_dir: Path
    gt: str | None = None
    # False when the scorer reads only each edge's top bin (InitWithMax, mean): far smaller tables
    full_histograms: bool = True

    def process(self, start: Triple) -> None:
        write = self.grid.write_region(start)
        low = tuple(int(w.start > 0) for w in write)
        grown = tuple(slice(w.start - lo, w.stop) for w, lo in zip(write, low))
        fragments = np.asarray(_open_zarr(self.fragments)[grown])
        affs = read_affinities(_open(self.affs), self.channels, write, self.affs)
        table = block_edges(fragments, affs, low)  # type: ignore[arg-type]
        if not self.full_histograms:
            table = keep_top_bins(table)
        index = self.grid.index(start)
        save_table(self.out_dir / f"{index}.npz", table)
        if self.gt is not None:
            core = fragments[tuple(slice(lo, None) for lo in low)]
            gt = np.asarray(_open(self.gt)[write])
            pairs, counts = np.unique(np.stack([core.ravel(), gt.ravel().astype(np.uint64)]), axis=1, return_counts=True)
            with atomic_path(self.out_dir / f"{index}.gt.npz") as staging, open(staging, "wb") as handle:
                np.savez(handle, fragment=pairs[0], gt=pairs[1], count=counts.astype(np.int64))


@dataclass
class RelabelStep(_Step):
    """Fragments of a block mapped to their segments through the lookup table (fastremap)."""

    grid: BlockGrid
    fragments: Path
    lookup: Path
    segmentation: Path
    _table: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def process(self, start: Triple) -> None:
        import fastremap

        if self._table is None:
            # loaded once per worker process: the step object lives as long as the worker
            with np.load(self.lookup) as data:
                self._table = (data["nodes"], data["segment"])
        nodes, segment = self._table
        write = self.grid.write_region(start)
        fragments = np.ascontiguousarray(_open_zarr(self.fragments)[write])
        present = fastremap.unique(fragments)
        present = present[present != 0]
        where = np.searchsorted(nodes, present)
        if present.size and (where.max() >= nodes.size or not np.array_equal(nodes[where], present)):
            raise RuntimeError("fragments are missing from the lookup table; the work folder is inconsistent")
        mapping = dict(zip(present.tolist(), segment[where].tolist()))
        out = fastremap.remap(fragments, mapping, preserve_missing_labels=True, in_place=False)
        _open_zarr(self.segmentation, "r+")[write] = out.astype(np.uint64, copy=False)
