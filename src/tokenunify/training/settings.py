"""The settings every training run shares; pretraining and fine-tuning extend them.

Defaults suit fine-tuning; `PretrainLoop` overrides the ones pretraining
wants differently (fewer steps, stronger weight decay, clipping).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoopBase:
    """The optimisation loop: steps, batch, crop, AdamW with warm-up + cosine, bf16, seeding, guards."""

    steps: int = 2000
    batch_size: int = 2
    crop: tuple[int, int, int] = (32, 96, 96)
    lr: float = 1e-3
    lr_final: float = 1e-4
    weight_decay: float = 1e-4
    bf16: bool = True
    seed: int = 0
    threads: int | None = None
    # None: no clipping; non-finite gradients always skip the step.
    clip_grad_norm: float | None = None
    checkpoint_every: int = 100
    max_minutes: float | None = None
    # Evaluate and save an exponential moving average of the weights with
    # this decay (tokenunify.training.ema) instead of the last iterate; None: off.
    ema_decay: float | None = None
    # Linear warm-up steps before the cosine decay (None: 10% of the steps, at most 100).
    warmup_steps: int | None = None
    # The encoder's learning rate relative to the rest (the fresh decoder and
    # head), and steps at the start with the encoder's learning rate at 0: the
    # recipe for fine-tuning a pretrained encoder (docs/study.md).
    encoder_lr_scale: float = 1.0
    encoder_frozen_steps: int = 0

    @property
    def splits_encoder(self) -> bool:
        """Whether the encoder needs optimizer groups of its own."""
        return self.encoder_lr_scale != 1.0 or self.encoder_frozen_steps > 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("train.steps must be >= 0, train.batch_size and train.checkpoint_every >= 1")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.encoder_lr_scale < 0 or self.encoder_frozen_steps < 0:
            raise ValueError("train.encoder_lr_scale and train.encoder_frozen_steps must be >= 0")
