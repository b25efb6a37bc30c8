"""waterz and mutex watershed: conventions, recovery of ideal segmentations, checks."""

from __future__ import annotations

import numpy as np
import pytest
import waterz
from label_helpers import voronoi_labels

from tokenunify.evaluate.metrics import evaluate_segmentation
from tokenunify.postprocess.agglomerate import (
    DEFAULT_SCORING,
    mutex_watershed,
    prebuilt_scoring_functions,
    quantile_scoring,
    waterz_sweep,
)
from tokenunify.postprocess.fragments import watershed_fragments

NEAREST = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
LONG_RANGE = [(-2, 0, 0), (0, -4, 0), (0, 0, -4)]


def ideal_affinities(labels: np.ndarray, offsets=NEAREST) -> np.ndarray:
    """Channel i at v: 1 where v and v + offsets[i] carry the same non-zero label."""
    affs = np.zeros((len(offsets), *labels.shape), dtype=np.float32)
    for i, offset in enumerate(offsets):
        # v ranges over the voxels whose partner v + offset is inside
        here = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, labels.shape))
        there = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, labels.shape))
        a, b = labels[here], labels[there]
        affs[i][here] = (a == b) & (a != 0)
    return affs


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = voronoi_labels()
    affs = ideal_affinities(labels)
    return labels, affs, watershed_fragments(affs)


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_waterz_reads_channel_c_as_the_edge_to_the_previous_voxel(channel):
    shape = (4, 5, 6)
    affs = np.ones((3, *shape), dtype=np.float32)
    cut = [slice(None)] * 3
    cut[channel] = 2
    affs[(channel, *cut)] = 0.0
    # built-in watershed, no fragments: only the affinities decide
    (seg,) = [s.copy() for s in waterz.agglomerate(affs, [0.5])]
    ids_along_axis = [np.unique(np.take(seg, i, axis=channel)).tolist() for i in range(shape[channel])]
    # a 0 at index 2 cuts between index 1 and 2, i.e. offset -1 on that axis
    assert ids_along_axis[0] == ids_along_axis[1] != ids_along_axis[2] == ids_along_axis[3]


def test_ideal_affinities_follow_the_waterz_convention():
    labels = voronoi_labels(shape=(6, 16, 16), n=5, seed=3)
    affs = ideal_affinities(labels)
    (seg,) = [s.copy() for s in waterz.agglomerate(affs, [0.5])]
    assert evaluate_segmentation(seg, labels)["voi"] < 1e-9


def test_waterz_recovers_gt_from_ideal_affinities_and_fragments(volume):
    labels, affs, fragments = volume
    assert len(np.unique(fragments)) > len(np.unique(labels))  # something to merge
    results = dict(waterz_sweep(affs, fragments, [0.5]))
    scores = evaluate_segmentation(results[0.5], labels)
    assert scores["voi"] < 1e-6
    assert results[0.5].dtype == np.uint64


@pytest.mark.parametrize("scoring", [quantile_scoring(50), quantile_scoring(75, init_with_max=False)])
def test_quantile_scoring_recovers_gt_too(volume, scoring):
    labels, affs, fragments = volume
    ((_, seg),) = waterz_sweep(affs, fragments, [0.5], scoring=scoring)
    assert evaluate_segmentation(seg, labels)["voi"] < 1e-6


def test_binned_queue_works(volume):
    labels, affs, fragments = volume
    ((_, seg),) = waterz_sweep(affs, fragments, [0.5], discretize_queue=256)
    assert evaluate_segmentation(seg, labels)["voi"] < 1e-6


def test_sweep_is_sorted_monotone_and_yields_copies(volume):
    labels, affs, fragments = volume
    rng = np.random.default_rng(0)
    noisy = np.clip(affs + rng.normal(0, 0.25, affs.shape), 0, 1).astype(np.float32)
    before = fragments.copy()
    thresholds = [0.9, 0.1, 0.5, 0.3, 0.7, 0.98]
    results = list(waterz_sweep(noisy, fragments, thresholds))
    assert [t for t, _ in results] == sorted(thresholds)
    counts = [len(np.unique(seg)) for _, seg in results]
    assert all(a >= b for a, b in zip(counts, counts[1:])), counts
    assert counts[0] > counts[-1]
    assert results[0][1] is not results[1][1]
    assert not np.shares_memory(results[0][1], results[1][1])
    np.testing.assert_array_equal(fragments, before)  # waterz did not write into them


def test_long_range_channels_are_ignored_by_waterz(volume):
    labels, affs, fragments = volume
    extra = np.concatenate([affs, np.zeros_like(affs)])
    ((_, seg),) = waterz_sweep(extra, fragments, [0.5])
    assert evaluate_segmentation(seg, labels)["voi"] < 1e-6


def test_prebuilt_scoring_functions_cover_mean_and_quantiles():
    names = prebuilt_scoring_functions()
    assert DEFAULT_SCORING.replace(" ", "") in names
    assert quantile_scoring(50).replace(" ", "") in names
    assert prebuilt_scoring_functions(256) == names
    assert prebuilt_scoring_functions(7) == []


