"""Score a trained network on a second labelled volume at the threshold chosen on validation.

The held-out volume (`data.test_raw` / `data.test_labels`) is never trained
or validated on, and its threshold is not chosen on it: it is the one the
last validation picked. Its score says how a checkpoint does on data whose
every choice was made elsewhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from tokenunify.errors import ConfigError
from tokenunify.finetune.settings import TrainSettings
from tokenunify.io import open_volume
from tokenunify.io.validate import require_labels, require_raw, require_same_shape
from tokenunify.postprocess.pipeline import sweep_scores
from tokenunify.predict.inference import predict_blockwise

__all__ = ["check_holdout", "open_holdout", "score_holdout"]


def check_holdout(settings: TrainSettings) -> None:
    """Raise ConfigError for a half-given held-out volume, or one without a validation to pick its threshold."""
    d = settings.data
    if (d.test_raw is None) != (d.test_labels is None):
        raise ConfigError("data.test_raw and data.test_labels must be given together")
    if d.test_raw is not None and d.val_z is None and d.val_raw is None:
        raise ConfigError("data.test_raw needs a validation part (data.val_z or data.val_raw) "
                          "to choose its threshold on")


def open_holdout(settings: TrainSettings) -> tuple[np.ndarray, np.ndarray] | None:
    """The held-out (raw, labels) arrays, checked, or None when none is configured."""
    check_holdout(settings)
    d = settings.data
    if d.test_raw is None or d.test_labels is None:
        return None
    raw, labels = open_volume(d.test_raw), open_volume(d.test_labels)
    require_raw(raw)
    require_labels(labels)
    require_same_shape(raw, labels)
    return raw[...], labels[...].astype(np.uint64)


def score_holdout(model: torch.nn.Module, raw: np.ndarray, gt: np.ndarray, settings: TrainSettings,
                  threshold: float) -> dict[str, Any]:
    """Predict `raw`, agglomerate at `threshold` and score against `gt` (jittered copies as in validation)."""
    was_training = model.training
    model.eval()
    affs = np.zeros((len(settings.model.offsets),) + raw.shape, dtype=np.float32)
    p = settings.predict
    device = next(model.parameters()).device
    predict_blockwise(model, raw, affs, tuple(p.block), tuple(p.overlap), batch_size=p.batch_size,
                      device=device, bf16=p.bf16, progress=False)
    model.train(was_training)
    # one threshold, so nothing to cross-fit; the jitter mean stays as configured
    segment = dataclasses.replace(settings.segment, cross_fit_parts=1)
    _, row, _ = sweep_scores(affs, gt, settings.model.offsets, segment, thresholds=[threshold])
    return {"volume": settings.data.test_raw, **row}
