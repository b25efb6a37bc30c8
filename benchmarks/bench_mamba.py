"""Training-step throughput and peak memory of our MambaStack vs mambapy and a Transformer.

Usage::

    python benchmarks/bench_mamba.py [--d-model 128] [--layers 4] [--batch 4] [--length 2048]
        [--steps 3] [--quick] [--sweep] [--skip NAME ...]

Contenders (all at the same d_model / n_layers, input ``(batch, length, d_model)``):

* ``ours_fp32``   -- :class:`tokenunify.models.mamba.MambaStack`, chunked CPU scan
* ``ours_bf16``   -- the same under ``torch.autocast("cpu", torch.bfloat16)``
  (linear/conv in bf16; the scan itself stays fp32)
* ``mambapy``     -- ``mambapy.mamba.Mamba`` (pure-PyTorch parallel scan), if installed;
  install it with ``pip install --no-deps mambapy`` (its own requirements
  would pull an unpinned, multi-GB CUDA torch)
* ``transformer`` -- ``nn.TransformerEncoder`` (nhead 4, ff 4x d_model, pre-norm, no dropout)

A step is forward + ``out.float().square().mean().backward()``; gradients are
dropped between steps. Each contender is timed as the best of ``--steps``
steps after one warm-up step.

Memory method: every contender runs in its own fresh subprocess, which reports
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the process's peak resident
set). ``peak`` is that high-water mark; ``work`` is peak minus the resident
set just before the warm-up step (after imports, model and input creation),
i.e. the memory the training steps themselves needed at their worst moment.

``--sweep`` additionally times the scan op alone (forward + backward, at
``d_inner = 2 * d_model``, d_state 16) over chunk / sub-chunk sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch
from torch import nn

CONTENDERS = ("ours_fp32", "ours_bf16", "mambapy", "transformer")


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3, help="timed steps per contender (best is reported)")
    p.add_argument("--quick", action="store_true", help="small setting: batch 2 x 512, 2 timed steps")
    p.add_argument("--sweep", action="store_true", help="also sweep the scan's chunk / sub-chunk sizes")
    p.add_argument("--skip", nargs="*", default=[], choices=CONTENDERS)
    p.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.length, args.steps = 2, 512, 2
    return args


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _build(name: str, d_model: int, layers: int) -> nn.Module:
    if name.startswith("ours"):
        from tokenunify.models.mamba import MambaStack

        return MambaStack(d_model, layers)
    if name == "mambapy":
        from mambapy.mamba import Mamba, MambaConfig

        return Mamba(MambaConfig(d_model=d_model, n_layers=layers))
    layer = nn.TransformerEncoderLayer(
        d_model, 4, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _worker(args: argparse.Namespace) -> None:
    """Run one contender; print one JSON line."""
    torch.manual_seed(0)
    model = _build(args.worker, args.d_model, args.layers).train()
    x = torch.randn(args.batch, args.length, args.d_model)
    bf16 = args.worker == "ours_bf16"

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    base = _rss_kib()
    step()  # warm-up: oneDNN primitive creation, allocator growth
    times = [step() for _ in range(args.steps)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({
        "name": args.worker, "params": sum(p.numel() for p in model.parameters()),
        "step_s": min(times), "times": times, "peak_kib": peak, "work_kib": peak - base,
    }))


def _run_worker(name: str, args: argparse.Namespace) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", name, "--d-model", str(args.d_model), "--layers", str(args.layers),
           "--batch", str(args.batch), "--length", str(args.length), "--steps", str(args.steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"{name}: failed ({tail[0]})")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sweep(args: argparse.Namespace) -> None:
    from tokenunify.models.scan import selective_scan_chunked

    b, d, n, L = args.batch, 2 * args.d_model, 16, args.length
    g = torch.Generator().manual_seed(0)
    leaves = [
        torch.randn(b, d, L, generator=g), torch.randn(b, d, L, generator=g) - 2,
        -torch.rand(d, n, generator=g) * n - 0.5, torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g),
    ]
    leaves = [t.requires_grad_() for t in leaves]
    print(f"scan sweep, forward+backward of selective_scan_chunked at (B, D, N, L) = ({b}, {d}, {n}, {L}):")
    for chunk in (16, 32, 64, 128, 256):
        row = []
        for sub in sorted({8, 16, 32, chunk}):
            if sub > chunk:
                continue
            best = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                y = selective_scan_chunked(*leaves, delta_softplus=True, chunk_size=chunk, sub_chunk=sub)
                torch.autograd.grad(y.sum(), leaves)
                best = min(best, time.perf_counter() - t0)
            row.append(f"sub {sub:>2}: {best * 1e3:6.0f} ms")
        print(f"  chunk {chunk:>4}  " + "  ".join(row), flush=True)


def main() -> None:
    args = _parse()
    if args.worker:
        _worker(args)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
        f"d_model {args.d_model}, {args.layers} layers, batch {args.batch} x {args.length}, "
        f"best of {args.steps} steps after 1 warm-up; memory = ru_maxrss of a fresh subprocess per contender"
    )
    if args.sweep:
        _sweep(args)
    tokens = args.batch * args.length
    res: dict[str, dict] = {}
    for name in CONTENDERS:
        if name in args.skip:
            continue
        if name == "mambapy":
            try:
                import mambapy  # noqa: F401
            except ImportError:
                print("mambapy: not installed (pip install mambapy --no-deps), skipped")
                continue
        r = _run_worker(name, args)
        if r is None:
            continue
        res[name] = r
        print(
            f"{name:<12} params {r['params']:>9,}  step {r['step_s']:7.3f} s  "
            f"{tokens / r['step_s']:9,.0f} tok/s  peak RSS {r['peak_kib'] / 2**20:6.2f} GiB  "
            f"work {r['work_kib'] / 2**20:6.2f} GiB  (steps {', '.join(f'{t:.3f}' for t in r['times'])})",
            flush=True,
        )
    ours = res.get("ours_fp32")
    if ours and "mambapy" in res:
        m = res["mambapy"]
        print(f"ours/mambapy: tokens/s {m['step_s'] / ours['step_s']:.2f}x, "
              f"peak RSS {ours['peak_kib'] / m['peak_kib']:.2f}x, work memory {ours['work_kib'] / m['work_kib']:.2f}x")
    if ours and "transformer" in res:
        print(f"ours/transformer step time: {ours['step_s'] / res['transformer']['step_s']:.2f}x")
    if ours and "ours_bf16" in res:
        o = res["ours_bf16"]
        print(f"bf16/fp32 (ours): tokens/s {ours['step_s'] / o['step_s']:.2f}x, "
              f"work memory {o['work_kib'] / ours['work_kib']:.2f}x")


if __name__ == "__main__":
    main()
