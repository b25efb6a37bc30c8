"""Run one blockwise step on daisy: local scheduler, resumable, failures as one clear error.

Every step of a blockwise run shares one work folder. It holds a
``config.json`` fingerprint of everything that decides the result (inputs,
settings, block and context); a second run in the same folder with a
different fingerprint is refused rather than mixing two configs in one
output. daisy records finished blocks under ``tracking/<step>``, so a run
killed at any point recomputes only the blocks it had not finished; worker
logs go to ``logs/``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenunify.blockwise.geometry import BlockGrid
from tokenunify.errors import InputError, OutputError, TokenUnifyError
from tokenunify.io import VolumeSpec
from tokenunify.io.atomic import write_text_atomic

FINGERPRINT = "config.json"


class BlockFailedError(TokenUnifyError):
    """A block kept failing after its retries; names the step, the block and the worker's error."""


def work_dir_for(output: VolumeSpec) -> Path:
    """The work folder of a blockwise run writing `output`: beside its store."""
    slug = output.dataset.strip("/").replace("/", "_")
    return output.path.parent / f"{output.path.name}.{slug}.work"


def prepare_work_dir(work_dir: Path, fingerprint: dict[str, Any], overwrite: bool) -> Path:
    """Create (or reuse) `work_dir` for a run with this `fingerprint`.

    A folder of an earlier run is reused only if its fingerprint is the same;
    with `overwrite` it is emptied first. Raises OutputError for a folder
    that cannot be written, InputError for a changed config.
    """
    work_dir = Path(work_dir)
    if overwrite and work_dir.exists():
        shutil.rmtree(work_dir)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("tracking", "logs"):
            (work_dir / sub).mkdir(exist_ok=True)
    except OSError as err:
        raise OutputError(work_dir, f"cannot create the work folder ({err.strerror or err})") from None
    for sub in ("", "tracking", "logs"):
        if not os.access(work_dir / sub, os.W_OK | os.X_OK):
            raise OutputError(work_dir / sub, "the work folder is not writable")
    path = work_dir / FINGERPRINT
    text = json.dumps(fingerprint, indent=2, sort_keys=True, default=str)
    if path.exists():
        old = json.loads(path.read_text())
        new = json.loads(text)
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise InputError(work_dir, f"holds a run with a different config ({', '.join(changed)} changed); "
                             "pass --overwrite to start again, or use another output")
    else:
        write_text_atomic(path, text + "\n")
    return work_dir


def run_task(
    name: str,
    grid: BlockGrid,
    process: Callable[..., Any],
    work_dir: Path,
    workers: int = 1,
    retries: int = 2,
    multiprocessing: bool = True,
    progress: bool = True,
    timeout_s: float = 24 * 3600,
) -> dict[str, int]:
    """Run `process(block)` over every block of `grid`; returns the block counts.

    Blocks already recorded as done in `work_dir/tracking/<name>` are
    skipped. A block whose function raises is retried `retries` times; one
    that still fails stops the run with BlockFailedError naming the block's
    index and the worker's last error. Workers are separate processes
    (spawned by daisy), so `process` must be picklable; with
    `multiprocessing=False` it runs in this process (tests, debugging).
    """
    import daisy.v2 as daisy
    from daisy.logging import set_log_basedir

    if workers < 1:
        raise InputError("--workers", f"must be at least 1, not {workers}")
    set_log_basedir(str(work_dir / "logs"))
    total, read, write = grid.daisy_rois()
    task = daisy.Task(
        name, total, read, write, process,
        read_write_conflict=False, fit="shrink", max_workers=workers, max_retries=retries,
        timeout=timeout_s, tracking_path=str(work_dir / "tracking" / name),
        # a failed block takes its worker down; allow a few failing blocks their retries while the
        # rest finish, but end a run whose every block fails instead of restarting workers for ever
        max_worker_restarts=(retries + 1) * max(workers, 4),
    )
    try:
        states = daisy.run_blockwise(task, multiprocessing=multiprocessing, return_states=True, host="127.0.0.1",
                                     progress=progress, summary=False)
    except TokenUnifyError:
        raise
    except RuntimeError as err:
        raise BlockFailedError(f"{name}: the run was abandoned ({err}); worker logs: {work_dir / 'logs'}") from None
    state = states[name]
    # daisy counts a block skipped as done by an earlier run among the completed ones
    counts = {"blocks": grid.n_blocks, "completed": state.completed_count, "skipped": state.skipped_count,
              "computed": state.completed_count - state.skipped_count,
              "failed": state.failed_count, "orphaned": state.orphaned_count}
    if state.failed_count or state.orphaned_count or state.abandoned:
        error = (state.last_worker_error or state.abandon_reason or "no error recorded").strip()
        raise BlockFailedError(f"{name}: {state.failed_count} block(s) failed after {retries} retries; "
                               f"last error: {_last_line(error)} (full traceback in {work_dir / 'logs'})")
    return counts


def _last_line(traceback: str) -> str:
    """The exception line of a traceback (its last non-empty line)."""
    lines = [line for line in traceback.splitlines() if line.strip()]
    return lines[-1].strip() if lines else traceback
