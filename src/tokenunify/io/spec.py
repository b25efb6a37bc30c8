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


@dataclass(frozen=True)
class VolumeSpec:
    """A volume inside a container file: `path` plus `dataset` (None for TIFF)."""

    path: Path
    dataset: str | None
    format: Format

    def __str__(self) -> str:
        return f"{self.path}:{self.dataset}" if self.dataset else str(self.path)

    def with_dataset(self, dataset: str) -> "VolumeSpec":
        """The same container with another dataset."""
        return VolumeSpec(self.path, dataset, self.format)


def parse_spec(spec: "str | Path | VolumeSpec") -> VolumeSpec:
    """Parse `PATH:DATASET` (for example `data.h5:raw`, `out.zarr:affs`, `stack.tif`).

    The dataset part is required for HDF5 and zarr and may be left out of a TIFF.
    """
    if isinstance(spec, VolumeSpec):
        return spec
    text = str(spec)
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
    return VolumeSpec(path=path, dataset=dataset, format=fmt)
