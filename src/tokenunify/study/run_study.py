"""`tokenunify study`: load the config, run or resume every stage, write the report."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tokenunify.config import apply_overrides, from_dict, load_yaml, to_dict
from tokenunify.errors import ConfigError, TokenUnifyError
from tokenunify.study.plan import plan_study
from tokenunify.study.report import write_report
from tokenunify.study.runner import read_result, run_study
from tokenunify.study.settings import StudySettings


class StudyCheckError(TokenUnifyError):
    """`--quick` found a stage that did not run or a figure that is not finite."""


def load_study(config: Path, overrides: list[str], quick: bool) -> StudySettings:
    """Config, then (with `quick`) its `quick` overrides, then the command line's; the plan is checked here.

    Under `quick`, `out_dir` becomes `<out_dir>_quick` and `report_dir`
    `<out_dir>_quick/report` unless the `quick` list sets them, so a quick
    run never mixes with (or overwrites) its full study, whichever config
    it comes from.
    """
    raw = load_yaml(config)
    if quick:
        listed = [str(o) for o in raw.get("quick") or []]
        raw = apply_overrides(raw, listed)
        keys = {o.split("=", 1)[0].strip() for o in listed}
        if "out_dir" not in keys:
            raw["out_dir"] = f"{raw.get('out_dir', StudySettings.out_dir)}_quick"
        if "report_dir" not in keys:
            raw["report_dir"] = f"{raw['out_dir']}/report"
    settings = from_dict(StudySettings, apply_overrides(raw, overrides), str(config))
    try:
        plan_study(settings)  # an arm's overrides are checked when its runs' configs are built
    except ConfigError as err:
        raise ConfigError(f"{config}: {err}") from None
    return settings


def git_commit() -> str:
    """Short commit of the working tree, with `+dirty` for uncommitted changes to tracked files."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _log_invocation(root: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    path = root / "invocations.jsonl"
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wall_time(records: list[dict[str, Any]]) -> tuple[float, int, int]:
    """Wall minutes summed over the invocations in `records`, their number, and how many were stopped.

    An invocation that ends logs its minutes; one that is killed counts up to
    the last stage it finished (its last "progress" record), so a study run
    over two invocations, the first stopped, still reports the time it took
    up to what it kept. Records without an id are from before ids existed.
    `--report-only` invocations run no stage and are not counted.
    """
    minutes: dict[str, float] = {}
    ended: set[str] = set()
    for i, r in enumerate(records):
        if "minutes" not in r or r.get("report_only"):
            continue
        key = r.get("id", f"old-{i}")
        if r.get("event") == "end":
            ended.add(key)
            minutes[key] = r["minutes"]
        elif key not in ended:
            minutes[key] = max(minutes.get(key, 0.0), r["minutes"])
    return sum(minutes.values()), len(minutes), len(set(minutes) - ended - {k for k in minutes if k.startswith("old-")})


def study(config: Path, overrides: list[str], quick: bool = False, report_only: bool = False,
          progress: bool = True, device: str = "auto") -> dict[str, Any]:
    """Run (or resume) the study of `config` on `device` and write its report; returns the report."""
    started = time.monotonic()
    # the code that runs the stages is the code checked out now, not at the end
    commit_at_start = git_commit()
    settings = load_study(config, overrides, quick)
    root = Path(settings.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    resolved = root / "study_config.yaml"
    resolved.write_text(yaml.safe_dump(to_dict(settings), sort_keys=False))
    stages = plan_study(settings)
    # a start record keeps the commit of an invocation that is killed before its end record
    invocation = uuid.uuid4().hex[:12]
    _log_invocation(root, {"event": "start", "id": invocation, "report_only": report_only, "quick": quick,
                           "commit": commit_at_start})

    def stage_done() -> None:
        _log_invocation(root, {"event": "progress", "id": invocation, "minutes": (time.monotonic() - started) / 60})
    if report_only:
        results = [r for r in (read_result(root, s) for s in stages) if r is not None]
    else:
        cache = Path(settings.pretrain_cache) if settings.pretrain_cache else None
        results = run_study(root, stages, progress=progress, workers=settings.workers, device=device, cache=cache,
                            on_stage_done=stage_done)
    records = _log_invocation(root, {"event": "end", "id": invocation, "minutes": (time.monotonic() - started) / 60,
                                     "report_only": report_only, "quick": quick, "commit": commit_at_start})
    wall_minutes, invocations, stopped = wall_time(records)
    meta = {
        "command": shlex.join(["tokenunify", *sys.argv[1:]]) if sys.argv[1:2] == ["study"] else
        shlex.join(["tokenunify", "study", "-c", str(config), *(["--quick"] if quick else []), *overrides]),
        "config_path": str(config), "resolved_config": str(resolved), "config": to_dict(settings),
        "commit": git_commit(), "wall_minutes": wall_minutes, "invocations": invocations, "stopped_invocations": stopped,
        # the code that ran the stages, which --report-only may postdate
        "stage_commits": list(dict.fromkeys(r.get("commit", "unknown") for r in records
                                            if not r.get("report_only") and r.get("event") != "progress")),
        "workers": settings.workers, "stages_planned": len(stages), "stages_finished": len(results),
        # compute time of the finished stages themselves (the call that finished each one); unlike
        # wall_minutes it survives a killed invocation, which logs its start but no minutes
        "stage_minutes": sum(r.get("minutes_this_call", 0.0) for r in results),
    }
    report = write_report(settings, results, meta, Path(settings.report_dir))
    if quick:
        missing = len(stages) - len(results)
        if missing or not report["all_finite"] or not report["runs"]:
            raise StudyCheckError(f"{settings.out_dir}: quick study incomplete ({missing} stage(s) without a result) "
                                  f"or a figure is not finite")
    return report
