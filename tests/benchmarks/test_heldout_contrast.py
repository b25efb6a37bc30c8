"""benchmarks/heldout_contrast.py: the linear intensity map it scores the held-out volume with."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark_loader import load_benchmark

contrast = load_benchmark("heldout_contrast")


def test_match_moments_hits_the_target_and_keeps_uint8() -> None:
    raw = np.random.default_rng(0).normal(150, 55, (8, 16, 16)).clip(0, 255).astype(np.uint8)
    out = contrast.match_moments(raw, 126.0, 32.0)
    assert out.dtype == np.uint8
    # rounding to integers moves the moments by well under one grey level
    assert abs(out.mean() - 126.0) < 0.5 and abs(out.std() - 32.0) < 0.5
    # a monotone map: the order of the voxels is kept
    order = np.argsort(raw, axis=None, kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)


def test_match_moments_clips_to_the_dtype_and_refuses_a_flat_volume() -> None:
    raw = np.array([0, 255], np.uint8)
    assert contrast.match_moments(raw, 128.0, 500.0).tolist() == [0, 255]
    floats = np.array([0.0, 1.0], np.float32)
    assert contrast.match_moments(floats, 0.0, 1.0).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="one intensity"):
        contrast.match_moments(np.full(4, 7, np.uint8), 1.0, 1.0)


def test_summary_by_hand() -> None:
    row = lambda run, a, m: {"run": run, "as_is": {"voi": a, "arand": a / 10}, "matched": {"voi": m, "arand": m / 10}}
    table = contrast.summary([row("unet/tiny/scarce/s0", 2.0, 0.3), row("unet/tiny/scarce/s1", 1.0, 0.5),
                              row("mae/tiny/scarce/s0", 0.6, 0.6)])
    lines = table.splitlines()
    assert lines[2] == "| mae | 1 | 0.600 | 0.600 | 0.060 | 0.060 |"
    assert lines[3] == "| unet | 2 | 1.500 ± 0.707 | 0.400 ± 0.141 | 0.150 | 0.040 |"
