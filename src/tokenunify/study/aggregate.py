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
#: Cross-fitted (threshold chosen on the other validation slab) and held-out-volume
#: scores; present only when the validation cross-fits and a test volume is configured.
CROSS_FIT = tuple(f"cf_{m}" for m in METRICS) + ("cf_oracle_voi", "cf_oracle_arand")
HELD_OUT = tuple(f"test_{m}" for m in METRICS)
OPTIONAL_METRICS = CROSS_FIT + HELD_OUT
MAE = "mae"
TOKENUNIFY = "tokenunify"
#: The target: TokenUnify's VOI at least this far below scratch and below MAE.
TARGET_REDUCTION = {SCRATCH: 0.20, MAE: 0.10}


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
                     "eval_voi_std": r["final"].get("voi_std"), "eval_draws": r["final"].get("draws", 1),
                     "minutes": r.get("minutes_this_call"), "train_minutes": r.get("train_minutes"),
                     "resumed": bool(r.get("resumed")),
                     **_optional(r["final"].get("cross_fit"), "cf_"), **_optional(r.get("test"), "test_")})
    return rows


def _optional(scores: dict[str, Any] | None, prefix: str) -> dict[str, float | None]:
    keys = METRICS + (("oracle_voi", "oracle_arand") if prefix == "cf_" else ())
    return {f"{prefix}{m}": None if scores is None or m not in scores else float(scores[m]) for m in keys}


def headline(rows: Sequence[dict[str, Any]]) -> str:
    """The VOI a study compares arms by: cross-fitted ("cf_voi") when every run has it, else the oracle "voi"."""
    return "cf_voi" if rows and all(r.get("cf_voi") is not None for r in rows) else "voi"


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
            for m in METRICS + OPTIONAL_METRICS:
                if all(r.get(m) is not None for r in picked):
                    entry[f"{m}_mean"], entry[f"{m}_std"] = mean_std([r[m] for r in picked])
            # a resumed run's wall minutes are those of its last call only; its training minutes are whole
            minutes = [r["minutes"] for r in picked if r.get("minutes") is not None and not r.get("resumed")]
            entry["finetune_minutes_mean"] = float(np.mean(minutes)) if minutes else None
            train = [r["train_minutes"] for r in picked if r.get("train_minutes") is not None]
            entry["train_minutes_mean"] = float(np.mean(train)) if len(train) == len(picked) else None
            group[arm] = entry
        key = headline(rows)
        for entry in group.values():
            entry["headline"] = key
            for ref in (SCRATCH, MAE):
                base = group.get(ref, {}).get(f"{key}_mean")
                entry[f"voi_vs_{ref}_pct"] = None if not base else 100.0 * (entry[f"{key}_mean"] - base) / base
            table.append(entry)
    return table


