"""Study results as numbers: per-run rows, mean ± std over seeds, relative changes, checks.

Pure functions of the stages' `result.json` contents, so the report can be
rebuilt at any time from a study folder (`tokenunify study --report-only`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tokenunify.study.settings import SCRATCH, FloorSettings

METRICS = ("voi_split", "voi_merge", "voi", "arand")
MAE = "mae"
TOKENUNIFY = "tokenunify"
#: The issue's target: TokenUnify's VOI at least this far below scratch and MAE.
TARGET_REDUCTION = 0.20


def run_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per finished fine-tuning run: arm, preset, budget, seed, part and the final metrics."""
    rows = []
    for r in results:
        if r["kind"] != "finetune":
            continue
        rows.append({"arm": r["arm"], "preset": r["preset"], "budget": r["budget"], "seed": r["seed"], "part": r["part"],
                     "parameters": r["parameters"], "steps": r["steps"], "threshold": r["final"]["threshold"],
                     "init_loaded": r["init_loaded"], **{m: float(r["final"][m]) for m in METRICS},
                     # spread of the VOI over the jittered copies of the affinities (None: one copy)
                     "eval_voi_std": r["final"].get("voi_std"), "eval_draws": r["final"].get("draws", 1)})
    return rows


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarize(rows: Sequence[dict[str, Any]], arms: Sequence[str], budgets: Sequence[str], preset: str) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (budget, arm) of one preset, with VOI change against scratch and MAE (%)."""
    table = []
    for budget in budgets:
        group: dict[str, dict[str, Any]] = {}
        for arm in arms:
            picked = [r for r in rows if r["arm"] == arm and r["budget"] == budget and r["preset"] == preset]
            if not picked:
                continue
            entry: dict[str, Any] = {"budget": budget, "arm": arm, "seeds": len(picked)}
            for m in METRICS:
                entry[f"{m}_mean"], entry[f"{m}_std"] = mean_std([r[m] for r in picked])
            group[arm] = entry
        for entry in group.values():
            for ref in (SCRATCH, MAE):
                base = group.get(ref, {}).get("voi_mean")
                entry[f"voi_vs_{ref}_pct"] = None if not base else 100.0 * (entry["voi_mean"] - base) / base
            table.append(entry)
    return table


def target_check(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per budget: is TokenUnify's VOI >= 20% below scratch and MAE, by more than the seed spread?

    "More than the seed spread" means the gap between the means exceeds the
    sum of the two standard deviations (with one seed there is no spread
    and the check says so).
    """
    checks = []
    for budget in dict.fromkeys(e["budget"] for e in summary):
        by_arm = {e["arm"]: e for e in summary if e["budget"] == budget}
        tu = by_arm.get(TOKENUNIFY)
        if tu is None:
            continue
        check: dict[str, Any] = {"budget": budget}
        for ref in (SCRATCH, MAE):
            other = by_arm.get(ref)
            if other is None:
                continue
            gap = other["voi_mean"] - tu["voi_mean"]
            spread = other["voi_std"] + tu["voi_std"]
            check[ref] = {
                "reduction_pct": 100.0 * gap / other["voi_mean"],
                "meets_20pct": gap >= TARGET_REDUCTION * other["voi_mean"],
                "gap": gap, "seed_spread": spread,
                "beyond_spread": bool(gap > spread) if min(tu["seeds"], other["seeds"]) > 1 else None,
            }
        refs = [check[r] for r in (SCRATCH, MAE) if r in check]
        check["holds"] = bool(refs) and all(c["meets_20pct"] and c["beyond_spread"] for c in refs)
        checks.append(check)
    return checks


def floor_check(rows: Sequence[dict[str, Any]], floor: FloorSettings) -> list[dict[str, Any]]:
    """Runs that do not beat the intensity-only floor on VOI or on ARAND (empty: all beat it)."""
    return [r for r in rows if not (r["voi"] < floor.voi and r["arand"] < floor.arand)]


def all_finite(rows: Sequence[dict[str, Any]]) -> bool:
    """Every metric of every run is a finite number."""
    return all(np.isfinite(r[m]) for r in rows for m in METRICS)


def bootstrap_interval(values: Sequence[float], draws: int = 10_000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement); None below 2 values."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(draws, arr.size))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    return float(np.percentile(means, tail)), float(np.percentile(means, 100.0 - tail))


def paired_differences(rows: Sequence[dict[str, Any]], arms: Sequence[str], budgets: Sequence[str], preset: str,
                       refs: Sequence[str] = (SCRATCH, MAE), metric: str = "voi") -> list[dict[str, Any]]:
    """Per budget and arm: `metric` minus the reference arm's on the same seed, with a bootstrap 95% interval.

    Seeds pair runs that share the fine-tuning seed (crops, augmentation,
    initialisation of the fresh parts), so the paired difference removes the
    part of the seed spread both arms share. Only seeds present in both arms
    count; an interval needs at least two of them.
    """
    out = []
    for budget in budgets:
        by_arm = {arm: {r["seed"]: r[metric] for r in rows
                        if r["arm"] == arm and r["budget"] == budget and r["preset"] == preset} for arm in arms}
        for ref in refs:
            for arm in arms:
                if arm == ref or not by_arm.get(ref) or not by_arm.get(arm):
                    continue
                seeds = sorted(set(by_arm[arm]) & set(by_arm[ref]))
                if not seeds:
                    continue
                diffs = [by_arm[arm][s] - by_arm[ref][s] for s in seeds]
                interval = bootstrap_interval(diffs)
                base = float(np.mean([by_arm[ref][s] for s in seeds]))
                out.append({"budget": budget, "arm": arm, "ref": ref, "metric": metric, "seeds": seeds,
                            "diffs": diffs, "mean": float(np.mean(diffs)),
                            "mean_pct": 100.0 * float(np.mean(diffs)) / base if base else None,
                            "ci95": interval,
                            "excludes_zero": None if interval is None else bool(interval[1] < 0 or interval[0] > 0)})
    return out
