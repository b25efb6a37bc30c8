"""benchmarks/arand_anatomy.py: the split and merge terms against the project's ARAND and a hand count."""

from __future__ import annotations

import numpy as np

from tokenunify.evaluate.metrics import adapted_rand_error

from benchmark_loader import load_benchmark

anatomy = load_benchmark("arand_anatomy")


def test_terms_match_arand_on_random_labels() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (6, 7, 8)).astype(np.uint64)
    seg = rng.integers(1, 5, (6, 7, 8)).astype(np.uint64)
    terms = anatomy.rand_terms(seg, gt)
    assert abs(terms["arand"] - adapted_rand_error(seg, gt)) < 1e-12


def test_a_pure_split_has_no_merge_term() -> None:
    gt = np.ones((1, 1, 4), np.uint64)  # one object of 4 voxels: 12 ordered pairs
    seg = np.array([[[1, 1, 2, 2]]], np.uint64)  # cut in halves: 2 + 2 pairs kept
    terms = anatomy.rand_terms(seg, gt)
    assert terms["merge"] == 0.0 and abs(terms["split"] - (1 - 4 / 12)) < 1e-12


def test_largest_objects_kept_and_foreign_shares() -> None:
    gt = np.array([[[1, 1, 1, 2, 2, 0]]], np.uint64)  # label 0 is not counted as foreign
    seg = np.array([[[5, 5, 6, 6, 6, 6]]], np.uint64)
    big, small = anatomy.largest_objects(seg, gt, 2)
    assert big == {"label": 1, "voxels": 3, "of_labelled": 3 / 5, "kept": 2 / 3, "foreign": 0.0}
    assert small["voxels"] == 2 and small["kept"] == 1.0 and abs(small["foreign"] - 1 / 3) < 1e-12


def test_cut_alone_is_the_arand_of_that_cut_only() -> None:
    gt = np.array([[[1, 1, 1, 1, 2, 2]]], np.uint64)
    seg = np.array([[[7, 7, 8, 8, 9, 7]]], np.uint64)  # object 1 cut in halves, object 2 also damaged
    cut = np.array([[[3, 3, 4, 4, 2, 2]]], np.uint64)  # the ground truth with only object 1 cut
    assert anatomy.cut_alone(seg, gt, 1) == adapted_rand_error(cut, gt)
    assert anatomy.cut_alone(np.ones_like(seg), gt, 1) == 0.0
    # a piece under min_share stays with the largest piece
    seg3 = np.array([[[7, 7, 7, 8, 9, 9]]], np.uint64)
    assert anatomy.cut_alone(seg3, gt, 1, min_share=0.3) == 0.0
    assert anatomy.cut_alone(seg3, gt, 1, min_share=0.25) == anatomy.cut_alone(seg3, gt, 1) > 0


def test_cut_intensity_separates_cut_boundary_and_inside() -> None:
    gt = np.array([[[1, 1, 1, 1, 1, 2]]], np.uint64)
    seg = np.array([[[5, 5, 6, 6, 6, 7]]], np.uint64)
    raw = np.array([[[10, 20, 30, 40, 50, 60]]], np.float32)
    out = anatomy.cut_intensity(seg, gt, raw, 1)
    # cut between voxels 1 and 2; voxel 4 touches object 2; voxels 0 and 3 are inside
    assert out == {"cut": 25.0, "cut_voxels": 2, "boundary": 50.0, "inside": 25.0}
    # the 2-voxel piece is 40% of the object: below min_share 0.5 it counts as kept, so there is no cut
    out = anatomy.cut_intensity(seg, gt, raw, 1, min_share=0.5)
    assert np.isnan(out["cut"]) and out["cut_voxels"] == 0 and out["inside"] == 25.0