def target_check(summary: Sequence[dict[str, Any]],
                 paired: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Per budget: is TokenUnify's VOI far enough below scratch (20%) and MAE (10%), beyond chance?

    "Beyond chance" is the paired test: the bootstrap 95% interval of the
    per-seed difference against that arm (from `paired_differences`) lies
    below zero. The seed-spread comparison (gap of the means against the sum
    of the two standard deviations) is reported beside it. Without paired
    rows, the seed-spread comparison decides.
    """
    checks = []
    for budget in dict.fromkeys(e["budget"] for e in summary):
        by_arm = {e["arm"]: e for e in summary if e["budget"] == budget}
        tu = by_arm.get(TOKENUNIFY)
        if tu is None:
            continue
        key = tu.get("headline", "voi")
        check: dict[str, Any] = {"budget": budget, "metric": key}
        for ref in (SCRATCH, MAE):
            other = by_arm.get(ref)
            if other is None:
                continue
            gap = other[f"{key}_mean"] - tu[f"{key}_mean"]
            spread = other[f"{key}_std"] + tu[f"{key}_std"]
            pair = next((p for p in paired if p["budget"] == budget and p["arm"] == TOKENUNIFY and p["ref"] == ref), None)
            below = None if pair is None or pair["ci95"] is None else bool(pair["ci95"][1] < 0)
            beyond_spread = bool(gap > spread) if min(tu["seeds"], other["seeds"]) > 1 else None
            check[ref] = {
                "reduction_pct": 100.0 * gap / other[f"{key}_mean"],
                "meets_target": gap >= TARGET_REDUCTION[ref] * other[f"{key}_mean"],
                "target_pct": 100.0 * TARGET_REDUCTION[ref],
                "gap": gap, "seed_spread": spread, "beyond_spread": beyond_spread,
                "paired_ci95": None if pair is None else pair["ci95"], "paired_below_zero": below,
                "beyond_chance": below if pair is not None else beyond_spread,
            }
        refs = [check[r] for r in (SCRATCH, MAE) if r in check]
        check["holds"] = bool(refs) and all(c["meets_target"] and c["beyond_chance"] for c in refs)
        checks.append(check)
    return checks


def floor_check(rows: Sequence[dict[str, Any]], floor: FloorSettings) -> list[dict[str, Any]]:
    """Runs that do not beat the intensity-only floor on VOI or on ARAND (empty: all beat it).

    The floor was measured on the whole validation part at its best
    threshold, so it is compared with the runs' figures of the same kind
    (the oracle columns); a half-slab VOI is smaller by construction.
    """
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


def _curve_groups(curves: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], list[list[dict[str, Any]]]]:
    """The runs' validation points grouped by (arm, budget); `curves` maps "arm/budget/sSEED" to points."""
    groups: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
    for label, points in sorted(curves.items()):
        arm, budget, _ = label.split("/")
        groups.setdefault((arm, budget), []).append(points)
    return groups


def _common_steps(runs: list[list[dict[str, Any]]]) -> list[int]:
    """The steps every run of a group validated at."""
    return sorted(set.intersection(*({p["step"] for p in points} for points in runs)))


def floor_along_curve(curves: dict[str, list[dict[str, Any]]], floor: FloorSettings) -> list[dict[str, Any]]:
    """Per (arm, budget) and validated step: the mean oracle ARAND over seeds and how many runs miss the floor.

    A run misses where its VOI or its ARAND is not below the floor's (as in
    `floor_check`). This tells whether more steps would clear the floor, or
    whether runs cross it back and forth as they train. Only steps every
    seed of the group validated at count.
    """
    out = []
    for (arm, budget), runs in _curve_groups(curves).items():
        steps = _common_steps(runs)
        at = [[next(p for p in points if p["step"] == s) for points in runs] for s in steps]
        out.append({"arm": arm, "budget": budget, "seeds": len(runs), "steps": steps,
                    "arand_mean": [float(np.mean([p["arand"] for p in ps])) for ps in at],
                    "misses": [sum(not (p["voi"] < floor.voi and p["arand"] < floor.arand) for p in ps) for ps in at]})
    return out


def curve_bands(curves: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (arm, budget): the mean VOI over seeds at each validated step, with a bootstrap 95% interval.

    `curves` maps "arm/budget/sSEED" to that run's validation points. The
    VOI is the cross-fitted one where every point has it, else the oracle.
    Only steps every seed of the group validated at count.
    """
    bands = []
    for (arm, budget), runs in _curve_groups(curves).items():
        key = "cf_voi" if all("cf_voi" in p for points in runs for p in points) else "voi"
        steps = _common_steps(runs)
        values = [[next(p[key] for p in points if p["step"] == s) for points in runs] for s in steps]
        bands.append({"arm": arm, "budget": budget, "metric": key, "seeds": len(runs), "steps": steps,
                      "mean": [float(np.mean(v)) for v in values],
                      "ci95": [bootstrap_interval(v) for v in values]})
    return bands


def steps_to_match(bands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per budget and non-scratch arm: the first validated step whose mean VOI is at most scratch's final mean VOI.

    None when the arm never gets there within the fine-tuning run.
    """
    out = []
    for ref in (b for b in bands if b["arm"] == SCRATCH):
        target = ref["mean"][-1]
        for band in (b for b in bands if b["budget"] == ref["budget"] and b["arm"] != SCRATCH):
            step = next((s for s, m in zip(band["steps"], band["mean"]) if m <= target), None)
            out.append({"budget": band["budget"], "arm": band["arm"], "scratch_final_voi": target,
                        "scratch_steps": ref["steps"][-1], "steps_to_match": step,
                        "fraction": None if step is None else step / ref["steps"][-1]})
    return out
