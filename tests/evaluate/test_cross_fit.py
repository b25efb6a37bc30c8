"""Cross-fitted threshold choice against a plain reference, and its place in the segmentation sweep."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from tokenunify.data.synthetic_affinities import NEAREST_OFFSETS, SyntheticAffinities
from tokenunify.evaluate.cross_fit import cross_fit, part_slices
from tokenunify.evaluate.metrics import evaluate_segmentation
from tokenunify.postprocess.pipeline import segmentations, sweep_scores
from tokenunify.postprocess.settings import SegmentSettings


def test_part_slices_cover_the_volume_once():
    assert part_slices(40, 2) == [slice(0, 20), slice(20, 40)]
    slabs = part_slices(41, 3)
    assert slabs[0].start == 0 and slabs[-1].stop == 41
    assert all(a.stop == b.start for a, b in pairwise(slabs))
    with pytest.raises(ValueError, match="cross-fitting parts"):
        part_slices(5, 1)
    with pytest.raises(ValueError, match="cross-fitting parts"):
        part_slices(2, 3)


def _row(t, parts):
    return {"threshold": t, "voi": 0.0, "arand": 0.0,
            "parts": [{"voi_split": v / 2, "voi_merge": v / 2, "voi": v, "arand": a} for v, a in parts]}


def test_cross_fit_scores_each_part_at_the_other_parts_best():
    rows = [_row(0.1, [(1.0, 0.1), (3.0, 0.3)]),   # best on part 0
            _row(0.5, [(2.0, 0.2), (1.5, 0.1)]),   # best on part 1
            _row(0.9, [(4.0, 0.4), (4.0, 0.4)])]
    got = cross_fit(rows)
    # part 0 is scored at part 1's best threshold (0.5), part 1 at part 0's (0.1)
    assert got["thresholds"] == [0.5, 0.1]
    assert got["voi"] == pytest.approx((2.0 + 3.0) / 2) and got["arand"] == pytest.approx((0.2 + 0.3) / 2)
    # the oracle (best per part) would have given (1.0 + 1.5) / 2: cross-fitting is never better
    assert got["voi"] >= got["oracle_voi"] == pytest.approx((1.0 + 1.5) / 2)
    assert got["oracle_arand"] == pytest.approx((0.1 + 0.1) / 2)
    with pytest.raises(ValueError, match="per-part scores"):
        cross_fit([{"threshold": 0.1, "voi": 1.0, "arand": 0.1}])


def test_cross_fit_with_three_parts_chooses_on_the_mean_of_the_others():
    rows = [_row(0.1, [(1.0, 0.1), (1.0, 0.1), (5.0, 0.5)]), _row(0.2, [(2.0, 0.2), (2.0, 0.2), (1.0, 0.1)])]
    got = cross_fit(rows)
    # part 0: others (1, 2) mean VOI 3.0 at 0.1, 1.5 at 0.2 -> 0.2; part 2: others mean 1.0 vs 2.0 -> 0.1
    assert got["thresholds"] == [0.2, 0.2, 0.1]
    assert got["voi"] == pytest.approx((2.0 + 2.0 + 5.0) / 3)


def test_sweep_scores_parts_match_scoring_the_cropped_segmentation():
    syn = SyntheticAffinities((24, 48, 48), cell=(8, 16, 16), seed=2)
    offsets = NEAREST_OFFSETS
    affs, gt = syn.affinities(), syn.labels().astype(np.uint64)
    settings = SegmentSettings(thresholds=[0.2, 0.5, 0.8], cross_fit_parts=2, jitter_repeats=1)
    rows, best, _ = sweep_scores(affs, gt, offsets, settings)
    for row, (threshold, seg) in zip(rows, segmentations(affs, offsets, settings)):
        assert row["threshold"] == threshold
        for part, sl in zip(row["parts"], (slice(0, 12), slice(12, 24))):
            plain = evaluate_segmentation(seg[sl], gt[sl])
            assert part["voi"] == pytest.approx(plain["voi"]) and part["arand"] == pytest.approx(plain["arand"])
    assert "parts" not in best and best["cross_fit"] == cross_fit(rows)
    # jittered copies: the parts are averaged like the whole-volume metrics
    jit = SegmentSettings(thresholds=[0.2, 0.5, 0.8], cross_fit_parts=2, jitter_repeats=2)
    mean_rows, jbest, _ = sweep_scores(affs, gt, offsets, jit)
    assert mean_rows[0]["draws"] == 2 and len(mean_rows[0]["parts"]) == 2
    assert jbest["cross_fit"] == cross_fit(mean_rows)
    # without cross-fitting nothing changes shape
    rows1, best1, _ = sweep_scores(affs, gt, offsets, SegmentSettings(thresholds=[0.2, 0.5, 0.8]))
    assert "parts" not in rows1[0] and "cross_fit" not in best1
