"""One training step, as one process on a whole batch or as one of two torchrun ranks on half of it.

`python ddp_equivalence_worker.py OUT` writes the single-process weights;
`torchrun --nproc_per_node 2 ddp_equivalence_worker.py OUT` writes rank 0's
weights after the same step with rank r taking sample r of the batch.
Plain SGD keeps the weights a linear function of the gradients (Adam's
first step is about lr * sign(g), which turns float noise in near-zero
gradients into full-size differences). With `naive` as a second argument
the ranks skip the global loss normalisation (each rank's weight 1), the
mistake the test must be able to see.
test_ddp.py compares the two. Both a fine-tuning step (balanced BCE, whose
normaliser differs between the halves) and pretraining steps (dense and
next-token heads, with parameters some steps do not use) are taken.
"""

from __future__ import annotations

import sys

import torch

from tokenunify.finetune.train import fine_tune_step
from tokenunify.models.registry import build_model
from tokenunify.pretrain.objectives import MaskedForward, masked_loss
from tokenunify.tokens.masks import TokenMasks
from tokenunify.training import distributed
from tokenunify.training.step import StepOutput, optimizer_step

CPU = torch.device("cpu")


def batches() -> dict[str, tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(11)
    raw = torch.rand(2, 1, 16, 32, 32, generator=g)
    target = (torch.rand(2, 3, 16, 32, 32, generator=g) > 0.3).float()
    # unequal weight sums per sample: the loss normaliser must be global
    weight = torch.rand(2, 3, 16, 32, 32, generator=g) * torch.tensor([1.0, 3.0]).view(2, 1, 1, 1, 1)
    k = 32  # tokens of a 16x32x32 crop in 8x8x8 patches
    visible = torch.rand(2, k, generator=g) > 0.6
    return {"finetune": (raw, target, weight), "dense": (raw, visible, ~visible)}


def take(rank: int, world: int, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return batch if world == 1 else tuple(t[rank:rank + 1] for t in batch)


def sgd(net: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=0.1)


def main(out: str, naive: bool) -> None:
    dist = distributed.setup(CPU)
    rank, world = dist.rank, dist.world_size
    data = batches()
    results = {}
    spec = {"name": "tokenunify", "preset": "tiny", "mixer": "vit", "in_channels": 1, "anisotropic": False}
    # fine-tuning: one step
    torch.manual_seed(0)
    net = build_model({**spec, "out_channels": 3})
    opt = sgd(net)
    fwd = torch.nn.parallel.DistributedDataParallel(net) if dist.active else net
    step = fine_tune_step(fwd, take(rank, world, data["finetune"]), CPU, False)
    optimizer_step(net, opt, StepOutput(step.loss, 1.0 if naive else step.weight), dist, CPU, None)
    results["finetune"] = {k: v.clone() for k, v in net.state_dict().items()}
    # pretraining: a dense step, then a next-token step (each leaves some parameters unused)
    torch.manual_seed(0)
    net = build_model({**spec, "out_channels": 1, "pretraining": True})
    opt = sgd(net)
    wrapped = MaskedForward(net)
    fwd = torch.nn.parallel.DistributedDataParallel(wrapped, find_unused_parameters=True) if dist.active else wrapped
    raw, visible, target = take(rank, world, data["dense"])
    out_dense = masked_loss(net, raw, TokenMasks(visible, target), "dense", True, fwd)
    optimizer_step(net, opt, StepOutput(out_dense.loss, 1.0 if naive else out_dense.weight), dist, CPU, None)
    prefix = torch.tensor([5, 9])[rank:rank + 1] if world > 1 else torch.tensor([5, 9])
    k = visible.shape[1]
    seen = torch.arange(k)[None] < prefix[:, None]
    out_next = masked_loss(net, raw, TokenMasks(seen, ~seen, prefix), "next", True, fwd)
    optimizer_step(net, opt, StepOutput(out_next.loss, 1.0 if naive else out_next.weight), dist, CPU, None)
    results["pretrain"] = {k: v.clone() for k, v in net.state_dict().items()}
    if dist.is_main:
        torch.save(results, out)
    dist.barrier()
    distributed.teardown(dist)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] == ["naive"])
