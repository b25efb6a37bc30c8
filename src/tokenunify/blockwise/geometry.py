"""The block grid of a volume: daisy's world ROIs (nm) and the voxel regions of each block.

daisy schedules blocks by world ROIs; the tasks read and write voxels. A
`BlockGrid` translates between the two and gives every block a linear index
(from its position, not daisy's block id, which is not a running number), from
which fragment ids are made unique: block i owns the ids
``i * voxels_per_block + 1 ..``. Blocks at the far faces of a volume that the
block shape does not divide are smaller (daisy's ``fit="shrink"``), never
dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from funlib.geometry import Coordinate, Roi

from tokenunify.errors import InputError

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class BlockGrid:
    """Blocks of `block` voxels over a volume of `shape` voxels, each read with `context` voxels around it.

    `voxel_size` and `offset` (nm) place the volume in the world; `where`
    names it in error messages.
    """

    shape: Triple
    block: Triple
    context: Triple
    voxel_size: tuple[float, float, float]
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    where: str = "volume"

    def __post_init__(self) -> None:
        if len(self.block) != 3 or min(self.block) < 1:
            raise InputError(self.where, f"block shape must be three positive numbers (z y x), not {self.block}")
        if len(self.context) != 3 or min(self.context) < 0:
            raise InputError(self.where, f"context must be three numbers >= 0 (z y x), not {self.context}")
        too_big = [a for a in range(3) if self.context[a] >= self.shape[a] and self.shape[a] > 1]
        if too_big:
            raise InputError(self.where, f"context {self.context} voxels is not smaller than the volume {self.shape} "
                             f"on axis {'zyx'[too_big[0]]}; use a smaller --context")
        if any(v <= 0 for v in self.voxel_size):
            raise InputError(self.where, f"voxel size must be positive, not {self.voxel_size}")

    @property
    def grid(self) -> Triple:
        """Blocks along each axis (the last one may be partial)."""
        return tuple(math.ceil(s / b) for s, b in zip(self.shape, self.block))  # type: ignore[return-value]

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.grid))

    @property
    def voxels_per_block(self) -> int:
        return int(np.prod(self.block))

    def _world(self, voxels: Triple) -> Coordinate:
        # integer nm: daisy's ROIs are integer coordinates; voxel sizes below 1 nm are not EM
        return Coordinate(*(round(v * s) for v, s in zip(voxels, self._nm)))

    @property
    def _nm(self) -> tuple[int, int, int]:
        nm = tuple(round(v) for v in self.voxel_size)
        if any(n < 1 or abs(n - v) > 1e-6 for n, v in zip(nm, self.voxel_size)):
            raise InputError(self.where, f"blockwise work needs whole-nm voxel sizes, not {self.voxel_size}")
        return nm  # type: ignore[return-value]

    @property
    def _origin(self) -> Coordinate:
        return Coordinate(*(round(o) for o in self.offset))

    def daisy_rois(self) -> tuple[Roi, Roi, Roi]:
        """(total, read, write) ROIs in nm for `daisy.Task`: the volume grown by the context, and one block."""
        context = self._world(self.context)
        total = Roi(self._origin - context, self._world(self.shape) + context * 2)
        write = Roi(Coordinate(0, 0, 0), self._world(self.block))
        read = write.grow(context, context)
        return total, read, write

    def start_of(self, write_roi: Roi) -> Triple:
        """The first voxel of a block's write ROI."""
        nm = self._nm
        rel = write_roi.offset - self._origin
        return tuple(int(r // n) for r, n in zip(rel, nm))  # type: ignore[return-value]

    def index(self, start: Triple) -> int:
        """Linear index of the block starting at voxel `start`."""
        position = tuple(s // b for s, b in zip(start, self.block))
        return int(np.ravel_multi_index(position, self.grid))

    def write_region(self, start: Triple) -> tuple[slice, slice, slice]:
        """Voxel slices of the block's write region, clipped to the volume."""
        return tuple(slice(s, min(s + b, n)) for s, b, n in zip(start, self.block, self.shape))  # type: ignore[return-value]

    def read_region(self, start: Triple) -> tuple[slice, slice, slice]:
        """The write region grown by the context, clipped to the volume."""
        write = self.write_region(start)
        return tuple(slice(max(w.start - c, 0), min(w.stop + c, n))  # type: ignore[return-value]
                     for w, c, n in zip(write, self.context, self.shape))

    def id_offset(self, start: Triple) -> int:
        """Fragment ids of this block start above this number."""
        return self.index(start) * self.voxels_per_block
