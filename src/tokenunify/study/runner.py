"""Run the planned stages in order, skipping finished ones and resuming a killed one.

Each finished stage leaves `result.json` in its folder, with a fingerprint of
its config. On a rerun a finished stage is skipped when the fingerprint
matches, and refused when it does not (a changed config must not be mixed
with old results silently); an unfinished stage with a checkpoint resumes
from it (`--resume` of `pretrain`/`train`, which is exact).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from tokenunify.config import to_dict
from tokenunify.errors import OutputError
from tokenunify.pretrain.loop import pretrain
from tokenunify.run_folder import RunFolder
from tokenunify.segment.train import train
from tokenunify.study.plan import Stage

RESULT = "result.json"


def fingerprint(stage: Stage) -> str:
    """Hash of a stage's complete config (its folder excluded, so a moved study still matches)."""
    config = to_dict(stage.settings)
    config.pop("out_dir", None)
    if config.get("init"):
        config["init"] = stage.needs  # the pretraining stage, wherever the study folder lives
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_result(root: Path, stage: Stage) -> dict[str, Any] | None:
    """The stage's result if it finished with the same config; raises OutputError if the config differs."""
    path = root / stage.key / RESULT
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if result.get("fingerprint") != fingerprint(stage):
        raise OutputError(path, "this study folder holds a finished run with a different config; "
                                "use another out_dir, or delete that folder to rerun it")
    return result


def _finetune_result(summary: dict[str, Any]) -> dict[str, Any]:
    history = summary["val_history"]
    if not history or history[-1]["step"] != summary["steps"]:
        raise RuntimeError(f"{summary['out_dir']}: fine-tuning ended without a validation at its last step")
    final = history[-1]
    init = summary.get("init")
    return {
        # the spread over jittered copies exists only when the sweep used them
        "final": {**{k: final[k] for k in ("step", "threshold", "voi_split", "voi_merge", "voi", "arand", "n_seg_ids")},
                  **{k: final[k] for k in ("voi_std", "arand_std", "draws") if k in final}},
        "curve": [{k: v[k] for k in ("step", "voi", "arand", "threshold")} for v in history],
        "init_loaded": None if init is None else len(init["loaded"]),
        "init_fresh": None if init is None else init["fresh"],
        "skipped_steps": summary["skipped_steps"],
    }


def run_stage(root: Path, stage: Stage, progress: bool) -> dict[str, Any]:
    """Run (or resume) one stage and write its result.json atomically."""
    folder = RunFolder(root / stage.key)
    resume = folder.last.exists()
    started = time.monotonic()
    if stage.kind == "pretrain":
        summary = pretrain(stage.settings, resume=resume, progress=progress)  # type: ignore[arg-type]
        body: dict[str, Any] = {"tokens_seen": summary["tokens_seen"], "loss_by_objective": summary["loss_by_objective"],
                                "skipped_steps": summary["skipped_steps"], "checkpoint": summary["checkpoint"]}
    else:
        summary = train(stage.settings, resume=resume, progress=progress)  # type: ignore[arg-type]
        summary["val_history"] = _val_history(folder)
        body = _finetune_result(summary)
    result = {"key": stage.key, "kind": stage.kind, "arm": stage.arm, "preset": stage.preset, "seed": stage.seed,
              "budget": stage.budget, "part": stage.part, "steps": summary["steps"],
              "parameters": summary["parameters"], "minutes_this_call": (time.monotonic() - started) / 60,
              "resumed": resume, "fingerprint": fingerprint(stage), **body}
    path = folder.root / RESULT
    staging = path.with_name(f".{RESULT}.tmp")
    staging.write_text(json.dumps(result, indent=1, default=float))
    staging.replace(path)
    return result


def _val_history(folder: RunFolder) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in folder.metrics.read_text().splitlines() if line.strip()]
    return [row["val"] for row in rows if "val" in row]


def run_study(root: Path, stages: list[Stage], progress: bool = True,
              log: Callable[[str], None] = tqdm.write) -> list[dict[str, Any]]:
    """Run every unfinished stage in order; returns the results of all stages."""
    results = []
    for i, stage in enumerate(stages, 1):
        done = read_result(root, stage)
        if done is not None:
            log(f"[{i}/{len(stages)}] {stage.key}: done earlier, skipped")
            results.append(done)
            continue
        if stage.needs is not None and read_result(root, next(s for s in stages if s.key == stage.needs)) is None:
            raise RuntimeError(f"{stage.key} needs {stage.needs}, which has not finished")
        log(f"[{i}/{len(stages)}] {stage.key}: running")
        results.append(run_stage(root, stage, progress))
    return results
