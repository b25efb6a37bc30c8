"""The FIB validation part from raw to score, blockwise on daisy workers and whole-volume, side by side.

    python benchmarks/fib_blockwise.py --model runs/fib/checkpoints/best.pt [--workers 2]

Runs the CLI, as a user would, on `fib_medulla_labeled_z0-160.h5` z 120-159
(`$TOKENUNIFY_DATA`, default ../shared/data):

- whole volume: `predict`, then `segment --gt` (in memory);
- blockwise: `predict --blockwise --workers N`, then
  `segment --blockwise --workers N --gt`, both resumable daisy runs;
- a mixed row: whole-volume affinities segmented blockwise, which isolates
  what the blockwise post-processing changes;
- the whole-volume result's own noise: its best VOI when its affinities get
  uniform noise of +-0.001 (`--jitter-draws` copies, the jitter of
  `segment.jitter_repeats`), the spread any blockwise difference is read against.

Each segmentation is scored against the ground truth with the threshold
chosen by the sweep on that same part (as in docs/pipeline_results.md), and
the blockwise ones against the whole-volume one. Writes the table to stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REGION = "[120:160]"


def _cli(*args: str) -> float:
    began = time.perf_counter()
    command = [sys.executable, "-m", "tokenunify", *args, "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=Path("configs/fib_medulla.yaml"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--region", type=int, nargs=3, default=[32, 128, 128], help="predict: daisy write region")
    parser.add_argument("--context", type=int, nargs=3, default=None, help="predict: context around each region")
    parser.add_argument("--block", type=int, nargs=3, default=[20, 128, 128], help="segment: daisy block")
    parser.add_argument("--jitter-draws", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/fib_blockwise"))
    args = parser.parse_args()
    data = Path(os.environ.get("TOKENUNIFY_DATA", "../shared/data")) / "fib_medulla_labeled_z0-160.h5"
    if not data.exists():
        raise SystemExit(f"{data}: not found (set TOKENUNIFY_DATA)")
    raw, gt = f"{data}:raw{REGION}", f"{data}:labels{REGION}"
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    store = args.out / "fib.zarr"
    workers = ["--workers", str(args.workers)]
    cfg = ["--config", str(args.config)]
    seconds = {
        "predict (whole)": _cli("predict", "--model", str(args.model), "-i", raw, "-o", f"{store}:affs_whole", *cfg),
        "predict (blockwise)": _cli("predict", "--model", str(args.model), "-i", raw, "-o", f"{store}:affs_blocks",
                                    "--blockwise", *workers, "--region", *map(str, args.region), *cfg,
                                    *(["--context", *map(str, args.context)] if args.context else [])),
    }
    runs = {"whole": ("affs_whole", False), "blockwise": ("affs_blocks", True), "mixed": ("affs_whole", True)}
    for name, (affs, blockwise) in runs.items():
        extra = ["--blockwise", *workers, "--block", *map(str, args.block)] if blockwise else []
        seconds[f"segment ({name})"] = _cli("segment", "--affs", f"{store}:{affs}", "-o", f"{store}:seg_{name}",
                                            "--gt", gt, *cfg, *extra)

    from tokenunify.evaluate.metrics import evaluate_segmentation
    from tokenunify.io import open_volume

    labels = open_volume(gt).read()
    segs = {name: open_volume(f"{store}:seg_{name}").read() for name in runs}
    a, b = open_volume(f"{store}:affs_whole").read(), open_volume(f"{store}:affs_blocks").read()
    near = slice(0, 3)
    print(f"FIB validation part z 120-159 {labels.shape}, {args.workers} workers, model {args.model}\n")
    print("| affinities | segmentation | threshold | VOI split | VOI merge | VOI | ARAND | segments | VOI to whole |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = {"whole": ("whole-volume", "whole-volume"), "blockwise": ("blockwise", "blockwise"),
            "mixed": ("whole-volume", "blockwise")}
    for name, (affs_kind, seg_kind) in rows.items():
        s = evaluate_segmentation(segs[name], labels)
        threshold = open_volume(f"{store}:seg_{name}").attrs.get("threshold")
        to_whole = evaluate_segmentation(segs[name], segs["whole"])["voi"]
        print(f"| {affs_kind} | {seg_kind} | {threshold} | {s['voi_split']:.3f} | {s['voi_merge']:.3f} "
              f"| {s['voi']:.3f} | {s['arand']:.3f} | {s['n_seg_ids']} | {to_whole:.3f} |")
    diff = np.abs(a[near] - b[near])
    print(f"\nnearest affinities, blockwise vs whole: max |diff| {diff.max():.4f}, mean {diff.mean():.5f}, "
          f"voxels off by > 0.1: {(diff > 0.1).mean():.4%}")
    print("wall time per command (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    if args.jitter_draws:
        from tokenunify.config import from_dict, load_yaml
        from tokenunify.postprocess.pipeline import jittered, sweep_scores
        from tokenunify.postprocess.settings import SegmentSettings

        settings = from_dict(SegmentSettings, load_yaml(args.config).get("segment") or {}, str(args.config))
        offsets = open_volume(f"{store}:affs_whole").attrs["offsets"]
        best = [sweep_scores(jittered(a, draw, 1e-3), labels, offsets, settings, None, False)[1]
                for draw in range(1, args.jitter_draws + 1)]
        vois = [b["voi"] for b in best]
        print(f"whole-volume best VOI under +-0.001 noise ({len(vois)} draws): {min(vois):.3f} to {max(vois):.3f} "
              f"(thresholds {sorted({b['threshold'] for b in best})}); without noise "
              f"{evaluate_segmentation(segs['whole'], labels)['voi']:.3f}")


if __name__ == "__main__":
    main()
