"""Markdown sections of the study report that compare arms: the main table, curves, steps-to-match.

Each function takes the report dict that `tokenunify.study.report` builds
and returns lines of Markdown (empty when the section has nothing to show).
"""

from __future__ import annotations

from typing import Any

__all__ = ["equal_minutes_note", "main_table", "protocol_note", "steps_to_match_lines", "test_volume_note"]

#: How far (as a share) an arm's training minutes may be from scratch's and still count as "the same minutes".
EQUAL_MINUTES_TOLERANCE = 0.15


def _pm(entry: dict[str, Any], metric: str) -> str:
    if f"{metric}_mean" not in entry:
        return "–"
    return f"{entry[f'{metric}_mean']:.3f} ± {entry[f'{metric}_std']:.3f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}%"


def main_table(report: dict[str, Any]) -> list[str]:
    """Mean ± std over seeds per budget and arm: headline score, oracle score, held-out volume, minutes."""
    summary = report["summary"]
    cross_fitted = any(e.get("headline") == "cf_voi" for e in summary)
    held_out = any("test_voi_mean" in e for e in summary)
    head = ["label budget", "arm", "seeds"]
    if cross_fitted:
        head += ["VOI split (cross-fit)", "VOI merge (cross-fit)", "**VOI (cross-fit)**", "**ARAND (cross-fit)**",
                 "VOI (halves, oracle)", "VOI (whole, oracle)", "ARAND (whole, oracle)"]
    else:
        head += ["VOI split", "VOI merge", "VOI", "ARAND"]
    if held_out:
        head += ["held-out VOI", "held-out ARAND"]
    head += ["VOI vs scratch", "VOI vs MAE", "fine-tune min/run (wall, unresumed runs)", "training min/run"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for e in summary:
        cells = [e["budget"], e["arm"], str(e["seeds"])]
        if cross_fitted:
            cells += [_pm(e, m) for m in ("cf_voi_split", "cf_voi_merge", "cf_voi", "cf_arand", "cf_oracle_voi",
                                          "voi", "arand")]
        else:
            cells += [_pm(e, m) for m in ("voi_split", "voi_merge", "voi", "arand")]
        if held_out:
            cells += [_pm(e, "test_voi"), _pm(e, "test_arand")]
        minutes = [e.get("finetune_minutes_mean"), e.get("train_minutes_mean")]
        cells += [_pct(e["voi_vs_scratch_pct"]), _pct(e["voi_vs_mae_pct"]),
                  *("–" if m is None else f"{m:.1f}" for m in minutes)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def protocol_note(report: dict[str, Any]) -> list[str]:
    """How the threshold of each figure was chosen."""
    summary = report["summary"]
    if any(e.get("headline") == "cf_voi" for e in summary):
        return ["Thresholds: the **cross-fit** columns score each half of the validation part (z 120-139, "
                "z 140-159) at the threshold that is best on the other half and average the two halves; no "
                "figure there comes from a threshold chosen on the data it scores, and arms are compared on it. "
                "\"Halves, oracle\" scores the same halves at their own best thresholds: the cross-fitted VOI "
                "minus it is what choosing the threshold elsewhere costs. A half's VOI is smaller than the whole "
                "part's by construction (fewer objects, fewer cut ones), so compare the cross-fit columns with "
                "the halves, not with the **whole, oracle** columns (best threshold on all of z 120-159, the "
                "figure of earlier studies and of the intensity-only floor).", ""]
    return ["Thresholds: the best of the sweep on the validation part (an oracle choice, which flatters every arm).", ""]


def test_volume_note(report: dict[str, Any]) -> list[str]:
    """Which second volume was scored, and how its threshold was chosen."""
    volume = report["meta"]["config"]["finetune"]["data"].get("test_raw")
    if not volume or not any("test_voi_mean" in e for e in report["summary"]):
        return []
    return [f"Held-out volume: `{volume}`, which no run trains or validates on, segmented at the threshold "
            "the run's last validation chose (oracle on the validation part, never on this volume).", ""]


def steps_to_match_lines(report: dict[str, Any]) -> list[str]:
    """How many fine-tuning steps each pretrained arm needs to reach scratch's final VOI."""
    rows = report.get("steps_to_match") or []
    if not rows:
        return []
    lines = ["| label budget | arm | scratch's final VOI (step) | steps to match | share of scratch's steps |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        step = "not within the run" if r["steps_to_match"] is None else str(r["steps_to_match"])
        share = "–" if r["fraction"] is None else f"{r['fraction']:.0%}"
        lines.append(f"| {r['budget']} | {r['arm']} | {r['scratch_final_voi']:.3f} ({r['scratch_steps']}) | "
                     f"{step} | {share} |")
    return ["Steps to match: the first validated step at which the arm's mean VOI over seeds is at most "
            "scratch's mean VOI at its last step.", "", *lines, ""]


def floor_curve_lines(report: dict[str, Any]) -> list[str]:
    """The floor along the curves: mean oracle ARAND and the runs that miss the floor at each validated step."""
    groups = report["floor"].get("along_curve") or []
    if not groups:
        return []
    floor = report["floor"]
    lines = [f"The floor along the curves: mean oracle ARAND over seeds, and in brackets the runs that do not beat "
             f"the floor (VOI {floor['voi']}, ARAND {floor['arand']}) at that step.", ""]
    for budget in dict.fromkeys(g["budget"] for g in groups):
        rows = [g for g in groups if g["budget"] == budget]
        steps = rows[0]["steps"]
        lines += [f"| {budget} | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---:|" * len(steps)]
        for g in rows:
            cells = [f"{a:.3f} ({m}/{g['seeds']})" for a, m in zip(g["arand_mean"], g["misses"])]
            lines.append(f"| {g['arm']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def equal_minutes_note(report: dict[str, Any]) -> list[str]:
    """Whether each arm of another network (the U-Net) trained for the TokenUnify arms' minutes, per budget.

    The reference is the mean training minutes of the arms that fine-tune
    the TokenUnify network (scratch, MAE, TokenUnify: the same step). The
    U-Net arm's `finetune_steps_scale` comes from a step benchmark, and the
    ratio of the two networks' step times differs between CPUs (0.8 on an
    AVX2 machine in fp32, 1.5 on an AVX-512 one in bf16) and between an idle
    two-thread benchmark and the study's one-thread stages side by side, so
    the report checks the claim on the training minutes the runs measured and
    names the scale that would have matched them.
    """
    arms = {a["name"]: a for a in report["meta"]["config"].get("arms") or []}
    network = {name: arm.get("network", "tokenunify") for name, arm in arms.items()}
    lines = []
    for e in report["summary"]:
        if network.get(e["arm"], "tokenunify") == "tokenunify" or not e.get("train_minutes_mean"):
            continue
        refs = [x["train_minutes_mean"] for x in report["summary"] if x["budget"] == e["budget"]
                and network.get(x["arm"], "tokenunify") == "tokenunify" and x.get("train_minutes_mean")]
        if not refs:
            continue
        ref = sum(refs) / len(refs)
        ratio = e["train_minutes_mean"] / ref
        scale = arms[e["arm"]].get("finetune_steps_scale", 1.0)
        verdict = ("the same minutes within "
                   f"{100 * EQUAL_MINUTES_TOLERANCE:.0f}%" if abs(ratio - 1) <= EQUAL_MINUTES_TOLERANCE else
                   f"**not** the same minutes: on this machine `finetune_steps_scale: {scale / ratio:.2f}` "
                   "would have matched them")
        lines.append(f"- **{e['budget']}**: `{e['arm']}` ({network[e['arm']]}, `finetune_steps_scale: {scale:g}`) "
                     f"trained {e['train_minutes_mean']:.2f} min per run against {ref:.2f} for the "
                     f"TokenUnify-network arms ({ratio:.2f}x): {verdict}.")
    if not lines:
        return []
    return ["Equal minutes (training steps alone, validations excluded; measured by the runs, "
            "each stage beside another as the study ran them):", "", *lines, ""]
