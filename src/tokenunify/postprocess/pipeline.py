"""Affinities -> fragments -> agglomeration -> (optionally) scores.

The same function serves validation during training, `tokenunify segment`
and the demo, so every number the project reports comes through one path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from tokenunify.evaluate.cross_fit import CROSS_FIT_METRICS, cross_fit, part_slices
from tokenunify.evaluate.metrics import evaluate_segmentation
from tokenunify.evaluate.sweep import best_row, row_rank
from tokenunify.offsets import Offset, nearest_channels
from tokenunify.postprocess.agglomerate import mutex_watershed, waterz_sweep
from tokenunify.postprocess.fragments import watershed_fragments
from tokenunify.postprocess.settings import SegmentSettings


def segmentations(
    affs: np.ndarray, offsets: Sequence[Offset], settings: SegmentSettings, thresholds: Sequence[float] | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (threshold, segmentation) for each threshold of the sweep.

    waterz agglomerates watershed fragments of the nearest-neighbour
    affinities; mutex watershed (`method: mws`) uses every offset and has one
    result, reported under its bias.
    """
    affs = np.asarray(affs, dtype=np.float32)
    if settings.method == "mws":
        yield settings.mws_bias, mutex_watershed(affs, [list(o) for o in offsets], bias=settings.mws_bias)
        return
    nearest = nearest_channels(affs, offsets)
    fragments = watershed_fragments(
        nearest,
        mode=settings.fragments,
        boundary_threshold=settings.boundary_threshold,
        min_seed_distance=settings.min_seed_distance,
        split_by_affinity=settings.split_by_affinity,
    )
    chosen = list(thresholds if thresholds is not None else settings.thresholds)
    yield from waterz_sweep(nearest, fragments, chosen, scoring=settings.scoring)


def _sweep_once(
    affs: np.ndarray, gt: np.ndarray, offsets: Sequence[Offset], settings: SegmentSettings, chosen: list[float],
    progress: bool,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Score every threshold; returns the rows and the best row's segmentation."""
    total = 1 if settings.method == "mws" else len(chosen)
    rows: list[dict[str, Any]] = []
    best_seg: np.ndarray | None = None
    best_rank = None
    slabs = part_slices(gt.shape[0], settings.cross_fit_parts) if settings.cross_fit_parts > 1 else []
    for threshold, seg in tqdm(segmentations(affs, offsets, settings, chosen), total=total,
                               desc="agglomerate", unit="threshold", disable=not progress):
        rows.append({"threshold": float(threshold), **evaluate_segmentation(seg, gt)})
        if slabs:
            # the slab is cut from the whole volume's segmentation: cross-fitting
            # moves the threshold choice, not the agglomeration
            rows[-1]["parts"] = [{k: v for k, v in evaluate_segmentation(seg[sl], gt[sl]).items()
                                  if k in CROSS_FIT_METRICS} for sl in slabs]
        if best_rank is None or row_rank(rows[-1]) < best_rank:
            best_rank, best_seg = row_rank(rows[-1]), seg
    assert best_seg is not None, "the sweep produced no segmentation"
    return rows, best_seg


def jittered(affs: np.ndarray, draw: int, amplitude: float) -> np.ndarray:
    """Affinities plus uniform noise in [-amplitude, amplitude] from seed `draw`, clipped to [0, 1]."""
    noise = np.random.default_rng(draw).uniform(-amplitude, amplitude, affs.shape).astype(np.float32)
    return np.clip(np.asarray(affs, dtype=np.float32) + noise, 0.0, 1.0)


_AVERAGED = ("voi_split", "voi_merge", "voi", "arand", "cremi_score")


def sweep_scores(
    affs: np.ndarray,
    gt: np.ndarray,
    offsets: Sequence[Offset],
    settings: SegmentSettings,
    thresholds: Sequence[float] | None = None,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any], np.ndarray]:
    """Score every threshold against `gt`; returns (rows, best row, best segmentation).

    Only the best segmentation so far is kept, ranked exactly as `best_row`
    ranks the rows, so the returned segmentation is the best row's. With
    `settings.jitter_repeats` R > 1 each row holds the mean of its metrics
    over the affinities and R-1 jittered copies (plus `voi_std`,
    `arand_std` and `draws`), the best row is chosen on those means, and the
    segmentation returned is that of the unjittered affinities at its threshold.
    With `settings.cross_fit_parts` P > 1 every row also holds its scores on
    P z-slabs (`parts`), and the best row gains `cross_fit` (see
    `tokenunify.evaluate.cross_fit`).
    """
    chosen = list(thresholds if thresholds is not None else settings.thresholds)
    rows, best_seg = _sweep_once(affs, gt, offsets, settings, chosen, progress)
    if settings.jitter_repeats == 1:
        return rows, _with_cross_fit(best_row(rows), rows), best_seg
    draws = [rows] + [_sweep_once(jittered(affs, d, settings.jitter), gt, offsets, settings, chosen, False)[0]
                      for d in range(1, settings.jitter_repeats)]
    mean_rows = []
    for i, row in enumerate(rows):
        mean = dict(row)
        for key in (k for k in _AVERAGED if k in row):
            values = np.array([float(draw[i][key]) for draw in draws])
            mean[key] = float(values.mean())
            if key in ("voi", "arand"):
                mean[f"{key}_std"] = float(values.std(ddof=1))
        if "parts" in row:
            mean["parts"] = [{k: float(np.mean([draw[i]["parts"][j][k] for draw in draws])) for k in part}
                             for j, part in enumerate(row["parts"])]
        mean["draws"] = len(draws)
        mean_rows.append(mean)
    best = best_row(mean_rows)
    if best["threshold"] != best_row(rows)["threshold"]:
        best_seg = next(seg for _, seg in segmentations(affs, offsets, settings, [best["threshold"]]))
    return mean_rows, _with_cross_fit(best, mean_rows), best_seg


def _with_cross_fit(best: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best (oracle) row without its per-part scores, plus the cross-fitted score when the rows have parts."""
    best = {k: v for k, v in best.items() if k != "parts"}
    if rows and "parts" in rows[0]:
        best["cross_fit"] = cross_fit(rows)
    return best
