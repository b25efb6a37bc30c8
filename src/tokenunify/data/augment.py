"""Joint raw/label augmentations for EM training crops.

All geometric steps (flips, transposes, xy rotation, elastic warp and section
misalignment) are folded into one coordinate map, so the raw is resampled once
(linear) and the labels are looked up once (nearest voxel, so no new ids can
appear).  Intensity steps and section defects then act on the output raw only.
:func:`augment_pair` also returns the clean target of pretraining: the same
geometry and photometric change, without misalignment, blur, noise or
missing sections.

Axes are (z, y, x); for anisotropic data z is the sectioning axis and is never
mixed with y/x unless ``AugmentConfig.isotropic`` is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from itertools import permutations

import numpy as np
from scipy import ndimage as ndi

from tokenunify.data.intensity import degrade

__all__ = ["AugmentConfig", "required_input_shape", "augment", "augment_pair"]


@dataclass(frozen=True)
class AugmentConfig:
    """Switches, probabilities and ranges of the augmentations.

    Probabilities are per crop unless they say "per section".

    Attributes:
        isotropic: data has (nearly) equal voxel sizes; allows transposes
            that involve z.
        flip_z, flip_y, flip_x: allow mirroring along that axis.
        flip_prob: chance of each allowed flip.
        transpose: allow axis transposes (y<->x; every permutation of axes
            with equal output size when ``isotropic``).
        transpose_prob: chance of applying a (non-identity) transpose.
        rotate_prob: chance of an xy rotation.
        rotate_max_deg: angle drawn uniformly from [-max, max] degrees.
        elastic_prob: chance of an elastic warp.
        elastic_spacing: control-point spacing in output voxels (z, y, x).
        elastic_sigma: std of control-point displacements in voxels along
            input (z, y, x); 0 keeps that axis rigid (z for thick sections).
            Displacements are clipped at 3 sigma.
        intensity_prob: chance of a contrast/brightness/gamma change.
        contrast_range, brightness_range, gamma_range: uniform ranges
            (gamma is drawn log-uniformly).
        section_jitter: std of extra per-section contrast and brightness
            changes, as thick sections differ in staining.
        noise_prob, noise_std_range: additive gaussian noise.
        motion_blur_prob: per-section chance of a directional xy blur.
        motion_blur_max_px: longest blur streak in pixels (>= 2).
        missing_section_prob: per-section chance of a blank section.
        missing_value: grey of a blank section; None uses its mean.
        misalignment_prob: chance of one misalignment event.
        misalignment_max_px: largest shift per axis in pixels.
        misalignment_slip_prob: share of events that move a single section
            (a slip) rather than every section from z onward (a shift).
    """

    isotropic: bool = False
    flip_z: bool = True
    flip_y: bool = True
    flip_x: bool = True
    flip_prob: float = 0.5
    transpose: bool = True
    transpose_prob: float = 0.5
    rotate_prob: float = 0.5
    rotate_max_deg: float = 180.0
    elastic_prob: float = 0.5
    elastic_spacing: tuple[int, int, int] = (4, 32, 32)
    elastic_sigma: tuple[float, float, float] = (0.0, 2.0, 2.0)
    intensity_prob: float = 0.8
    contrast_range: tuple[float, float] = (0.75, 1.25)
    brightness_range: tuple[float, float] = (-0.12, 0.12)
    gamma_range: tuple[float, float] = (0.75, 1.33)
    section_jitter: float = 0.03
    noise_prob: float = 0.5
    noise_std_range: tuple[float, float] = (0.0, 0.05)
    motion_blur_prob: float = 0.03
    motion_blur_max_px: int = 7
    missing_section_prob: float = 0.03
    missing_value: float | None = None
    misalignment_prob: float = 0.2
    misalignment_max_px: int = 8
    misalignment_slip_prob: float = 0.5

    @classmethod
    def none(cls) -> "AugmentConfig":
        """A config under which :func:`augment` returns the centre crop."""
        off = {f.name: 0.0 for f in fields(cls) if f.name.endswith("_prob")}
        return cls(**off, section_jitter=0.0)

    @classmethod
    def isotropic_default(cls) -> "AugmentConfig":
        """Defaults for isotropic (FIB-SEM) data: z treated like y and x."""
        return cls(isotropic=True, elastic_spacing=(32, 32, 32), elastic_sigma=(2.0, 2.0, 2.0))


# --------------------------------------------------------------------------
# Geometry


def _allowed_perms(output_shape: tuple[int, int, int], cfg: AugmentConfig) -> list[tuple[int, int, int]]:
    """Axis permutations that keep the output shape (so a transpose never
    needs a bigger input)."""
    if not cfg.transpose or cfg.transpose_prob <= 0:
        return []
    axes = (0, 1, 2) if cfg.isotropic else (1, 2)
    out = []
    for p in permutations(axes):
        perm = list(range(3))
        for a, b in zip(axes, p):
            perm[a] = b
        perm = tuple(perm)
        if perm != (0, 1, 2) and all(output_shape[i] == output_shape[perm[i]] for i in range(3)):
            out.append(perm)
    return out


def _rotated_half_extent(a: float, b: float, max_rad: float) -> float:
    """max over |theta| <= max_rad of a|cos| + b|sin| (a, b >= 0)."""
    if max_rad <= 0:
        return a
    peak = math.atan2(b, a)
    if max_rad >= peak:
        return math.hypot(a, b)
    return a * math.cos(max_rad) + b * math.sin(max_rad)


def required_input_shape(output_shape: tuple[int, int, int], cfg: AugmentConfig) -> tuple[int, int, int]:
    """Smallest input crop from which :func:`augment` never samples outside.

    Accounts for xy rotation (worst angle in the allowed range), elastic
    displacement (clipped at 3 sigma) and misalignment shifts.  A smaller
    input still works, but the missing border is filled by mirroring.
    """
    out = np.asarray(output_shape, dtype=np.float64)
    half = (out - 1) / 2
    if cfg.misalignment_prob > 0 and out[0] > 1:
        # Shifts act on output y/x, which a transpose may send to any axis.
        shifted = half + np.array([0.0, 1.0, 1.0]) * cfg.misalignment_max_px
        for perm in _allowed_perms(output_shape, cfg) + [(0, 1, 2)]:
            half = np.maximum(half, shifted[list(perm)])
    if cfg.rotate_prob > 0:
        rad = math.radians(min(abs(cfg.rotate_max_deg), 180.0))
        hy = _rotated_half_extent(half[1], half[2], rad)
        hx = _rotated_half_extent(half[2], half[1], rad)
        half[1], half[2] = hy, hx
    if cfg.elastic_prob > 0:
        half += np.ceil(3 * np.asarray(cfg.elastic_sigma, dtype=np.float64))
    need = np.ceil(2 * half - 1e-9).astype(int) + 1
    # Same parity as the output, so the crop centre is the true centre and
    # the margin is the same on both sides.
    need = need + (need - out.astype(int)) % 2
    return tuple(int(v) for v in np.maximum(need, out.astype(int)))


def _bspline_weights(n_out: int, spacing: int) -> np.ndarray:
    """Cubic B-spline interpolation matrix (n_out x n_ctrl); rows sum to 1 and
    are non-negative, so the field never exceeds its control values."""
    n_ctrl = int(math.ceil((n_out - 1) / spacing)) + 3
    t = np.arange(n_out) / spacing + 1.0
    x = np.abs(t[:, None] - np.arange(n_ctrl)[None, :])
    w = np.where(x < 1, 2 / 3 - x**2 + 0.5 * x**3, np.where(x < 2, (2 - x) ** 3 / 6, 0.0))
    return w


def _elastic_field(output_shape, cfg: AugmentConfig, rng: np.random.Generator) -> list[np.ndarray | None]:
    """Smooth displacement per input axis on the output grid (None: rigid)."""
    mats = [_bspline_weights(n, max(1, int(s))) for n, s in zip(output_shape, cfg.elastic_spacing)]
    ctrl_shape = tuple(m.shape[1] for m in mats)
    disp: list[np.ndarray | None] = []
    for sigma in cfg.elastic_sigma:
        c = rng.standard_normal(ctrl_shape)
        if sigma <= 0:
            disp.append(None)
            continue
        c = np.clip(c, -3.0, 3.0) * sigma
        # Separable upsampling: three small matrix products.
        f = np.tensordot(mats[0], c, axes=(1, 0))
        f = np.tensordot(mats[1], f, axes=(1, 1)).transpose(1, 0, 2)
        f = np.tensordot(f, mats[2], axes=(2, 1))
        disp.append(f)
    return disp


def _mirror_index(i: np.ndarray, n: int) -> np.ndarray:
    """Reflect integer indices into [0, n) like ndimage's 'mirror' mode."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i > n - 1, period - i, i)


