"""`tokenunify evaluate`: a segmentation and a ground truth in, VOI / ARAND out."""

from __future__ import annotations

from typing import Any

from tokenunify.evaluate.metrics import evaluate_segmentation
from tokenunify.io import open_volume
from tokenunify.io.validate import require_labels, require_same_shape


def evaluate_volumes(seg_spec: str, gt_spec: str, ignore_gt: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Score `seg_spec` against `gt_spec`; both must be integer label volumes of one shape."""
    seg_vol, gt_vol = open_volume(seg_spec), open_volume(gt_spec)
    require_labels(seg_vol)
    require_labels(gt_vol)
    require_same_shape(gt_vol, seg_vol)
    scores = evaluate_segmentation(seg_vol.read(), gt_vol.read(), ignore_gt=ignore_gt)
    return {"seg": seg_spec, "gt": gt_spec, "ignore_gt": list(ignore_gt), **scores}
