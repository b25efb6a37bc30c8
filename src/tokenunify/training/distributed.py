"""torch.distributed for the training loop: one process per rank, started by torchrun.

`torchrun --nproc_per_node N -m tokenunify train|pretrain ...` sets RANK,
WORLD_SIZE and the rendezvous address; `setup` then joins the group (gloo on
the CPU, NCCL on CUDA). A plain `tokenunify train` is world size 1 and never
touches torch.distributed. Every rank runs the same number of steps, so the
collectives below line up; if one rank dies, torchrun's agent stops the
others, and the timeout bounds any wait on a rank that hangs instead.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Dist", "setup", "teardown", "world_size"]

#: Seconds a collective waits for the other ranks (validation runs on rank 0
#: while the others wait at a barrier, so this must exceed one validation).
TIMEOUT_ENV = "TOKENUNIFY_DIST_TIMEOUT_S"


@dataclass
class Dist:
    """This process's place in the group; world size 1 means no torch.distributed at all."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes files, logs and the progress bar."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is true on any (a collective stop decision)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def world_size() -> int:
    """The number of ranks torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> Dist:
    """Join the torchrun group if this process is one of several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    if dist.is_initialized():
        return Dist(rank, world, owns_group=False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 3600)))
    dist.init_process_group(backend, timeout=timeout)
    return Dist(rank, world, owns_group=True)


def teardown(d: Dist) -> None:
    """Leave the group if `setup` created it."""
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()
