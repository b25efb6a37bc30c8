"""Open volumes in HDF5, zarr (v3) and TIFF through one small read API.

A `Volume` is lazy: slicing reads only the chunks or pages a crop touches, so a
block never loads the whole file. The voxel size (nm, z,y,x) travels with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tokenunify.errors import InputError
from tokenunify.io.spec import VolumeSpec, parse_spec

VOXEL_SIZE_KEYS = ("voxel_size", "resolution_nm", "resolution")
# World position of voxel (0, 0, 0) in nm, z first (funlib.persistence spelling).
OFFSET_KEY = "offset"


def _voxel_size_from(attrs: Any) -> tuple[float, ...] | None:
    for key in VOXEL_SIZE_KEYS:
        if key in attrs:
            value = np.asarray(attrs[key], dtype=float).ravel()
            return tuple(float(v) for v in value)
    return None


def _offset_from(attrs: Any, ndim: int) -> tuple[float, ...] | None:
    if OFFSET_KEY not in attrs:
        return None
    value = np.asarray(attrs[OFFSET_KEY], dtype=float).ravel()
    return tuple(float(v) for v in value) if len(value) == ndim else None


def _as_voxel_size(value: tuple[float, ...] | None, ndim: int) -> tuple[float, ...]:
    """Integers stay integers in printouts; unknown voxel size is all ones."""
    if value is None or len(value) != ndim:
        return tuple(1.0 for _ in range(ndim))
    return value


class ArrayView:
    """Shape, dtype and numpy-style slicing over a stored array."""

    _array: Any

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._array[key])


class Volume(ArrayView):
    """A lazily read array with its voxel size.

    Attributes: `spec` (where it lives), `shape`, `dtype`, `ndim`, `voxel_size`
    (nm, z first, for the last three axes), `voxel_size_known` (False where
    the file carries none), `offset` (world position in nm of this volume's
    first voxel: the stored `offset` attribute, plus the region's start for a
    `[z0:z1,...]` region, so a prediction of a region lands where it belongs).
    """

    def __init__(
        self, spec: VolumeSpec, array: Any, voxel_size: tuple[float, ...] | None, closer: Any = None,
        offset: tuple[float, ...] | None = None,
    ) -> None:
        self.spec = spec
        self._array = array
        self._closer = closer
        # Voxel size covers the spatial axes only: the last three (a leading
        # channel axis, as in affinities, has none).
        spatial = min(len(array.shape), 3)
        self.voxel_size_known = voxel_size is not None and len(voxel_size) == spatial
        self.voxel_size = _as_voxel_size(voxel_size, spatial)
        self.offset = offset if offset is not None and len(offset) == spatial else tuple(0.0 for _ in range(spatial))

    @property
    def attrs(self) -> dict[str, Any]:
        """The dataset's own attributes (empty for TIFF)."""
        attrs = getattr(self._array, "attrs", None)
        return dict(attrs) if attrs is not None else {}

    def read(self) -> np.ndarray:
        """The whole volume in memory. Use slicing for large volumes."""
        return self[(slice(None),) * self.ndim]

    def close(self) -> None:
        """Release the file handle (HDF5 keeps one open)."""
        if self._closer is not None:
            self._closer.close()
            self._closer = None

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Volume({self.spec}, shape={self.shape}, dtype={self.dtype}, voxel_size={self.voxel_size})"


def _open_hdf5(spec: VolumeSpec) -> Volume:
    import h5py

    try:
        handle = h5py.File(spec.path, "r")
    except OSError as err:
        raise InputError(spec.path, f"cannot be read as HDF5 ({err})") from None
    if spec.dataset not in handle or not isinstance(handle[spec.dataset], h5py.Dataset):
        names = _hdf5_dataset_names(handle)
        handle.close()
        raise InputError(spec, f"no dataset '{spec.dataset}' in the file; it holds: {', '.join(names) or 'nothing'}")
    dataset = handle[spec.dataset]
    voxel_size = _voxel_size_from(dataset.attrs) or _voxel_size_from(handle.attrs)
    offset = _offset_from(dataset.attrs, min(dataset.ndim, 3))
    return Volume(spec, dataset, voxel_size, closer=handle, offset=offset)


def _hdf5_dataset_names(handle: Any) -> list[str]:
    import h5py

    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _open_zarr(spec: VolumeSpec) -> Volume:
    import zarr

    try:
        root = zarr.open_group(store=str(spec.path), mode="r")
    except Exception as err:  # zarr raises several types for a non-store path
        raise InputError(spec.path, f"cannot be read as zarr ({type(err).__name__}: {err})") from None
    try:
        array = root[spec.dataset]
    except KeyError:
        array = None
    if array is None or not isinstance(array, zarr.Array):
        names = sorted(name for name, _ in root.arrays())
        raise InputError(spec, f"no array '{spec.dataset}' in the store; it holds: {', '.join(names) or 'nothing'}")
    voxel_size = _voxel_size_from(array.attrs) or _voxel_size_from(root.attrs)
    return Volume(spec, array, voxel_size, offset=_offset_from(array.attrs, min(array.ndim, 3)))