def _draw_geometry(in_shape, output_shape, cfg: AugmentConfig, rng: np.random.Generator):
    """Draw the geometric transform; returns (coords, aligned coords, is_integer).

    The aligned coordinates are the same transform without the section
    misalignment: the clean target of pretraining (see :func:`augment_pair`).
    """
    zo, yo, xo = output_shape
    # Matrix taking centred output offsets to input offsets: flips * perm.
    mat = np.eye(3)
    flips = [cfg.flip_z, cfg.flip_y, cfg.flip_x]
    for ax in range(3):
        if rng.random() < cfg.flip_prob and flips[ax]:
            mat[ax, ax] = -1.0
    perms = _allowed_perms(output_shape, cfg)
    if rng.random() < cfg.transpose_prob and perms:
        perm = perms[int(rng.integers(len(perms)))]
        mat = mat[list(perm)]
    rotated = rng.random() < cfg.rotate_prob and cfg.rotate_max_deg != 0
    theta = math.radians(rng.uniform(-cfg.rotate_max_deg, cfg.rotate_max_deg))
    if rotated:
        rot = np.eye(3)
        rot[1:, 1:] = [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
        mat = rot @ mat
    elastic = rng.random() < cfg.elastic_prob and any(s > 0 for s in cfg.elastic_sigma)
    disp = _elastic_field(output_shape, cfg, rng) if elastic else [None, None, None]

    # Misalignment: an integer xy offset for one section or all from z on,
    # applied before rotation so raw and labels stay in register.
    shift = np.zeros((zo, 2))
    do_shift = rng.random() < cfg.misalignment_prob and zo > 1 and cfg.misalignment_max_px > 0
    z0 = int(rng.integers(1, max(zo, 2)))
    slip = rng.random() < cfg.misalignment_slip_prob
    m = cfg.misalignment_max_px
    dyx = rng.integers(-m, m + 1, size=2) if m > 0 else np.zeros(2, dtype=int)
    if do_shift:
        if not dyx.any():
            dyx[int(rng.integers(2))] = m if rng.random() < 0.5 else -m
        if slip:
            shift[z0] = dyx
        else:
            shift[z0:] = dyx

    g = [np.arange(n, dtype=np.float64) - (n - 1) / 2 for n in output_shape]

    def coordinates(shift: np.ndarray) -> np.ndarray:
        gz = g[0][:, None, None]
        gy = g[1][None, :, None] + shift[:, 0, None, None]
        gx = g[2][None, None, :] + shift[:, 1, None, None]
        # Input centre: the integer crop start plus the output half-extent, so
        # flips and transposes (which keep the shape) land exactly on voxels.
        coords = np.empty((3, zo, yo, xo), dtype=np.float64)
        for i in range(3):
            e = output_shape[i]
            centre = (in_shape[i] - e) // 2 + (e - 1) / 2
            c = centre + mat[i, 0] * gz + mat[i, 1] * gy + mat[i, 2] * gx
            if disp[i] is not None:
                c = c + disp[i]
            coords[i] = c
        return coords

    coords = coordinates(shift)
    aligned = coordinates(np.zeros_like(shift)) if do_shift else coords
    return coords, aligned, not rotated and not elastic


# --------------------------------------------------------------------------


def _nearest_index(coords: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Index arrays of the nearest input voxel of every output voxel (mirrored at the border)."""
    return tuple(_mirror_index(np.rint(c).astype(np.intp), n) for c, n in zip(coords, shape))


def _resample(raw: np.ndarray, coords: np.ndarray, integer: bool, idx: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Raw at `coords`: looked up when the transform is integer (`idx` if already computed), else linear."""
    if integer:
        idx = _nearest_index(coords, raw.shape) if idx is None else idx
        return np.ascontiguousarray(raw[idx], dtype=np.float32)
    out = ndi.map_coordinates(raw, coords, order=1, mode="mirror", output=np.float32, prefilter=False)
    return np.ascontiguousarray(out, dtype=np.float32)


def _checked_raw(raw: np.ndarray, output_shape: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    raw = np.asarray(raw)
    if raw.ndim != 3:
        raise ValueError(f"raw must be 3D (z, y, x), got shape {raw.shape}")
    if raw.dtype == np.uint8:
        raw = raw.astype(np.float32) / np.float32(255.0)
    else:
        raw = raw.astype(np.float32, copy=False)
    output_shape = tuple(int(s) for s in output_shape)
    if len(output_shape) != 3 or min(output_shape) < 1:
        raise ValueError(f"output_shape must be three positive ints, got {output_shape}")
    if any(o > i for o, i in zip(output_shape, raw.shape)):
        raise ValueError(f"input shape {raw.shape} is smaller than output shape {output_shape}")
    return raw, output_shape  # type: ignore[return-value]


def augment(
    raw: np.ndarray,
    labels: np.ndarray | None,
    output_shape: tuple[int, int, int],
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Augment a crop and return its centre ``output_shape`` part.

    Args:
        raw: (z, y, x) float image in [0, 1] (uint8 is scaled by 1/255).
            Use :func:`required_input_shape` for its size.
        labels: (z, y, x) ids of the same shape, or None for unlabeled data.
        output_shape: (z, y, x) of the returned crops.
        cfg: what to apply.
        rng: the only source of randomness; the same state gives the same
            output.

    Returns:
        ``(raw, labels)``: float32 in [0, 1], and the labels (same dtype as
        given, nearest-voxel sampled, so only input ids occur) or None.
    """
    raw, output_shape = _checked_raw(raw, output_shape)
    if labels is not None and labels.shape != raw.shape:
        raise ValueError(f"labels shape {labels.shape} differs from raw shape {raw.shape}")
    coords, _, integer = _draw_geometry(raw.shape, output_shape, cfg, rng)
    idx = _nearest_index(coords, raw.shape) if labels is not None else None
    out_raw = _resample(raw, coords, integer, idx)
    out_labels = None if idx is None else np.asarray(labels)[idx]
    out_raw, _ = degrade(out_raw, cfg, rng)
    return out_raw, out_labels


def augment_pair(
    raw: np.ndarray, output_shape: tuple[int, int, int], cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A degraded network input and its clean target, for pretraining.

    Both share the geometry (flips, transposes, rotation, elastic warp) and
    the photometric change (contrast, brightness, gamma). Only the input gets
    the degradations: section misalignment, motion blur, noise and missing
    sections; so the network learns to predict tissue, not damage. The random
    draws are those of :func:`augment` with the same ``rng``, so the input
    equals ``augment(raw, None, ...)[0]``.
    """
    raw, output_shape = _checked_raw(raw, output_shape)
    coords, aligned, integer = _draw_geometry(raw.shape, output_shape, cfg, rng)
    out_raw = _resample(raw, coords, integer)
    clean = out_raw if aligned is coords else _resample(raw, aligned, integer)
    out_raw, out_clean = degrade(out_raw, cfg, rng, clean)
    assert out_clean is not None
    return out_raw, out_clean
