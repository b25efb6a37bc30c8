"""The held-out volume: its config checks, and its score against predicting and scoring by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenunify.data.synthetic import make_synthetic_volume
from tokenunify.errors import ConfigError
from tokenunify.evaluate.metrics import evaluate_segmentation
from tokenunify.finetune.holdout import check_holdout, open_holdout, score_holdout
from tokenunify.finetune.settings import DataSettings, TrainSettings
from tokenunify.io import write_volume
from tokenunify.models.registry import build_model
from tokenunify.postprocess.pipeline import segmentations
from tokenunify.postprocess.settings import SegmentSettings
from tokenunify.predict.inference import predict_blockwise
from tokenunify.predict.settings import PredictSettings


def test_half_given_or_unvalidated_held_out_volumes_are_refused():
    with pytest.raises(ConfigError, match="given together"):
        check_holdout(TrainSettings(data=DataSettings(test_raw="a.h5:raw")))
    with pytest.raises(ConfigError, match="needs a validation part"):
        check_holdout(TrainSettings(data=DataSettings(test_raw="a.h5:raw", test_labels="a.h5:labels")))
    assert open_holdout(TrainSettings()) is None


def test_held_out_score_is_the_plain_prediction_scored_at_the_given_threshold(tmp_path):
    vol = make_synthetic_volume((16, 32, 32), (10, 10, 10), seed=7)
    write_volume(f"{tmp_path}/t.h5:raw", vol.raw, vol.voxel_size)
    write_volume(f"{tmp_path}/t.h5:labels", vol.labels, vol.voxel_size)
    settings = TrainSettings(data=DataSettings(val_z=(0, 8), test_raw=f"{tmp_path}/t.h5:raw",
                                               test_labels=f"{tmp_path}/t.h5:labels"),
                             predict=PredictSettings(block=[16, 32, 32], overlap=[0, 0, 0], bf16=False),
                             segment=SegmentSettings(thresholds=[0.3, 0.6], cross_fit_parts=2))
    raw, gt = open_holdout(settings)
    torch.manual_seed(0)
    n_out = len(settings.model.offsets)
    model = build_model({"name": "unet", "in_channels": 1, "out_channels": n_out, "anisotropic": False,
                         "width": (4, 8, 8, 8)})
    got = score_holdout(model, raw, gt, settings, 0.6)
    affs = np.zeros((n_out,) + raw.shape, dtype=np.float32)
    predict_blockwise(model, raw, affs, (16, 32, 32), (0, 0, 0), bf16=False, progress=False)
    ((threshold, seg),) = segmentations(affs, settings.model.offsets, settings.segment, [0.6])
    plain = evaluate_segmentation(seg, gt)
    assert got["threshold"] == threshold == 0.6 and "cross_fit" not in got
    assert got["voi"] == pytest.approx(plain["voi"]) and got["arand"] == pytest.approx(plain["arand"])
    assert got["volume"] == settings.data.test_raw
