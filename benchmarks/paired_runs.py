"""Paired comparison of stand-alone fine-tuning runs against a study's arms, seed by seed.

A variant tried with `tokenunify train -c <a study run's config.yaml> <overrides>
out_dir=runs/explore/<name>_s<seed>_800` is compared with the study runs of the
same seeds on the study's headline figure (the cross-fitted validation VOI of
the last validation), with the study's bootstrap interval over seeds:

    python benchmarks/paired_runs.py "runs/explore/tok_enconly_s{seed}_800" --seeds 0 1 2 3 4

It prints the variant's curve and final figures per seed, its mean, and the
paired difference against each arm of `--results` (default docs/results.json).
With `--study-dir` (the study's out_dir, e.g. runs/study) it also prints the
mean training loss (balanced BCE) over steps 1-100, 101-200, ... of the
variant and of each arm's runs of the same seeds: whether a variant fits the
training crops worse (an optimisation problem) or fits them as well and
validates worse (a generalisation problem).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tokenunify.study.aggregate import bootstrap_interval
from tokenunify.training.run_folder import RunFolder, read_metrics

LOSS_WINDOW = 100


def _loss_windows(folders: list[Path]) -> dict[int, float]:
    """Mean training loss per window of `LOSS_WINDOW` steps, pooled over the runs in `folders`."""
    pooled: dict[int, list[float]] = {}
    for folder in folders:
        for row in read_metrics(RunFolder(folder).metrics):
            if "loss" in row and "step" in row:
                pooled.setdefault((int(row["step"]) - 1) // LOSS_WINDOW, []).append(float(row["loss"]))
    return {w: float(np.mean(v)) for w, v in sorted(pooled.items())}


def _print_losses(name: str, windows: dict[int, float]) -> None:
    shown = " ".join(f"{w * LOSS_WINDOW + 1}-{(w + 1) * LOSS_WINDOW}:{v:.3f}" for w, v in windows.items())
    print(f"training loss, {name:12s} {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pattern", help="run folder with {seed} in it")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--results", type=Path, default=Path("docs/results.json"))
    parser.add_argument("--arms", nargs="+", default=["scratch", "mae", "tokenunify"])
    parser.add_argument("--study-dir", type=Path, default=None,
                        help="the study's out_dir: also compare training losses with its runs")
    args = parser.parse_args()

    study = {(r["arm"], r["seed"]): r for r in json.loads(args.results.read_text())["runs"]}
    finals = []
    for seed in args.seeds:
        vals = RunFolder(Path(args.pattern.format(seed=seed))).validations()
        if not vals or "cross_fit" not in vals[-1]:
            raise SystemExit(f"{args.pattern.format(seed=seed)}: no cross-fitted validation at the end of the run")
        finals.append(vals[-1])
        curve = " / ".join(f"{v['cross_fit']['voi']:.3f}" for v in vals)
        print(f"seed {seed}: cross-fitted VOI at steps {', '.join(str(v['step']) for v in vals)}: {curve}; "
              f"whole part, oracle: VOI {vals[-1]['voi']:.3f}, ARAND {vals[-1]['arand']:.3f}")
    voi = np.array([f["cross_fit"]["voi"] for f in finals])
    spread = f"{voi.std(ddof=1):.3f}" if len(voi) > 1 else "–"
    print(f"mean over {len(voi)} seeds: cross-fitted VOI {voi.mean():.3f} ± {spread}, "
          f"ARAND {np.mean([f['cross_fit']['arand'] for f in finals]):.3f}")
    for arm in args.arms:
        base = np.array([study[(arm, seed)]["cf_voi"] for seed in args.seeds])
        diff = voi - base
        interval = bootstrap_interval(list(diff))
        shown = "–" if interval is None else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"
        print(f"minus {arm}: {diff.mean():+.3f} ({100 * diff.mean() / base.mean():+.1f}%), bootstrap 95% {shown}; "
              f"per seed {', '.join(f'{d:+.3f}' for d in diff)}")
    if args.study_dir is not None:
        _print_losses("variant", _loss_windows([Path(args.pattern.format(seed=seed)) for seed in args.seeds]))
        for arm in args.arms:
            runs = [study[(arm, seed)] for seed in args.seeds]  # results.json names no folder: the study's layout does
            _print_losses(arm, _loss_windows([args.study_dir / "finetune" / arm / r["preset"] / r["budget"] / f"s{r['seed']}"
                                              for r in runs]))


if __name__ == "__main__":
    main()
