"""Mask samplers: each pretraining objective is a choice of (visible, target) tokens.

TokenUnify's three tasks share one model and one reconstruction loss over the
target tokens; they differ only in which tokens the network sees and which it
must predict.  So an objective here is a *mask sampler*: given a batch size, a
sequence length K and a ``torch.Generator`` it returns :class:`TokenMasks`
with boolean ``visible`` and ``target`` masks of shape (B, K).

Registered samplers:

- ``random``   (:class:`RandomMask`): MAE-style, a random subset is hidden and predicted.
- ``next``     (:class:`NextTokenMask`): a random prefix 0..n-1 is visible to the
  encoder; every token t >= n is a target, predicted from the prefix and the
  tokens n..t-1 (teacher forcing, the causal head).
- ``next_all`` (:class:`NextAllMask`): the same prefix is visible, tokens n..K-1 are
  all targets, predicted at once from the prefix alone (the dense decoder).

Adding an objective (hard-patch mining, any-order prediction, ...) means writing
one subclass of :class:`MaskSampler` that implements ``sample`` and decorating
it with ``@register_sampler("name")``; nothing else changes.
``build_sampler("name", **kwargs)`` then constructs it from a config.

Every sampler's output is checked in ``MaskSampler.__call__`` for the invariants
the training loop relies on: visible and target are disjoint, and each sample
has at least one visible and at least one target token.  Sampling draws only
from the given generator, so a seed fixes the masks.

:func:`hide_tokens` blanks every non-visible token before the model sees the
sequence, so even a bidirectional network cannot read its answer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

__all__ = [
    "TokenMasks",
    "MaskSampler",
    "RandomMask",
    "NextTokenMask",
    "NextAllMask",
    "register_sampler",
    "build_sampler",
    "available_samplers",
    "hide_tokens",
]


@dataclass(frozen=True)
class TokenMasks:
    """Which tokens the model sees and which it must predict.

    Attributes:
        visible: bool (B, K), True where the token's content is model input.
        target: bool (B, K), True where the loss scores the prediction.
        prefix: long (B,), the visible prefix length n for autoregressive
            samplers (tokens 0..n-1 visible); None for the others.
    """

    visible: torch.Tensor
    target: torch.Tensor
    prefix: torch.Tensor | None = None

    def check(self) -> None:
        """Raise ValueError unless the masks satisfy the sampler invariants."""
        v, t = self.visible, self.target
        if v.dtype != torch.bool or t.dtype != torch.bool:
            raise ValueError(f"masks must be bool, got visible {v.dtype} and target {t.dtype}")
        if v.ndim != 2 or v.shape != t.shape:
            raise ValueError(
                f"visible {tuple(v.shape)} and target {tuple(t.shape)} must both be (B, K)"
            )
        if (v & t).any():
            raise ValueError("a token is both visible and a target: the model would see its answer")
        if not v.any(dim=1).all():
            raise ValueError("a sample has no visible token")
        if not t.any(dim=1).all():
            raise ValueError("a sample has no target token")
        if self.prefix is not None and tuple(self.prefix.shape) != (v.shape[0],):
            raise ValueError(f"prefix has shape {tuple(self.prefix.shape)}, expected ({v.shape[0]},)")


class MaskSampler(ABC):
    """Base of all objectives: ``sampler(batch, n_tokens, generator) -> TokenMasks``.

    ``head`` says which output scores the targets: ``"dense"`` (the decoder's
    reconstruction of the blanked crop) or ``"next"`` (the causal next-token
    head, for the targets ``prefix .. K-1`` of a prefix sampler).
    """

    head: str = "dense"

    @abstractmethod
    def sample(self, batch: int, n_tokens: int, generator: torch.Generator) -> TokenMasks:
        """Draw masks for ``batch`` sequences of ``n_tokens`` tokens (arguments already checked)."""

    def __call__(self, batch: int, n_tokens: int, generator: torch.Generator) -> TokenMasks:
        """Draw masks and verify the invariants (see :meth:`TokenMasks.check`).

        Raises:
            ValueError: for batch < 1, n_tokens < 2 (one token cannot be both
                context and target) or a sampler that breaks the invariants.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if n_tokens < 2:
            raise ValueError(f"need at least 2 tokens (one visible, one target), got {n_tokens}")
        masks = self.sample(batch, n_tokens, generator)
        if tuple(masks.visible.shape) != (batch, n_tokens):
            raise ValueError(
                f"{type(self).__name__} returned masks of shape {tuple(masks.visible.shape)}, "
                f"expected {(batch, n_tokens)}"
            )
        masks.check()
        return masks


_REGISTRY: dict[str, type[MaskSampler]] = {}
_S = TypeVar("_S", bound=type[MaskSampler])


