"""What bf16 autocast costs or saves on this CPU, per 3D convolution of the study's network and for its whole step.

Usage::

    python benchmarks/bench_conv_precision.py [--config configs/study_fib.yaml] [--repeats 5] [--threads N]

Builds the study's fine-tuning network (scratch arm: preset, `full_res`,
offsets from the config), records the input shape of every 3D convolution in
one forward pass on a batch of the study's crop, then times each of those
convolutions forward in fp32 and under bf16 autocast (forced with
`torch.autocast`, whatever `training.devices` would decide), and one whole
forward + backward of the network both ways. Times are medians of
`repeats` calls after a warm-up call, both precisions timed in turns in
this process. On a CPU without native bf16 kernels (AVX2) the bf16 column is
what `training.devices.autocast` avoids by falling back to fp32
(docs/training.md); a bf16 call slower than a second is timed once.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tokenunify.finetune import train as ft
from tokenunify.models.registry import build_model, count_parameters
from tokenunify.runtime import tune_malloc
from tokenunify.study.plan import plan_study
from tokenunify.study.run_study import load_study
from tokenunify.training.devices import cpu_has_fast_bf16


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/study_fib.yaml"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args()


def _precision(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of `call` in ms after one warm-up call; a call slower than 1 s is timed once."""
    started = time.perf_counter()
    call()
    first = time.perf_counter() - started
    if first > 1.0:
        started = time.perf_counter()
        call()
        return 1000 * (time.perf_counter() - started)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _conv_inputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Every 3D convolution (transposed ones too) with the input shape it saw in one forward."""
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, mod, tuple(args[0].shape))))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


def main() -> None:
    args = _parse()
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    study = load_study(args.config, [], quick=False)
    settings = next(s for s in plan_study(study) if s.kind == "finetune" and s.arm == "scratch").settings
    torch.manual_seed(0)
    model = build_model(ft.model_spec(settings))
    x = torch.randn(settings.train.batch_size, 1, *settings.train.crop)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU dispatch "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16 {cpu_has_fast_bf16()}; "
          f"{settings.model.name} {settings.model.preset} full_res {settings.model.full_res}, "
          f"{count_parameters(model):,} parameters, input {tuple(x.shape)}; median of {args.repeats} calls")
    print(f"{'convolution':42s} {'input':22s} {'kernel':9s} {'fp32 ms':>9s} {'bf16 ms':>9s} {'bf16/fp32':>9s}")
    for name, conv, shape in _conv_inputs(model, x):
        inp = torch.randn(shape)
        ms = {}
        for bf16 in (False, True):
            def forward(inp: torch.Tensor = inp, bf16: bool = bf16) -> object:
                with torch.no_grad(), _precision(bf16):
                    return conv(inp)
            ms[bf16] = _median_ms(forward, args.repeats)
        kernel = "x".join(str(k) for k in conv.kernel_size)
        print(f"{name:42s} {str(shape):22s} {kernel:9s} {ms[False]:9.1f} {ms[True]:9.1f} {ms[True] / ms[False]:8.2f}x")
    whole = {}
    for bf16 in (False, True):
        def step(bf16: bool = bf16) -> object:
            model.zero_grad(set_to_none=True)
            with _precision(bf16):
                out = model(x)
            out.float().square().mean().backward()
            return out
        whole[bf16] = _median_ms(step, args.repeats)
    print(f"whole network, forward + backward: fp32 {whole[False]:.0f} ms, bf16 {whole[True]:.0f} ms, "
          f"bf16/fp32 {whole[True] / whole[False]:.2f}x")


if __name__ == "__main__":
    main()
