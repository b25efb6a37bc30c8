"""Label volumes shared by several test files."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def voronoi_labels(shape=(12, 40, 40), n=12, seed=0) -> np.ndarray:
    """Dense labels 1..n: each voxel takes the id of its nearest random site."""
    rng = np.random.default_rng(seed)
    sites = np.unique(rng.integers(0, shape, size=(n, 3)), axis=0)
    not_site = np.ones(shape, dtype=bool)
    not_site[tuple(sites.T)] = False
    _, nearest = ndimage.distance_transform_edt(not_site, return_indices=True)
    ids = np.zeros(shape, dtype=np.uint64)
    ids[tuple(sites.T)] = np.arange(1, len(sites) + 1, dtype=np.uint64)
    return ids[tuple(nearest)]