def _full_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_sampler(name: str) -> Callable[[_S], _S]:
    """Class decorator that makes a :class:`MaskSampler` buildable by ``name``.

    Raises:
        ValueError: when ``name`` is already taken by another class.
    """

    def decorate(cls: _S) -> _S:
        if not (isinstance(cls, type) and issubclass(cls, MaskSampler)):
            raise TypeError(f"@register_sampler({name!r}) needs a MaskSampler subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        # Re-registering the same class is harmless (module reloads); a clash is a bug.
        if existing is not None and _full_name(existing) != _full_name(cls):
            raise ValueError(f"mask sampler {name!r} is already registered to {_full_name(existing)}")
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_samplers() -> list[str]:
    """Names accepted by :func:`build_sampler`, sorted."""
    return sorted(_REGISTRY)


def build_sampler(name: str, **kwargs: object) -> MaskSampler:
    """Construct the sampler registered as ``name`` with keyword arguments.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(
            f"unknown mask sampler {name!r}; available: {', '.join(available_samplers())}"
        )
    return cls(**kwargs)  # type: ignore[arg-type]


@register_sampler("random")
class RandomMask(MaskSampler):
    """Hide a uniformly random subset of round(ratio * K) tokens per sample; predict it.

    The count is clamped to [1, K-1] so tiny sequences still have a context and
    a target.  Rounding is Python's ``round`` (halves to even).
    """

    def __init__(self, ratio: float = 0.75) -> None:
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
        self.ratio = float(ratio)

    def n_hidden(self, n_tokens: int) -> int:
        """How many of ``n_tokens`` tokens are hidden per sample."""
        return min(max(round(self.ratio * n_tokens), 1), n_tokens - 1)

    def sample(self, batch: int, n_tokens: int, generator: torch.Generator) -> TokenMasks:
        # Ranking i.i.d. uniforms gives a uniform random subset per row in one
        # vectorised call; every row gets exactly n_hidden tokens.
        scores = torch.rand(batch, n_tokens, generator=generator)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        hidden = ranks < self.n_hidden(n_tokens)
        return TokenMasks(visible=~hidden, target=hidden)


_PREFIX_DISTRIBUTIONS = ("uniform",)


class _PrefixMask(MaskSampler):
    """Shared prefix draw for the autoregressive samplers."""

    def __init__(
        self, min_prefix: int = 1, max_prefix: int | None = None, distribution: str = "uniform"
    ) -> None:
        if min_prefix < 1:
            raise ValueError(f"min_prefix must be >= 1 (the model needs context), got {min_prefix}")
        if max_prefix is not None and max_prefix < min_prefix:
            raise ValueError(f"max_prefix {max_prefix} is smaller than min_prefix {min_prefix}")
        if distribution not in _PREFIX_DISTRIBUTIONS:
            raise ValueError(
                f"unknown prefix distribution {distribution!r}; available: {', '.join(_PREFIX_DISTRIBUTIONS)}"
            )
        self.min_prefix = int(min_prefix)
        self.max_prefix = None if max_prefix is None else int(max_prefix)
        self.distribution = distribution

    def prefix_range(self, n_tokens: int) -> tuple[int, int]:
        """Inclusive range [lo, hi] of prefix lengths for a sequence of ``n_tokens``.

        ``max_prefix`` is capped at K-1 so that the same sampler serves crops
        of different sizes; a ``min_prefix`` that leaves no target is an error.
        """
        hi = n_tokens - 1 if self.max_prefix is None else min(self.max_prefix, n_tokens - 1)
        if self.min_prefix > hi:
            raise ValueError(
                f"min_prefix {self.min_prefix} leaves no target token in a sequence of {n_tokens}"
            )
        return self.min_prefix, hi

    def draw_prefix(self, batch: int, n_tokens: int, generator: torch.Generator) -> torch.Tensor:
        """Prefix length n per sample, long (B,)."""
        lo, hi = self.prefix_range(n_tokens)
        return torch.randint(lo, hi + 1, (batch,), generator=generator, dtype=torch.long)

    @staticmethod
    def positions(batch: int, n_tokens: int) -> torch.Tensor:
        """Token index k at every (b, k), long (B, K)."""
        return torch.arange(n_tokens).expand(batch, n_tokens)

    def sample(self, batch: int, n_tokens: int, generator: torch.Generator) -> TokenMasks:
        # Both autoregressive objectives: prefix 0..n-1 visible, n..K-1 the targets;
        # they differ in the head that predicts them and in the prefix range.
        prefix = self.draw_prefix(batch, n_tokens, generator)
        pos = self.positions(batch, n_tokens)
        n = prefix[:, None]
        return TokenMasks(visible=pos < n, target=pos >= n, prefix=prefix)


@register_sampler("next")
class NextTokenMask(_PrefixMask):
    """Dense next-token prediction: tokens 0..n-1 visible, every token t >= n a target.

    Scored through the causal next-token head, which predicts token t from
    the prefix (through the encoder and the Perceiver) and from the tokens
    n..t-1 (teacher forcing), never from t or later. ``min_targets`` caps the
    prefix so that at least that share of the K tokens is supervised per
    crop (``max_prefix`` is further capped at ``K - ceil(min_targets * K)``).
    """

    head = "next"

    def __init__(self, min_prefix: int = 1, max_prefix: int | None = None, distribution: str = "uniform",
                 min_targets: float = 0.25) -> None:
        super().__init__(min_prefix, max_prefix, distribution)
        if not 0.0 < min_targets < 1.0:
            raise ValueError(f"min_targets must be in (0, 1), got {min_targets}")
        self.min_targets = float(min_targets)

    def prefix_range(self, n_tokens: int) -> tuple[int, int]:
        lo, hi = super().prefix_range(n_tokens)
        hi = min(hi, n_tokens - math.ceil(self.min_targets * n_tokens))
        if lo > hi:
            raise ValueError(
                f"min_prefix {self.min_prefix} leaves fewer than {self.min_targets:.0%} of {n_tokens} tokens as targets"
            )
        return lo, hi


@register_sampler("next_all")
class NextAllMask(_PrefixMask):
    """Tokens 0..n-1 visible, all of n..K-1 targets (predicted at once, so errors cannot compound)."""


def hide_tokens(
    tokens: torch.Tensor, visible: torch.Tensor, mask_token: torch.Tensor | None = None
) -> torch.Tensor:
    """Return a copy of ``tokens`` (B, K, F) with every non-visible token blanked.

    Blanked tokens become ``mask_token`` (shape (F,), e.g. a learned parameter)
    or zeros.  ``torch.where`` selects rather than mixes, so a hidden token's
    content has no path into the result: neither its values nor its gradient
    (which is exactly zero) leak, whatever the network after it does.

    Raises:
        ValueError: when the shapes of tokens, visible and mask_token disagree.
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, K, F), got shape {tuple(tokens.shape)}")
    if visible.dtype != torch.bool or tuple(visible.shape) != tuple(tokens.shape[:2]):
        raise ValueError(
            f"visible must be a bool mask of shape {tuple(tokens.shape[:2])}, "
            f"got {visible.dtype} {tuple(visible.shape)}"
        )
    if mask_token is None:
        fill = torch.zeros((), dtype=tokens.dtype, device=tokens.device)
    else:
        if tuple(mask_token.shape) != (tokens.shape[-1],):
            raise ValueError(
                f"mask_token must have shape ({tokens.shape[-1]},), got {tuple(mask_token.shape)}"
            )
        fill = mask_token.to(dtype=tokens.dtype, device=tokens.device)
    return torch.where(visible.to(tokens.device)[..., None], tokens, fill)


