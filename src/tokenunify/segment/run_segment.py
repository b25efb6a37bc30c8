"""`tokenunify segment`: an affinity volume in, a segmentation volume out.

Agglomeration runs on the whole volume in memory (waterz and mwatershed are
whole-volume algorithms); blockwise agglomeration is a separate step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from tokenunify.errors import InputError
from tokenunify.evaluate.metrics import evaluate_segmentation
from tokenunify.evaluate.sweep import best_row
from tokenunify.io import check_output, open_volume, write_volume
from tokenunify.io.validate import require_affinities, require_labels, require_same_shape
from tokenunify.segment.pipeline import segmentations
from tokenunify.segment.settings import NEAREST, SegmentSettings


def affinity_offsets(attrs: Any, n_channels: int, where: str) -> list[tuple[int, int, int]]:
    """Offsets stored with the affinities by `predict`, or the nearest neighbours for 3 channels."""
    stored = attrs.get("offsets") if hasattr(attrs, "get") else None
    if stored is not None:
        offsets = [tuple(int(v) for v in o) for o in np.asarray(stored).tolist()]
        if len(offsets) != n_channels:
            raise InputError(where, f"stores {len(offsets)} offsets for {n_channels} channels")
        return offsets
    if n_channels == 3:
        return list(NEAREST)
    raise InputError(where, f"has {n_channels} channels but no 'offsets' attribute saying what they are")


def segment_volume(
    affs_spec: str,
    output_spec: str,
    settings: SegmentSettings,
    gt_spec: str | None = None,
    threshold: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment affinities; with `gt_spec`, sweep the thresholds, score each and keep the best.

    Without ground truth, `threshold` (or the middle of the configured sweep)
    picks the one segmentation that is written.
    """
    check_output(output_spec, overwrite)
    affs_vol = open_volume(affs_spec)
    require_affinities(affs_vol)
    offsets = affinity_offsets(affs_vol.attrs, affs_vol.shape[0], affs_spec)
    gt = None
    if gt_spec is not None:
        gt_vol = open_volume(gt_spec)
        require_labels(gt_vol)
        if gt_vol.shape != affs_vol.shape[1:]:
            require_same_shape(_Spatial(affs_vol), gt_vol)
        gt = gt_vol.read()
    affs = affs_vol.read().astype(np.float32, copy=False)
    if gt is None:
        chosen = [threshold] if threshold is not None else [settings.thresholds[len(settings.thresholds) // 2]]
    else:
        chosen = [threshold] if threshold is not None else list(settings.thresholds)
    rows: list[dict[str, Any]] = []
    best_seg, best_key = None, None
    sweep = segmentations(affs, offsets, settings, chosen)
    total = 1 if settings.method == "mws" else len(chosen)
    for value, seg in tqdm(sweep, total=total, desc="agglomerate", unit="threshold", disable=not progress):
        row: dict[str, Any] = {"threshold": float(value), "n_segments": int(len(np.unique(seg)))}
        if gt is not None:
            row.update(evaluate_segmentation(seg, gt))
        rows.append(row)
        key = (row["voi"], row["arand"]) if gt is not None else 0
        if best_key is None or key < best_key:
            best_key, best_seg = key, seg
    assert best_seg is not None
    best = best_row(rows) if gt is not None else rows[0]
    write_volume(output_spec, best_seg.astype(np.uint64), affs_vol.voxel_size, overwrite=overwrite,
                 attrs={"threshold": best["threshold"], "method": settings.method, "affinities": affs_spec})
    return {"output": output_spec, "rows": rows, "best": best, "segmentation": best_seg, "affinities": affs}


class _Spatial:
    """Shape view of an affinity volume without its channel axis, for shape checks."""

    def __init__(self, volume: Any) -> None:
        self.spec = volume.spec
        self.shape = volume.shape[1:]
