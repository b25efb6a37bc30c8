"""Affinity targets, masks and balancing weights on hand-made label volumes."""

from __future__ import annotations

import numpy as np
import pytest

from tokenunify.finetune.affinities import (
    affinities_from_labels,
    affinity_mask,
    balance_weights,
)
from tokenunify.offsets import LONG_RANGE_OFFSETS
from tokenunify.offsets import NEAREST as DEFAULT_OFFSETS


def _two_labels_split_x() -> np.ndarray:
    labels = np.ones((3, 4, 6), dtype=np.uint64)
    labels[:, :, 3:] = 2
    return labels


def test_default_offsets() -> None:
    assert DEFAULT_OFFSETS == ((-1, 0, 0), (0, -1, 0), (0, 0, -1))
    assert LONG_RANGE_OFFSETS[:3] == DEFAULT_OFFSETS


def test_split_along_x() -> None:
    labels = _two_labels_split_x()
    affs = affinities_from_labels(labels)
    assert affs.shape == (3, 3, 4, 6) and affs.dtype == np.float32
    ax = affs[2]
    # x-affinity at x compares x and x-1: 0 on the first column (outside) and
    # exactly at the label border x=3, 1 everywhere else.
    assert (ax[:, :, 0] == 0).all()
    assert (ax[:, :, 3] == 0).all()
    for x in (1, 2, 4, 5):
        assert (ax[:, :, x] == 1).all()
    # z and y affinities do not see the x split: 1 except on their own border.
    assert (affs[0, 0] == 0).all() and (affs[0, 1:] == 1).all()
    assert (affs[1, :, 0] == 0).all() and (affs[1, :, 1:] == 1).all()


def test_zero_label_is_never_affine() -> None:
    labels = np.ones((2, 3, 3), dtype=np.uint64)
    labels[1, 1, 1] = 0
    labels[0] = 0  # two background voxels next to each other must not connect
    affs = affinities_from_labels(labels)
    assert affs[:, 0].max() == 0  # the whole background slice
    assert affs[:, 1, 1, 1].max() == 0  # v is background
    assert affs[1, 1, 2, 1] == 0  # neighbour (y-1) is background
    assert affs[2, 1, 1, 2] == 0  # neighbour (x-1) is background
    assert affs[2, 1, 0, 2] == 1


def test_border_voxels_zero() -> None:
    affs = affinities_from_labels(np.full((4, 5, 6), 7, dtype=np.uint64))
    assert (affs[0, 0] == 0).all() and (affs[0, 1:] == 1).all()
    assert (affs[1, :, 0] == 0).all() and (affs[1, :, 1:] == 1).all()
    assert (affs[2, :, :, 0] == 0).all() and (affs[2, :, :, 1:] == 1).all()


def test_positive_offsets_point_forward() -> None:
    labels = _two_labels_split_x()
    affs = affinities_from_labels(labels, offsets=[(0, 0, 1)])
    assert (affs[0, :, :, 5] == 0).all()  # neighbour outside on the far side
    assert (affs[0, :, :, 2] == 0).all()  # x=2 (label 1) vs x=3 (label 2)
    assert (affs[0, :, :, [0, 1, 3, 4]] == 1).all()


def test_long_range_offsets() -> None:
    labels = np.zeros((4, 10, 10), dtype=np.uint64)
    labels[:, :, :5] = 1
    labels[:, :, 5:] = 2
    labels[3] = 3
    affs = affinities_from_labels(labels, LONG_RANGE_OFFSETS)
    assert affs.shape == (6, 4, 10, 10)
    az2, ay8, ax8 = affs[3], affs[4], affs[5]
    # (-2, 0, 0): z=2 compares with z=0 (same labels), z=3 with z=1 (3 vs 1/2).
    assert (az2[:2] == 0).all() and (az2[2] == 1).all() and (az2[3] == 0).all()
    # (0, -8, 0): only y >= 8 has a neighbour inside.
    assert (ay8[:, :8] == 0).all() and (ay8[:3, 8:] == 1).all()
    # (0, 0, -8): x in 8..9 looks at x 0..1, the other label, except in the
    # uniform top slice.
    assert ax8[:3].max() == 0 and (ax8[:, :, :8] == 0).all()
    assert (ax8[3, :, 8:] == 1).all()
    # An offset longer than the axis leaves the channel empty.
    assert affinities_from_labels(labels, [(0, 0, -10)]).max() == 0


def test_offset_validation() -> None:
    labels = np.ones((2, 2, 2), dtype=np.uint64)
    with pytest.raises(ValueError):
        affinities_from_labels(labels, [(0, -1)])
    with pytest.raises(ValueError):
        affinities_from_labels(labels, [(0, 0, 0)])


def test_mask_edges_inside_volume() -> None:
    labels = _two_labels_split_x()
    labels[0, 0, 0] = 0
    mask = affinity_mask(labels, LONG_RANGE_OFFSETS)
    assert mask.shape == (6, 3, 4, 6) and mask.dtype == np.float32
    assert (mask[0, 0] == 0).all() and (mask[0, 1:] == 1).all()
    assert (mask[5, :, :, :8] == 0).all()  # x axis has only 6 voxels
    # By default edges into background are kept: they are real negatives.
    assert mask[2, 0, 0, 1] == 1
    zero_masked = affinity_mask(labels, ignore_zero=True)
    assert zero_masked[2, 0, 0, 1] == 0 and zero_masked[0, 1, 0, 0] == 0
    assert zero_masked[2, 0, 1, 1] == 1


def test_mask_valid_region() -> None:
    labels = np.ones((2, 4, 4), dtype=np.uint64)
    valid = np.ones(labels.shape, bool)
    valid[:, :, 2:] = False
    mask = affinity_mask(labels, valid=valid)
    assert (mask[2, :, :, 1] == 1).all()
    assert (mask[2, :, :, 2:] == 0).all()  # one end outside the valid region
    assert (mask[1, :, 1:, 2:] == 0).all() and (mask[1, :, 1:, :2] == 1).all()


def test_balance_weights_equal_class_totals() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(6, 12, 12)).astype(np.uint64)
    affs = affinities_from_labels(labels)
    mask = affinity_mask(labels)
    w = balance_weights(affs, mask)
    assert w.shape == affs.shape and w.dtype == np.float32
    assert (w[mask == 0] == 0).all()
    for c in range(affs.shape[0]):
        pos = (affs[c] == 1) & (mask[c] == 1)
        neg = (affs[c] == 0) & (mask[c] == 1)
        assert pos.any() and neg.any()
        frac = pos.sum() / (pos.sum() + neg.sum())
        assert 0.05 < frac < 0.95  # no clipping in this example
        np.testing.assert_allclose(w[c][pos].sum(), w[c][neg].sum(), rtol=1e-5)
        np.testing.assert_allclose(w[c].sum(), mask[c].sum(), rtol=1e-5)


def test_balance_weights_clip_and_empty() -> None:
    affs = np.zeros((2, 1, 10, 10), np.float32)
    affs[0, 0, 0, 0] = 1  # 1 % positives: clipped to 5 %
    w = balance_weights(affs, clip=(0.05, 0.95))
    assert w[0, 0, 0, 0] == pytest.approx(0.5 / 0.05)
    assert w[0, 0, 5, 5] == pytest.approx(0.5 / 0.95)
    # Without a mask every edge counts; with an all-zero mask nothing does.
    assert (w[1] == np.float32(0.5 / 0.95)).all()
    assert balance_weights(affs, np.zeros_like(affs)).max() == 0
    with pytest.raises(ValueError):
        balance_weights(affs, clip=(0.0, 0.5))
