"""Intensity augmentation of EM crops: the photometric change and the section defects.

:func:`degrade` runs after the geometric resampling of :mod:`tokenunify.data.augment`.
It draws from the caller's generator in a fixed order, so one random state
gives the same result with and without a clean copy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    from tokenunify.data.augment import AugmentConfig

__all__ = ["degrade"]


def _line_kernel(length: int, angle: float) -> np.ndarray:
    """Normalised straight streak, bilinearly splatted (sub-pixel angles)."""
    size = length if length % 2 else length + 1
    k = np.zeros((size, size))
    c = (size - 1) / 2
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, 2 * length):
        y, x = c + t * math.sin(angle), c + t * math.cos(angle)
        y0, x0 = int(math.floor(y)), int(math.floor(x))
        fy, fx = y - y0, x - x0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                if 0 <= y0 + dy < size and 0 <= x0 + dx < size:
                    k[y0 + dy, x0 + dx] += wy * wx
    return k / k.sum()


def degrade(
    raw: np.ndarray, cfg: "AugmentConfig", rng: np.random.Generator, clean: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Photometric change on ``raw`` (and ``clean``), then the degradations on ``raw`` only; returns both.

    Contrast, brightness and gamma model another acquisition of the same
    tissue, so a clean target shares them; blur, noise and missing sections
    are damage, which a pretraining target must not contain.
    """
    zo = raw.shape[0]
    do_int = rng.random() < cfg.intensity_prob
    contrast = rng.uniform(*cfg.contrast_range)
    bright = rng.uniform(*cfg.brightness_range)
    lo, hi = cfg.gamma_range
    gamma = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    jit_c = 1.0 + cfg.section_jitter * rng.standard_normal(zo)
    jit_b = cfg.section_jitter * rng.standard_normal(zo)
    if do_int:
        c = (contrast * jit_c).astype(np.float32)[:, None, None]
        b = (bright + jit_b).astype(np.float32)[:, None, None]

        def photometric(image: np.ndarray) -> np.ndarray:
            image = np.clip((image - 0.5) * c + 0.5 + b, 0.0, 1.0)
            return np.power(image, np.float32(gamma)) if gamma != 1.0 else image

        raw = photometric(raw)
        clean = None if clean is None else photometric(clean)
    elif clean is not None:
        clean = clean.copy()  # the degradations below write into raw in place

    blur_z = np.flatnonzero(rng.random(zo) < cfg.motion_blur_prob)
    for z in blur_z:
        length = int(rng.integers(2, max(cfg.motion_blur_max_px, 2) + 1))
        kern = _line_kernel(length, rng.uniform(0, math.pi)).astype(np.float32)
        raw[z] = ndi.convolve(raw[z], kern, mode="reflect")

    if rng.random() < cfg.noise_prob:
        std = rng.uniform(*cfg.noise_std_range)
        raw = raw + rng.standard_normal(raw.shape, dtype=np.float32) * np.float32(std)

    missing = np.flatnonzero(rng.random(zo) < cfg.missing_section_prob)
    for z in missing:
        v = float(raw[z].mean()) if cfg.missing_value is None else cfg.missing_value
        raw[z] = v
    raw = np.clip(raw, 0.0, 1.0, out=raw)
    return raw, None if clean is None else np.clip(clean, 0.0, 1.0, out=clean)
