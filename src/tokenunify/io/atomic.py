"""One way to write a file so that it is either complete or absent."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a staging path next to `path`; on success it replaces `path` in one rename.

    The staging name keeps the suffix (numpy, matplotlib and torch pick the
    format from it), and lives in the same folder so `os.replace` is atomic.
    A crash or exception leaves `path` as it was and removes the staging file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        yield staging
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as staging:
        staging.write_text(text)
    return Path(path)