def test_unsupported_scoring_raises_naming_the_supported_ones(volume):
    _, affs, fragments = volume
    with pytest.raises(ValueError, match="MeanAffinity") as info:
        waterz_sweep(affs, fragments, [0.5], scoring="OneMinus<MaxAffinity<RegionGraphType, ScoreValue>>")
    assert "not prebuilt" in str(info.value)
    with pytest.raises(ValueError, match="HistogramQuantileAffinity<RegionGraphType, 50"):
        waterz_sweep(affs, fragments, [0.5], scoring="OneMinus<QuantileAffinity<RegionGraphType, 50, ScoreValue>>")
    with pytest.raises(ValueError, match="discretize_queue"):
        waterz_sweep(affs, fragments, [0.5], discretize_queue=100)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a, f, t: (a.astype(np.float64), f, t), "float32"),
        (lambda a, f, t: (a[:2], f, t), "channels"),
        (lambda a, f, t: (a, f[:, :-1], t), "shape"),
        (lambda a, f, t: (a, f.astype(np.float32), t), "integer"),
        (lambda a, f, t: (a, f, []), "empty"),
        (lambda a, f, t: (a, f, [0.5, float("nan")]), "finite"),
        (lambda a, f, t: (np.full_like(a, np.nan), f, t), "NaN"),
    ],
)
def test_waterz_sweep_checks_inputs_at_the_call(volume, change, match):
    _, affs, fragments = volume
    with pytest.raises(ValueError, match=match):
        waterz_sweep(*change(affs, fragments, [0.5]))


def test_noncontiguous_affinities_are_accepted(volume):
    labels, affs, fragments = volume
    flipped = np.ascontiguousarray(affs[:, :, :, ::-1])[:, :, :, ::-1]  # a negative stride view
    assert not flipped.flags.c_contiguous
    ((_, seg),) = waterz_sweep(flipped, fragments, [0.5])
    assert evaluate_segmentation(seg, labels)["voi"] < 1e-6


def test_mwatershed_edge_convention_and_sign():
    # labels 1 1 1 2 2 2 along x; offset (0, 0, -1): weight at x is the edge (x, x-1)
    labels = np.array([1, 1, 1, 2, 2, 2], dtype=np.uint64).reshape(1, 1, 6)
    affs = ideal_affinities(labels, [(0, 0, -1)])
    assert affs[0, 0, 0].tolist() == [0, 1, 1, 0, 1, 1]
    seg = mutex_watershed(affs, [(0, 0, -1)])
    assert seg[0, 0].tolist() == [1, 1, 1, 2, 2, 2]
    # a positive bias makes every edge attractive: one segment
    assert np.unique(mutex_watershed(affs, [(0, 0, -1)], bias=0.5)).tolist() == [1]


def test_mutex_watershed_recovers_gt_from_ideal_affinities(volume):
    labels, affs, _ = volume
    seg = mutex_watershed(affs, NEAREST)
    assert seg.dtype == np.uint64
    assert evaluate_segmentation(seg, labels)["voi"] < 1e-9
    ids = np.unique(seg)
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))


def test_mutex_watershed_with_long_range_offsets_and_strides(volume):
    labels, _, _ = volume
    offsets = NEAREST + LONG_RANGE
    affs = ideal_affinities(labels, offsets)
    seg = mutex_watershed(affs, offsets)
    assert evaluate_segmentation(seg, labels)["voi"] < 1e-9
    strides = [[1, 1, 1]] * 3 + [[1, 2, 2]] * 3
    seg = mutex_watershed(affs, offsets, strides=strides)
    assert evaluate_segmentation(seg, labels)["voi"] < 1e-9


def test_long_range_edges_only_repel():
    # two objects that touch nowhere but would be linked by an attractive
    # long-range edge across a 1-voxel gap of background
    labels = np.array([1, 1, 0, 1, 1], dtype=np.uint64).reshape(1, 1, 5)
    offsets = [(0, 0, -1), (0, 0, -2)]
    affs = ideal_affinities(labels, offsets)
    affs[1] = 1.0  # "same object" two voxels apart
    seg = mutex_watershed(affs, offsets)
    assert seg[0, 0, 0] == seg[0, 0, 1] != seg[0, 0, 3] == seg[0, 0, 4]


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.ones((3, 2, 2, 2), np.float64), NEAREST), {}, "float32"),
        ((np.ones((3, 2, 2, 2), np.float32), NEAREST[:2]), {}, "one offset per channel"),
        ((np.ones((1, 2, 2, 2), np.float32), [(0, 0)]), {}, "3 integers"),
        ((np.ones((1, 2, 2, 2), np.float32), [(0, 0, 0)]), {}, "not all 0"),
        ((np.ones((3, 2, 2, 2), np.float32), NEAREST), {"strides": [[1, 1, 1]]}, "strides"),
    ],
)
def test_mutex_watershed_checks_inputs(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mutex_watershed(*args, **kwargs)
