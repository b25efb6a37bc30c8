"""`PATH:DATASET` volume names, the one way every command names a volume."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenunify.errors import InputError

Format = Literal["hdf5", "zarr", "tiff"]

_EXTENSIONS: dict[str, Format] = {
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".zarr": "zarr",
    ".tif": "tiff",
    ".tiff": "tiff",
}

# The container ends at the first known extension that is followed by ':' or
# the end of the string; this keeps ':' inside directory names harmless.
_SPEC_RE = re.compile(r"^(?P<path>.*?\.(?:h5|hdf5|hdf|zarr|tiff?))(?::(?P<dataset>.*))?$", re.IGNORECASE)
# An optional region of interest, `[z0:z1,y0:y1,x0:x1]`, ends the name.
_ROI_RE = re.compile(r"^(?P<rest>.*)\[(?P<roi>[-0-9:,\s]*)\]$")

Bound = tuple[int | None, int | None]


@dataclass(frozen=True)
class VolumeSpec:
    """A volume inside a container file: `path` plus `dataset` (None for TIFF)."""

    path: Path
    dataset: str | None
    format: Format
    roi: tuple[Bound, ...] | None = None

    def __str__(self) -> str:
        name = f"{self.path}:{self.dataset}" if self.dataset else str(self.path)
        if self.roi:
            name += "[" + ",".join(f"{'' if a is None else a}:{'' if b is None else b}" for a, b in self.roi) + "]"
        return name

    def with_dataset(self, dataset: str) -> "VolumeSpec":
        """The same container with another dataset (and no region)."""
        return VolumeSpec(self.path, dataset, self.format)


def _parse_roi(text: str, where: str) -> tuple[Bound, ...]:
    bounds: list[Bound] = []
    for part in text.split(","):
        pieces = part.strip().split(":")
        if len(pieces) != 2:
            raise InputError(where, f"region '{part}' must be START:STOP (either may be empty)")
        try:
            start, stop = (int(p) if p.strip() else None for p in pieces)
        except ValueError:
            raise InputError(where, f"region '{part}' must hold integers") from None
        bounds.append((start, stop))
    if len(bounds) > 3:
        raise InputError(where, "a region has at most three axes (z,y,x)")
    return tuple(bounds)


def parse_spec(spec: "str | Path | VolumeSpec") -> VolumeSpec:
    """Parse `PATH:DATASET` (for example `data.h5:raw`, `out.zarr:affs`, `stack.tif`).

    The dataset part is required for HDF5 and zarr and may be left out of a TIFF.
    A trailing `[z0:z1,y0:y1,x0:x1]` selects a region of the spatial axes for
    reading (`data.h5:raw[120:160]` is sections 120 to 159; omitted axes are whole).
    """
    if isinstance(spec, VolumeSpec):
        return spec
    text = str(spec)
    roi = None
    roi_match = _ROI_RE.match(text)
    if roi_match is not None:
        roi = _parse_roi(roi_match.group("roi"), text)
        text = roi_match.group("rest")
    match = _SPEC_RE.match(text)
    if match is None:
        known = ", ".join(sorted(_EXTENSIONS))
        raise InputError(text, f"not a volume name; expected PATH:DATASET with PATH ending in one of {known}")
    path = Path(match.group("path"))
    fmt = _EXTENSIONS[path.suffix.lower()]
    dataset = match.group("dataset") or None
    if dataset is not None:
        dataset = dataset.strip("/") or None
    if fmt != "tiff" and dataset is None:
        raise InputError(text, f"names no dataset; write it as {path}:DATASET (for example {path}:raw)")
    if fmt == "tiff" and dataset is not None:
        raise InputError(text, "a TIFF stack holds one volume; leave out the ':DATASET' part")
    return VolumeSpec(path=path, dataset=dataset, format=fmt, roi=roi)
