"""Blockwise segmentation at growing volume sizes: time, per-worker peak memory, and 2 workers against 1.

    python benchmarks/bench_blockwise.py                      # the full table (about 30 min on 2 cores)
    python benchmarks/bench_blockwise.py --factors 0.25 1     # a quick look

1. **The in-memory limit.** `segment_volume` (the whole-volume `tokenunify
   segment`) runs on float32 synthetic affinities of two sizes, each in a
   fresh process; its peak RSS is fitted as a + b * voxels, which gives the
   largest volume it segments within --budget-gib (default 4 GiB).
2. **Scale.** Volumes of `factors` times that limit (default up to 8x) are
   generated block by block into zarr (uint8 affinities: 3 bytes a voxel on
   disk) and segmented with `segment --blockwise` on --workers processes,
   each size in a fresh process. Reported: seconds per step, microseconds
   per voxel, the peak RSS of the largest worker (VmHWM, polled) and of the
   scheduler process, which holds the global region graph.
3. **Workers.** On the volume of the first factor, the fragments and edges
   steps run once with 1 worker and once with 2, in this invocation.

Every measurement runs in its own child process (`--child ...`), so the peaks
are those of that run alone.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

VOXEL_SIZE = (40, 8, 8)
MIB = 1024**2


def _shape(voxels: float, block: tuple[int, int, int], plane: tuple[int, int]) -> tuple[int, int, int]:
    """A (z, *plane) volume of at least `voxels`, z a whole number of blocks."""
    z = max(block[0], math.ceil(voxels / (plane[0] * plane[1]) / block[0]) * block[0])
    return (int(z), *plane)


def _small_shape(voxels: float) -> tuple[int, int, int]:
    side = int(round((voxels / 32) ** 0.5 / 16) * 16)
    return (32, side, side)


def _fill(args: tuple[str, tuple[int, int, int], tuple[slice, ...], str]) -> None:
    import zarr

    from tokenunify.data.synthetic_affinities import SyntheticAffinities

    path, shape, region, dtype = args
    affs = SyntheticAffinities(shape, seed=0).affinities(region)
    if dtype == "uint8":
        affs = np.round(affs * 255).astype(np.uint8)
    zarr.open_array(store=path, mode="r+")[(slice(None), *region)] = affs


def generate(path: Path, shape: tuple[int, int, int], dtype: str, workers: int) -> float:
    """Synthetic affinities of `shape` into a zarr array at `path`, region by region on `workers` processes."""
    import zarr

    from tokenunify.data.synthetic_affinities import (
        NEAREST_OFFSETS,
        SyntheticAffinities,
    )

    began = time.perf_counter()
    shutil.rmtree(path, ignore_errors=True)
    zarr.open_group(store=str(path.parent), mode="a")
    chunks = (1, min(64, shape[0]), min(256, shape[1]), min(256, shape[2]))
    zarr.create_array(store=str(path), shape=(3, *shape), chunks=chunks, dtype=dtype, fill_value=0,
                      attributes={"voxel_size": list(VOXEL_SIZE), "offset": [0, 0, 0], "offsets": NEAREST_OFFSETS})
    regions = list(SyntheticAffinities(shape).regions(chunks[1:]))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_fill, [(str(path), shape, r, dtype) for r in regions], chunksize=4))
    return time.perf_counter() - began


def _peak_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


class _WorkerPeaks:
    """The largest VmHWM (peak RSS) of any descendant process, polled every `interval` seconds.

    getrusage(RUSAGE_CHILDREN) would count the parent's memory at fork time
    for every worker spawned after the global step; VmHWM starts again at
    exec, so it is the worker's own peak (only processes already running
    daisy's worker module are read). Growth in a worker's last
    `interval` before it exits can be missed.
    """

    def __init__(self, interval: float = 0.1) -> None:
        import os
        import threading

        self.root, self.interval, self.peak_kib = os.getpid(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _children(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        found, frontier = [], [self.root]
        while frontier:
            parent = frontier.pop()
            kids = [p for p, pp in parents.items() if pp == parent]
            found += kids
            frontier += kids
        return found

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in self._children():
                try:
                    # a child between fork and exec still shows this process's memory: workers only
                    if b"_subprocess_worker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                        continue
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))
                except (OSError, ValueError):
                    continue
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def child_in_memory(folder: Path, voxels: float) -> dict:
    from tokenunify.postprocess.run import segment_volume
    from tokenunify.postprocess.settings import SegmentSettings

    shape = _small_shape(voxels)
    generate(folder / "mem.zarr" / "affs", shape, "float32", 1)
    baseline = _peak_mib(resource.RUSAGE_SELF)
    began = time.perf_counter()
    segment_volume(f"{folder}/mem.zarr:affs", f"{folder}/mem.zarr:seg", SegmentSettings(fragments="2d"),
                   threshold=0.4, overwrite=True, progress=False)
    return {"shape": shape, "voxels": int(np.prod(shape)), "seconds": time.perf_counter() - began,
            "peak_mib": _peak_mib(resource.RUSAGE_SELF), "import_mib": baseline}


def child_generate(folder: Path, shape: tuple[int, int, int], workers: int) -> dict:
    return {"seconds": generate(folder / "big.zarr" / "affs", shape, "uint8", workers)}


def child_blockwise(folder: Path, block: tuple[int, int, int], workers: int, steps: str) -> dict:
    from tokenunify.blockwise import segment as module
    from tokenunify.blockwise.segment import BlockwiseOptions, segment_blockwise
    from tokenunify.postprocess.settings import SegmentSettings

    options = BlockwiseOptions(block=block, context=(8, 32, 32), workers=workers)
    output = f"{folder}/big.zarr:seg_{workers}"
    timed: dict[str, float] = {}
    run_task = module.run_task

    def timed_task(name, *a, **kw):
        began = time.perf_counter()
        counts = run_task(name, *a, **kw)
        timed[name] = time.perf_counter() - began
        if steps == "fragments+edges" and name == "edges":
            raise _Stopped()  # only the per-block steps are compared between worker counts
        return counts

    module.run_task = timed_task  # type: ignore[assignment]
    peaks = _WorkerPeaks()
    began = time.perf_counter()
    result: dict = {}
    try:
        result = segment_blockwise(f"{folder}/big.zarr:affs", output, SegmentSettings(fragments="2d"), options,
                                   threshold=0.4, overwrite=True, progress=False)
    except _Stopped:
        pass
    return {"seconds": {**result.get("seconds", {}), **timed}, "total": time.perf_counter() - began,
            "n_fragments": result.get("n_fragments"), "n_edges": result.get("n_edges"),
            "worker_peak_mib": peaks.stop(), "main_peak_mib": _peak_mib(resource.RUSAGE_SELF)}


class _Stopped(Exception):
    pass


def _run_child(*args: str) -> dict:
    command = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _per_block_seconds(folder: Path, workers: int) -> float:
    """Seconds of the fragments and edges steps with `workers` processes (worker start-up included)."""
    shutil.rmtree(folder / f"big.zarr.seg_{workers}.work", ignore_errors=True)
    seconds = _run_child("blockwise", str(folder), str(workers), "fragments+edges")["seconds"]
    shutil.rmtree(folder / f"big.zarr.seg_{workers}.work", ignore_errors=True)
    return seconds["fragments"] + seconds["edges"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_blockwise"))
    parser.add_argument("--budget-gib", type=float, default=4.0)
    parser.add_argument("--factors", type=float, nargs="+", default=[0.25, 1.0, 4.0, 8.0])
    parser.add_argument("--block", type=int, nargs=3, default=[64, 128, 128])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plane", type=int, nargs=2, default=[512, 512], help="y x of the generated volumes")
    parser.add_argument("--probe-voxels", type=float, nargs=2, default=[4e6, 16e6])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    block = tuple(args.block)
    if args.child:
        kind, folder = args.child[0], Path(args.child[1])
        if kind == "in_memory":
            result = child_in_memory(folder, float(args.child[2]))
        elif kind == "generate":
            result = child_generate(folder, tuple(json.loads(args.child[2])), int(args.child[3]))
        else:
            result = child_blockwise(folder, block, int(args.child[2]), args.child[3])
        print(json.dumps(result, default=str))
        return

    from tokenunify.runtime import tune_runtime

    tune_runtime()
    args.out.mkdir(parents=True, exist_ok=True)
    probes = [_run_child("in_memory", str(args.out), str(v)) for v in args.probe_voxels]
    (v0, p0), (v1, p1) = ((p["voxels"], p["peak_mib"]) for p in probes)
    per_voxel = (p1 - p0) / (v1 - v0)
    limit = (args.budget_gib * 1024 - (p0 - per_voxel * v0)) / per_voxel
    print("in-memory `segment` (float32 affinities, whole volume in one process):")
    for p in probes:
        print(f"  {p['voxels'] / 1e6:7.1f} M voxels {tuple(p['shape'])}: peak {p['peak_mib']:7.0f} MiB, "
              f"{p['seconds']:6.1f} s")
    print(f"  fit: {per_voxel * MIB:.0f} bytes/voxel -> {limit / 1e6:.0f} M voxels fit in {args.budget_gib:g} GiB")

    rows = []
    speedup = None
    for i, factor in enumerate(args.factors):
        shape = _shape(factor * limit, block, tuple(args.plane))
        voxels = math.prod(shape)
        generated = _run_child("generate", str(args.out), json.dumps(shape), str(args.workers))
        if i == 0:
            one, two = _per_block_seconds(args.out, 1), _per_block_seconds(args.out, 2)
            speedup = (shape, one, two)
        shutil.rmtree(args.out / f"big.zarr.seg_{args.workers}.work", ignore_errors=True)
        run = _run_child("blockwise", str(args.out), str(args.workers), "all")
        s = run["seconds"]
        rows.append({"factor": voxels / limit, "shape": shape, "voxels": voxels, "generate": generated["seconds"],
                     **{k: s[k] for k in ("fragments", "edges", "agglomerate", "relabel")}, "total": run["total"],
                     "worker_mib": run["worker_peak_mib"], "main_mib": run["main_peak_mib"],
                     "fragments_n": run["n_fragments"], "edges_n": run["n_edges"]})
        r = rows[-1]
        print(f"  done {shape}: {json.dumps(r, default=str)}", flush=True)
        shutil.rmtree(args.out / "big.zarr", ignore_errors=True)
        shutil.rmtree(args.out / f"big.zarr.seg_{args.workers}.work", ignore_errors=True)

    print(f"\nblockwise `segment --blockwise --workers {args.workers} --block {' '.join(map(str, block))}` "
          "(uint8 affinities in zarr):\n")
    print("| x in-memory limit | shape | M voxels | fragments s | edges s | agglomerate s | relabel s | total s "
          "| us/voxel | worker peak MiB | main peak MiB | fragments | edges |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['factor']:.2f} | {r['shape'][0]}x{r['shape'][1]}x{r['shape'][2]} | {r['voxels'] / 1e6:.0f} "
              f"| {r['fragments']:.1f} | {r['edges']:.1f} | {r['agglomerate']:.1f} | {r['relabel']:.1f} "
              f"| {r['total']:.1f} | {r['total'] / r['voxels'] * 1e6:.3f} | {r['worker_mib']:.0f} "
              f"| {r['main_mib']:.0f} | {r['fragments_n']:,} | {r['edges_n']:,} |")
    if speedup is not None:
        shape, one, two = speedup
        print(f"\nfragments + edges on {shape[0]}x{shape[1]}x{shape[2]}: 1 worker {one:.1f} s, 2 workers {two:.1f} s "
              f"-> {one / two:.2f}x")


if __name__ == "__main__":
    main()
