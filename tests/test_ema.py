"""The weight average against a plain per-tensor loop."""

from __future__ import annotations

import pytest
import torch

from tokenunify.training.ema import WeightAverage, ema_decay_at


def test_average_matches_plain_loop():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = WeightAverage(model, decay=0.9)
    expected = None
    for n in range(25):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(5, 3))  # moves BN running stats and its integer counter
        current = {k: v.clone() for k, v in model.state_dict().items()}
        if expected is None:
            expected = current
        else:
            d = min(0.9, (1 + n) / (10 + n))
            expected = {k: (d * expected[k] + (1 - d) * v) if v.is_floating_point() else v for k, v in current.items()}
        ema.update(model)
    for name, value in ema.state_dict().items():
        torch.testing.assert_close(value, expected[name])
    assert int(ema.state_dict()["1.num_batches_tracked"]) == 25
    # the average is a copy: the model's own weights are untouched
    assert not torch.equal(ema.state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_warmup_decay_and_bad_decay():
    assert ema_decay_at(0.99, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.99, 10_000) == 0.99
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(torch.nn.Linear(1, 1), decay=1.0)
