"""Compare agglomeration-threshold grids on a labelled slab the study does not score.

Every finished fine-tuning run of a study folder predicts the tuning slab
(default z 80-120: the scarce budget neither trains nor validates there) and
the validation part (z 120-160). Each slab is swept once over the union of
the grids, with the study's scorer, fragments and jittered copies, and each
grid's figures are read off the same rows: the best-VOI row among the grid's
thresholds, and its ARAND. The choice between grids is made on the tuning
slab alone; the validation columns show what it does where the study scores.

    python benchmarks/threshold_grid.py runs/study/finetune -c configs/study_fib.yaml \
        [--grid coarse=0.5,0.6,0.7,0.8] [--shard 0/2] [--json out.json]

`--shard i/n` takes every n-th run from the i-th, so two processes (one
thread each) can split the runs; `--merge a.json b.json` prints the table of
their combined runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_settings import finished_runs, predict_slabs  # noqa: E402

from tokenunify.evaluate.sweep import best_row  # noqa: E402
from tokenunify.postprocess.pipeline import sweep_scores  # noqa: E402
from tokenunify.postprocess.settings import SegmentSettings  # noqa: E402
from tokenunify.study.run_study import load_study  # noqa: E402

COARSE = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
FINE = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8]
#: the floor the study checks on the validation part (whole-part oracle figures)
FLOOR_ARAND = 0.197


def parse_grid(text: str) -> tuple[str, list[float]]:
    """``name=t1,t2,...`` as (name, thresholds)."""
    name, _, values = text.partition("=")
    if not values:
        raise SystemExit(f"--grid {text!r}: expected name=t1,t2,...")
    return name, sorted(float(v) for v in values.split(","))


def study_segment_settings(config: Path) -> SegmentSettings:
    """The `finetune.segment` settings of a study config, without cross-fitting (the whole slab is scored)."""
    return dataclasses.replace(load_study(config, [], quick=False).finetune.segment, cross_fit_parts=1)


def grid_figures(rows: list[dict[str, Any]], grid: list[float]) -> dict[str, float]:
    """The best-VOI row among `grid`'s thresholds."""
    picked = [r for r in rows if any(abs(r["threshold"] - t) < 1e-9 for t in grid)]
    best = best_row(picked)
    return {k: float(best[k]) for k in ("threshold", "voi", "voi_split", "voi_merge", "arand")}


def table(runs: list[dict[str, Any]], grids: dict[str, list[float]]) -> str:
    """Mean figures per grid and slab, and the validation runs above the floor's ARAND."""
    lines = ["| grid | tuning VOI | tuning ARAND | validation VOI | validation ARAND | validation runs with ARAND >= "
             f"{FLOOR_ARAND} |", "|---|---:|---:|---:|---:|---:|"]
    for name in grids:
        t = [r["tuning"][name] for r in runs]
        v = [r["validation"][name] for r in runs]
        above = sum(x["arand"] >= FLOOR_ARAND for x in v)
        lines.append(f"| {name} | {np.mean([x['voi'] for x in t]):.3f} | {np.mean([x['arand'] for x in t]):.3f} | "
                     f"{np.mean([x['voi'] for x in v]):.3f} | {np.mean([x['arand'] for x in v]):.3f} | "
                     f"{above} of {len(v)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", help="a study's finetune/ folder")
    parser.add_argument("-c", "--config", type=Path, default=Path("configs/study_fib.yaml"))
    parser.add_argument("--grid", action="append", default=[], help="name=t1,t2,... (default: coarse and fine)")
    parser.add_argument("--tune-z", type=int, nargs=2, default=(80, 120))
    parser.add_argument("--val-z", type=int, nargs=2, default=(120, 160))
    parser.add_argument("--shard", default="0/1", help="i/n: every n-th run from the i-th")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--merge", type=Path, nargs="+", help="print the table of these --json files; run nothing")
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        print(table([r for p in parts for r in p["runs"]], parts[0]["grids"]))
        return
    if args.folder is None:
        raise SystemExit("give a study's finetune/ folder, or --merge")
    grids = dict(parse_grid(g) for g in args.grid) or {"coarse": COARSE, "fine": FINE}
    every = sorted({t for g in grids.values() for t in g})
    index, count = (int(x) for x in args.shard.split("/"))
    torch.set_num_threads(1)
    settings = study_segment_settings(args.config)
    slabs = {"tuning": tuple(args.tune_z), "validation": tuple(args.val_z)}
    runs = []
    for run in finished_runs(args.folder)[index::count]:
        affs, gts, offsets = predict_slabs(run, slabs)
        entry: dict[str, Any] = {"run": str(run.relative_to(args.folder))}
        for slab in slabs:
            rows, _, _ = sweep_scores(affs[slab], gts[slab], offsets, settings, every)
            entry[slab] = {name: grid_figures(rows, grid) for name, grid in grids.items()}
        runs.append(entry)
        print(entry["run"], " ".join(f"{s}/{n}: {entry[s][n]['threshold']} {entry[s][n]['voi']:.3f} "
                                     f"{entry[s][n]['arand']:.3f}" for s in slabs for n in grids), flush=True)
    print(table(runs, grids))
    if args.json:
        args.json.write_text(json.dumps({"grids": grids, "slabs": slabs, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
