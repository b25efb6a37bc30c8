"""Choose the segmentation settings of a study on a labelled slab it does not score.

Every finished fine-tuning run of a study folder predicts two labelled slabs
of its own volume: a *tuning* slab (default z 80-120, which the scarce budget
neither trains on nor validates on) and the validation part (z 120-160). Each
candidate setting (waterz scorer, boundary threshold, seed distance) is then
scored on both with the usual threshold sweep. The choice is made on the
tuning slab alone: first the scorer with the lowest mean VOI at the default
fragments, then a fragment setting of that scorer only where it lowers the
mean VOI by more than `--margin` (default 0.05 VOI, below which one
segmentation's jitter spread, about 0.07, cannot tell settings apart). The
validation figures show what the choice does where the study scores;
nothing is chosen on them.

    python benchmarks/segment_settings.py runs/study/finetune [--tune-z 80 120] [--json out.json]

One thread per process (the study's own setting); about 10 s of prediction
per run and slab, about 3 s per setting, run and slab (20 runs: about 20 min). Thresholds are swept as
in the study; no jittered copies (jitter_repeats 1), so single figures are
noisier than the study's but every setting sees the same affinities.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenunify.config import load_yaml
from tokenunify.io import open_volume
from tokenunify.postprocess.pipeline import sweep_scores
from tokenunify.postprocess.settings import SegmentSettings
from tokenunify.predict.inference import predict_blockwise
from tokenunify.predict.run import load_model

QUANTILE = "OneMinus<HistogramQuantileAffinity<RegionGraphType,{},ScoreValue,256,true>>"
MEAN = "OneMinus<MeanAffinity<RegionGraphType,ScoreValue>>"
THRESHOLDS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def candidates() -> dict[str, dict[str, Any]]:
    """The settings compared: waterz scorers at the default fragments, then the fragment knobs for the mean scorer."""
    grid: dict[str, dict[str, Any]] = {"mean": {"scoring": MEAN}}
    for q in (50, 60, 70, 75, 80, 90):
        grid[f"quantile {q}"] = {"scoring": QUANTILE.format(q)}
    grid["mean, boundary 0.7"] = {"scoring": MEAN, "boundary_threshold": 0.7}
    grid["mean, seeds 5 apart"] = {"scoring": MEAN, "min_seed_distance": 5}
    grid["mean, seeds 15 apart"] = {"scoring": MEAN, "min_seed_distance": 15}
    return grid


def finished_runs(folder: Path) -> list[Path]:
    """Run folders under `folder` with a final checkpoint and a result (the study's finished stages)."""
    runs = sorted(p.parent.parent for p in folder.rglob("checkpoints/last.pt") if (p.parent.parent / "result.json").exists())
    if not runs:
        raise SystemExit(f"{folder}: no finished fine-tuning runs (checkpoints/last.pt with result.json)")
    return runs


def _slab(spec: str, z: tuple[int, int]) -> np.ndarray:
    return np.asarray(open_volume(spec)[z[0]:z[1]])


def predict_slabs(run: Path, slabs: dict[str, tuple[int, int]]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list]:
    """The run's affinities and ground truth on each slab, and its offsets; refuses a slab the run trained on."""
    config = load_yaml(run / "config.yaml")
    data = config["data"]
    train_z = data.get("train_z")
    for name, (z0, z1) in slabs.items():
        if train_z is None or (z0 < train_z[1] and train_z[0] < z1):
            raise SystemExit(f"{run}: the {name} slab z {z0}-{z1} overlaps the run's training sections {train_z}")
    model, state = load_model(run / "checkpoints" / "last.pt", "cpu")
    p = config["predict"]
    affs, gts = {}, {}
    for name, z in slabs.items():
        raw = _slab(data["raw"], z)
        out = np.zeros((len(state["offsets"]),) + raw.shape, np.float32)
        predict_blockwise(model, raw, out, tuple(p["block"]), tuple(p["overlap"]), batch_size=1,
                          device=torch.device("cpu"), bf16=bool(p["bf16"]), progress=False)
        affs[name], gts[name] = out, _slab(data["labels"], z).astype(np.uint64)
    return affs, gts, state["offsets"]


def score(affs: np.ndarray, gt: np.ndarray, offsets: list, base: SegmentSettings, change: dict[str, Any]) -> dict[str, float]:
    """Best-of-sweep VOI and ARAND of one setting (the oracle threshold: both slabs are scored the same way)."""
    _, best, _ = sweep_scores(affs, gt, offsets, dataclasses.replace(base, **change), THRESHOLDS)
    return {"voi": float(best["voi"]), "arand": float(best["arand"])}


def choose(mean: dict[str, dict[str, dict[str, float]]], margin: float) -> str:
    """The scorer with the lowest tuning VOI at the default fragments, then one of its fragment settings beyond `margin`."""
    tuning = {name: m["tuning"]["voi"] for name, m in mean.items()}
    scorer = min((n for n in tuning if "," not in n), key=tuning.get)
    variants = [n for n in tuning if n.startswith(scorer + ",")]
    best = min(variants, key=tuning.get, default=scorer)
    return best if tuning[best] < tuning[scorer] - margin else scorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a study's finetune/ folder (its finished runs are used)")
    parser.add_argument("--tune-z", type=int, nargs=2, default=(80, 120))
    parser.add_argument("--val-z", type=int, nargs=2, default=(120, 160))
    parser.add_argument("--margin", type=float, default=0.05,
                        help="tuning-slab VOI a fragment setting must gain over its scorer's default fragments")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    slabs = {"tuning": tuple(args.tune_z), "validation": tuple(args.val_z)}
    grid = candidates()
    base = SegmentSettings(method="waterz", fragments="3d")
    figures: dict[str, dict[str, list[dict[str, float]]]] = {name: {s: [] for s in slabs} for name in grid}
    runs = finished_runs(args.folder)
    for i, run in enumerate(runs, 1):
        affs, gts, offsets = predict_slabs(run, slabs)
        for name, change in grid.items():
            for slab in slabs:
                figures[name][slab].append({"run": str(run.relative_to(args.folder)),
                                            **score(affs[slab], gts[slab], offsets, base, change)})
        print(f"[{i}/{len(runs)}] {run.relative_to(args.folder)}", flush=True)
    mean = {name: {slab: {m: float(np.mean([r[m] for r in rows])) for m in ("voi", "arand")}
                   for slab, rows in per.items()} for name, per in figures.items()}
    chosen = choose(mean, args.margin)
    print(f"\n{len(runs)} runs; tuning slab z {args.tune_z[0]}-{args.tune_z[1]}, "
          f"validation z {args.val_z[0]}-{args.val_z[1]}; mean of the best-of-sweep figures\n")
    print("| setting | tuning VOI | tuning ARAND | validation VOI | validation ARAND |")
    print("|---|---:|---:|---:|---:|")
    for name in sorted(mean, key=lambda n: mean[n]["tuning"]["voi"]):
        t, v = mean[name]["tuning"], mean[name]["validation"]
        mark = " (chosen)" if name == chosen else ""
        print(f"| {name}{mark} | {t['voi']:.3f} | {t['arand']:.3f} | {v['voi']:.3f} | {v['arand']:.3f} |")
    print(f"\nchosen on the tuning slab (margin {args.margin} for fragment settings): {chosen}: {grid[chosen]}")
    if args.json:
        args.json.write_text(json.dumps({"slabs": slabs, "chosen": chosen, "grid": grid, "mean": mean,
                                         "runs": figures}, indent=1))


if __name__ == "__main__":
    main()
