"""Does running study stages side by side beat one stage with all the threads?

Usage::

    python benchmarks/bench_study_workers.py [--workers 2] [--steps 6] [--repeats 2]

`tokenunify study` with `workers: W` runs W stages at once, each with
threads // W torch threads. This times the fine-tuning step that dominates a
study (``bench_finetune_step.py``: batch building plus the training loop's
network step) in two ways, back to back in one invocation, `--repeats`
times: one process with every thread, and W processes at once with
threads // W each. It prints the steps per second of both (W processes:
the sum of their rates) and their ratio, the speed-up a study gets from
`workers: W` on its fine-tuning stages.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import torch

STEP = Path(__file__).with_name("bench_finetune_step.py")


def _seconds_per_step(out: str) -> float:
    """make_batch + network step seconds from bench_finetune_step's output."""
    found = dict(re.findall(r"^(make_batch|network step)\s+([0-9.]+) s/step", out, flags=re.M))
    if len(found) != 2:
        raise RuntimeError(f"unexpected output of {STEP.name}:\n{out}")
    return sum(float(v) for v in found.values())


def steps_per_second(processes: int, threads: int, steps: int) -> float:
    """Summed step rate of `processes` concurrent step benchmarks with `threads` threads each."""
    cmd = [sys.executable, str(STEP), "--steps", str(steps), "--threads", str(threads)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(processes)]
    outs = [p.communicate()[0] for p in procs]
    for p, out in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"{STEP.name} failed:\n{out}")
    return sum(1.0 / _seconds_per_step(out) for out in outs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    threads = torch.get_num_threads()
    per_worker = max(1, threads // args.workers)
    print(f"{threads} threads; fine-tuning step of the study config, mean of {args.steps} steps per process")
    ratios = []
    for r in range(args.repeats):
        one = steps_per_second(1, threads, args.steps)
        many = steps_per_second(args.workers, per_worker, args.steps)
        ratios.append(many / one)
        print(f"repeat {r + 1}: 1 process x {threads} threads {one:.2f} steps/s; "
              f"{args.workers} processes x {per_worker} thread(s) {many:.2f} steps/s; ratio {many / one:.2f}x")
    print(f"speed-up of workers={args.workers}: {min(ratios):.2f}x to {max(ratios):.2f}x")


if __name__ == "__main__":
    main()
