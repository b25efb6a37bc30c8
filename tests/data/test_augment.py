"""Tests for tokenunify.data.augment."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tokenunify.data.augment import AugmentConfig, _draw_geometry, augment, required_input_shape

OUT = (8, 48, 48)
BIG_ID = np.uint64(2**60)  # beyond float64's exact integers


def _blocky_labels(shape, rng: np.random.Generator, block=(2, 12, 12)) -> np.ndarray:
    """Piecewise-constant ids on irregular blocks, with huge uint64 values."""
    edges = []
    for n, b in zip(shape, block):
        ends = np.cumsum(rng.integers(b // 2 + 1, b + b // 2 + 1, size=n))
        edges.append(ends[ends < n])
    cz, cy, cx = (np.searchsorted(e, np.arange(n), side="right") for e, n in zip(edges, shape))
    cell = (cz[:, None, None] * 1000 + cy[None, :, None]) * 1000 + cx[None, None, :]
    ids = rng.permutation(cell.max() + 1).astype(np.uint64) + BIG_ID
    return ids[cell]


def _f(labels: np.ndarray) -> np.ndarray:
    """A raw image that is a fixed function of the label."""
    return ((labels * np.uint64(2654435761)) % np.uint64(251)).astype(np.float32) / np.float32(250.0)


def _pair(cfg: AugmentConfig, out=OUT, seed=0):
    rng = np.random.default_rng(seed)
    shape = required_input_shape(out, cfg)
    labels = _blocky_labels(shape, rng)
    return _f(labels), labels


GEOM_ONLY = replace(AugmentConfig.none(), flip_prob=0.5, transpose_prob=0.5, misalignment_prob=0.5)
ALL_ON = AugmentConfig(
    flip_prob=0.5, transpose_prob=0.5, rotate_prob=1.0, elastic_prob=1.0, intensity_prob=1.0,
    noise_prob=1.0, motion_blur_prob=0.3, missing_section_prob=0.2, misalignment_prob=1.0,
)


def test_required_input_shape() -> None:
    assert required_input_shape(OUT, AugmentConfig.none()) == OUT
    shp = required_input_shape((24, 128, 128), AugmentConfig())
    # Full rotation needs the diagonal; elastic and misalignment add margins.
    assert shp[0] == 24 and shp[1] >= int(np.ceil(127 * np.sqrt(2))) + 1 and shp[1] == shp[2]
    assert all((s - o) % 2 == 0 for s, o in zip(shp, (24, 128, 128)))
    small_rot = replace(AugmentConfig.none(), rotate_prob=1.0, rotate_max_deg=10.0)
    assert OUT[1] < required_input_shape(OUT, small_rot)[1] < required_input_shape(OUT, replace(small_rot, rotate_max_deg=45))[1]


@pytest.mark.parametrize("cfg", [AugmentConfig(), ALL_ON, AugmentConfig.isotropic_default()])
def test_never_samples_outside_required_input(cfg: AugmentConfig) -> None:
    out = (16, 16, 16) if cfg.isotropic else OUT
    shape = required_input_shape(out, cfg)
    rng = np.random.default_rng(1)
    for _ in range(60):
        coords, aligned, _ = _draw_geometry(shape, out, cfg, rng)
        for c, n in zip([*coords, *aligned], shape + shape):
            assert c.min() >= -1e-9 and c.max() <= n - 1 + 1e-9


@pytest.mark.parametrize("cfg", [AugmentConfig(), ALL_ON, GEOM_ONLY])
def test_shapes_dtypes_and_label_subset(cfg: AugmentConfig) -> None:
    raw, labels = _pair(cfg)
    rng = np.random.default_rng(2)
    for _ in range(5):
        r, lab = augment(raw, labels, OUT, cfg, rng)
        assert r.shape == OUT and lab.shape == OUT
        assert r.dtype == np.float32 and lab.dtype == np.uint64
        assert 0.0 <= r.min() and r.max() <= 1.0
        assert np.isin(lab, labels).all()  # no new (or float-rounded) ids


def test_none_is_centre_crop() -> None:
    rng = np.random.default_rng(3)
    shape = (11, 61, 58)  # odd and even margins
    labels = _blocky_labels(shape, rng)
    raw = rng.random(shape, dtype=np.float32)
    r, lab = augment(raw, labels, OUT, AugmentConfig.none(), rng)
    sl = tuple(slice((s - o) // 2, (s - o) // 2 + o) for s, o in zip(shape, OUT))
    assert np.array_equal(r, raw[sl])
    assert np.array_equal(lab, labels[sl])


@pytest.mark.parametrize("iso", [False, True])
def test_integer_geometry_keeps_raw_label_relation(iso: bool) -> None:
    cfg = replace(GEOM_ONLY, isotropic=iso, flip_prob=0.5, transpose_prob=0.7)
    out = (16, 16, 16) if iso else OUT
    raw, labels = _pair(cfg, out)
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(12):
        r, lab = augment(raw, labels, out, cfg, rng)
        assert np.array_equal(r, _f(lab))
        seen.add(lab.tobytes())
    assert len(seen) > 4  # the draws really differ


def test_rotation_and_elastic_keep_raw_label_relation() -> None:
    cfg = replace(AugmentConfig.none(), rotate_prob=1.0, elastic_prob=1.0, flip_prob=0.5, transpose_prob=0.5)
    raw, labels = _pair(cfg)
    rng = np.random.default_rng(5)
    for _ in range(4):
        r, lab = augment(raw, labels, OUT, cfg, rng)
        ok = np.abs(r - _f(lab)) < 1e-4
        # Exact away from block borders, where linear interpolation mixes ids.
        assert ok.mean() > 0.8
        # Labels shifted by a few pixels no longer match: the test can fail.
        assert (np.abs(r[:, 4:] - _f(lab[:, :-4])) < 1e-4).mean() < ok.mean() - 0.15


def test_misalignment_moves_raw_and_labels_together() -> None:
    cfg = replace(AugmentConfig.none(), misalignment_prob=1.0, misalignment_slip_prob=0.0, misalignment_max_px=5)
    raw, labels = _pair(cfg)
    plain_raw, plain_lab = augment(raw, labels, OUT, AugmentConfig.none(), np.random.default_rng(0))
    # Crop of the input with a one-voxel frame wider than the margin, to
    # look up the shifted content.
    m = 5
    shape = labels.shape
    sl = tuple(slice((s - o) // 2, (s - o) // 2 + o) for s, o in zip(shape, OUT))
    rng = np.random.default_rng(6)
    for _ in range(6):
        r, lab = augment(raw, labels, OUT, cfg, rng)
        assert np.array_equal(r, _f(lab))
        moved = [z for z in range(OUT[0]) if not np.array_equal(lab[z], plain_lab[z])]
        assert moved and moved == list(range(moved[0], OUT[0]))
        z0 = moved[0]
        # Every moved section is the input crop translated by one (dy, dx).
        found = None
        for dy in range(-m, m + 1):
            for dx in range(-m, m + 1):
                ys = slice(sl[1].start + dy, sl[1].stop + dy)
                xs = slice(sl[2].start + dx, sl[2].stop + dx)
                zs = slice(sl[0].start + z0, sl[0].stop)
                if np.array_equal(lab[z0:], labels[zs, ys, xs]):
                    found = (dy, dx)
        assert found is not None and found != (0, 0)


def test_slip_moves_one_section() -> None:
    cfg = replace(AugmentConfig.none(), misalignment_prob=1.0, misalignment_slip_prob=1.0)
    raw, labels = _pair(cfg)
    _, plain = augment(raw, labels, OUT, AugmentConfig.none(), np.random.default_rng(0))
    r, lab = augment(raw, labels, OUT, cfg, np.random.default_rng(7))
    moved = [z for z in range(OUT[0]) if not np.array_equal(lab[z], plain[z])]
    assert len(moved) == 1
    assert np.array_equal(r, _f(lab))


def test_intensity_clipped_and_defects() -> None:
    raw, labels = _pair(ALL_ON)
    hot = replace(ALL_ON, brightness_range=(0.6, 0.6), contrast_range=(2.0, 2.0))
    r, _ = augment(raw, labels, OUT, hot, np.random.default_rng(8))
    assert r.dtype == np.float32 and r.min() >= 0.0 and r.max() <= 1.0 and (r == 1.0).any()
    blank = replace(AugmentConfig.none(), missing_section_prob=1.0, missing_value=0.25)
    r, lab = augment(raw, labels, OUT, blank, np.random.default_rng(9))
    assert np.all(r == np.float32(0.25)) and lab is not None
    blur = replace(AugmentConfig.none(), motion_blur_prob=1.0, motion_blur_max_px=9)
    rb, _ = augment(raw, labels, OUT, blur, np.random.default_rng(10))
    r0, _ = augment(raw, labels, OUT, AugmentConfig.none(), np.random.default_rng(10))
    # A streak blur smooths the image: less energy in pixel differences.
    def energy(x: np.ndarray) -> float:
        return float(np.mean(np.diff(x, axis=1) ** 2) + np.mean(np.diff(x, axis=2) ** 2))

    assert energy(rb) < 0.8 * energy(r0)


def test_deterministic_and_unlabeled() -> None:
    raw, labels = _pair(ALL_ON)
    a = augment(raw, labels, OUT, ALL_ON, np.random.default_rng(11))
    b = augment(raw, labels, OUT, ALL_ON, np.random.default_rng(11))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = augment(raw, labels, OUT, ALL_ON, np.random.default_rng(12))
    assert not np.array_equal(a[0], c[0])
    # Without labels the raw is the same as with them (same draws).
    r, lab = augment(raw, None, OUT, ALL_ON, np.random.default_rng(11))
    assert lab is None and np.array_equal(r, a[0])
    # uint8 input is read as /255.
    r8, _ = augment(np.full(raw.shape, 255, np.uint8), None, OUT, AugmentConfig.none(), np.random.default_rng(0))
    assert np.all(r8 == 1.0)


def test_bad_input() -> None:
    raw = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(ValueError):
        augment(raw, None, (8, 8, 8), AugmentConfig.none(), np.random.default_rng(0))
    with pytest.raises(ValueError):
        augment(raw, np.zeros((4, 8, 9), np.uint64), (4, 8, 8), AugmentConfig.none(), np.random.default_rng(0))


def test_full_pipeline_gives_valid_crops() -> None:
    # every augmentation at once; its speed is measured by benchmarks/bench_augment.py, not here
    everything = replace(ALL_ON, flip_prob=1.0, transpose_prob=1.0, motion_blur_prob=0.2, missing_section_prob=0.1)
    rng = np.random.default_rng(13)
    raw = rng.random((32, 160, 160), dtype=np.float32)
    labels = _blocky_labels((32, 160, 160), rng)
    for _ in range(3):
        x, y = augment(raw, labels, (24, 128, 128), everything, rng)
        assert x.shape == y.shape == (24, 128, 128) and x.dtype == np.float32
        assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
        assert set(np.unique(y)) <= set(np.unique(labels))  # nearest-voxel sampling invents no ids


# --------------------------------------------------------------------------
# Clean pretraining targets


def _raw_for(out, cfg, seed=0):
    shape = required_input_shape(out, cfg)
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize("damage", ["noise_prob", "motion_blur_prob", "missing_section_prob"])
def test_augment_pair_degrades_the_input_only(damage):
    from tokenunify.data.augment import augment_pair

    geometric = replace(AugmentConfig.none(), flip_prob=0.5, transpose_prob=0.5, rotate_prob=1.0, elastic_prob=1.0,
                        intensity_prob=1.0)
    damaged = replace(geometric, **{damage: 1.0}, noise_std_range=(0.05, 0.05))
    raw = _raw_for(OUT, damaged)
    for seed in range(3):
        x, clean = augment_pair(raw, OUT, damaged, np.random.default_rng(seed))
        # the input is exactly what augment gives with the damage
        assert np.array_equal(x, augment(raw, None, OUT, damaged, np.random.default_rng(seed))[0])
        # the target is the same geometry and contrast without it: the damage is drawn after both
        assert np.array_equal(clean, augment(raw, None, OUT, replace(damaged, **{damage: 0.0}),
                                             np.random.default_rng(seed))[0])
        assert not np.array_equal(x, clean)


def test_augment_pair_target_is_not_misaligned():
    from tokenunify.data.augment import augment_pair

    cfg = replace(AugmentConfig.none(), misalignment_prob=1.0, misalignment_slip_prob=0.0)
    raw = _raw_for(OUT, cfg)
    centre = augment(raw, None, OUT, AugmentConfig.none(), np.random.default_rng(0))[0]
    for seed in range(3):
        x, clean = augment_pair(raw, OUT, cfg, np.random.default_rng(seed))
        assert np.array_equal(clean, centre)  # no other augmentation: the clean crop is the centre crop
        assert not np.array_equal(x, centre)
        assert np.array_equal(x[0], centre[0])  # the first section never moves; later ones slide
