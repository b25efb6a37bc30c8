"""Build a network from the small spec dict that checkpoints carry.

A checkpoint stores `{"name": ..., **kwargs}` rather than pickled modules, so a
model can be rebuilt by `predict` without the training config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., torch.nn.Module]], Callable[..., torch.nn.Module]]:
    """Decorator: make a builder available under `name`."""

    def wrap(builder: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        _BUILDERS[name] = builder
        return builder

    return wrap


def _load_builtin() -> None:
    # Imported lazily so that `import tokenunify` stays light.
    from tokenunify.models import tokenunify_net, unet

    _BUILDERS.setdefault("unet", unet.build_unet)
    _BUILDERS.setdefault("tokenunify", tokenunify_net.build_tokenunify)


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the network described by `spec` (`name` plus keyword arguments)."""
    _load_builtin()
    spec = dict(spec)
    name = spec.pop("name")
    if name not in _BUILDERS:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](**spec)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
