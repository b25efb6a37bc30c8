"""Where a fine-tuning step's time goes: batch building against the network step.

Usage::

    python benchmarks/bench_finetune_step.py [--config configs/study_fib.yaml]
        [--steps 6] [--preset tiny] [--threads N] [--profile]

Builds the study's fine-tuning settings (network, crop, batch, augmentation,
bf16) from the study config, but trains on a synthetic EM-like volume made
here, so it needs no data. It times, in one process, `make_batch` (crop,
augmentation, affinities, loss weights) and the training loop's network
step (forward, loss, backward, gradient-norm guard, AdamW) on the same
batches, after one untimed warm-up step, and prints both per step and
their ratio. `--profile` adds the torch
profiler's table of the operators with the most CPU time over two steps.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tokenunify.data.augment import required_input_shape
from tokenunify.data.synthetic import make_synthetic_volume
from tokenunify.finetune import train as ft
from tokenunify.io import write_volume
from tokenunify.models.registry import build_model, count_parameters
from tokenunify.runtime import tune_malloc
from tokenunify.study.plan import plan_study
from tokenunify.study.run_study import load_study


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/study_fib.yaml"))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--preset", default=None, help="network preset (default: the config's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--profile", action="store_true")
    return p.parse_args()


def main() -> None:
    args = _parse()
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        vol = make_synthetic_volume((64, 160, 160), (10, 10, 10), seed=0)
        write_volume(f"{tmp}/v.h5:raw", vol.raw, vol.voxel_size)
        write_volume(f"{tmp}/v.h5:labels", vol.labels, vol.voxel_size)
        study = load_study(args.config, [f"out_dir={tmp}/study",
                                         f"finetune.data.raw={tmp}/v.h5:raw", f"finetune.data.labels={tmp}/v.h5:labels",
                                         "finetune.data.val_z=null",
                                         *([f"pretrain.model.preset={args.preset}"] if args.preset else [])], quick=False)
        settings = next(s for s in plan_study(study) if s.kind == "finetune" and s.arm == "scratch").settings
        settings.data.train_z = None
        loop = settings.train
        data = ft.open_training_data(settings, required_input_shape(tuple(loop.crop), settings.augment))
        rng = np.random.default_rng(0)
        torch.manual_seed(0)
        model = build_model(ft.model_spec(settings))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def network_step(batch: tuple[torch.Tensor, ...]) -> None:
            ft.network_step(model, optimizer, batch, settings)  # the training loop's own step

        network_step(ft.make_batch(data, settings, rng))  # warm-up: oneDNN kernel creation
        started = time.perf_counter()
        batches = [ft.make_batch(data, settings, rng) for _ in range(args.steps)]
        batch_s = (time.perf_counter() - started) / args.steps
        started = time.perf_counter()
        for batch in batches:
            network_step(batch)
        step_s = (time.perf_counter() - started) / args.steps

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
              f"{settings.model.name} {settings.model.preset} ({count_parameters(model):,} parameters), "
              f"batch {loop.batch_size} x {tuple(loop.crop)}, bf16 {loop.bf16}, mean of {args.steps} steps")
        print(f"make_batch    {batch_s:.3f} s/step")
        print(f"network step  {step_s:.3f} s/step (forward, loss, backward, guarded AdamW step)")
        print(f"batch share   {batch_s / (batch_s + step_s):.0%} of a step")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for batch in batches[:2]:
                    network_step(batch)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
