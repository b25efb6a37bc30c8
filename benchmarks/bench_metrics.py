"""Time tokenunify's evaluate_segmentation against skimage.metrics on a full volume.

    python benchmarks/bench_metrics.py [--repeats N] [--data-dir DIR]

The ground truth is `labels` of fib_medulla_labeled_z0-160.h5 (160x250x250)
from $TOKENUNIFY_DATA (default ../shared/data beside the repository); the
"segmentation" is a perturbed copy of it (some ids merged, some split), so
both VOI terms and ARAND are non-zero. Without the file, a synthetic volume of
the same shape is used and a note says so. Each method runs N times and the
best time counts; the values of the two must agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FILE = "fib_medulla_labeled_z0-160.h5"
SHAPE = (160, 250, 250)


def data_dir(override: str | None) -> Path:
    if override:
        return Path(override)
    return Path(os.environ.get("TOKENUNIFY_DATA", REPO.parent / "shared" / "data"))


def synthetic_labels(rng: np.random.Generator) -> np.ndarray:
    """Dense Voronoi-like labels: random ids on a coarse grid, blown up 4x."""
    coarse = rng.integers(1, 400, size=tuple(-(-s // 4) for s in SHAPE), dtype=np.uint64)
    labels = coarse.repeat(4, 0).repeat(4, 1).repeat(4, 2)
    return np.ascontiguousarray(labels[: SHAPE[0], : SHAPE[1], : SHAPE[2]])


def load_gt(folder: Path, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    path = folder / FILE
    if not path.exists():
        print(f"note: {path} not found; using a synthetic volume of shape {SHAPE}")
        return synthetic_labels(rng), "synthetic"
    import h5py

    with h5py.File(path, "r") as f:
        return f["labels"][:], f"{path}:labels"


def perturb(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Merge 30 random pairs of ids and split the 20 largest objects in half."""
    seg = gt.copy()
    ids, sizes = np.unique(gt[gt != 0], return_counts=True)
    pairs = rng.choice(ids, size=(30, 2), replace=False)
    lookup = {int(b): int(a) for a, b in pairs}
    flat = seg.reshape(-1)
    for b, a in lookup.items():
        flat[flat == b] = a
    next_id = int(gt.max()) + 1
    middle = gt.shape[2] // 2
    for label in ids[np.argsort(sizes)[-20:]]:
        half = seg[:, :, middle:]
        half[gt[:, :, middle:] == label] = next_id
        next_id += 1
    return seg


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per method, best counts")
    parser.add_argument("--data-dir", default=None, help="folder with " + FILE)
    args = parser.parse_args(argv)

    import skimage
    import skimage.metrics

    sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing
    from tokenunify.evaluate.metrics import evaluate_segmentation

    rng = np.random.default_rng(0)
    gt, source = load_gt(data_dir(args.data_dir), rng)
    seg = perturb(gt, rng)
    print(f"volume {gt.shape} {gt.dtype} from {source}: {len(np.unique(gt))} gt ids, "
          f"{len(np.unique(seg))} seg ids; best of {args.repeats}")

    ours_s, ours = best_time(lambda: evaluate_segmentation(seg, gt), args.repeats)

    def reference() -> tuple[float, float, float]:
        split, merge = skimage.metrics.variation_of_information(gt, seg, ignore_labels=(0,))
        arand = skimage.metrics.adapted_rand_error(gt, seg, ignore_labels=(0,))[0]
        return float(split), float(merge), float(arand)

    ref_s, (split, merge, arand) = best_time(reference, args.repeats)

    rows = [("voi_split", ours["voi_split"], split), ("voi_merge", ours["voi_merge"], merge),
            ("arand", ours["arand"], arand)]
    agree = all(abs(a - b) <= 1e-9 * max(1.0, abs(b)) for _, a, b in rows)
    print(f"{'metric':<10} {'tokenunify':>14} {'skimage':>14}")
    for name, a, b in rows:
        print(f"{name:<10} {a:>14.10f} {b:>14.10f}")
    print(f"values agree: {agree}")
    print(f"tokenunify evaluate_segmentation: {ours_s:.3f} s")
    print(f"skimage {skimage.__version__} VOI + ARAND: {ref_s:.3f} s")
    print(f"speed-up: {ref_s / ours_s:.1f}x")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
