"""`tokenunify predict --blockwise`: affinities of any volume on daisy workers, each loading the model once.

The volume is cut into write regions (`region`, voxels); each daisy block
reads its region grown by `context` and predicts it with the same tiled,
Gaussian-blended inference as the in-process `predict`, then keeps the
region. Inside a block the result is what `predict` gives for that crop; it
differs from a whole-volume prediction only near region faces, where the
tiling of the crop differs from the tiling of the volume, and by less the
larger the context (measured in docs/blockwise.md).

A worker is a zero-argument function: daisy starts it once per worker
process, it loads the checkpoint and then asks the scheduler for blocks
until none are left, so the model is built once per worker, not per block.
Workers on one machine share its cores (torch threads = cores / workers).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenunify.blockwise.geometry import BlockGrid, Triple
from tokenunify.blockwise.runner import prepare_work_dir, run_task, work_dir_for
from tokenunify.blockwise.store import commit_array, create_array
from tokenunify.blockwise.tasks import run_block
from tokenunify.errors import InputError
from tokenunify.io import check_output, open_volume
from tokenunify.io.validate import require_raw
from tokenunify.predict.settings import PredictSettings


@dataclass
class PredictStep:
    """The worker of the predict step: one model per process, then blocks until the scheduler has none."""

    grid: BlockGrid
    checkpoint: str
    raw: str
    out: Path
    settings: PredictSettings
    device: str
    threads: int

    def __call__(self) -> None:
        import daisy.v2 as daisy

        from tokenunify.runtime import tune_runtime

        tune_runtime()
        process = self.serial()
        client = daisy.Client()
        while True:
            with client.acquire_block() as block:
                if block is None:
                    return
                process(block)

    def load(self) -> tuple[Any, Any, Any, Any]:
        """The model (on its device), the raw volume, the output array and the device of this worker."""
        import torch
        import zarr

        from tokenunify.predict.run import load_model
        from tokenunify.training.devices import resolve_device

        torch.set_num_threads(self.threads)
        device = resolve_device(self.device)
        model, _ = load_model(self.checkpoint, device)
        return model, open_volume(self.raw), zarr.open_array(store=str(self.out), mode="r+"), device

    def serial(self) -> _SerialPredict:
        """A one-argument block function loading the model at its first block: the worker's loop and
        daisy's serial mode (no server to connect to) both run it."""
        return _SerialPredict(self)

    def process(self, start: Triple, model: Any, raw: Any, out: Any, device: Any) -> None:
        from tokenunify.predict.inference import predict_blockwise

        read, write = self.grid.read_region(start), self.grid.write_region(start)
        crop = np.asarray(raw[read])
        result = np.zeros((out.shape[0], *crop.shape), np.float32)
        predict_blockwise(model, crop, result, self.settings.block, self.settings.overlap,
                          batch_size=self.settings.batch_size, device=device, bf16=self.settings.bf16, progress=False)
        inner = tuple(slice(w.start - r.start, w.stop - r.start) for w, r in zip(write, read))
        out[(slice(None), *write)] = result[(slice(None), *inner)]


@dataclass
class PredictOptions:
    """How a blockwise prediction is cut and run (the `blockwise_predict:` section of a config)."""

    # voxels each daisy block writes, and voxels read around them (default: the prediction overlap)
    region: Triple = (64, 128, 128)
    context: Triple | None = None
    workers: int = 1
    retries: int = 2
    # False runs every block in this process (tests, debugging)
    multiprocessing: bool = True


@dataclass
class _SerialPredict:
    step: PredictStep
    loaded: tuple[Any, ...] | None = None

    def __call__(self, block: Any) -> None:
        if self.loaded is None:
            self.loaded = self.step.load()
        run_block(self.step.grid, block, lambda start: self.step.process(start, *self.loaded))


def _aligned(values: Triple, factor: Triple, what: str, where: str) -> Triple:
    bad = [a for a in range(3) if values[a] % factor[a]]
    if bad:
        raise InputError(where, f"{what} {values} must be a multiple of the model's downsample factor {factor} "
                         f"(axis {'zyx'[bad[0]]}), so every block sees the volume's pooling grid")
    return values


def predict_blockwise_daisy(
    checkpoint: str | Path,
    input_spec: str,
    output_spec: str,
    options: PredictOptions | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict affinities of `input_spec` into the zarr `output_spec` block by block on daisy workers.

    `options.region` is each block's write region and `options.context`
    (default: the prediction overlap) the voxels read around it, both
    multiples of the model's downsample factor; `overrides` are `predict:`
    settings over the checkpoint's. Resumable like `segment --blockwise`: the work
    folder ``<store>.<dataset>.work`` records finished blocks, and the output
    appears only when every block is done.
    """
    from tokenunify.predict.run import load_model, predict_settings

    options = options or PredictOptions()
    output = check_output(output_spec, overwrite)
    if output.format != "zarr":
        raise InputError(output, "a blockwise prediction is written to zarr (PATH.zarr:DATASET)")
    raw = open_volume(input_spec)
    require_raw(raw)
    model, state = load_model(checkpoint, "cpu")
    settings = predict_settings(state, str(checkpoint), overrides)
    factor = tuple(int(f) for f in getattr(model, "downsample_factor", (1, 1, 1)))
    offsets = state.get("offsets") or [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    del model
    shape = tuple(int(s) for s in raw.shape)
    # a region larger than the volume is the volume (rounded up to the pooling grid)
    region = tuple(min(r, -(-s // f) * f) for r, s, f in zip(options.region, shape, factor))
    context = tuple(options.context) if options.context is not None else tuple(-(-o // f) * f for o, f in zip(settings.overlap, factor))
    _aligned(region, factor, "--region", str(checkpoint))
    _aligned(context, factor, "--context", str(checkpoint))
    grid = BlockGrid(shape, region, context, tuple(raw.voxel_size), tuple(raw.offset), where=str(raw.spec))  # type: ignore[arg-type]
    stat = Path(checkpoint).stat()
    fingerprint = {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_bytes": stat.st_size,
                   "checkpoint_mtime_ns": stat.st_mtime_ns, "raw": str(raw.spec), "shape": list(shape),
                   "settings": asdict(settings), "region": list(region), "context": list(context), "output": str(output)}
    work = prepare_work_dir(work_dir_for(output), fingerprint, overwrite)
    meta = {"voxel_size": [float(v) for v in raw.voxel_size], "offset": [float(o) for o in raw.offset],
            "offsets": offsets, "model": str(checkpoint), "convention": "1 = same non-zero label (waterz/gunpowder)"}
    staged = create_array(work / "affinities.zarr", (len(offsets), *shape), (1, *region), "float32", meta)
    threads = max(1, (os.cpu_count() or 1) // max(1, options.workers))
    step = PredictStep(grid, str(checkpoint), input_spec, staged, settings, device, threads)
    began = time.perf_counter()
    blocks = run_task("predict", grid, step if options.multiprocessing else step.serial(), work, options.workers, options.retries, options.multiprocessing, progress)
    seconds = time.perf_counter() - began
    commit_array(staged, output, {"blockwise": {"region": list(region), "context": list(context)}})
    voxels = int(np.prod(shape))
    return {"output": str(output), "shape": [len(offsets), *shape], "blocks": blocks, "seconds": seconds,
            "voxels_per_second": voxels / max(seconds, 1e-9), "work_dir": str(work), "settings": asdict(settings)}
