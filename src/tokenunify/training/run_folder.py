"""The run folder: `config.yaml`, `checkpoints/last.pt` (rewritten atomically), `metrics.jsonl` and the PNGs.

An existing run is never started over unless asked to (`overwrite`), and
`resume` needs a checkpoint to resume from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tokenunify.config import to_dict
from tokenunify.errors import InputError, OutputError
from tokenunify.io.atomic import write_text_atomic


@dataclass
class RunFolder:
    """Paths of one run."""

    root: Path

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def file(self, name: str) -> Path:
        """Any other file of the run, e.g. `loss.png`."""
        return self.root / name

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse to clobber a run, or to resume one that has no checkpoint."""
        if self.last.exists() and not (resume or overwrite):
            raise OutputError(self.root, "already holds a run; pass --resume to continue it or --overwrite to start again")
        if resume and not self.last.exists():
            raise InputError(self.last, "nothing to resume: no checkpoint in this run folder")

    def write_config(self, settings: Any) -> None:
        """Record the full, resolved config next to the checkpoints."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.file("config.yaml"), yaml.safe_dump(to_dict(settings), sort_keys=False))

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite `metrics.jsonl` from the history (atomically, so resumes never duplicate rows)."""
        write_text_atomic(self.metrics, "".join(json.dumps(row, default=float) + "\n" for row in rows))

    def validations(self) -> list[dict[str, Any]]:
        """The validation records of `metrics.jsonl`, in step order."""
        return [row["val"] for row in read_metrics(self.metrics) if "val" in row]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl`: one per training step, plus `{"val": {...}}` rows for validations."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
