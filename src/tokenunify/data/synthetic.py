"""Seeded synthetic EM volumes with dense neuron labels.

Tissue is built in physical (nm) space and sampled on the voxel grid, so one
cell model gives anisotropic ssTEM-like (40x4x4 nm) and isotropic FIB-SEM-like
(8x8x8 nm) stacks.  Cells are a Voronoi tessellation of hard-core random seeds
in a space with z compressed (neurite-like tubes along z) and smoothly warped
(curved borders); the distance to the nearest border draws the membrane.
Everything comes from one generator in a fixed order: a seed is bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from tokenunify.data.organelles import organelle_darkness

__all__ = ["SyntheticVolume", "make_synthetic_volume"]

# Tubes along z: a cell extends this many times further in z than in xy.
_Z_ELONGATION = 3.0
# Darkest grey of a membrane / organelle rim (raw is in [0, 1] before uint8).
_MEMBRANE_GREY = 0.12
_ORGANELLE_GREY = 0.18


@dataclass
class SyntheticVolume:
    """A synthetic EM stack.

    Attributes:
        raw: uint8 image, axes (z, y, x).
        labels: uint64 neuron ids, same shape; ids are 1..n without gaps
            (0 only on membranes when ``membrane_label_zero`` was asked).
        voxel_size: nm per voxel, (z, y, x).
        missing_sections: z indices whose raw was replaced by a flat value.
        misalignments: ``(z, dy, dx)`` events: from section z onward raw and
            labels are shifted by a further (dy, dx) pixels.
    """

    raw: np.ndarray
    labels: np.ndarray
    voxel_size: tuple[int, int, int]
    missing_sections: tuple[int, ...] = ()
    misalignments: tuple[tuple[int, int, int], ...] = ()


def make_synthetic_volume(
    shape: tuple[int, int, int] = (32, 128, 128),
    voxel_size: tuple[int, int, int] = (40, 8, 8),
    seed: int = 0,
    cell_size_nm: float = 250.0,
    membrane_nm: float = 20.0,
    noise: float = 0.07,
    blur: float = 8.0,
    missing_section_prob: float = 0.0,
    misalignment_prob: float = 0.0,
    max_shift_px: int = 8,
    organelles: bool = True,
    membrane_label_zero: bool = False,
) -> SyntheticVolume:
    """Generate a labelled, EM-looking volume.

    Args:
        shape: output shape in voxels, (z, y, x).
        voxel_size: nm per voxel, (z, y, x).
        seed: seed of the only random generator used.
        cell_size_nm: typical cell diameter in xy (nm).  At the defaults
            (8 nm pixels) cells are ~20-40 px across.
        membrane_nm: membrane thickness (full width at half darkness, nm).
        noise: std of additive gaussian noise on the [0, 1] grey scale.
        blur: std of the gaussian point-spread function in nm (each axis is
            converted with its own voxel size, so thick sections barely blur
            along z).
        missing_section_prob: per-section probability that the raw section
            is replaced by a flat grey (labels are kept).
        misalignment_prob: per-section probability (z >= 1) that raw *and*
            labels are shifted in xy from that section onward.
        max_shift_px: largest shift of one misalignment event, per axis.
        organelles: draw vesicles and mitochondria inside cells.
        membrane_label_zero: set membrane voxels to label 0.

    Returns:
        A :class:`SyntheticVolume`.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive ints, got {shape}")
    vs = np.asarray(voxel_size, dtype=np.float64)
    if vs.shape != (3,) or (vs <= 0).any():
        raise ValueError(f"voxel_size must be three positive numbers, got {voxel_size}")
    if cell_size_nm <= 0 or membrane_nm <= 0:
        raise ValueError("cell_size_nm and membrane_nm must be positive")
    rng = np.random.default_rng(seed)

    # Defects are drawn first: misalignment decides how much xy margin to
    # generate so shifted sections show real tissue rather than padding.
    missing = np.flatnonzero(rng.random(shape[0]) < missing_section_prob)
    events = []
    for z in range(1, shape[0]):
        if rng.random() < misalignment_prob and max_shift_px > 0:
            dy, dx = rng.integers(-max_shift_px, max_shift_px + 1, size=2)
            if dy or dx:
                events.append((z, int(dy), int(dx)))
    offsets = np.zeros((shape[0], 2), dtype=np.int64)
    for z, dy, dx in events:
        offsets[z:] += (dy, dx)
    pad = np.abs(offsets).max(axis=0) if events else np.zeros(2, dtype=np.int64)
    gshape = (shape[0], shape[1] + 2 * int(pad[0]), shape[2] + 2 * int(pad[1]))

    axes_nm = [np.arange(n, dtype=np.float64) * v for n, v in zip(gshape, vs)]
    labels, border_nm, border_soft = _tessellate(rng, axes_nm, vs, cell_size_nm)

    img = _cytoplasm(rng, labels, vs)
    if organelles:
        dark = organelle_darkness(rng, labels, border_nm, axes_nm, vs, cell_size_nm, membrane_nm)
        img = img * (1.0 - dark) + _ORGANELLE_GREY * dark

    # Membranes are uneven in real stains; modulate their strength smoothly.
    waves = _plane_wave_params(rng, 3 * cell_size_nm, 6)
    strength = np.clip(0.8 + 0.15 * _eval_waves(waves, [axes_nm[0] / _Z_ELONGATION, *axes_nm[1:]]), 0.3, 1.0)
    mem = np.exp(-0.5 * (border_soft / (membrane_nm / 2.355)) ** 2) * strength
    img = img * (1.0 - mem) + _MEMBRANE_GREY * mem

    if blur > 0:
        img = ndi.gaussian_filter(img, sigma=blur / vs, mode="reflect")
    # Section-to-section staining/thickness differences.
    gain = 1.0 + 0.04 * rng.standard_normal(gshape[0])
    bias = 0.02 * rng.standard_normal(gshape[0])
    img = img * gain[:, None, None] + bias[:, None, None]
    if noise > 0:
        img = img + rng.standard_normal(gshape, dtype=np.float32) * np.float32(noise)

    if membrane_label_zero:
        labels = np.where(border_nm < membrane_nm / 2, 0, labels)
    labels = _split_disconnected(labels)

    if events:
        img = _crop_shifted(img, offsets, pad, shape)
        labels = _crop_shifted(labels, offsets, pad, shape)
        labels = _compact(labels)

    raw = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if missing.size:
        # A lost section is filled with one flat grey, like stacks where the
        # acquisition software pads a gap.
        raw[missing] = np.uint8(np.median(raw))
    return SyntheticVolume(
        raw=raw,
        labels=labels.astype(np.uint64, copy=False),
        voxel_size=tuple(int(v) for v in voxel_size),
        missing_sections=tuple(int(z) for z in missing),
        misalignments=tuple(events),
    )


