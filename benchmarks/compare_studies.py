"""Two study reports side by side, arm by arm and seed by seed.

Usage::

    python benchmarks/compare_studies.py docs/study_enc3/results.json docs/results.json [--budget scarce]

For each arm that both reports ran (main part, the given label budget), it
prints the mean cross-fitted validation VOI and ARAND, the held-out VOI, the
training minutes per run of each report, and the paired difference
second minus first over the seeds both ran, with the study's percentile
bootstrap 95% interval over seeds. Use it to check a change that should not
move the scores (new kernels, the same config) or to measure one that should.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tokenunify.study.aggregate import bootstrap_interval


def _runs(path: Path, budget: str) -> dict[tuple[str, int], dict]:
    data = json.loads(path.read_text())
    return {(r["arm"], int(r["seed"])): r for r in data["runs"]
            if r.get("part", "main") == "main" and r.get("budget") == budget and r.get("cf_voi") is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--budget", default="scarce")
    args = parser.parse_args()
    a, b = _runs(args.first, args.budget), _runs(args.second, args.budget)
    arms = sorted({arm for arm, _ in a} & {arm for arm, _ in b})
    if not arms:
        raise SystemExit(f"no arm of budget {args.budget!r} in both {args.first} and {args.second}")
    print(f"first: {args.first}\nsecond: {args.second}\nbudget {args.budget}; cross-fitted VOI, mean over seeds")
    header = ("arm", "seeds", "VOI first", "VOI second", "second - first, 95%", "ARAND first / second",
              "held-out VOI first / second", "train min/run first / second")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for arm in arms:
        seeds = sorted({s for x, s in a if x == arm} & {s for x, s in b if x == arm})
        if not seeds:
            continue
        fa = np.array([a[arm, s]["cf_voi"] for s in seeds])
        fb = np.array([b[arm, s]["cf_voi"] for s in seeds])
        diff = fb - fa
        lo, hi = bootstrap_interval(diff) if len(seeds) > 1 else (float("nan"), float("nan"))

        def mean(runs: dict, key: str) -> float:
            values = [runs[arm, s].get(key) for s in seeds]
            return float(np.mean([v for v in values if v is not None])) if any(v is not None for v in values) else float("nan")

        print(f"| {arm} | {','.join(map(str, seeds))} | {fa.mean():.3f} | {fb.mean():.3f} | "
              f"{diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] | {mean(a, 'cf_arand'):.3f} / {mean(b, 'cf_arand'):.3f} | "
              f"{mean(a, 'test_voi'):.3f} / {mean(b, 'test_voi'):.3f} | "
              f"{mean(a, 'train_minutes'):.2f} / {mean(b, 'train_minutes'):.2f} |")


if __name__ == "__main__":
    main()
