"""Random training crops from a (raw, labels) pair, restricted to a z range."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenunify.errors import InputError
from tokenunify.io.volumes import Volume

# Regions up to this many voxels are read into memory once; larger ones are
# cropped lazily from the file every step so memory never scales with the volume.
_IN_MEMORY_VOXELS = 256 * 1024 * 1024


@dataclass
class Region:
    """A z range [start, stop) of a volume (all of y and x)."""

    start: int
    stop: int

    @property
    def depth(self) -> int:
        return self.stop - self.start


def resolve_region(volume: Volume, z_range: tuple[int, int] | None) -> Region:
    """Check a z range against the volume; None means the whole volume."""
    depth = volume.shape[0]
    if z_range is None:
        return Region(0, depth)
    start, stop = int(z_range[0]), int(z_range[1])
    if not 0 <= start < stop <= depth:
        raise InputError(volume.spec, f"z range [{start}, {stop}) is outside the volume's {depth} sections")
    return Region(start, stop)


class CropSampler:
    """Draws random crops of `input_shape` from raw (and labels) inside a region.

    Where the region is smaller than a crop along an axis, the crop is padded by
    reflection, so a scarce-label setting of a few sections still trains.
    """

    def __init__(self, raw: Volume, labels: Volume | None, region: Region, input_shape: tuple[int, int, int]) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        self.region = region
        extent = (region.depth, raw.shape[1], raw.shape[2])
        self.extent = extent
        in_memory = int(np.prod(extent)) <= _IN_MEMORY_VOXELS
        window = (slice(region.start, region.stop), slice(None), slice(None))
        self._raw = raw[window] if in_memory else raw
        self._labels = (labels[window] if in_memory else labels) if labels is not None else None
        self._offset = 0 if in_memory else region.start

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """One crop: raw as float32 in [0, 1], labels as uint64 (or None)."""
        starts = [int(rng.integers(0, max(e - s, 0) + 1)) for e, s in zip(self.extent, self.input_shape)]
        return self.crop_at(starts)

    def crop_at(self, starts: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """The crop whose corner is `starts` (region coordinates), padded where needed."""
        window = []
        pads = []
        for start, size, extent in zip(starts, self.input_shape, self.extent):
            stop = min(start + size, extent)
            window.append(slice(start, stop))
            pads.append((0, size - (stop - start)))
        window[0] = slice(window[0].start + self._offset, window[0].stop + self._offset)
        raw = _pad(np.asarray(self._raw[tuple(window)]), pads)
        raw = _to_unit(raw)
        labels = None
        if self._labels is not None:
            labels = _pad(np.asarray(self._labels[tuple(window)]).astype(np.uint64, copy=False), pads)
        return raw, labels


def _pad(array: np.ndarray, pads: list[tuple[int, int]]) -> np.ndarray:
    if not any(after for _, after in pads):
        return array
    return np.pad(array, pads, mode="symmetric")


def _to_unit(raw: np.ndarray) -> np.ndarray:
    """uint8 EM to [0, 1]; float input is assumed already normalised."""
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        return (raw.astype(np.float32) - info.min) / float(info.max - info.min)
    return raw.astype(np.float32)
