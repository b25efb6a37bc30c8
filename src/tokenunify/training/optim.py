"""AdamW with weight decay only where it regularises: matrices and kernels.

Norm scales and shifts, biases, Mamba's `A_log` (the log of the state
decay rates) and `D` (the skip gain), the mask token, the Perceiver's
latents, the next-token head's start vector and positional embeddings are not shrunk towards zero:
decaying them changes what the network computes (decay rates, offsets, a
learned input) rather than limiting its capacity. Mamba's and MAE's
reference training exclude the same tensors.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["ENCODER_PREFIX", "build_optimizer", "lr_of_group", "no_decay", "parameter_groups", "split_encoder"]

# Names (last component) of tensors that are never decayed, whatever their shape.
_NO_DECAY_NAMES = {"A_log", "D", "mask_token", "latents", "start"}
_NO_DECAY_PARTS = ("pos_embed", "position")


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Whether the parameter `name` is excluded from weight decay."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf in _NO_DECAY_NAMES or any(part in name for part in _NO_DECAY_PARTS)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: `decay` (weight_decay) and `no_decay` (0), each with its parameter names."""
    decay, keep = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (keep if no_decay(name, param) else decay).append((name, param))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in keep], "names": [n for n, _ in keep], "weight_decay": 0.0},
    ]


#: Parameters whose names start with this are the (pretrainable) encoder of a TokenUnify network.
ENCODER_PREFIX = "encoder."


def split_encoder(groups: list[dict], prefix: str = ENCODER_PREFIX) -> list[dict]:
    """Each group split into its `prefix` parameters (``part: "encoder"``) and the rest (``part: "rest"``).

    Empty groups are dropped. The loop gives the encoder groups their own
    learning-rate scale and frozen phase (`lr_of_group`).
    """
    out = []
    for g in groups:
        for part, keep in (("encoder", True), ("rest", False)):
            pairs = [(n, p) for n, p in zip(g["names"], g["params"]) if n.startswith(prefix) == keep]
            if pairs:
                out.append({**g, "params": [p for _, p in pairs], "names": [n for n, _ in pairs], "part": part})
    return out


def lr_of_group(group: dict, lr: float, step: int, encoder_lr_scale: float, encoder_frozen_steps: int) -> float:
    """The learning rate of one parameter group at `step`: the encoder's is scaled, and 0 while frozen.

    With a learning rate of 0 AdamW neither moves nor decays the weights
    (its decay is decoupled and scaled by the learning rate), so the frozen
    phase keeps the encoder exactly as loaded while its moment estimates warm up.
    """
    if group.get("part") != "encoder":
        return lr
    return 0.0 if step < encoder_frozen_steps else lr * encoder_lr_scale


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    split: bool = False) -> torch.optim.Optimizer:
    """AdamW over `parameter_groups` (split into encoder and rest with `split`); the loop sets the learning rates.

    Without `split` there are two groups, as in checkpoints written before
    the encoder had its own learning rate, so those runs still resume.
    """
    groups = parameter_groups(model, weight_decay)
    return torch.optim.AdamW(_strip_names(split_encoder(groups) if split else groups), lr=lr)


def _strip_names(groups: Iterable[dict]) -> list[dict]:
    # The names stay out of the optimizer so its state_dict holds only numbers.
    return [{k: v for k, v in g.items() if k != "names"} for g in groups]


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, state: dict) -> None:
    """Restore an optimizer saved by `build_optimizer`, or by the one-group AdamW of earlier versions.

    An earlier checkpoint holds one group in `model.parameters()` order; its
    per-parameter state is moved to the same parameters in today's groups,
    so such a run resumes (with today's decay grouping from then on).
    """
    groups = state["param_groups"]
    if len(groups) == 1 and len(optimizer.param_groups) > 1:
        flat = [p for p in model.parameters() if p.requires_grad]
        position = {id(p): i for i, p in enumerate(flat)}
        new_order = [position[id(p)] for g in optimizer.param_groups for p in g["params"]]
        old_state = state["state"]
        state = {
            "state": {new: old_state[old] for new, old in enumerate(new_order) if old in old_state},
            "param_groups": [{**groups[0], "weight_decay": g["weight_decay"],
                              "params": list(range(start, start + len(g["params"])))}
                             for g, start in zip(optimizer.param_groups, _starts(optimizer.param_groups))],
        }
    optimizer.load_state_dict(state)


def _starts(groups: list[dict]) -> list[int]:
    starts, total = [], 0
    for g in groups:
        starts.append(total)
        total += len(g["params"])
    return starts