# --------------------------------------------------------------------------
# Cells


def _tessellate(rng: np.random.Generator, axes_nm: list[np.ndarray], vs: np.ndarray,
                cell_nm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warped Voronoi cells: labels, border distance (nm) and a section-averaged
    border distance that widens obliquely cut membranes in thick sections."""
    scale = np.array([1.0 / _Z_ELONGATION, 1.0, 1.0])
    lo = np.array([a[0] for a in axes_nm]) * scale
    hi = np.array([a[-1] for a in axes_nm]) * scale
    warp_amp = 0.25 * cell_nm
    margin = 1.5 * cell_nm + 3 * warp_amp
    seeds = _hard_core_seeds(rng, lo - margin, hi + margin, cell_nm)
    tree = cKDTree(seeds)
    warp_modes = [_plane_wave_params(rng, 2.5 * cell_nm, 5) for _ in range(3)]
    warp_amps = (0.3 * warp_amp, warp_amp, warp_amp)

    # Thick sections integrate the tissue over their depth; sample a few
    # planes per section so oblique membranes come out grey and wide.
    n_sub = 3 if vs[0] > 1.5 * min(vs[1], vs[2]) else 1
    dzs = (np.arange(n_sub) - (n_sub - 1) / 2) * vs[0] / n_sub
    soft = None
    for dz in dzs:
        ax = [axes_nm[0] + dz, axes_nm[1], axes_nm[2]]
        pts = _warped_points(ax, scale, warp_modes, warp_amps)
        d, idx = tree.query(pts, k=2)
        # Distance to the bisector of the two nearest seeds (exact Voronoi
        # border distance in the warped space, cheap from a 2-NN query).
        s1, s2 = seeds[idx[:, 0]], seeds[idx[:, 1]]
        sep = np.linalg.norm(s2 - s1, axis=1)
        bd = (d[:, 1] ** 2 - d[:, 0] ** 2) / (2.0 * np.maximum(sep, 1e-9))
        bd = _to_physical_distance(bd.reshape([len(a) for a in ax]), vs)
        if dz == 0 or n_sub == 1:
            labels = (idx[:, 0] + 1).reshape(bd.shape)
            border = bd
        soft = bd if soft is None else np.minimum(soft, bd)
    # Mix the sharpest and the central plane so oblique borders look hazy
    # rather than uniformly fat.
    soft = 0.5 * (soft + border)
    return labels, border.astype(np.float32), soft.astype(np.float32)


def _to_physical_distance(bd: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """Turn a border distance measured in the warped space into nm.

    The warp stretches space unevenly (fat membranes here, hairlines there);
    dividing by the gradient norm keeps the 3D thickness uniform, so sections
    show oblique membranes wider, as real cuts do.
    """
    if min(bd.shape) < 2:
        return bd
    gz, gy, gx = np.gradient(bd, *vs)
    g = np.sqrt(gz * gz + gy * gy + gx * gx)
    # Gradients are unreliable across Voronoi corners, where the nearest
    # pair changes; bound the correction.
    return bd / np.clip(g, 0.35, 2.0)


def _hard_core_seeds(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, cell_nm: float) -> np.ndarray:
    """Poisson seeds thinned so no two are closer than ~half a cell: keeps a
    spread of sizes without slivers that would be mostly membrane."""
    # Seed volume tuned so xy cross-sections are about cell_nm across.
    spacing = 1.15 * cell_nm
    n = int(rng.poisson(np.prod(hi - lo) / spacing**3 * 1.6)) + 2
    cand = lo + rng.random((n, 3)) * (hi - lo)
    pairs = cKDTree(cand).query_pairs(0.55 * spacing, output_type="ndarray")
    removed = np.zeros(n, dtype=bool)
    if len(pairs):
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
        starts = np.searchsorted(pairs[:, 0], np.arange(n + 1))
        for i in range(n):
            if not removed[i]:
                removed[pairs[starts[i] : starts[i + 1], 1]] = True
    return cand[~removed]


def _plane_wave_params(rng: np.random.Generator, wavelength: float, n_modes: int) -> np.ndarray:
    """Random plane waves (kz, ky, kx, phase) with wavelengths around ``wavelength``."""
    dirs = rng.standard_normal((n_modes, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    lam = wavelength * rng.uniform(0.6, 1.4, n_modes)
    k = dirs * (2 * np.pi / lam)[:, None]
    return np.concatenate([k, rng.uniform(0, 2 * np.pi, (n_modes, 1))], axis=1)


def _eval_waves(params: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    """Sum of unit sine waves normalised to unit std, on a separable grid."""
    z, y, x = axes
    out = np.zeros((len(z), len(y), len(x)), dtype=np.float64)
    for kz, ky, kx, ph in params:
        # sin(a + b) = sin a cos b + cos a sin b: trig on the small (z, y)
        # plane only, products on the full grid (several times faster).
        ab = (kz * z + ph)[:, None] + (ky * y)[None, :]
        out += np.sin(ab)[:, :, None] * np.cos(kx * x) + np.cos(ab)[:, :, None] * np.sin(kx * x)
    return out * np.sqrt(2.0 / len(params))


def _warped_points(axes: list[np.ndarray], scale: np.ndarray, modes: list[np.ndarray], amps) -> np.ndarray:
    """Voxel centres in the z-compressed space plus a smooth displacement."""
    sc = [a * s for a, s in zip(axes, scale)]
    grid = np.empty((len(sc[0]), len(sc[1]), len(sc[2]), 3), dtype=np.float64)
    grid[..., 0] = sc[0][:, None, None]
    grid[..., 1] = sc[1][None, :, None]
    grid[..., 2] = sc[2][None, None, :]
    for c in range(3):
        grid[..., c] += amps[c] * _eval_waves(modes[c], sc)
    return grid.reshape(-1, 3)


def _compact(labels: np.ndarray) -> np.ndarray:
    """Renumber positive ids to 1..n in order of first id value (0 stays 0)."""
    labels = np.asarray(labels)
    ids, inv = np.unique(labels, return_inverse=True)
    new = np.arange(len(ids), dtype=np.uint64) + (0 if ids[0] == 0 else 1)
    return new[inv.reshape(labels.shape)]


def _split_disconnected(labels: np.ndarray) -> np.ndarray:
    """Give each 6-connected piece of an id its own id: the warp and the
    coarse z grid can cut a thin cell, and truth must not join the pieces."""
    out = np.zeros(labels.shape, dtype=np.uint64)
    next_id = 1
    for i, sl in enumerate(ndi.find_objects(labels.astype(np.int64)), start=1):
        if sl is None:
            continue
        mask = labels[sl] == i
        comp, n = ndi.label(mask)
        view = out[sl]
        view[mask] = comp[mask].astype(np.uint64) + np.uint64(next_id - 1)
        next_id += n
    return out


def _crop_shifted(vol: np.ndarray, offsets: np.ndarray, pad: np.ndarray, shape) -> np.ndarray:
    """Cut each section at its own xy offset out of the padded volume."""
    out = np.empty(shape, dtype=vol.dtype)
    for z in range(shape[0]):
        # Content moves by +offset, so the window moves the other way.
        y0, x0 = (int(v) for v in pad - offsets[z])
        out[z] = vol[z, y0 : y0 + shape[1], x0 : x0 + shape[2]]
    return out


# --------------------------------------------------------------------------
# Appearance


def _cytoplasm(rng: np.random.Generator, labels: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """Per-cell grey level plus fine grain: axons light, some processes darker."""
    n = int(labels.max()) + 1
    base = rng.uniform(0.62, 0.8, n) - (rng.random(n) < 0.15) * rng.uniform(0.1, 0.2, n)
    img = base[labels].astype(np.float32)
    # Cytoplasmic grain at ~15 nm, isotropic in physical space.
    grain = ndi.gaussian_filter(rng.standard_normal(labels.shape, dtype=np.float32), sigma=np.maximum(12.0 / vs, 0.3))
    return img + 0.035 * grain / (grain.std() + 1e-6)
