"""Typed settings of blockwise prediction (the `predict:` section of a config)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PredictSettings:
    """Blockwise prediction: block and overlap in voxels (z,y,x)."""

    block: tuple[int, int, int] = (48, 128, 128)
    overlap: tuple[int, int, int] = (8, 24, 24)
    batch_size: int = 1
    bf16: bool = True

    def __post_init__(self) -> None:
        # Checked here so a bad pair fails when the config loads, not at the first validation.
        if any(b < 1 or not 0 <= o < b for b, o in zip(self.block, self.overlap)):
            raise ValueError(f"predict.overlap {tuple(self.overlap)} must satisfy 0 <= overlap < block {tuple(self.block)}")