@register_sampler("any_order")
class AnyOrderSpanMask(MaskSampler):
    """Hide random spans of the raster sequence; predict them from both sides (MLM-U style).

    Any-order autoregression trains on every direction at once: a hidden span
    must be continued *forwards* from the tokens before it and *backwards*
    from the tokens after it, and the share of hidden tokens is drawn afresh
    per sample (uniform in [min_ratio, max_ratio]) instead of being fixed, as
    in MLM-U (Kitouni et al. 2024). Each sample hides ``n_spans`` contiguous
    runs (z slowest, x fastest) with random starts; runs may overlap, so the
    hidden share can fall below the drawn ratio. Scored by the dense head.
    """

    def __init__(self, min_ratio: float = 0.15, max_ratio: float = 0.75, n_spans: int = 3) -> None:
        if not 0.0 < min_ratio <= max_ratio < 1.0:
            raise ValueError(f"need 0 < min_ratio <= max_ratio < 1, got {min_ratio} and {max_ratio}")
        if n_spans < 1:
            raise ValueError(f"n_spans must be >= 1, got {n_spans}")
        self.min_ratio, self.max_ratio, self.n_spans = float(min_ratio), float(max_ratio), int(n_spans)

    def sample(self, batch: int, n_tokens: int, generator: torch.Generator) -> TokenMasks:
        ratio = self.min_ratio + (self.max_ratio - self.min_ratio) * torch.rand(batch, generator=generator)
        hidden_total = (ratio * n_tokens).round().long().clamp(1, n_tokens - 1)
        span = (hidden_total + self.n_spans - 1) // self.n_spans  # (B,)
        starts = (torch.rand(batch, self.n_spans, generator=generator) * (n_tokens - span[:, None] + 1)).long()
        pos = torch.arange(n_tokens)
        inside = (pos[None, None] >= starts[..., None]) & (pos[None, None] < (starts + span[:, None])[..., None])
        hidden = inside.any(dim=1)
        # Keep one visible token where the spans happen to cover everything.
        none_visible = hidden.all(dim=1)
        hidden[none_visible, 0] = False
        return TokenMasks(visible=~hidden, target=hidden)
