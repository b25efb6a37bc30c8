"""Seconds per call of the full augmentation pipeline (every augmentation on), and of the synthetic volume.

Usage::

    python benchmarks/bench_augment.py [--calls 10]

A (32, 160, 160) float32 raw with blocky labels is augmented to a
(24, 128, 128) crop with flips, transposes, rotation, elastic warp,
intensity changes, misalignment, blur, noise and missing sections, after one
untimed call. Prints the median and the range of the calls, then the time
of one `make_synthetic_volume()` at its default size (32x128x128).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np

from tokenunify.data.augment import AugmentConfig, augment
from tokenunify.data.synthetic import make_synthetic_volume


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=10)
    args = p.parse_args()
    cfg = replace(AugmentConfig(), flip_prob=1.0, transpose_prob=1.0, rotate_prob=1.0, elastic_prob=1.0,
                  intensity_prob=1.0, noise_prob=1.0, misalignment_prob=1.0, motion_blur_prob=0.2,
                  missing_section_prob=0.1)
    rng = np.random.default_rng(13)
    raw = rng.random((32, 160, 160), dtype=np.float32)
    labels = np.repeat(np.repeat(rng.integers(1, 50, (32, 14, 14), dtype=np.uint64), 12, 1), 12, 2)[:, :160, :160]
    augment(raw, labels, (24, 128, 128), cfg, rng)
    times = []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        augment(raw, labels, (24, 128, 128), cfg, rng)
        times.append(time.perf_counter() - t0)
    print(f"augment (32,160,160) -> (24,128,128), everything on: median {statistics.median(times):.3f} s/call "
          f"(range {min(times):.3f}-{max(times):.3f}, {args.calls} calls)")
    t0 = time.perf_counter()
    make_synthetic_volume()
    print(f"make_synthetic_volume() (32,128,128): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