def _open_tiff(spec: VolumeSpec) -> Volume:
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(spec.path) as tif:
            metadata = tif.shaped_metadata[0] if tif.shaped_metadata else {}
        store = tifffile.imread(spec.path, aszarr=True)
    except (OSError, tifffile.TiffFileError) as err:
        raise InputError(spec.path, f"cannot be read as TIFF ({err})") from None
    array = zarr.open(store, mode="r")
    return Volume(spec, array, _voxel_size_from(metadata), closer=store, offset=_offset_from(metadata, 3))


def open_volume(spec: "str | Path | VolumeSpec") -> Volume:
    """Open `PATH:DATASET[roi]` for reading. Raises InputError naming the file and problem."""
    spec = parse_spec(spec)
    if not spec.path.exists():
        raise InputError(spec.path, "no such file or directory")
    opener = {"hdf5": _open_hdf5, "zarr": _open_zarr, "tiff": _open_tiff}[spec.format]
    volume = opener(spec)
    if spec.roi:
        crop = _Crop(volume._array, spec.roi, str(spec))
        volume._array = crop
        starts = crop.starts[-len(volume.offset):]
        volume.offset = tuple(o + s * v for o, s, v in zip(volume.offset, starts, volume.voxel_size))
    return volume


class _Crop:
    """A region of the last three axes of an array, sliced in its own coordinates."""

    def __init__(self, array: Any, roi: tuple[tuple[int | None, int | None], ...], where: str) -> None:
        shape = tuple(int(s) for s in array.shape)
        lead = max(len(shape) - 3, 0)
        self._array = array
        self.attrs = getattr(array, "attrs", {})
        self.dtype = array.dtype
        self.starts = [0] * len(shape)
        stops = list(shape)
        for axis, (start, stop) in enumerate(roi, start=lead):
            if axis >= len(shape):
                raise InputError(where, f"region has more axes than the volume's shape {shape}")
            size = shape[axis]
            begin, end, _ = slice(start, stop).indices(size)
            if end <= begin:
                raise InputError(where, f"region {start}:{stop} is empty or outside axis {axis} of size {size}")
            self.starts[axis], stops[axis] = begin, end
        self.shape = tuple(b - a for a, b in zip(self.starts, stops))

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = key.index(Ellipsis)
            key = key[:at] + (slice(None),) * (len(self.shape) - len(key) + 1) + key[at + 1 :]
        key = key + (slice(None),) * (len(self.shape) - len(key))
        parent = []
        for k, start, size in zip(key, self.starts, self.shape):
            if isinstance(k, slice):
                begin, end, step = k.indices(size)
                if step < 1:
                    raise ValueError("a cropped volume supports only positive slice steps")
                parent.append(slice(start + begin, start + max(end, begin), step))
            else:
                index = int(k) + size if int(k) < 0 else int(k)
                parent.append(start + index)
        return self._array[tuple(parent)]


def volume_exists(spec: "str | Path | VolumeSpec") -> bool:
    """Whether the dataset (or the TIFF file) already exists."""
    spec = parse_spec(spec)
    if not spec.path.exists():
        return False
    if spec.format == "tiff":
        return True
    if spec.format == "hdf5":
        import h5py

        try:
            with h5py.File(spec.path, "r") as handle:
                return spec.dataset in handle
        except OSError:
            return True  # unreadable: treat as existing so nothing gets clobbered
    return (spec.path / spec.dataset / "zarr.json").exists() or (spec.path / spec.dataset / ".zarray").exists()


def describe(volume: Volume) -> str:
    """One line for logs: name, shape, dtype, voxel size and offset."""
    vs = "x".join(f"{v:g}" for v in volume.voxel_size)
    known = "" if volume.voxel_size_known else " (voxel size not stored; assumed)"
    at = "" if not any(volume.offset) else f", offset {','.join(f'{v:g}' for v in volume.offset)} nm"
    return f"{volume.spec}: shape {volume.shape}, {volume.dtype}, voxel {vs} nm{known}{at}"


def voxel_size_json(voxel_size: tuple[float, ...]) -> list[float | int]:
    """Voxel size as JSON-friendly numbers (ints where exact)."""
    return [int(v) if float(v).is_integer() else float(v) for v in voxel_size]
