"""Tests for tokenunify.data.synthetic."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from scipy import ndimage as ndi

from tokenunify.data.synthetic import SyntheticVolume, make_synthetic_volume

SMALL = (8, 64, 64)


@lru_cache(maxsize=None)
def _vol(**kw) -> SyntheticVolume:
    """Cached volumes: several tests look at the same one."""
    return make_synthetic_volume(**kw)


def _boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Voxels whose in-plane 4-neighbourhood has another id."""
    b = np.zeros(labels.shape, dtype=bool)
    dy = labels[:, 1:, :] != labels[:, :-1, :]
    dx = labels[:, :, 1:] != labels[:, :, :-1]
    b[:, 1:, :] |= dy
    b[:, :-1, :] |= dy
    b[:, :, 1:] |= dx
    b[:, :, :-1] |= dx
    return b


def _change_rate_per_nm(labels: np.ndarray, axis: int, voxel_nm: float) -> float:
    """How often the id changes per nm walked along an axis."""
    d = np.diff(labels, axis=axis) != 0
    return float(d.mean()) / voxel_nm


def test_types_and_shapes() -> None:
    v = _vol(shape=SMALL, seed=1)
    assert v.raw.shape == SMALL and v.labels.shape == SMALL
    assert v.raw.dtype == np.uint8
    assert v.labels.dtype == np.uint64
    assert v.voxel_size == (40, 8, 8)
    assert v.missing_sections == () and v.misalignments == ()
    assert v.raw.std() > 10  # not a blank image


def test_deterministic_per_seed() -> None:
    a = make_synthetic_volume(shape=SMALL, seed=3, missing_section_prob=0.2, misalignment_prob=0.2)
    b = make_synthetic_volume(shape=SMALL, seed=3, missing_section_prob=0.2, misalignment_prob=0.2)
    assert np.array_equal(a.raw, b.raw)
    assert np.array_equal(a.labels, b.labels)
    assert a.missing_sections == b.missing_sections and a.misalignments == b.misalignments
    c = make_synthetic_volume(shape=SMALL, seed=4)
    assert not np.array_equal(a.raw, c.raw)


def test_labels_dense_positive_and_connected() -> None:
    v = _vol(shape=SMALL, seed=2)
    lab = v.labels
    assert lab.min() >= 1
    ids = np.unique(lab)
    assert np.array_equal(ids, np.arange(1, ids.size + 1, dtype=np.uint64))
    for i, sl in enumerate(ndi.find_objects(lab.astype(np.int64)), start=1):
        _, n = ndi.label(lab[sl] == i)
        assert n == 1, f"id {i} is in {n} pieces"


def test_membrane_label_zero() -> None:
    v = make_synthetic_volume(shape=SMALL, seed=2, membrane_label_zero=True)
    zero = v.labels == 0
    assert 0.03 < zero.mean() < 0.4
    ids = np.unique(v.labels[~zero])
    assert np.array_equal(ids, np.arange(1, ids.size + 1, dtype=np.uint64))


def test_membranes_darker_than_interiors() -> None:
    v = _vol(shape=SMALL, seed=5, membrane_label_zero=True)
    raw = v.raw.astype(np.float64)
    mem, inside = v.labels == 0, v.labels > 0
    # Far from any membrane (interiors still hold dark organelles).
    far = ndi.binary_erosion(inside, structure=np.ones((1, 5, 5), bool))
    assert raw[mem].mean() < raw[far].mean() - 30
    # The same holds for dense labels, measured at id changes.
    d = _vol(shape=SMALL, seed=5)
    b = _boundary_mask(d.labels)
    assert d.raw[b].mean() < d.raw[~b].mean() - 20


def test_default_cell_size() -> None:
    # its speed is printed by benchmarks/bench_augment.py, not asserted here
    v = make_synthetic_volume()  # the documented default, 32x128x128
    assert v.raw.shape == (32, 128, 128)
    diam = []
    for z in range(0, 32, 8):
        lab = v.labels[z]
        edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        ids, counts = np.unique(lab, return_counts=True)
        keep = ~np.isin(ids, edge)
        diam += list(np.sqrt(4 * counts[keep] / np.pi))
    assert len(diam) >= 8
    assert 18 <= np.median(diam) <= 45, np.median(diam)


def test_anisotropy_generated_in_physical_space() -> None:
    # Same tissue model on two z samplings: id changes per nm along z agree,
    # and cells are longer along z than across.
    thick = make_synthetic_volume(shape=(16, 96, 96), voxel_size=(40, 8, 8), seed=7, organelles=False)
    thin = make_synthetic_volume(shape=(64, 96, 96), voxel_size=(10, 8, 8), seed=7, organelles=False)
    rz_thick = _change_rate_per_nm(thick.labels, 0, 40)
    rz_thin = _change_rate_per_nm(thin.labels, 0, 10)
    ry = _change_rate_per_nm(thick.labels, 1, 8)
    assert 0.5 < rz_thick / rz_thin < 2.0
    assert rz_thick < 0.6 * ry
    # Thick sections: a z step crosses more borders than an xy step.
    assert np.mean(np.diff(thick.labels, axis=0) != 0) > np.mean(np.diff(thick.labels, axis=1) != 0)


def test_missing_sections_flat_and_labels_kept() -> None:
    clean = _vol(shape=SMALL, seed=9)
    v = make_synthetic_volume(shape=SMALL, seed=9, missing_section_prob=0.4)
    assert len(v.missing_sections) > 0
    for z in v.missing_sections:
        assert v.raw[z].min() == v.raw[z].max()
    kept = [z for z in range(SMALL[0]) if z not in v.missing_sections]
    assert np.array_equal(v.raw[kept], clean.raw[kept])
    assert np.array_equal(v.labels, clean.labels)


def _agreement(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> float:
    """Fraction of equal ids when b is moved back by (dy, dx)."""
    h, w = a.shape
    m = 12
    return float(np.mean(a[m : h - m, m : w - m] == b[m + dy : h - m + dy, m + dx : w - m + dx]))


def test_misalignment_shifts_raw_and_labels() -> None:
    v = make_synthetic_volume(shape=(10, 64, 64), seed=11, misalignment_prob=0.5, max_shift_px=6)
    assert len(v.misalignments) > 0
    ids = np.unique(v.labels)
    assert ids[0] == 1 and np.array_equal(ids, np.arange(1, ids.size + 1, dtype=np.uint64))
    raw = v.raw.astype(np.float64)
    for z, dy, dx in v.misalignments:
        # Content of section z sits (dy, dx) further on than in section z-1.
        a, b = v.labels[z - 1], v.labels[z]
        assert _agreement(a, b, dy, dx) > _agreement(a, b, 0, 0)
        ra, rb = raw[z - 1], raw[z]
        h, w, m = 64, 64, 12
        win = np.s_[m : h - m, m : w - m]
        shifted = rb[m + dy : h - m + dy, m + dx : w - m + dx]
        corr_shift = np.corrcoef(ra[win].ravel(), shifted.ravel())[0, 1]
        corr_plain = np.corrcoef(ra[win].ravel(), rb[win].ravel())[0, 1]
        assert corr_shift > corr_plain


def test_isotropic_and_options() -> None:
    v = make_synthetic_volume(shape=(24, 48, 40), voxel_size=(8, 8, 8), seed=0, noise=0.0, blur=0.0, organelles=False)
    assert v.raw.shape == (24, 48, 40)
    assert v.labels.min() >= 1
    with pytest.raises(ValueError):
        make_synthetic_volume(shape=(0, 8, 8))
    with pytest.raises(ValueError):
        make_synthetic_volume(voxel_size=(0, 8, 8))
