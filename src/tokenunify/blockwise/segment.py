"""`tokenunify segment --blockwise`: affinities of any size -> fragments -> region graph -> segmentation.

The steps, each resumable (see `runner`):

1. **fragments** (daisy, per block): watershed on the block grown by the
   context, write region kept, ids unique per block;
2. **edges** (daisy, per block): the block's edge table (and, with ground
   truth, its (fragment, gt) voxel counts);
3. **agglomerate** (global, this process): waterz-equivalent merging or
   mutex watershed on the summed graph, a lookup table per threshold;
4. with ground truth, every threshold is scored from the counts alone and the
   best one kept (as `segment --gt` does on a whole volume);
5. **relabel** (daisy, per block): fragments -> segments with fastremap.

Intermediate data lives in a work folder next to the output
(``<store>.<dataset>.work/``); the segmentation is written there and moved
into the output store only when complete, so the output appears whole or not
at all. The work folder is kept: its fragments can be viewed or rescored.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenunify.blockwise.agglomerate import (
    Scorer,
    mws_merge,
    parse_scoring,
    waterz_merge,
)
from tokenunify.blockwise.edges import load_table, merge_tables
from tokenunify.blockwise.geometry import BlockGrid, Triple
from tokenunify.blockwise.runner import prepare_work_dir, run_task, work_dir_for
from tokenunify.blockwise.store import commit_array, create_array
from tokenunify.blockwise.tasks import EdgesStep, FragmentsStep, RelabelStep
from tokenunify.errors import InputError
from tokenunify.evaluate.metrics import scores_from_table, table_from_pairs
from tokenunify.evaluate.sweep import best_row
from tokenunify.io import check_output, open_volume
from tokenunify.io.atomic import atomic_path
from tokenunify.io.validate import require_labels, require_ndim, require_not_empty
from tokenunify.offsets import nearest_index, offsets_from_attrs
from tokenunify.postprocess.settings import SegmentSettings

DEFAULT_BLOCK: Triple = (64, 128, 128)
DEFAULT_CONTEXT = 16


@dataclass
class BlockwiseOptions:
    """How the work is cut and run: block and context (voxels), worker processes, retries per block."""

    block: Triple = DEFAULT_BLOCK
    context: Triple | None = None
    workers: int = 1
    retries: int = 2
    # False runs every block in this process (tests, debugging)
    multiprocessing: bool = True


def _grid(affs: Any, options: BlockwiseOptions) -> BlockGrid:
    shape = tuple(int(s) for s in affs.shape[1:])
    block = tuple(int(min(b, s)) for b, s in zip(options.block, shape)) if options.block else shape
    # the default context shrinks for thin volumes; a context the user gave is checked as given
    context = options.context if options.context is not None else tuple(min(DEFAULT_CONTEXT, s - 1) for s in shape)
    return BlockGrid(shape, block, tuple(context), tuple(affs.voxel_size), tuple(affs.offset), where=str(affs.spec))  # type: ignore[arg-type]


def _check_gt(gt: Any, affs: Any) -> None:
    require_labels(gt)
    if tuple(gt.shape) != tuple(affs.shape[1:]):
        raise InputError(gt.spec, f"shape {gt.shape} differs from {affs.spec} spatial shape {affs.shape[1:]}")
    if gt.voxel_size_known and affs.voxel_size_known and tuple(gt.voxel_size) != tuple(affs.voxel_size):
        raise InputError(gt.spec, f"voxel size {gt.voxel_size} nm differs from {affs.spec} ({affs.voxel_size} nm)")


def _lookup(work: Path, grid: BlockGrid, settings: SegmentSettings, thresholds: list[float]) -> dict[str, np.ndarray]:
    """Agglomerate the summed graph once; the lookup table (nodes x thresholds) is kept in the work folder."""
    path = work / "lookup.npz"
    if not path.exists():
        tables = [load_table(work / "edges" / f"{i}.npz") for i in range(grid.n_blocks)]
        table = merge_tables(tables)
        if settings.method == "mws":
            segments = mws_merge(table, settings.mws_bias)[None]
        else:
            merged = waterz_merge(table, thresholds, settings.scoring)
            segments = np.stack([merged[t] for t in sorted(thresholds)])
        with atomic_path(path) as staging, open(staging, "wb") as handle:
            np.savez(handle, nodes=table.nodes, thresholds=np.asarray(sorted(thresholds)), segments=segments,
                     n_edges=np.asarray(len(table)))
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _score(work: Path, grid: BlockGrid, lookup: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """VOI and ARAND of every threshold from the blocks' (fragment, gt) counts, without reading voxels."""
    parts = []
    for i in range(grid.n_blocks):
        with np.load(work / "edges" / f"{i}.gt.npz") as data:
            parts.append((data["fragment"], data["gt"], data["count"]))
    fragment = np.concatenate([p[0] for p in parts])
    gt = np.concatenate([p[1] for p in parts])
    count = np.concatenate([p[2] for p in parts])
    where = np.searchsorted(lookup["nodes"], fragment)
    rows = []
    for threshold, segment in zip(lookup["thresholds"].tolist(), lookup["segments"]):
        rows.append({"threshold": float(threshold), **scores_from_table(table_from_pairs(segment[where], gt, count))})
    return rows


