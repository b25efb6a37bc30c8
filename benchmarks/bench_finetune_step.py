"""Fine-tuning step time of network variants side by side, and what the batch costs.

Usage::

    python benchmarks/bench_finetune_step.py [--config configs/study_fib.yaml]
        [--variants old,block,lean,unet] [--steps 4] [--rounds 5] [--threads N] [--profile]

Builds the study's fine-tuning settings (network, crop, batch, augmentation,
bf16) from the study config, but trains on a synthetic EM-like volume made
here, so it needs no data. Variants:

- `old`: the step as issue 12 found it: `block` below, with every
  channel norm on the plain `F.layer_norm` route over a channels-last copy
  (`models.channel_norm.use_reference_norm`), the chunked PyTorch scan
  (`TOKENUNIFY_NATIVE=off`) and channels-first convolution weights;
- `block`: the TokenUnify network with residual conv blocks at full
  resolution (`model.full_res: block`, the step the study used before);
- `lean`: the same network with the lean full-resolution level
  (`model.full_res: lean`);
- `unet`: the project's U-Net (`model.name: unet`, default widths), the
  study's baseline arm.

Each variant takes the training loop's own network step (forward, balanced
BCE, backward, gradient-norm guard, AdamW) on the same prepared batches,
after two untimed warm-up steps. The variants are timed in turns, `rounds`
times `steps` steps each, so that the machine's drift hits all of them
alike; the median of the rounds is reported, with the ratio against the
first variant. `make_batch` (crop, augmentation, affinities, loss
weights) is timed once. `--profile` adds the torch profiler's table for the
last variant.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenunify.data.augment import required_input_shape
from tokenunify.data.synthetic import make_synthetic_volume
from tokenunify.finetune import train as ft
from tokenunify.io import write_volume
from tokenunify.models.channel_norm import use_reference_norm
from tokenunify.models.registry import build_model, count_parameters
from tokenunify.runtime import tune_malloc
from tokenunify.study.plan import plan_study
from tokenunify.study.run_study import load_study
from tokenunify.training.devices import effective_bf16

VARIANTS = {"old": {"name": "tokenunify", "full_res": "block"},
            "block": {"name": "tokenunify", "full_res": "block"},
            "lean": {"name": "tokenunify", "full_res": "lean"},
            "unet": {"name": "unet"}}
#: variants timed as the step was before the native scan, the channel-norm
#: kernel and channels-last weights
OLD = {"old"}


@contextmanager
def _old_step(enabled: bool) -> Iterator[None]:
    before = os.environ.get("TOKENUNIFY_NATIVE")
    if enabled:
        os.environ["TOKENUNIFY_NATIVE"] = "off"
    try:
        with use_reference_norm(enabled):
            yield
    finally:
        if before is None:
            os.environ.pop("TOKENUNIFY_NATIVE", None)
        else:
            os.environ["TOKENUNIFY_NATIVE"] = before


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/study_fib.yaml"))
    p.add_argument("--variants", default="old,block,lean,unet", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--profile", action="store_true")
    return p.parse_args()


def _settings(tmp: str, config: Path) -> Any:
    vol = make_synthetic_volume((64, 160, 160), (10, 10, 10), seed=0)
    write_volume(f"{tmp}/v.h5:raw", vol.raw, vol.voxel_size)
    write_volume(f"{tmp}/v.h5:labels", vol.labels, vol.voxel_size)
    study = load_study(config, [f"out_dir={tmp}/study", f"finetune.data.raw={tmp}/v.h5:raw",
                                f"finetune.data.labels={tmp}/v.h5:labels", "finetune.data.val_z=null",
                                "finetune.data.test_raw=null", "finetune.data.test_labels=null"], quick=False)
    settings = next(s for s in plan_study(study) if s.kind == "finetune" and s.arm == "scratch").settings
    settings.data.train_z = None
    return settings


def main() -> None:
    args = _parse()
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or not names:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(tmp, args.config)
        loop = settings.train
        data = ft.open_training_data(settings, required_input_shape(tuple(loop.crop), settings.augment))
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        batches = [ft.make_batch(data, settings, rng) for _ in range(args.steps)]
        batch_s = (time.perf_counter() - started) / args.steps
        models: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = {}
        for name in names:
            torch.manual_seed(0)
            for key, value in VARIANTS[name].items():
                setattr(settings.model, key, value)
            model = build_model(ft.model_spec(settings))
            if name in OLD:
                model = model.to(memory_format=torch.contiguous_format)
            models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
            with _old_step(name in OLD):
                for batch in batches[:2]:  # warm-up: oneDNN kernel creation
                    ft.network_step(model, models[name][1], batch, settings)
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                model, optimizer = models[name]
                with _old_step(name in OLD):
                    started = time.perf_counter()
                    for batch in batches:
                        ft.network_step(model, optimizer, batch, settings)  # the training loop's own step
                    times[name].append((time.perf_counter() - started) / len(batches))

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
              f"batch {loop.batch_size} x {tuple(loop.crop)}, bf16 {loop.bf16} asked, {effective_bf16(torch.device('cpu'), loop.bf16)} run; "
              f"median of {args.rounds} rounds of {args.steps} steps per variant, variants in turns")
        print(f"make_batch            {batch_s:.3f} s/step")
        base = statistics.median(times[names[0]])
        for name in names:
            median = statistics.median(times[name])
            spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
            print(f"{name:6s} network step {median:.3f} s/step (rounds {spread}), "
                  f"{count_parameters(models[name][0]):,} parameters, "
                  f"{base / median:.2f}x the steps/s of {names[0]}")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            model, optimizer = models[names[-1]]
            with profile(activities=[ProfilerActivity.CPU]) as prof, _old_step(names[-1] in OLD):
                for batch in batches[:2]:
                    ft.network_step(model, optimizer, batch, settings)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
