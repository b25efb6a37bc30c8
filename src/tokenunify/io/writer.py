"""Create output volumes that appear whole or not at all.

Every writer stages its data under a temporary name next to the target and
moves it into place only when the block that writes it finishes without an
error. An existing output is never touched unless `overwrite=True`, and even
then the old data is replaced only after the new data is complete.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tokenunify.errors import OutputError
from tokenunify.io.spec import VolumeSpec, parse_spec
from tokenunify.io.volumes import ArrayView, volume_exists, voxel_size_json

_STAGING_PREFIX = "_tokenunify_partial_"


def check_output(spec: "str | Path | VolumeSpec", overwrite: bool = False) -> VolumeSpec:
    """Fail early, before any work, if `spec` exists or cannot be written."""
    spec = parse_spec(spec)
    if spec.roi:
        raise OutputError(spec, "a region cannot be written; name the whole dataset as the output")
    if volume_exists(spec) and not overwrite:
        raise OutputError(spec, "already exists; pass --overwrite to replace it")
    parent = spec.path.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(spec, f"cannot be written: {probe} is a file, not a directory")
    if spec.path.exists() and spec.format != "zarr" and not spec.path.is_file():
        raise OutputError(spec, f"cannot be written: {spec.path} is not a file")
    if spec.path.exists() and spec.format == "zarr" and not spec.path.is_dir():
        raise OutputError(spec, f"cannot be written: {spec.path} is not a zarr directory")
    if not os.access(probe, os.W_OK) or (spec.path.exists() and not os.access(spec.path, os.W_OK)):
        raise OutputError(spec, "cannot be written: permission denied")
    return spec


class WritableVolume(ArrayView):
    """Array-like output: `vol[key] = data`, plus `shape`, `dtype`, `voxel_size`."""

    def __init__(self, spec: VolumeSpec, array: Any, voxel_size: tuple[float, ...]) -> None:
        self.spec = spec
        self._array = array
        self.voxel_size = voxel_size

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        self._array[key] = value


def _default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    # Chunks of about 64^3 voxels per channel suit blockwise reads; leading
    # channel axes get one chunk per channel.
    spatial = tuple(min(s, 64) for s in shape[-3:])
    return tuple(1 for _ in shape[:-3]) + spatial


@contextmanager
def create_volume(
    spec: "str | Path | VolumeSpec",
    shape: tuple[int, ...],
    dtype: Any,
    voxel_size: tuple[float, ...],
    chunks: tuple[int, ...] | None = None,
    overwrite: bool = False,
    attrs: dict[str, Any] | None = None,
    offset: tuple[float, ...] | None = None,
) -> Iterator[WritableVolume]:
    """Create `spec` and yield it for writing; it appears only if the block succeeds.

    On any exception the staged data is removed and an existing output is left
    as it was. `voxel_size` and `offset` (nm, world position of the first
    voxel; default 0) cover the spatial (last three) axes and are written as
    the `voxel_size` and `offset` attributes.
    """
    spec = check_output(spec, overwrite)
    if any(int(s) <= 0 for s in shape):
        raise OutputError(spec, f"cannot create an empty volume of shape {tuple(shape)}")
    chunks = tuple(chunks) if chunks else _default_chunks(tuple(shape))
    spatial = len(tuple(voxel_size))
    meta = {"voxel_size": voxel_size_json(tuple(voxel_size)),
            "offset": voxel_size_json(tuple(offset) if offset is not None else (0.0,) * spatial), **(attrs or {})}
    stager = {"hdf5": _stage_hdf5, "zarr": _stage_zarr, "tiff": _stage_tiff}[spec.format]
    try:
        with stager(spec, tuple(shape), np.dtype(dtype), chunks, meta) as array:
            yield WritableVolume(spec, array, tuple(voxel_size))
    except OSError as err:
        raise OutputError(spec, f"cannot be written ({err})") from err


def write_volume(
    spec: "str | Path | VolumeSpec",
    data: np.ndarray,
    voxel_size: tuple[float, ...],
    overwrite: bool = False,
    chunks: tuple[int, ...] | None = None,
    attrs: dict[str, Any] | None = None,
    offset: tuple[float, ...] | None = None,
) -> VolumeSpec:
    """Write an in-memory array as a whole volume (atomically, see create_volume)."""
    with create_volume(spec, data.shape, data.dtype, voxel_size, chunks, overwrite, attrs, offset) as out:
        out[...] = data
        return out.spec


@contextmanager
def _stage_hdf5(spec: VolumeSpec, shape, dtype, chunks, meta) -> Iterator[Any]:
    import h5py

    created_file = not spec.path.exists()
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    staging = f"{_STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
    handle = h5py.File(spec.path, "a")
    try:
        chunks = tuple(min(c, s) for c, s in zip(chunks, shape))
        dataset = handle.create_dataset(staging, shape=shape, dtype=dtype, chunks=chunks, compression="gzip", compression_opts=1)
        for key, value in meta.items():
            dataset.attrs[key] = value
        yield dataset
        if spec.dataset in handle:
            del handle[spec.dataset]
        handle.move(staging, spec.dataset)
    except BaseException:
        if staging in handle:
            del handle[staging]
        handle.close()
        if created_file:
            spec.path.unlink(missing_ok=True)
        raise
    handle.close()


@contextmanager
def _stage_zarr(spec: VolumeSpec, shape, dtype, chunks, meta) -> Iterator[Any]:
    import zarr

    created_store = not spec.path.exists()
    root = zarr.open_group(store=str(spec.path), mode="a")
    staging = f"{_STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
    staging_dir = spec.path / staging
    try:
        array = root.create_array(name=staging, shape=shape, dtype=dtype, chunks=chunks, attributes=meta)
        yield array
        move_array_into_store(staging_dir, spec)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        if created_store:
            shutil.rmtree(spec.path, ignore_errors=True)
        raise


def move_array_into_store(staged: Path, spec: VolumeSpec) -> None:
    """Move the finished zarr array folder `staged` to `spec` (store and dataset), replacing an old one only now.

    A local zarr v3 array is a directory, so the rename is the atomic commit;
    the store and the dataset's parent groups are created if missing.
    """
    import zarr

    zarr.open_group(store=str(spec.path), mode="a")
    target = spec.path / spec.dataset
    target.parent.mkdir(parents=True, exist_ok=True)
    _ensure_zarr_groups(spec.path, spec.dataset)
    if target.exists():
        trash = spec.path / f"{_STAGING_PREFIX}{uuid.uuid4().hex[:8]}_old"
        os.replace(target, trash)
        os.replace(staged, target)
        shutil.rmtree(trash)
    else:
        os.replace(staged, target)


def _ensure_zarr_groups(store: Path, dataset: str) -> None:
    """Nested dataset names (`volumes/affs`) need their parent groups to exist."""
    import zarr

    parts = dataset.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        zarr.open_group(store=str(store), path="/".join(parts[:depth]), mode="a")


@contextmanager
def _stage_tiff(spec: VolumeSpec, shape, dtype, chunks, meta) -> Iterator[Any]:
    import tifffile

    spec.path.parent.mkdir(parents=True, exist_ok=True)
    staging = spec.path.with_name(f".{spec.path.name}.{uuid.uuid4().hex[:8]}.partial.tif")
    try:
        array = tifffile.memmap(staging, shape=shape, dtype=dtype, metadata={"voxel_size": meta["voxel_size"], "offset": meta["offset"]})
        yield array
        array.flush()
        del array
        os.replace(staging, spec.path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
