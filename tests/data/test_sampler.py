"""Training crops: inside the region, padded where the region is small, lazy equals in-memory."""

from __future__ import annotations

import numpy as np
import pytest

from tokenunify.data import sampler as sampler_module
from tokenunify.data.sampler import CropSampler, resolve_region
from tokenunify.errors import InputError
from tokenunify.io import open_volume, write_volume


@pytest.fixture
def volumes(tmp_path):
    raw = (np.arange(20)[:, None, None] * np.ones((20, 16, 24))).astype(np.uint8)  # raw value = z index
    labels = raw.astype(np.uint64) + 1
    write_volume(f"{tmp_path}/d.h5:raw", raw, (1, 1, 1))
    write_volume(f"{tmp_path}/d.h5:labels", labels, (1, 1, 1))
    return open_volume(f"{tmp_path}/d.h5:raw"), open_volume(f"{tmp_path}/d.h5:labels")


def test_crops_stay_in_region(volumes):
    raw, labels = volumes
    sampler = CropSampler(raw, labels, resolve_region(raw, (5, 15)), (4, 8, 8))
    rng = np.random.default_rng(0)
    for _ in range(50):
        r, lab = sampler.sample(rng)
        z = np.round(r[:, 0, 0] * 255).astype(int)
        assert r.shape == (4, 8, 8) and r.dtype == np.float32
        assert 5 <= z.min() and z.max() < 15
        np.testing.assert_array_equal(lab[:, 0, 0], z + 1)


def test_small_region_is_padded(volumes):
    raw, labels = volumes
    sampler = CropSampler(raw, labels, resolve_region(raw, (0, 3)), (8, 8, 8))
    r, lab = sampler.sample(np.random.default_rng(1))
    assert r.shape == (8, 8, 8)
    assert set(np.unique(lab)) <= {1, 2, 3}


def test_lazy_matches_in_memory(volumes, monkeypatch):
    raw, labels = volumes
    eager = CropSampler(raw, labels, resolve_region(raw, (2, 18)), (4, 8, 8))
    monkeypatch.setattr(sampler_module, "_IN_MEMORY_VOXELS", 0)
    lazy = CropSampler(raw, labels, resolve_region(raw, (2, 18)), (4, 8, 8))
    for seed in range(5):
        a, b = eager.sample(np.random.default_rng(seed)), lazy.sample(np.random.default_rng(seed))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_bad_region(volumes):
    raw, _ = volumes
    with pytest.raises(InputError, match="outside"):
        resolve_region(raw, (10, 30))
