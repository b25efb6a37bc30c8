"""Run the planned stages in order, skipping finished ones and resuming a killed one.

Each finished stage leaves `result.json` in its folder, with a fingerprint of
its config. On a rerun a finished stage is skipped when the fingerprint
matches, and refused when it does not (a changed config must not be mixed
with old results silently); an unfinished stage with a checkpoint resumes
from it (`--resume` of `pretrain`/`train`, which is exact).

With `workers > 1` independent stages run at the same time, each in its own
process with `threads // workers` torch threads: on 2 CPU cores two
one-thread training processes get more steps done than one two-thread
process (docs/study.md). A stage starts once the pretraining it needs has
finished; if one fails, no new stage starts, the running ones finish, and
the first failure is raised: a user error (a missing file, a changed config)
as itself, anything else as :class:`StageFailed` naming the stage.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tokenunify.config import to_dict
from tokenunify.errors import OutputError, TokenUnifyError
from tokenunify.finetune.train import init_report, train
from tokenunify.io.atomic import write_text_atomic
from tokenunify.pretrain.loop import pretrain
from tokenunify.study.cache import cache_key, fetch, store
from tokenunify.study.plan import Stage
from tokenunify.training.run_folder import RunFolder, read_metrics

RESULT = "result.json"


#: Config fields added after studies had run, left out of the fingerprint at
#: their default so those studies' finished stages still match. A dotted key
#: names a field of a section ("train.balance_clip" is config["train"]["balance_clip"]).
_ADDED_LATER: dict[str, Any] = {"init_keep_fresh": [], "train.balance_clip": [0.05, 0.95]}


def _drop_default(config: dict[str, Any], key: str, default: Any) -> None:
    """Remove `key` (dotted for nested sections) from `config` where it holds `default`."""
    *sections, field = key.split(".")
    for name in sections:
        config = config.get(name)
        if not isinstance(config, dict):
            return
    if field in config and json.loads(json.dumps(config[field], default=str)) == default:
        config.pop(field)


def fingerprint(stage: Stage) -> str:
    """Hash of a stage's complete config (its folder excluded, so a moved study still matches)."""
    config = to_dict(stage.settings)
    config.pop("out_dir", None)
    for key, default in _ADDED_LATER.items():
        _drop_default(config, key, default)
    if config.get("init"):
        config["init"] = stage.needs  # the pretraining stage, wherever the study folder lives
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_minutes(metrics: Path) -> float | None:
    """Minutes spent in training steps alone (the sum of the per-step seconds in `metrics.jsonl`).

    A run's wall minutes also hold its validations, which differ between arms
    (curve arms validate more often); equal training time is judged on this.
    None when the file is missing.
    """
    if not metrics.exists():
        return None
    rows = read_metrics(metrics)
    return sum(float(r["seconds"]) for r in rows if "seconds" in r) / 60


def read_result(root: Path, stage: Stage) -> dict[str, Any] | None:
    """The stage's result if it finished with the same config; raises OutputError if the config differs."""
    path = root / stage.key / RESULT
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if result.get("fingerprint") != fingerprint(stage):
        raise OutputError(path, "this study folder holds a finished run with a different config; "
                                "use another out_dir, or delete that folder to rerun it")
    filled = False
    if stage.kind == "finetune" and "train_minutes" not in result:
        # written before the field existed: the run's own metrics still hold it
        result["train_minutes"] = train_minutes(RunFolder(root / stage.key).metrics)
        filled = True
    if stage.kind == "finetune" and result.get("resumed") and result.get("init_loaded") is None \
            and getattr(stage.settings, "init", None):
        # finished by a resumed call before resumed runs recorded their initialisation
        report = init_report(stage.settings)  # type: ignore[arg-type]
        result["init_loaded"], result["init_fresh"] = len(report["loaded"]), report["fresh"]
        filled = True
    if filled:
        # once: the init report rebuilds a network and loads a checkpoint, every report would pay it again
        write_text_atomic(path, json.dumps(result, indent=1, default=float))
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
                  **{k: final[k] for k in ("voi_std", "arand_std", "draws", "cross_fit") if k in final}},
        # the curve's cross-fitted figures exist only when the validation cross-fits
        "curve": [{**{k: v[k] for k in ("step", "voi", "arand", "threshold")},
                   **({"cf_voi": v["cross_fit"]["voi"], "cf_arand": v["cross_fit"]["arand"]} if "cross_fit" in v else {})}
                  for v in history],
        "test": summary.get("test"),
        "init_loaded": None if init is None else len(init["loaded"]),
        "init_fresh": None if init is None else init["fresh"],
        "skipped_steps": summary["skipped_steps"],
    }


