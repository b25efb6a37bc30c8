"""Arrays of a blockwise run: created empty in the work folder, moved into the output store when complete.

A blockwise output is written block by block into an array of the work
folder, never into the user's store, so a run that stops half-way leaves no
partial output behind; the finished array is moved into place with one
rename (an existing output is replaced only at that moment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenunify.io import VolumeSpec
from tokenunify.io.atomic import atomic_path


def create_array(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str,
                 attrs: dict[str, Any]) -> Path:
    """An empty zarr array at `path` (kept if it exists: a resumed run writes into it again)."""
    import zarr

    if path.exists():
        return path
    if path.parent.suffix == ".zarr":
        zarr.open_group(store=str(path.parent), mode="a")
    with atomic_path(path) as staging:
        zarr.create_array(store=str(staging), shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                          attributes=attrs)
    return path


def commit_array(staged: Path, output: VolumeSpec, attrs: dict[str, Any]) -> None:
    """Move the finished array `staged` to `output` (a zarr store and dataset), with `attrs` added."""
    import zarr

    from tokenunify.io.writer import move_array_into_store

    zarr.open_array(store=str(staged), mode="r+").attrs.update(attrs)
    move_array_into_store(staged, output)
