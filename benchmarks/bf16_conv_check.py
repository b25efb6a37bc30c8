"""Measure the bf16-autocast weight-gradient error of CPU 3D convolutions, plain and SafeConv3d.

    python benchmarks/bf16_conv_check.py [--trials 10]

For each layer and input depth it prints the worst relative error
||grad_bf16 - grad_ref|| / ||grad_ref|| over the trials, where grad_ref is the
fp32 weight gradient of the same bf16-rounded input and output gradient.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from tokenunify.models.safe_conv import SafeConv3d


def worst_error(make: type[nn.Module], kwargs: dict, depth: int, trials: int, transposed: bool = False) -> float:
    """Largest relative weight-gradient error over ``trials`` random draws (inf if any non-finite)."""
    worst = 0.0
    for _ in range(trials):
        layer = make(16, 16, **kwargs)
        x = torch.randn(2, 16, depth, 8, 8).bfloat16().float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        g = torch.randn(y.shape).bfloat16()
        y.backward(g.to(y.dtype))
        ref_layer = make(16, 16, **kwargs)
        ref_layer.load_state_dict(layer.state_dict())
        ref_layer(x).backward(g.float())
        got, ref = layer.weight.grad, ref_layer.weight.grad
        err = float("inf") if not torch.isfinite(got).all() else float((got - ref).norm() / ref.norm())
        worst = max(worst, err)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}; worst relative weight-gradient error of bf16 autocast vs fp32, {args.trials} trials")
    layers = [
        ("conv k3 pad1", {"kernel_size": 3, "padding": 1}, False),
        ("conv k2 stride2", {"kernel_size": 2, "stride": 2}, False),
        ("convT k2 stride2", {"kernel_size": 2, "stride": 2}, True),
    ]
    for name, kwargs, transposed in layers:
        for depth in (1, 2, 3, 4, 8):
            if "stride2" in name and not transposed and depth % 2:
                continue
            plain_cls = nn.ConvTranspose3d if transposed else nn.Conv3d
            plain = worst_error(plain_cls, kwargs, depth, args.trials, transposed)
            line = f"{name:18s} depth {depth}: plain {plain:.2e}"
            if not transposed:
                line += f"   SafeConv3d {worst_error(SafeConv3d, kwargs, depth, args.trials):.2e}"
            print(line)


if __name__ == "__main__":
    main()
