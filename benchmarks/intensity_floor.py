"""The intensity-only floor: segment affinities made from smoothed raw EM, no learning.

Membranes are dark, so the affinity of an edge is taken as the smaller of the
two voxels' smoothed, normalised intensities. The same fragments + waterz sweep
as for learned affinities then gives the VOI/ARAND any trained network must
beat on the validation part.

    python benchmarks/intensity_floor.py [--sigma 1.0] [--z 120 160]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from tokenunify.evaluate.sweep import format_markdown_table
from tokenunify.finetune.affinities import edge_slices
from tokenunify.io import open_volume
from tokenunify.offsets import NEAREST
from tokenunify.postprocess.pipeline import sweep_scores
from tokenunify.postprocess.settings import SegmentSettings


def intensity_affinities(raw: np.ndarray, sigma: float) -> np.ndarray:
    """Nearest-neighbour affinities from smoothed intensity (dark = boundary)."""
    smooth = ndimage.gaussian_filter(raw.astype(np.float32), sigma)
    lo, hi = np.percentile(smooth, [1, 99])
    smooth = np.clip((smooth - lo) / max(hi - lo, 1e-6), 0, 1)
    affs = np.zeros((3,) + raw.shape, dtype=np.float32)
    for c, offset in enumerate(NEAREST):
        pair = edge_slices(raw.shape, offset)
        if pair is None:  # one section: no neighbours along that axis, the channel stays 0
            continue
        here, there = pair
        affs[c][here] = np.minimum(smooth[here], smooth[there])
    return affs


def main() -> None:
    data = Path(os.environ.get("TOKENUNIFY_DATA", "../shared/data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", default=str(data / "fib_medulla_labeled_z0-160.h5"))
    parser.add_argument("--z", type=int, nargs=2, default=(120, 160))
    parser.add_argument("--sigmas", type=float, nargs="+", default=(0.5, 1.0, 2.0))
    args = parser.parse_args()
    window = slice(*args.z)
    raw = open_volume(f"{args.volume}:raw")[window]
    gt = open_volume(f"{args.volume}:labels")[window]
    settings = SegmentSettings(thresholds=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    results = []
    for sigma in args.sigmas:
        rows, best, _ = sweep_scores(intensity_affinities(raw, sigma), gt, NEAREST, settings)
        print(f"\nsigma {sigma}: z {args.z[0]}-{args.z[1]} of {args.volume}")
        print(format_markdown_table(rows, best))
        results.append({"sigma": sigma, **best})
    overall = min(results, key=lambda r: r["voi"])
    print("\nfloor (best over sigma and threshold):", json.dumps({k: overall[k] for k in ("sigma", "threshold", "voi_split", "voi_merge", "voi", "arand")}))


if __name__ == "__main__":
    main()