def run_stage(root: Path, stage: Stage, progress: bool, device: str = "auto",
              cache: Path | None = None) -> dict[str, Any]:
    """Run (or resume) one stage on `device` and write its result.json atomically.

    A finished pretraining stage is also copied into `cache` (when given).
    """
    folder = RunFolder(root / stage.key)
    resume = folder.last.exists()
    started = time.monotonic()
    if stage.kind == "pretrain":
        summary = pretrain(stage.settings, resume=resume, progress=progress, device=device)  # type: ignore[arg-type]
        body: dict[str, Any] = {"tokens_seen": summary["tokens_seen"], "loss_by_objective": summary["loss_by_objective"],
                                "skipped_steps": summary["skipped_steps"], "checkpoint": summary["checkpoint"]}
    else:
        summary = train(stage.settings, resume=resume, progress=progress, device=device)  # type: ignore[arg-type]
        summary["val_history"] = folder.validations()
        body = {**_finetune_result(summary), "train_minutes": train_minutes(folder.metrics)}
    result = {"key": stage.key, "kind": stage.kind, "arm": stage.arm, "preset": stage.preset, "seed": stage.seed,
              "budget": stage.budget, "part": stage.part, "steps": summary["steps"],
              "parameters": summary["parameters"], "minutes_this_call": (time.monotonic() - started) / 60,
              "resumed": resume, "fingerprint": fingerprint(stage),
              # what the call that finished the stage computed in (bf16 falls back to fp32 on some CPUs)
              "precision": summary.get("precision"), "device": summary.get("device"), **body}
    if stage.kind == "pretrain":
        # what pretraining cost when it ran; a study that reuses it from the cache reports this figure
        result["pretrain_minutes"] = result["minutes_this_call"]
    write_text_atomic(folder.root / RESULT, json.dumps(result, indent=1, default=float))
    if cache is not None and stage.kind == "pretrain":
        store(cache, _cache_key(stage), folder.root)
    return result


def _cache_key(stage: Stage) -> str:
    return cache_key(fingerprint(stage), list(stage.settings.data.volumes))  # type: ignore[union-attr]


def _from_cache(root: Path, stage: Stage, cache: Path | None, log: Callable[[str], None]) -> dict[str, Any] | None:
    """A pretraining stage's result copied from the cache (its folder filled from it), or None."""
    if cache is None or stage.kind != "pretrain":
        return None
    key = _cache_key(stage)
    result = fetch(cache, key, root / stage.key)
    if result is None:
        return None
    # the cached run may have been another study's arm of another name: this study's labels, its origin beside them
    result.update({"cached_arm": result.get("arm"), "arm": stage.arm, "preset": stage.preset, "seed": stage.seed,
                   "budget": stage.budget, "part": stage.part})
    result.update({"key": stage.key, "cached_from": str(cache / key), "minutes_this_call": 0.0,
                   "checkpoint": str(root / stage.key / "checkpoints" / "last.pt")})
    write_text_atomic(root / stage.key / RESULT, json.dumps(result, indent=1, default=float))
    log(f"{stage.key}: pretraining reused from {cache / key} "
        f"({result.get('pretrain_minutes', 0.0):.1f} min paid once, not again)")
    return result