def segment_blockwise(
    affs_spec: str,
    output_spec: str,
    settings: SegmentSettings,
    options: BlockwiseOptions,
    gt_spec: str | None = None,
    threshold: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment affinities block by block; with `gt_spec`, score every threshold and keep the best.

    Returns ``{"output", "rows", "best", "work_dir", "blocks", "seconds"}``:
    the sweep rows (one without ground truth), the kept row, the block counts
    and seconds of each step. Raises InputError / OutputError for bad input
    (before any work) and BlockFailedError for a block that keeps failing.
    """
    output = check_output(output_spec, overwrite)
    if output.format != "zarr":
        raise InputError(output, "a blockwise segmentation is written to zarr (PATH.zarr:DATASET)")
    if settings.jitter_repeats > 1:
        raise InputError("segment.jitter_repeats", "jittered repeats are not done blockwise; set it to 1 "
                         "(or segment the volume in memory, without --blockwise)")
    affs = open_volume(affs_spec)
    # not require_affinities: its NaN scan reads the whole volume; each block checks its own region
    require_ndim(affs, 4, "affinities")
    require_not_empty(affs)
    offsets = offsets_from_attrs(affs.attrs, affs.shape[0], affs_spec)
    channels = [int(c) for c in nearest_index(offsets)]
    if gt_spec is not None:
        _check_gt(open_volume(gt_spec), affs)
    grid = _grid(affs, options)
    if settings.method == "mws":
        thresholds = [float(settings.mws_bias)]
    elif gt_spec is not None:
        thresholds = [float(threshold)] if threshold is not None else [float(t) for t in settings.thresholds]
    else:
        thresholds = [float(threshold if threshold is not None else settings.thresholds[len(settings.thresholds) // 2])]
    try:
        scorer = parse_scoring(settings.scoring) if settings.method == "waterz" else Scorer("mean")
    except ValueError as err:
        raise InputError("segment.scoring", str(err)) from None
    full = scorer.kind == "quantile" and not scorer.init_with_max
    fingerprint = {
        "affinities": str(affs.spec), "affinities_path": str(Path(affs.spec.path).resolve()), "shape": list(affs.shape),
        "dtype": str(affs.dtype), "gt": gt_spec, "settings": asdict(settings), "thresholds": thresholds,
        "block": list(grid.block), "context": list(grid.context), "output": str(output),
    }
    work = prepare_work_dir(work_dir_for(output), fingerprint, overwrite)
    meta = {"voxel_size": [float(v) for v in affs.voxel_size], "offset": [float(o) for o in affs.offset]}
    # a store with one array, so it is a volume name of its own: WORK/fragments.zarr:fragments
    fragments = create_array(work / "fragments.zarr" / "fragments", grid.shape, grid.block, "uint64", meta)
    (work / "edges").mkdir(exist_ok=True)
    options_kw = {"mode": settings.fragments, "boundary_threshold": settings.boundary_threshold,
                  "min_seed_distance": settings.min_seed_distance, "split_by_affinity": settings.split_by_affinity}
    run = {"work_dir": work, "workers": options.workers, "retries": options.retries,
           "multiprocessing": options.multiprocessing, "progress": progress}
    seconds: dict[str, float] = {}
    blocks: dict[str, dict[str, int]] = {}

    def step(name: str, process: Any) -> None:
        began = time.perf_counter()
        blocks[name] = run_task(name, grid, process, **run)
        seconds[name] = time.perf_counter() - began

    step("fragments", FragmentsStep(grid, affs_spec, channels, fragments, options_kw))
    step("edges", EdgesStep(grid, affs_spec, channels, fragments, work / "edges", gt_spec, full))
    began = time.perf_counter()
    lookup = _lookup(work, grid, settings, thresholds)
    seconds["agglomerate"] = time.perf_counter() - began
    if gt_spec is not None:
        rows = _score(work, grid, lookup)
        best = best_row(rows)
    else:
        rows = [{"threshold": thresholds[0]}]
        best = dict(rows[0])
    chosen = [float(t) for t in lookup["thresholds"]].index(best["threshold"])
    segment = lookup["segments"][chosen]
    n_segments = int(np.unique(segment).size)
    best.setdefault("n_seg_ids", n_segments)
    relabel_table = work / f"relabel_{chosen}.npz"
    if not relabel_table.exists():
        with atomic_path(relabel_table) as staging, open(staging, "wb") as handle:
            np.savez(handle, nodes=lookup["nodes"], segment=segment)
    staged = create_array(work / f"segmentation_{chosen}.zarr", grid.shape, grid.block, "uint64", meta)
    step("relabel", RelabelStep(grid, fragments, relabel_table, staged))
    commit_array(staged, output, {"threshold": best["threshold"], "method": settings.method, "affinities": affs_spec,
                             "blockwise": {"block": list(grid.block), "context": list(grid.context)}})
    return {"output": str(output), "rows": rows, "best": best, "work_dir": str(work), "blocks": blocks,
            "seconds": seconds, "n_fragments": int(lookup["nodes"].size), "n_edges": int(lookup["n_edges"]),
            "n_segments": n_segments}
