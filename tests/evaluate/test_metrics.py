"""VOI / ARAND: hand cases, ignore labels, large ids, and skimage as a reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import skimage.metrics
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tokenunify.evaluate.metrics import (
    adapted_rand_error,
    contingency,
    evaluate_segmentation,
    variation_of_information,
)

KEYS = {"voi_split", "voi_merge", "voi", "arand", "cremi_score", "n_seg_ids", "n_gt_ids", "n_voxels"}


def skimage_reference(seg: np.ndarray, gt: np.ndarray, ignore=(0,)) -> tuple[float, float, float]:
    # skimage takes (gt, seg) and returns [H(seg|gt), H(gt|seg)] = (split, merge)
    split, merge = skimage.metrics.variation_of_information(gt, seg, ignore_labels=ignore)
    with np.errstate(invalid="ignore", divide="ignore"):  # its 0 / 0 cases
        arand = skimage.metrics.adapted_rand_error(gt, seg, ignore_labels=ignore)[0]
    return float(split), float(merge), float(arand)


def blocks(shape=(4, 12, 12), n=3, seed=0) -> np.ndarray:
    """A piecewise-constant label volume (random boxes painted over each other)."""
    rng = np.random.default_rng(seed)
    labels = np.ones(shape, dtype=np.uint64)
    for label in range(2, n + 2):
        lo = [rng.integers(0, s) for s in shape]
        hi = [rng.integers(a + 1, s + 1) for a, s in zip(lo, shape)]
        labels[tuple(slice(a, b) for a, b in zip(lo, hi))] = label
    return labels


def test_identical_segmentation_scores_zero():
    gt = blocks(n=6)
    result = evaluate_segmentation(gt.copy(), gt)
    assert (result["voi_split"], result["voi_merge"], result["arand"]) == (0.0, 0.0, 0.0)
    assert result["voi"] == 0.0 and result["cremi_score"] == 0.0


def test_relabelled_identical_segmentation_scores_zero():
    gt = blocks(n=6)
    seg = gt * np.uint64(1000) + np.uint64(7)  # same partition, other ids
    assert variation_of_information(seg, gt) == (0.0, 0.0)
    assert adapted_rand_error(seg, gt) == 0.0


def test_pure_split_of_one_object_in_half_is_one_bit():
    gt = np.ones((2, 2, 2), dtype=np.uint32)
    seg = np.ones_like(gt)
    seg[:, :, 1] = 2
    split, merge = variation_of_information(seg, gt)
    assert split == pytest.approx(1.0, abs=1e-12)
    assert merge == 0.0
    # pairs of distinct voxels: together in both 2 * 4 * 3 = 24, in seg 24,
    # in gt 8 * 7 = 56 -> 1 - 24 / ((24 + 56) / 2)
    assert adapted_rand_error(seg, gt) == pytest.approx(0.4)


def test_pure_merge_of_two_halves_is_one_bit():
    seg = np.ones((2, 2, 2), dtype=np.uint32)
    gt = np.ones_like(seg)
    gt[:, :, 1] = 2
    split, merge = variation_of_information(seg, gt)
    assert split == 0.0
    assert merge == pytest.approx(1.0, abs=1e-12)
    assert adapted_rand_error(seg, gt) == pytest.approx(0.4)


def test_split_into_four_equal_parts_is_two_bits():
    gt = np.full((1, 4, 4), 9, dtype=np.int64)
    seg = np.arange(4).repeat(4).reshape(1, 4, 4)
    assert variation_of_information(seg, gt) == (pytest.approx(2.0), 0.0)


def test_voxels_with_ignored_gt_label_do_not_matter():
    rng = np.random.default_rng(1)
    gt = blocks(n=5, seed=1)
    gt[:, :3] = 0
    seg = gt.copy()
    seg[:, 5:, 5:] = 99  # a real merge, outside the ignored region
    base = evaluate_segmentation(seg, gt)
    noisy = seg.copy()
    noisy[gt == 0] = rng.integers(1, 50, size=int((gt == 0).sum()))
    assert evaluate_segmentation(noisy, gt) == base
    assert base["n_voxels"] == int((gt != 0).sum())


def test_custom_ignore_labels_and_no_ignore():
    gt = blocks(n=4, seed=2)
    seg = blocks(n=4, seed=3)
    expected = skimage_reference(seg, gt, ignore=(1, 3))
    assert variation_of_information(seg, gt, ignore_gt=(1, 3)) == pytest.approx(expected[:2])
    assert adapted_rand_error(seg, gt, ignore_gt=(1, 3)) == pytest.approx(expected[2])
    # nothing ignored: gt 0 voxels count like any other label
    gt[0] = 0
    expected = skimage_reference(seg, gt, ignore=())
    assert variation_of_information(seg, gt, ignore_gt=()) == pytest.approx(expected[:2])
    assert evaluate_segmentation(seg, gt, ignore_gt=())["n_voxels"] == gt.size


def test_ignore_label_outside_the_dtype_range_matches_nothing():
    gt = blocks(n=3).astype(np.uint8)
    seg = blocks(n=3, seed=5)
    assert evaluate_segmentation(seg, gt, ignore_gt=(-1, 300)) == evaluate_segmentation(
        seg, gt, ignore_gt=()
    )


def test_large_uint64_and_noncontiguous_ids_match_small_ids():
    gt = blocks(n=5, seed=4)
    seg = blocks(n=7, seed=6)
    small = evaluate_segmentation(seg, gt)
    huge = np.array([2**64 - 1, 2**63 + 12345, 17, 2**40, 0, 3, 2**62, 5, 11], dtype=np.uint64)
    big_seg = huge[seg.astype(np.intp)]
    huge_gt = np.array([0, 2**64 - 2, 2**61 + 1, 123456789012, 2**33, 8, 2**63], dtype=np.uint64)
    big_gt = huge_gt[gt.astype(np.intp)]
    assert evaluate_segmentation(big_seg, big_gt) == pytest.approx(small)
    # views that are not C-contiguous
    transposed = evaluate_segmentation(seg.T, gt.T)
    assert transposed == pytest.approx(small)
    strided = evaluate_segmentation(seg[:, ::2], gt[:, ::2])
    assert strided == pytest.approx(evaluate_segmentation(seg[:, ::2].copy(), gt[:, ::2].copy()))


def test_result_keys_types_and_cremi_score():
    gt = blocks(n=5, seed=7)
    seg = blocks(n=5, seed=8)
    result = evaluate_segmentation(seg, gt)
    assert set(result) == KEYS
    json.dumps(result)
    for key in ("n_seg_ids", "n_gt_ids", "n_voxels"):
        assert type(result[key]) is int
    for key in KEYS - {"n_seg_ids", "n_gt_ids", "n_voxels"}:
        assert type(result[key]) is float
    assert result["voi"] == pytest.approx(result["voi_split"] + result["voi_merge"])
    assert result["cremi_score"] == pytest.approx(math.sqrt(result["voi"] * result["arand"]))
    assert result["n_gt_ids"] == len(np.unique(gt[gt != 0]))
    assert result["n_seg_ids"] == len(np.unique(seg[gt != 0]))


def test_contingency_counts_add_up():
    gt = blocks(n=4, seed=9)
    seg = blocks(n=4, seed=10)
    table = contingency(seg, gt)
    n = int((gt != 0).sum())
    assert table.n_voxels == n
    assert table.pair_counts.sum() == table.seg_sizes.sum() == table.gt_sizes.sum() == n


def test_all_voxels_ignored_scores_zero():
    gt = np.zeros((3, 4, 5), dtype=np.uint64)
    seg = np.arange(gt.size, dtype=np.uint64).reshape(gt.shape)
    result = evaluate_segmentation(seg, gt)
    assert result["n_voxels"] == 0 and result["voi"] == 0.0 and result["arand"] == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        evaluate_segmentation(np.zeros((2, 3, 4), np.uint64), np.zeros((2, 4, 3), np.uint64))
    with pytest.raises(ValueError, match="same shape"):
        variation_of_information(np.zeros((5,), np.uint64), np.zeros((6,), np.uint64))


def test_float_labels_raise():
    with pytest.raises(ValueError, match="integer"):
        adapted_rand_error(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint64))


@pytest.mark.parametrize("seed", range(4))
def test_matches_skimage_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    shape = (5, 9, 11)
    gt = rng.integers(0, 6, size=shape)
    seg = rng.integers(0, 9, size=shape).astype(np.uint16)
    ours = variation_of_information(seg, gt) + (adapted_rand_error(seg, gt),)
    assert ours == pytest.approx(skimage_reference(seg, gt), abs=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_matches_skimage_on_structured_labels(seed):
    rng = np.random.default_rng(seed)
    gt = blocks(shape=(6, 16, 16), n=8, seed=seed)
    gt[rng.random(gt.shape) < 0.05] = 0  # a sprinkle of ignored voxels
    seg = blocks(shape=(6, 16, 16), n=8, seed=seed)
    seg[:, :, 8:] += 20  # split every object crossing the middle
    seg[seg == 3] = 4  # and merge two
    ours = variation_of_information(seg, gt) + (adapted_rand_error(seg, gt),)
    assert ours == pytest.approx(skimage_reference(seg, gt), abs=1e-10)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            arrays(np.int64, n, elements=st.integers(0, 4)),
            arrays(np.int64, n, elements=st.integers(0, 5)),
        )
    )
)
def test_matches_skimage_property(pair):
    gt, seg = pair
    assume((gt != 0).any())  # skimage normalises by the voxel count: 0 / 0
    reference = skimage_reference(seg, gt)
    ours = variation_of_information(seg, gt) + (adapted_rand_error(seg, gt),)
    assert ours[:2] == pytest.approx(reference[:2], abs=1e-10)
    # skimage divides 0 by 0 (nan) when every counted voxel is a singleton
    if math.isfinite(reference[2]):
        assert ours[2] == pytest.approx(reference[2], abs=1e-10)


def test_many_ids_take_the_sparse_path_and_still_match_skimage():
    # ~every voxel its own segment: seg ids x gt ids far exceeds the voxel count
    rng = np.random.default_rng(11)
    shape = (10, 40, 50)
    seg = rng.permutation(np.prod(shape)).reshape(shape)
    gt = rng.integers(0, 800, size=shape)
    ours = variation_of_information(seg, gt) + (adapted_rand_error(seg, gt),)
    assert ours == pytest.approx(skimage_reference(seg, gt), abs=1e-9)
