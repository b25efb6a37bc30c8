"""The scoring sweep: jitter-averaged scores against a plain loop over jittered copies."""

from __future__ import annotations

import numpy as np
import pytest
from label_helpers import voronoi_labels

from tokenunify.evaluate.metrics import evaluate_segmentation
from tokenunify.finetune.affinities import affinities_from_labels
from tokenunify.offsets import NEAREST
from tokenunify.postprocess.pipeline import jittered, segmentations, sweep_scores
from tokenunify.postprocess.settings import SegmentSettings

THRESHOLDS = [0.2, 0.4, 0.6, 0.8]


@pytest.fixture(scope="module")
def noisy():
    labels = voronoi_labels().astype(np.uint64)
    affs = affinities_from_labels(labels, NEAREST).astype(np.float32)
    rng = np.random.default_rng(0)
    # blurred, noisy affinities so that the sweep has real decisions to make
    affs = np.clip(0.15 + 0.7 * affs + rng.normal(0, 0.2, affs.shape).astype(np.float32), 0, 1)
    return affs, labels


def test_one_repeat_is_the_plain_sweep(noisy):
    affs, gt = noisy
    rows, best, seg = sweep_scores(affs, gt, NEAREST, SegmentSettings(thresholds=THRESHOLDS))
    plain = {t: evaluate_segmentation(s, gt) for t, s in segmentations(affs, NEAREST, SegmentSettings(), THRESHOLDS)}
    assert [r["threshold"] for r in rows] == THRESHOLDS
    for row in rows:
        assert row["voi"] == pytest.approx(plain[row["threshold"]]["voi"])
        assert "draws" not in row
    assert best["voi"] == min(r["voi"] for r in rows)
    assert evaluate_segmentation(seg, gt)["voi"] == pytest.approx(best["voi"])


def test_repeats_average_a_plain_loop_over_jittered_copies(noisy):
    affs, gt = noisy
    settings = SegmentSettings(thresholds=THRESHOLDS, jitter_repeats=3, jitter=0.05)
    rows, best, seg = sweep_scores(affs, gt, NEAREST, settings)
    copies = [affs, jittered(affs, 1, 0.05), jittered(affs, 2, 0.05)]
    assert np.abs(copies[1] - affs).max() <= 0.05 + 1e-6 and not np.array_equal(copies[1], copies[2])
    reference = {t: [] for t in THRESHOLDS}
    for copy in copies:
        for t, s in segmentations(copy, NEAREST, SegmentSettings(), THRESHOLDS):
            reference[t].append(evaluate_segmentation(s, gt))
    for row in rows:
        scores = reference[row["threshold"]]
        for key in ("voi_split", "voi_merge", "voi", "arand"):
            assert row[key] == pytest.approx(np.mean([s[key] for s in scores]))
        assert row["voi_std"] == pytest.approx(np.std([s["voi"] for s in scores], ddof=1))
        assert row["draws"] == 3
    assert best == min(rows, key=lambda r: (r["voi"], r["arand"], r["threshold"]))
    # the segmentation returned is the unjittered one at the chosen threshold
    expected = dict(segmentations(affs, NEAREST, SegmentSettings(), THRESHOLDS))[best["threshold"]]
    np.testing.assert_array_equal(seg, expected)


@pytest.mark.parametrize("field, value", [("jitter_repeats", 0), ("jitter", 0.5)])
def test_bad_jitter_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SegmentSettings(**{field: value})
