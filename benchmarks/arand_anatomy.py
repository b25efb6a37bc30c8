"""What a study run's ARAND is made of: split and merge pairs, and the largest objects' fate.

ARAND = 1 - same_both / mean(same_seg, same_gt), over pairs of voxels in
the same ground-truth object (same_gt), the same segment (same_seg) or both.
It splits into a split term, 1 - same_both / same_gt (ground-truth objects
cut apart), and a merge term, 1 - same_both / same_seg (segments spanning
objects). Because pairs grow with the square of an object's size, the few
largest objects of a small cube decide it. For every finished run of a
study folder this predicts the validation part with the final weights,
segments it at the threshold the run's validation chose (result.json,
unjittered affinities, the study's scorer and fragments), and prints both
terms, the lowest ARAND any of the study's thresholds reaches, and, for
the `--objects` largest ground-truth objects, the share of the object
inside its largest segment and the share of that segment which belongs to
other objects. For the largest object it also prints what its cut
alone costs (the ARAND of the ground truth with only that object cut into
the run's pieces) and the mean raw intensity on the cut, on the object's
boundary with other labelled objects and inside it: a cut as dark as a real
boundary is one the image supports. Pieces under `--min-share` (default 1%)
of the object, mostly its boundary voxels given to a neighbour's segment,
are left out of the second cut figure and of the intensities.

    python benchmarks/arand_anatomy.py runs/study/finetune [-c configs/study_fib.yaml] [--objects 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_settings import finished_runs, predict_slabs  # noqa: E402
from threshold_grid import study_segment_settings  # noqa: E402

from tokenunify.config import load_yaml  # noqa: E402
from tokenunify.evaluate.metrics import adapted_rand_error, contingency, rand_pairs  # noqa: E402
from tokenunify.finetune.affinities import edge_slices  # noqa: E402
from tokenunify.io import open_volume  # noqa: E402
from tokenunify.offsets import NEAREST  # noqa: E402
from tokenunify.postprocess.pipeline import segmentations  # noqa: E402


def rand_terms(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """ARAND and its split and merge terms (ground-truth label 0 left out)."""
    both, same_seg, same_gt = rand_pairs(contingency(seg, gt, (0,)))
    return {"arand": 1.0 - both / (0.5 * (same_seg + same_gt)),
            "split": 1.0 - both / same_gt, "merge": 1.0 - both / same_seg}


def largest_objects(seg: np.ndarray, gt: np.ndarray, count: int) -> list[dict[str, float]]:
    """For the `count` largest ground-truth objects: label, size, share of all labelled voxels,
    share kept in their largest segment, and the foreign share of that segment."""
    ids, sizes = np.unique(gt[gt > 0], return_counts=True)
    labelled = int(sizes.sum())
    out = []
    for g, size in sorted(zip(ids, sizes), key=lambda p: -p[1])[:count]:
        inside = seg[gt == g]
        labels, counts = np.unique(inside, return_counts=True)
        top = labels[np.argmax(counts)]
        segment = (seg == top) & (gt > 0)
        out.append({"label": int(g), "voxels": int(size), "of_labelled": float(size / labelled),
                    "kept": float(counts.max() / size),
                    "foreign": float(1.0 - counts.max() / segment.sum())})
    return out


def _pieces(seg: np.ndarray, gt: np.ndarray, label: int, min_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Object `label`'s mask and its voxels' piece index: 0 for the largest piece, 1, 2, ... for the other
    pieces of at least `min_share` of the object, and 0 for the smaller ones (counted as kept)."""
    inside = gt == label
    _, index, counts = np.unique(seg[inside], return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    big = counts >= min_share * inside.sum()
    piece = np.where(big[index] & (rank[index] > 0), rank[index], 0)
    full = np.full(gt.shape, -1, np.int64)
    full[inside] = piece
    return inside, full


def cut_alone(seg: np.ndarray, gt: np.ndarray, label: int, min_share: float = 0.0) -> float:
    """ARAND of the ground truth with only object `label` cut into the pieces `seg` makes of it
    (pieces under `min_share` of the object stay with its largest piece)."""
    inside, piece = _pieces(seg, gt, label, min_share)
    cut = gt.astype(np.uint64, copy=True)
    moved = inside & (piece > 0)
    cut[moved] = np.uint64(gt.max()) + piece[moved].astype(np.uint64)
    return float(adapted_rand_error(cut, gt))


def cut_intensity(seg: np.ndarray, gt: np.ndarray, raw: np.ndarray, label: int,
                  min_share: float = 0.01) -> dict[str, float]:
    """Mean raw intensity of object `label`'s voxels on its cut (a face neighbour in another of its pieces
    of at least `min_share`, see `cut_alone`), on its boundary with other labelled objects, and elsewhere
    inside it (nan where empty)."""
    obj, piece = _pieces(seg, gt, label, min_share)
    on_cut = np.zeros(gt.shape, bool)
    on_boundary = np.zeros(gt.shape, bool)
    for offset in NEAREST:
        pair = edge_slices(gt.shape, offset)
        if pair is None:  # an axis of length 1 has no face neighbours along it
            continue
        a, b = pair
        for p, q in ((a, b), (b, a)):
            on_cut[p] |= obj[p] & obj[q] & (piece[p] != piece[q])
            on_boundary[p] |= obj[p] & (gt[q] > 0) & (gt[q] != label)
    inner = obj & ~on_cut & ~on_boundary
    mean = lambda m: float(raw[m].mean()) if m.any() else float("nan")
    return {"cut": mean(on_cut), "cut_voxels": int(on_cut.sum()), "boundary": mean(on_boundary), "inside": mean(inner)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a study's finetune/ folder")
    parser.add_argument("-c", "--config", type=Path, default=Path("configs/study_fib.yaml"))
    parser.add_argument("--val-z", type=int, nargs=2, default=(120, 160))
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--min-share", type=float, default=0.01,
                        help="pieces of the largest object smaller than this share count as kept in the cut figures")
    parser.add_argument("--shard", default="0/1", help="i/n: every n-th run from the i-th")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args()
    index, count = (int(x) for x in args.shard.split("/"))
    torch.set_num_threads(1)
    settings = study_segment_settings(args.config)
    rows: list[dict[str, Any]] = []
    for run in finished_runs(args.folder)[index::count]:
        threshold = float(json.loads((run / "result.json").read_text())["final"]["threshold"])
        affs, gts, offsets = predict_slabs(run, {"validation": tuple(args.val_z)})
        gt = gts["validation"]
        thresholds = sorted({*settings.thresholds, threshold})
        sweep = dict(segmentations(affs["validation"], offsets, settings, thresholds))  # copies per threshold
        seg = sweep[threshold]
        terms = {t: rand_terms(s, gt) for t, s in sweep.items()}
        lowest = min((terms[t]["arand"], t) for t in terms)
        row = {"run": str(run.relative_to(args.folder)), "threshold": threshold, **terms[threshold],
               "lowest_arand": {"arand": lowest[0], "threshold": lowest[1]},
               "objects": largest_objects(seg, gt, args.objects)}
        label = row["objects"][0]["label"]
        raw = np.asarray(open_volume(load_yaml(run / "config.yaml")["data"]["raw"])[args.val_z[0]:args.val_z[1]])
        row["largest_cut"] = {"arand_alone": cut_alone(seg, gt, label),
                              "arand_alone_large": cut_alone(seg, gt, label, args.min_share),
                              **cut_intensity(seg, gt, raw, label, args.min_share)}
        rows.append(row)
        objects = " ".join(f"#{o['label']} {o['voxels'] // 1000}k ({o['of_labelled']:.0%}) {o['kept']:.2f}/{o['foreign']:.2f}"
                           for o in row["objects"])
        print(f"{row['run']} threshold {threshold}: ARAND {row['arand']:.3f} (split {row['split']:.3f}, "
              f"merge {row['merge']:.3f}; lowest over the study's thresholds {lowest[0]:.3f} at {lowest[1]}); largest objects, kept/foreign: {objects}", flush=True)
        c = row["largest_cut"]
        print(f"    #{label} cut alone: ARAND {c['arand_alone']:.3f}, its pieces of >= {args.min_share:.0%} alone "
              f"{c['arand_alone_large']:.3f}; raw mean on the cut between those pieces {c['cut']:.1f} "
              f"({c['cut_voxels']} voxels), on its boundary {c['boundary']:.1f}, inside {c['inside']:.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
