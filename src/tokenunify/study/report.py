"""Write the study report: results.json, results.md and three PNGs.

`results.json` holds every figure (per arm, label budget, preset and seed)
plus the summary, the checks, the curves, the command, the config, the commit
and the wall time; `results.md` renders the same for people.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import yaml

from tokenunify.io.atomic import write_text_atomic
from tokenunify.report.plots import save_figure
from tokenunify.study import aggregate as agg
from tokenunify.study.report_sections import (
    equal_minutes_note,
    floor_curve_lines,
    main_table,
    protocol_note,
    steps_to_match_lines,
    test_volume_note,
)
from tokenunify.study.settings import StudySettings

FIGURES = {"voi": "study_voi.png", "curve": "study_curve.png", "scaling": "study_scaling.png"}


def plot_voi(summary: Sequence[dict[str, Any]], path: Path, floor: dict[str, float] | None = None) -> None:
    """VOI and ARAND (mean ± std over seeds) per arm, one group per label budget; `floor` as a dashed line."""
    budgets = list(dict.fromkeys(e["budget"] for e in summary))
    arms = list(dict.fromkeys(e["arm"] for e in summary))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(arms), 1)
    for ax, metric in zip(axes, ("voi", "arand")):
        for i, arm in enumerate(arms):
            entries = [next((e for e in summary if e["arm"] == arm and e["budget"] == b), None) for b in budgets]
            means = [e[f"{metric}_mean"] if e else np.nan for e in entries]
            stds = [e[f"{metric}_std"] if e else 0.0 for e in entries]
            ax.bar(np.arange(len(budgets)) + i * width, means, width, yerr=stds, capsize=3, label=arm)
        ax.set_xticks(np.arange(len(budgets)) + width * (len(arms) - 1) / 2, budgets)
        if floor is not None:
            ax.axhline(floor[metric], color="k", ls="--", lw=1, label="intensity-only floor")
        ax.set_ylabel(f"{metric.upper()} (lower is better)")
        ax.set_xlabel("label budget")
    axes[0].legend(fontsize=8)
    fig.suptitle("validation z 120-159, mean ± std over seeds")
    save_figure(fig, path)


def plot_curves(bands: Sequence[dict[str, Any]], path: Path) -> None:
    """VOI against fine-tuning steps: colour per arm, line style per budget; mean over seeds with its 95% band."""
    arms = list(dict.fromkeys(b["arm"] for b in bands))
    budgets = list(dict.fromkeys(b["budget"] for b in bands))
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for band in bands:
        colour, style = f"C{arms.index(band['arm'])}", styles[budgets.index(band["budget"]) % len(styles)]
        ax.plot(band["steps"], band["mean"], color=colour, ls=style, lw=2, marker="o", ms=4,
                label=f"{band['arm']}, {band['budget']} (mean of {band['seeds']})")
        if all(ci is not None for ci in band["ci95"]):
            ax.fill_between(band["steps"], [ci[0] for ci in band["ci95"]], [ci[1] for ci in band["ci95"]],
                            color=colour, alpha=0.15, lw=0)
    metric = "cross-fitted" if bands and all(b["metric"] == "cf_voi" for b in bands) else "oracle-threshold"
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(f"validation VOI, {metric} (lower is better)")
    ax.set_title("mean over seeds, shaded: bootstrap 95% interval", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_scaling(points: Sequence[dict[str, Any]], path: Path) -> None:
    """VOI against parameter count, one line per arm."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in dict.fromkeys(p["arm"] for p in points):
        mine = sorted((p for p in points if p["arm"] == arm), key=lambda p: p["parameters"])
        ax.errorbar([p["parameters"] for p in mine], [p["voi_mean"] for p in mine], yerr=[p["voi_std"] for p in mine],
                    marker="o", capsize=3, label=arm)
        for p in mine:
            ax.annotate(p["preset"], (p["parameters"], p["voi_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation VOI")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def scaling_points(rows: Sequence[dict[str, Any]], study: StudySettings) -> list[dict[str, Any]]:
    """Mean ± std VOI per (arm, preset) at the scaling budget, main preset included."""
    points = []
    presets = [study.pretrain.model.preset, *study.scaling.presets]
    for arm in study.scaling.arms:
        for preset in presets:
            picked = [r for r in rows if r["arm"] == arm and r["preset"] == preset and r["budget"] == study.scaling.budget
                      and r["seed"] in study.scaling.seeds]
            if picked:
                mean, std = agg.mean_std([r["voi"] for r in picked])
                points.append({"arm": arm, "preset": preset, "parameters": picked[0]["parameters"],
                               "voi_mean": mean, "voi_std": std, "seeds": len(picked)})
    return points


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}%"


def _evaluation_note(report: dict[str, Any]) -> list[str]:
    """How each score was averaged over jittered copies of the affinities, and how noisy one copy is."""
    runs = report["runs"]
    jitter = report["meta"]["config"]["finetune"]["segment"].get("jitter")
    spreads = [r["eval_voi_std"] for r in runs if r.get("eval_voi_std") is not None]
    if not spreads:
        return []
    draws = max(r["eval_draws"] for r in runs)
    return [f"Each score is the mean over {draws} copies of the validation affinities (the affinities and "
            f"{draws - 1} copies with uniform noise of ±{jitter} added), because a single "
            f"segmentation of this small cube is a knife-edge function of the affinities: the VOI standard deviation "
            f"across the copies of one run is {float(np.mean(spreads)):.3f} on average (max {max(spreads):.3f}); "
            "column \"VOI eval std\" below.", ""]


def _parallel_note(meta: dict[str, Any]) -> str:
    workers = meta.get("workers", 1)
    return "" if workers == 1 else f" ({workers} stages ran at a time, so the sum exceeds the wall time)"


def _paired_lines(report: dict[str, Any]) -> list[str]:
    """VOI of each arm minus the reference's on the same seed, mean and bootstrap 95% interval over seeds."""
    rows = report.get("paired") or []
    if not rows:
        return []
    lines = ["## Paired differences (VOI, same fine-tuning seed)", "",
             "| label budget | arm | against | seeds | mean difference | % | bootstrap 95% interval | excludes 0 |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for p in rows:
        ci = "n/a (one seed)" if p["ci95"] is None else f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
        excludes = "n/a" if p["excludes_zero"] is None else ("yes" if p["excludes_zero"] else "no")
        lines.append(f"| {p['budget']} | {p['arm']} | {p['ref']} | {len(p['seeds'])} | {p['mean']:+.3f} | "
                     f"{_pct(p['mean_pct'])} | {ci} | {excludes} |")
    return [*lines, ""]


def _pretraining_lines(report: dict[str, Any]) -> list[str]:
    """Tokens and minutes of each pretraining, and whether this study ran it or reused a cached run."""
    rows = report.get("pretraining") or []
    if not rows:
        return []
    lines = ["## Pretraining", "", "| stage | arm | fine-tuned by | steps | tokens | minutes | source |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        source = f"reused from the cache `{r['cached_from']}`" if r["cached_from"] else "ran in this study"
        used = ", ".join(r.get("used_by") or [r["arm"]])
        lines.append(f"| {r['stage']} | {r['arm']} | {used} | {r['steps']} | {r['tokens']:,} | {r['minutes']:.1f} | "
                     f"{source} |")
    return [*lines, ""]


def _differs(config: dict[str, Any]) -> bool:
    """Whether some arm changes the shared pretraining or fine-tuning config (overrides, steps scales)."""
    return any(a.get("pretrain_overrides") or a.get("finetune_overrides") or a.get("pretrain_steps_scale", 1.0) != 1.0
               for a in config.get("arms") or [])


def _budget_note(config: dict[str, Any]) -> str:
    """The compute budget of the study in words: pretraining and fine-tuning steps, batch, crop, recipe."""
    pre, fine = config["pretrain"]["train"], config["finetune"]["train"]

    def shape(t: dict[str, Any]) -> str:
        return f"{t['batch_size']} x {'x'.join(str(c) for c in t['crop'])}"

    recipe = [f"lr {fine['lr']:g} -> {fine['lr_final']:g}"]
    if fine.get("warmup_steps"):
        recipe.append(f"{fine['warmup_steps']} warm-up steps")
    if fine.get("encoder_lr_scale", 1.0) != 1.0:
        recipe.append(f"encoder lr x {fine['encoder_lr_scale']:g}")
    if fine.get("encoder_frozen_steps"):
        recipe.append(f"encoder frozen for the first {fine['encoder_frozen_steps']} steps")
    same = ("the same for every arm except where an arm's overrides below say otherwise" if _differs(config)
            else "the same for every arm, scratch included")
    return (f"Budget: pretraining {pre['steps']} steps of {shape(pre)} per pretrained arm; fine-tuning "
            f"{fine['steps']} steps of {shape(fine)} per TokenUnify-network run ({', '.join(recipe)}; {same}; "
            "an arm with a `finetune_steps_scale` or `pretrain_steps_scale` trains that many times as "
            "long, see the config below); minutes per run in the table.")


def _precision_note(report: dict[str, Any]) -> str:
    """What the stages computed in, counted (bf16 asked for falls back to fp32 on CPUs without native bf16)."""
    counts = report.get("precision") or {}
    if not counts:
        return ""
    return "Precision of the finished stages: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "."


def _override_lines(config: dict[str, Any]) -> list[str]:
    """The arms whose pretraining or fine-tuning config differs from the study's shared one, and how."""
    lines = []
    for arm in config.get("arms") or []:
        changes = [f"{part} `{', '.join(arm[key])}`" for part, key in
                   (("pretraining", "pretrain_overrides"), ("fine-tuning", "finetune_overrides")) if arm.get(key)]
        if arm.get("pretrain_steps_scale", 1.0) != 1.0:
            changes.append(f"pretraining steps (x {arm['pretrain_steps_scale']:g})")
        if arm.get("pretrain_from"):
            changes.append(f"pretraining (none of its own: it fine-tunes from `{arm['pretrain_from']}`'s)")
        if changes:
            lines.append(f"- `{arm['name']}` differs from the shared config in its {' and its '.join(changes)}")
    return ["Arms with their own overrides:", "", *lines, ""] if lines else []


def _stopped_note(meta: dict[str, Any]) -> str:
    stopped = meta.get("stopped_invocations", 0)
    if not stopped:
        return ""
    return (f" ({stopped} of them stopped before the end, counted up to the last stage each finished; "
            "the time a stopped invocation spent on stages it did not finish is not counted)")


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    meta, lines = report["meta"], []
    lines += ["# TokenUnify study: results", "",
              f"Generated by `{meta['command']}` at commit `{meta['commit']}` "
              f"(stages run at {', '.join(f'`{c}`' for c in meta['stage_commits']) or 'no commit recorded'}); "
              f"{meta['stages_finished']} of {meta['stages_planned']} stages finished; their run times sum to "
              f"{meta['stage_minutes']:.1f} min{_parallel_note(meta)}; the invocations took "
              f"{meta['wall_minutes']:.1f} min of wall time in all, over {meta['invocations']} invocation(s)"
              f"{_stopped_note(meta)}. "
              f"Config: `{meta['config_path']}` (resolved copy: `{meta['resolved_config']}`).", "",
              "Every arm fine-tunes the same network and preset for the same number of steps, and every pretrained "
              "arm pretrains for the same steps, except where an arm's own overrides (listed below) say otherwise; "
              f"tokens per pretraining stage: {', '.join(f'{k}: {v:,}' for k, v in report['tokens_seen'].items()) or 'none'}. "
              f"{_budget_note(meta['config'])} {_precision_note(report)}", "", *_override_lines(meta["config"]),
              *protocol_note(report), *test_volume_note(report), *_evaluation_note(report), *main_table(report)]
    lines += ["", *equal_minutes_note(report), f"![VOI and ARAND per arm]({FIGURES['voi']})", "",
              *_paired_lines(report),
              *_pretraining_lines(report), "## Target", ""]
    for c in report["target"]:
        parts = []
        for ref in ("scratch", "mae"):
            if ref in c:
                r = c[ref]
                side = "below" if r["reduction_pct"] >= 0 else "above"
                if r.get("paired_ci95") is not None:
                    lo, hi = r["paired_ci95"]
                    chance = f"paired 95% interval [{lo:+.3f}, {hi:+.3f}] below 0: {'yes' if r['paired_below_zero'] else 'no'}"
                else:
                    spread = "n/a (one seed)" if r["beyond_spread"] is None else ("yes" if r["beyond_spread"] else "no")
                    chance = f"gap {r['gap']:.3f} beyond seed spread {r['seed_spread']:.3f}: {spread}"
                parts.append(f"{abs(r['reduction_pct']):.1f}% {side} {ref} (>= {r['target_pct']:.0f}% below: "
                             f"{'yes' if r['meets_target'] else 'no'}; {chance})")
        lines.append(f"- **{c['budget']}** ({c['metric']}): TokenUnify VOI is " + "; ".join(parts)
                     + f". Target {'**holds**' if c['holds'] else '**does not hold**'}.")
    floor = report["floor"]
    lines += ["", f"Intensity-only floor (VOI {floor['voi']}, ARAND {floor['arand']}): "
              + ("every run beats it." if not floor["failures"] else
                 f"{len(floor['failures'])} run(s) do not beat it: "
                 + ", ".join(f"{r['arm']}/{r['preset']}/{r['budget']}/s{r['seed']} (VOI {r['voi']:.3f}, ARAND {r['arand']:.3f})"
                             for r in floor["failures"])), ""]
    if report["curves"]:
        lines += ["## VOI against fine-tuning steps", "", f"![VOI against steps]({FIGURES['curve']})", "",
                  *steps_to_match_lines(report), *floor_curve_lines(report)]
    if len({p["preset"] for p in report["scaling"]}) > 1:
        lines += ["## Scaling", "", "| arm | preset | parameters | VOI |", "|---|---|---:|---:|"]
        lines += [f"| {p['arm']} | {p['preset']} | {p['parameters']:,} | {p['voi_mean']:.3f} ± {p['voi_std']:.3f} |"
                  for p in report["scaling"]]
        lines += ["", f"![VOI against model size]({FIGURES['scaling']})", ""]
    lines += ["## Every run", "", "Oracle threshold columns, then the cross-fitted and held-out scores (– where not "
              "measured). Minutes: the wall time of the call that finished the run (\"resumed\": a call that continued "
              "a stopped one, so only its part), then the training steps' time over all calls.", "",
              "| arm | preset | budget | seed | steps | minutes | training min | threshold | VOI split | VOI merge | "
              "VOI | VOI eval std | ARAND | VOI cross-fit | ARAND cross-fit | VOI held-out | ARAND held-out | "
              "pretrained tensors loaded |", "|---|---|---|---:|" + "---:|" * 14]
    num = lambda v, digits=3: "–" if v is None else f"{v:.{digits}f}"
    for r in report["runs"]:
        loaded = "–" if r["init_loaded"] is None else str(r["init_loaded"])
        minutes = "–" if r.get("minutes") is None else f"{r['minutes']:.1f}" + (" (resumed)" if r.get("resumed") else "")
        lines.append(f"| {r['arm']} | {r['preset']} | {r['budget']} | {r['seed']} | {r['steps']} | {minutes} | "
                     f"{num(r.get('train_minutes'), 1)} | "
                     f"{r['threshold']} | {r['voi_split']:.3f} | {r['voi_merge']:.3f} | {r['voi']:.3f} | "
                     f"{num(r.get('eval_voi_std'))} | {r['arand']:.3f} | {num(r.get('cf_voi'))} | "
                     f"{num(r.get('cf_arand'))} | {num(r.get('test_voi'))} | {num(r.get('test_arand'))} | {loaded} |")
    lines += ["", "## Config", "", "The whole resolved config (after `--quick` and command-line overrides):", "",
              "```yaml", yaml.safe_dump(meta["config"], sort_keys=False).rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_report(study: StudySettings, results: Sequence[dict[str, Any]], meta: dict[str, Any], out: Path) -> dict[str, Any]:
    """Aggregate `results`, write results.json, results.md and the PNGs into `out`; return the report."""
    out.mkdir(parents=True, exist_ok=True)
    rows = agg.run_rows(results)
    arms = [a.name for a in study.arms]
    summary = agg.summarize(rows, arms, [b.name for b in study.budgets], study.pretrain.model.preset)
    curves = {f"{r['arm']}/{r['budget']}/s{r['seed']}": r["curve"] for r in results
              if r["kind"] == "finetune" and r["part"] == "main" and r["arm"] in study.curve.arms}
    paired = agg.paired_differences(rows, arms, [b.name for b in study.budgets], study.pretrain.model.preset,
                                    refs=study.refs(), metric=agg.headline(rows))
    bands = agg.curve_bands(curves)
    report = {
        "meta": meta, "runs": rows, "summary": summary, "target": agg.target_check(summary, paired),
        "paired": paired, "curve_bands": bands, "steps_to_match": agg.steps_to_match(bands),
        "floor": {"voi": study.floor.voi, "arand": study.floor.arand, "failures": agg.floor_check(rows, study.floor),
                  "along_curve": agg.floor_along_curve(curves, study.floor)},
        "curves": curves, "scaling": scaling_points(rows, study),
        "tokens_seen": {r["key"]: r["tokens_seen"] for r in results if r["kind"] == "pretrain"},
        "pretraining": [{"stage": r["key"], "arm": r["arm"], "tokens": r["tokens_seen"], "steps": r["steps"],
                         "minutes": r.get("pretrain_minutes", r["minutes_this_call"]),
                         "cached_from": r.get("cached_from"),
                         "used_by": [a.name for a in study.arms if r["arm"] in (a.name, a.pretrain_from)]}
                        for r in results if r["kind"] == "pretrain"],
        "all_finite": agg.all_finite(rows),
        # stages from before precision was recorded count as "not recorded"
        "precision": dict(Counter(r.get("precision") or "not recorded" for r in results)),
    }
    write_text_atomic(out / "results.json", json.dumps(report, indent=1, default=float))
    if summary:
        plot_voi(summary, out / FIGURES["voi"], {"voi": study.floor.voi, "arand": study.floor.arand})
    if bands:
        plot_curves(bands, out / FIGURES["curve"])
    if len({p["preset"] for p in report["scaling"]}) > 1:
        plot_scaling(report["scaling"], out / FIGURES["scaling"])
    write_text_atomic(out / "results.md", markdown(report))
    return report
