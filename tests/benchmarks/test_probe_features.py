"""The feature probe's scores (benchmarks/probe_features.py) against plain definitions."""

from __future__ import annotations

import numpy as np
import torch

from benchmark_loader import load_benchmark

probe = load_benchmark("probe_features")


def _auc_pairs(score: np.ndarray, y: np.ndarray) -> float:
    pos, neg = score[y > 0.5], score[y <= 0.5]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _ap_loop(score: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(-score, kind="stable")
    hits, total = 0, 0.0
    for k, i in enumerate(order, start=1):
        if y[i] > 0.5:
            hits += 1
            total += hits / k
    return total / max(hits, 1)


def test_auc_and_ap_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.2).astype(np.float32)
    score = np.round(rng.normal(size=400) + 1.5 * y, 1)  # rounded: ties exercise the rank averaging
    auc, ap = probe._auc_ap(score, y)
    assert abs(auc - _auc_pairs(score, y)) < 1e-9
    distinct = score + 1e-6 * rng.random(400)  # AP is defined on a strict order
    assert abs(probe._auc_ap(distinct, y)[1] - _ap_loop(distinct, y)) < 1e-9
    assert 0.5 < auc < 1.0 and 0.2 < ap < 1.0


def test_logistic_probe_separates_a_linearly_separable_feature() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 4, generator=gen)
    y = (x[:, 2] - 0.5 * x[:, 0] > 0.8).float()  # a minority class, as boundaries are
    mean, std, w, b = probe._fit_logistic(x * 7.0 + 3.0, y)  # standardisation undoes scale and shift
    score = (((x * 7.0 + 3.0 - mean) / std) @ w + b).numpy()
    auc, _ = probe._auc_ap(score, y.numpy())
    assert auc > 0.99


def test_raw_neighbourhood_holds_the_shifted_volume() -> None:
    x = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    nb = probe._raw_neighbourhood(x)
    assert nb.shape == (27, 4, 5, 6)
    assert torch.equal(nb[13], torch.from_numpy(x))  # the centre offset (1, 1, 1)
    assert float(nb[26][1, 1, 1]) == x[2, 2, 2]  # offset (+1, +1, +1)
    assert float(nb[0][0, 0, 0]) == x[0, 0, 0]  # replicate padding at the corner