def run_study(root: Path, stages: list[Stage], progress: bool = True,
              log: Callable[[str], None] = tqdm.write, workers: int = 1, device: str = "auto",
              cache: Path | None = None, on_stage_done: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Run every unfinished stage, `workers` at a time, on `device`; returns the results of all stages in plan order.

    `on_stage_done` is called after each stage that runs here finishes (the
    study logs its minutes so far, which a killed invocation keeps).

    With `cache`, a pretraining stage whose config and data match a cached
    run is copied from it instead of run, and a pretraining stage that runs
    is added to the cache (see `tokenunify.study.cache`).
    """
    results, pending = _finished_and_pending(root, stages, log)
    for stage in list(pending):
        cached = _from_cache(root, stage, cache, log)
        if cached is not None:
            results[stage.key] = cached
            pending.remove(stage)
    if workers > 1:
        _run_parallel(root, stages, results, pending, workers, log, device, cache, on_stage_done)
        return [results[s.key] for s in stages]
    for stage in pending:
        if stage.needs is not None and stage.needs not in results:
            raise RuntimeError(f"{stage.key} needs {stage.needs}, which has not finished")
        log(f"{_label(stages, stage)}: running")
        results[stage.key] = run_stage(root, stage, progress, device, cache)
        if on_stage_done is not None:
            on_stage_done()
    return [results[s.key] for s in stages]


def _label(stages: list[Stage], stage: Stage) -> str:
    return f"[{stages.index(stage) + 1}/{len(stages)}] {stage.key}"


def _finished_and_pending(root: Path, stages: list[Stage],
                          log: Callable[[str], None]) -> tuple[dict[str, dict[str, Any]], list[Stage]]:
    """Results of the stages that finished earlier (by key), and the others in plan order."""
    results: dict[str, dict[str, Any]] = {}
    pending: list[Stage] = []
    for stage in stages:
        done = read_result(root, stage)
        if done is None:
            pending.append(stage)
        else:
            log(f"{_label(stages, stage)}: done earlier, skipped")
            results[stage.key] = done
    return results, pending


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


class StageFailed(RuntimeError):
    """A stage run by a worker process raised; the message names the stage."""


def _run_parallel(root: Path, stages: list[Stage], results: dict[str, dict[str, Any]], pending: list[Stage],
                  workers: int, log: Callable[[str], None], device: str = "auto", cache: Path | None = None,
                  on_stage_done: Callable[[], None] | None = None) -> None:
    """Run `pending` in worker processes, adding each result to `results` as it finishes."""
    threads = max(1, torch.get_num_threads() // workers)
    running: dict[Future[dict[str, Any]], Stage] = {}
    failures: list[tuple[Stage, BaseException]] = []
    # spawn, not fork: a forked child would inherit the parent's torch thread pools
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    try:
        while pending or running:
            ready = [s for s in pending if s.needs is None or s.needs in results]
            for stage in ready[: workers - len(running)] if not failures else []:
                pending.remove(stage)
                log(f"{_label(stages, stage)}: running ({threads} thread(s) in a worker)")
                running[pool.submit(run_stage, root, stage, False, device, cache)] = stage
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                try:
                    results[stage.key] = future.result()
                    log(f"{_label(stages, stage)}: finished in {results[stage.key]['minutes_this_call']:.1f} min")
                    if on_stage_done is not None:
                        on_stage_done()
                except BaseException as exc:  # a worker's error comes back as the stage's exception
                    log(f"{_label(stages, stage)}: failed: {exc!r}")
                    failures.append((stage, exc))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failures:
        stage, exc = failures[0]
        if isinstance(exc, TokenUnifyError):
            raise exc  # names the file and the problem already, as in a sequential run
        raise StageFailed(f"{stage.key} failed: {exc!r}") from exc
    if pending:
        raise RuntimeError(f"{len(pending)} stage(s) wait for pretraining that is not in the study: {pending[0].key}")
