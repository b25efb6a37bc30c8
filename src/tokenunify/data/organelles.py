"""Organelles for the synthetic EM volumes: mitochondria, vesicles and ER.

These are the look-alikes of a cell border (dark rims, curvy lines) that make
synthetic membranes hard to segment by intensity alone; they are stamped in
physical (nm) space and never leak across their host cell's membrane.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["organelle_darkness"]


def organelle_darkness(rng: np.random.Generator, labels: np.ndarray, border_nm: np.ndarray,
                       axes_nm: list[np.ndarray], vs: np.ndarray, cell_nm: float, membrane_nm: float) -> np.ndarray:
    """Darkness map in [0, 1] of mitochondria, vesicles and ER, confined to cells.

    `labels` are the cells, `border_nm` each voxel's distance (nm) to the
    nearest cell border, `axes_nm` the physical voxel coordinates per axis,
    `vs` the voxel size (nm), `cell_nm` the typical cell diameter.
    """
    dark = np.zeros(labels.shape, dtype=np.float32)
    extent = np.array([len(a) for a in axes_nm]) * vs
    vol_um3 = float(np.prod(extent)) / 1e9
    margin = membrane_nm

    def inside(p: np.ndarray, clearance: float) -> int:
        """Label at a physical point if it lies clear of membranes, else 0."""
        v = tuple(np.clip(np.rint(p / vs).astype(int), 0, np.array(labels.shape) - 1))
        return int(labels[v]) if border_nm[v] > clearance else 0

    # Mitochondria: elongated, mostly along the neurite (z), dark rim and
    # striped interior -- the rim is what a model can mistake for membrane.
    for _ in range(rng.poisson(50.0 * vol_um3)):
        r = rng.uniform(35.0, 0.25 * cell_nm)
        length = rng.uniform(2.0, 4.0) * r
        c = rng.random(3) * extent
        u = rng.standard_normal(3) * np.array([2.5, 1.0, 1.0])
        u /= np.linalg.norm(u)
        host = inside(c, r + margin)
        if host:
            _stamp_mito(dark, labels, border_nm, host, c, u, r, length, axes_nm, vs, rng, margin)

    # Vesicle clusters (synaptic boutons) and scattered single vesicles.
    centres = []
    for _ in range(rng.poisson(12.0 * vol_um3)):
        c = rng.random(3) * extent
        k = rng.integers(10, 40)
        centres.append(c + rng.standard_normal((k, 3)) * rng.uniform(30, 70))
    centres.append(rng.random((rng.poisson(150.0 * vol_um3), 3)) * extent)
    pts = np.concatenate(centres) if centres else np.zeros((0, 3))
    radii = rng.uniform(14.0, 24.0, len(pts))
    for p, rv in zip(pts, radii):
        host = inside(p, rv + margin)
        if host:
            _stamp_vesicle(dark, labels, host, p, rv, axes_nm, vs)
    # Endoplasmic reticulum / membrane fragments: thin, curvy dark lines in
    # patches of the cytoplasm -- the main look-alike of a cell border.
    er = _curvy_lines(rng, labels.shape, vs, scale_nm=50.0, width_nm=max(8.0, 0.8 * vs[1]))
    er *= np.clip((border_nm - margin) / margin, 0.0, 1.0)
    np.maximum(dark, 0.6 * er, out=dark)
    return np.clip(dark, 0.0, 1.0)


def _curvy_lines(rng: np.random.Generator, shape, vs: np.ndarray, scale_nm: float, width_nm: float) -> np.ndarray:
    """Zero-crossings of a smooth random field, kept only in sparse patches."""
    f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=scale_nm / vs)
    gate = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=2.5 * scale_nm / vs)
    if min(shape) < 2:
        return np.zeros(shape, dtype=np.float32)
    g = np.sqrt(sum(gi * gi for gi in np.gradient(f, *vs))) + 1e-12
    dist = np.abs(f) / g  # first-order distance (nm) to the zero set
    lines = np.exp(-0.5 * (dist / (width_nm / 2.355)) ** 2)
    keep = np.clip((gate / (gate.std() + 1e-12) - 0.1) * 1.5, 0.0, 1.0)
    return (lines * keep).astype(np.float32)


def _box(c: np.ndarray, half: np.ndarray, vs: np.ndarray, shape) -> tuple[slice, ...] | None:
    lo = np.maximum(np.floor((c - half) / vs).astype(int), 0)
    hi = np.minimum(np.ceil((c + half) / vs).astype(int) + 1, shape)
    if (hi <= lo).any():
        return None
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _offsets(sl, c: np.ndarray, axes_nm, vs: np.ndarray):
    """Offsets (nm) of a box's voxels from c; z offsets shrink by half a
    section because a section shows everything within its thickness."""
    dz = axes_nm[0][sl[0]] - c[0]
    dz = np.sign(dz) * np.maximum(np.abs(dz) - 0.5 * vs[0] + 0.5 * vs[1], 0.0)
    return dz[:, None, None], (axes_nm[1][sl[1]] - c[1])[:, None], axes_nm[2][sl[2]] - c[2]


def _stamp_mito(dark, labels, border_nm, host, c, u, r, length, axes_nm, vs, rng, margin) -> None:
    half = np.abs(u) * length + r + 2 * vs
    sl = _box(c, half, vs, labels.shape)
    if sl is None:
        return
    dz, dy, dx = _offsets(sl, c, axes_nm, vs)
    t = dz * u[0] + dy * u[1] + dx * u[2]
    perp2 = dz**2 + dy**2 + dx**2 - t**2
    q = np.sqrt((t / length) ** 2 + np.maximum(perp2, 0.0) / r**2)
    rim_w = max(7.0, 0.6 * vs[1])
    rim = np.exp(-0.5 * ((q - 1.0) * r / rim_w) ** 2)
    cristae = 0.5 + 0.5 * np.sin(t * (2 * np.pi / rng.uniform(45, 70)) + rng.uniform(0, 2 * np.pi))
    body = (q < 1.0) * (0.3 + 0.3 * cristae)
    d = np.maximum(0.75 * rim, body)
    # Never leak across the host's membrane.
    d *= (labels[sl] == host) * np.clip(border_nm[sl] / margin - 0.5, 0.0, 1.0)
    np.maximum(dark[sl], d.astype(np.float32), out=dark[sl])


def _stamp_vesicle(dark, labels, host, c, rv, axes_nm, vs) -> None:
    half = np.full(3, rv) + 2 * vs
    sl = _box(c, half, vs, labels.shape)
    if sl is None:
        return
    dz, dy, dx = _offsets(sl, c, axes_nm, vs)
    rho = np.sqrt(dz**2 + dy**2 + dx**2)
    # A ring at small pixel sizes, a dark dot once the pixel is too coarse
    # to resolve the lumen.
    w = max(5.0, 0.6 * vs[1])
    d = 0.6 * np.exp(-0.5 * ((rho - rv) / w) ** 2) + 0.25 * (rho < rv)
    d *= labels[sl] == host
    np.maximum(dark[sl], d.astype(np.float32), out=dark[sl])
