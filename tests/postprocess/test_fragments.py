"""Watershed fragments from ideal affinities of synthetic Voronoi volumes."""

from __future__ import annotations

import numpy as np
import pytest
from label_helpers import voronoi_labels

from tokenunify.evaluate.metrics import evaluate_segmentation
from tokenunify.postprocess.fragments import boundary_map, watershed_fragments


def ideal_affinities(labels: np.ndarray) -> np.ndarray:
    """Channel c at v: 1 where v and v - e_c carry the same non-zero label."""
    affs = np.zeros((3, *labels.shape), dtype=np.float32)
    for c in range(3):
        here = [slice(None)] * 3
        here[c] = slice(1, None)
        before = [slice(None)] * 3
        before[c] = slice(None, -1)
        a, b = labels[tuple(here)], labels[tuple(before)]
        affs[c][tuple(here)] = (a == b) & (a != 0)
    return affs


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    labels = voronoi_labels()
    return labels, ideal_affinities(labels)


def check_fragments(fragments: np.ndarray, shape: tuple[int, ...]) -> None:
    assert fragments.dtype == np.uint64
    assert fragments.shape == shape
    ids = np.unique(fragments)
    assert ids[0] == 1, "every voxel must be covered, ids start at 1"
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))


def test_3d_fragments_never_straddle_two_objects(volume):
    labels, affs = volume
    fragments = watershed_fragments(affs, mode="3d")
    check_fragments(fragments, labels.shape)
    scores = evaluate_segmentation(fragments, labels)
    assert scores["voi_merge"] < 1e-9
    # an over-segmentation, but not a voxel soup
    assert scores["n_gt_ids"] <= scores["n_seg_ids"] < labels.size / 50


def test_without_the_affinity_split_merges_stay_small(volume):
    labels, affs = volume
    fragments = watershed_fragments(affs, mode="3d", split_by_affinity=False)
    check_fragments(fragments, labels.shape)
    assert evaluate_segmentation(fragments, labels)["voi_merge"] < 0.2


def test_2d_fragments_are_unique_per_slice(volume):
    labels, affs = volume
    fragments = watershed_fragments(affs, mode="2d")
    check_fragments(fragments, labels.shape)
    per_slice = [set(np.unique(z).tolist()) for z in fragments]
    for i, ids in enumerate(per_slice):
        for other in per_slice[i + 1 :]:
            assert not ids & other
    assert evaluate_segmentation(fragments, labels)["voi_merge"] < 1e-9


def test_2d_mode_ignores_z_affinities(volume):
    labels, affs = volume
    cut_z = affs.copy()
    cut_z[0] = 0.0
    np.testing.assert_array_equal(
        watershed_fragments(affs, mode="2d"), watershed_fragments(cut_z, mode="2d")
    )


def test_uint8_affinities_give_the_same_fragments(volume):
    _, affs = volume
    as_uint8 = (affs * 255).astype(np.uint8)
    np.testing.assert_array_equal(watershed_fragments(affs), watershed_fragments(as_uint8))


def test_min_size_leaves_no_small_basins(volume):
    labels, affs = volume
    fragments = watershed_fragments(affs, min_size=30, split_by_affinity=False)
    check_fragments(fragments, labels.shape)
    assert np.bincount(fragments.ravel())[1:].min() >= 30


def test_smoothing_and_mean_reduction_still_cover_every_voxel(volume):
    labels, affs = volume
    noisy = np.clip(affs + np.random.default_rng(0).normal(0, 0.1, affs.shape), 0, 1)
    for kwargs in ({"sigma": 1.0}, {"reduction": "mean"}, {"mode": "2d", "sigma": 1.0}):
        check_fragments(watershed_fragments(noisy.astype(np.float32), **kwargs), labels.shape)


def test_all_boundary_volume_is_still_covered():
    affs = np.zeros((3, 3, 8, 8), dtype=np.float32)
    for mode in ("2d", "3d"):
        check_fragments(watershed_fragments(affs, mode=mode), (3, 8, 8))


def test_long_range_channels_are_ignored(volume):
    _, affs = volume
    extra = np.concatenate([affs, np.zeros_like(affs)])
    np.testing.assert_array_equal(watershed_fragments(affs), watershed_fragments(extra))


def test_boundary_map_marks_both_sides_of_a_cut():
    affs = np.ones((3, 2, 3, 6), dtype=np.float32)
    affs[2, :, :, 3] = 0.0  # cuts between x = 2 and x = 3
    amap = boundary_map(affs)
    assert (amap[:, :, 2:4] == 0).all()
    assert (np.delete(amap, [2, 3], axis=2) == 1).all()
    mean = boundary_map(affs, reduction="mean")
    # a mean lowers both sides of the cut, and only them
    assert (mean[:, :, 2:4] < 1).all() and (mean[:, :, [0, 5]] == 1).all()


def test_boundary_map_ignores_edges_leaving_the_volume():
    affs = np.ones((3, 2, 2, 2), dtype=np.float32)
    # the value at index 0 along a channel's own axis is an edge to outside
    affs[0, 0] = 0.0
    affs[1, :, 0] = 0.0
    affs[2, :, :, 0] = 0.0
    assert (boundary_map(affs) == 1).all()


@pytest.mark.parametrize(
    ("affs", "kwargs", "match"),
    [
        (np.ones((2, 4, 4, 4), np.float32), {}, "channels"),
        (np.ones((3, 4, 4), np.float32), {}, "channels"),
        (np.ones((3, 4, 4, 4), np.int32), {}, "floating"),
        (np.ones((3, 4, 4, 4), np.float32), {"mode": "4d"}, "mode"),
        (np.ones((3, 4, 4, 4), np.float32), {"min_seed_distance": 0}, "min_seed_distance"),
        (np.ones((3, 4, 4, 4), np.float32), {"min_size": -1}, "min_size"),
        (np.ones((3, 4, 4, 4), np.float32), {"reduction": "max"}, "reduction"),
    ],
)
def test_bad_input_raises(affs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        watershed_fragments(affs, **kwargs)
