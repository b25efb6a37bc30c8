"""Throughput of blockwise prediction with the default U-Net, fp32 vs bf16 autocast.

Usage::

    python benchmarks/bench_predict.py [--shape 64 256 256] [--block 32 128 128]
        [--overlap 8 32 32] [--batch-size 1] [--repeats 2] [--zarr]
        [--threads N] [--tune-malloc]

The input is a synthetic random uint8 volume held in memory; the output goes to
a numpy array (or, with ``--zarr``, to a zarr v3 array in a temporary
directory). Both precisions run in the same process on the same untrained,
seeded model, after one untimed warm-up block so oneDNN kernel creation is not
counted. Throughput is volume voxels per second of wall time (best of
``--repeats``), so overlap and border blocks count against it.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tokenunify.models.unet import build_unet, count_parameters
from tokenunify.predict.inference import block_starts, predict_blockwise
from tokenunify.runtime import tune_malloc


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256), metavar=("Z", "Y", "X"))
    p.add_argument("--block", type=int, nargs=3, default=(32, 128, 128), metavar=("Z", "Y", "X"))
    p.add_argument("--overlap", type=int, nargs=3, default=(8, 32, 32), metavar=("Z", "Y", "X"))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--zarr", action="store_true", help="write into a zarr v3 array instead of numpy")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--tune-malloc",
        action="store_true",
        help="keep freed memory in the glibc heap (mallopt) instead of unmapping it",
    )
    return p.parse_args()


def _make_out(shape: tuple[int, ...], use_zarr: bool, tmp: Path, tag: str):
    if not use_zarr:
        return np.zeros(shape, dtype=np.float32)
    import zarr

    chunks = (shape[0], 32, 128, 128)
    return zarr.create_array(store=tmp / f"{tag}.zarr", shape=shape, chunks=chunks, dtype="float32")


def main() -> None:
    args = _parse()
    tuned = tune_malloc() if args.tune_malloc else False
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_unet().eval()
    raw = np.random.default_rng(0).integers(0, 256, size=tuple(args.shape), dtype=np.uint8)
    n_vox = int(np.prod(args.shape))

    df = model.downsample_factor
    strides = [((b - o) // f) * f for b, o, f in zip(args.block, args.overlap, df)]
    n_blocks = int(np.prod([len(block_starts(n, b, s, f)) for n, b, s, f in zip(args.shape, args.block, strides, df)]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(
        f"model: default U-Net, {count_parameters(model):,} params, downsample {df}; "
        f"volume {tuple(args.shape)} ({n_vox / 1e6:.2f} Mvox), block {tuple(args.block)}, "
        f"overlap {tuple(args.overlap)}, {n_blocks} blocks, batch {args.batch_size}, "
        f"out={'zarr' if args.zarr else 'numpy'}, malloc tuned: {tuned}"
    )

    # Warm-up outside the timing: first calls build oneDNN primitives.
    warm = np.zeros((3,) + tuple(args.block), np.float32)
    for bf16 in (False, True):
        predict_blockwise(model, raw[tuple(slice(0, b) for b in args.block)], warm, args.block, (0, 0, 0), bf16=bf16, progress=False)

    results: dict[str, float] = {}
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for name, bf16 in (("fp32", False), ("bf16", True)):
            times = []
            for r in range(args.repeats):
                out = _make_out((3,) + tuple(args.shape), args.zarr, Path(tmpdir), f"{name}{r}")
                t0 = time.perf_counter()
                predict_blockwise(
                    model, raw, out, args.block, args.overlap,
                    batch_size=args.batch_size, bf16=bf16, progress=False,
                )
                times.append(time.perf_counter() - t0)
            outputs[name] = np.asarray(out[...])
            results[name] = n_vox / min(times)
            print(
                f"{name}: best {min(times):.2f} s of {[round(t, 2) for t in times]} -> "
                f"{results[name] / 1e6:.3f} Mvox/s",
                flush=True,
            )
    diff = np.abs(outputs["bf16"] - outputs["fp32"])
    print(f"bf16/fp32 throughput ratio: {results['bf16'] / results['fp32']:.2f}x")
    print(f"bf16 vs fp32 output: max |diff| {diff.max():.4f}, mean |diff| {diff.mean():.5f}")


if __name__ == "__main__":
    main()
