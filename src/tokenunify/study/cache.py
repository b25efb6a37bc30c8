"""Pretraining is paid once: finished pretraining runs are kept by a fingerprint of their config and data.

A study's pretraining stage is keyed by the stage's config fingerprint (its
folder excluded) and by the identity of every unlabelled volume it reads:
the file's name, size and a hash of its first and last MiB (cheap for
terabyte files, and enough to tell a changed or different file). A finished
stage is copied into ``<pretrain_cache>/<key>/``; a later study, in any
folder, whose stage has the same key copies it back instead of pretraining
again, and its result says where it came from (the report shows it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from tokenunify.io.spec import parse_spec

RESULT = "result.json"
_EDGE = 1024**2


def _file_identity(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(_EDGE))
        if size > _EDGE:
            handle.seek(max(size - _EDGE, _EDGE))
            digest.update(handle.read(_EDGE))
    return {"name": path.name, "bytes": size, "sha256_ends": digest.hexdigest()}


def _files(path: Path) -> list[Path]:
    """The files behind a volume: the file itself, or every file of a zarr folder (sorted)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def cache_key(config_fingerprint: str, volumes: list[str]) -> str:
    """The cache key of a pretraining run with this config fingerprint reading these volume specs."""
    data = []
    for spec in volumes:
        parsed = parse_spec(spec)
        data.append({"spec": f"{parsed.dataset}{parsed.roi or ''}",
                     "files": [_file_identity(p) for p in _files(Path(parsed.path))]})
    text = json.dumps({"config": config_fingerprint, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def fetch(cache: Path, key: str, folder: Path) -> dict[str, Any] | None:
    """Copy the cached run `key` into `folder` (which must not hold a finished run); returns its result or None."""
    source = cache / key
    if not (source / RESULT).exists():
        return None
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.partial")
    shutil.copytree(source, staging)
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished run of the same config: the cached one replaces it
    os.replace(staging, folder)
    return json.loads((folder / RESULT).read_text())


def store(cache: Path, key: str, folder: Path) -> Path:
    """Copy the finished run in `folder` into the cache as `key` (kept if already there)."""
    target = cache / key
    if (target / RESULT).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f".{key}.{uuid.uuid4().hex[:8]}.partial"
    shutil.copytree(folder, staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target
