"""`tokenunify segment`: an affinity volume in, a segmentation volume out.

Agglomeration runs on the whole volume in memory (waterz and mwatershed are
whole-volume algorithms); `segment --blockwise` (tokenunify.blockwise.segment)
does the same on volumes of any size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenunify.errors import InputError
from tokenunify.io import check_output, open_volume, write_volume
from tokenunify.io.validate import require_affinities, require_labels
from tokenunify.offsets import offsets_from_attrs, unit_affinities
from tokenunify.postprocess.pipeline import segmentations, sweep_scores
from tokenunify.postprocess.settings import SegmentSettings


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
    offsets = offsets_from_attrs(affs_vol.attrs, affs_vol.shape[0], affs_spec)
    gt = None
    if gt_spec is not None:
        gt_vol = open_volume(gt_spec)
        require_labels(gt_vol)
        if gt_vol.shape != affs_vol.shape[1:]:
            raise InputError(gt_vol.spec, f"shape {gt_vol.shape} differs from {affs_vol.spec} spatial shape {affs_vol.shape[1:]}")
        gt = gt_vol.read()
    affs = unit_affinities(affs_vol.read())
    if gt is not None:
        chosen = [threshold] if threshold is not None else None
        rows, best, seg = sweep_scores(affs, gt, offsets, settings, chosen, progress)
    else:
        # Without ground truth there is nothing to choose by: one threshold.
        value = threshold if threshold is not None else settings.thresholds[len(settings.thresholds) // 2]
        ((value, seg),) = segmentations(affs, offsets, settings, [value])
        best = {"threshold": float(value), "n_seg_ids": len(np.unique(seg))}
        rows = [best]
    write_volume(output_spec, seg.astype(np.uint64), affs_vol.voxel_size, overwrite=overwrite, offset=affs_vol.offset,
                 attrs={"threshold": best["threshold"], "method": settings.method, "affinities": affs_spec})
    return {"output": output_spec, "rows": rows, "best": best, "segmentation": seg, "affinities": affs}
