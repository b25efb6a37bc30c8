"""Crops of unlabelled EM from any number of volumes, formats and voxel sizes."""

from __future__ import annotations

import numpy as np
import torch

from tokenunify.data.augment import AugmentConfig, augment_pair, required_input_shape
from tokenunify.data.sampler import CropSampler, resolve_region
from tokenunify.errors import InputError
from tokenunify.io import describe, open_volume
from tokenunify.io.validate import require_raw


class UnlabeledCrops:
    """Draws augmented crops from several volumes, each picked in proportion to its voxel count.

    Crops are in voxels, so volumes of different voxel sizes contribute crops
    of different physical extent; the patch size of the tokens is fixed in
    voxels as well (see docs/pretraining.md).
    """

    def __init__(self, specs: list[str], crop: tuple[int, int, int], augment_cfg: AugmentConfig) -> None:
        if not specs:
            raise InputError("config", "data.volumes must list at least one unlabelled volume (PATH:DATASET)")
        self.crop = tuple(int(c) for c in crop)
        self.augment_cfg = augment_cfg
        input_shape = required_input_shape(self.crop, augment_cfg)
        self.samplers: list[CropSampler] = []
        self.descriptions: list[str] = []
        sizes = []
        for spec in specs:
            volume = open_volume(spec)
            require_raw(volume)
            self.samplers.append(CropSampler(volume, None, resolve_region(volume, None), input_shape))
            self.descriptions.append(describe(volume))
            sizes.append(float(np.prod(volume.shape)))
        self.weights = np.asarray(sizes) / sum(sizes)

    def batch(self, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`(inputs, clean)`: two `(B, 1, D, H, W)` float32 batches in [0, 1].

        Both share the geometric and photometric augmentation; only the
        inputs carry the degradations (noise, blur, missing sections,
        misalignment), so the clean crops are what the loss scores.
        """
        inputs, clean = [], []
        for _ in range(batch_size):
            which = int(rng.choice(len(self.samplers), p=self.weights))
            raw, _ = self.samplers[which].sample(rng)
            x, y = augment_pair(raw, self.crop, self.augment_cfg, rng)
            inputs.append(x[None])
            clean.append(y[None])
        as_tensor = lambda crops: torch.from_numpy(np.stack(crops).astype(np.float32, copy=False))  # noqa: E731
        return as_tensor(inputs), as_tensor(clean)
