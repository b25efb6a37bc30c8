"""Objective schedules: single, staged (the paper's order) and per-step mixture."""

from __future__ import annotations

from collections import Counter

import pytest

from tokenunify.config import from_dict
from tokenunify.errors import ConfigError
from tokenunify.pretrain.schedule import ScheduleSettings, objective_for_step


def test_staged_follows_shares_in_order():
    schedule = ScheduleSettings("staged", ["random", "next", "next_all"], [0.5, 0.25, 0.25])
    names = [objective_for_step(s, 100, schedule) for s in range(100)]
    assert names[:50] == ["random"] * 50
    assert names[50:75] == ["next"] * 25
    assert names[75:] == ["next_all"] * 25


def test_mixture_matches_weights_and_is_history_free():
    schedule = ScheduleSettings("mixture", ["random", "next_all"], [3, 1])
    names = [objective_for_step(s, 4000, schedule, seed=5) for s in range(4000)]
    share = Counter(names)["random"] / 4000
    assert 0.72 < share < 0.78
    # the draw of a step does not depend on which steps ran before (exact resume)
    assert objective_for_step(1234, 4000, schedule, seed=5) == names[1234]


def test_single_and_bad_settings():
    assert objective_for_step(7, 10, ScheduleSettings("single", ["next"], [1.0])) == "next"
    with pytest.raises(ConfigError, match="shares"):
        from_dict(ScheduleSettings, {"kind": "staged", "objectives": ["random", "next"], "shares": [1.0]})


def test_stage_lengths_are_integers_summing_to_the_total_with_unrepresentable_shares():
    from tokenunify.pretrain.schedule import stage_lengths

    assert stage_lengths(10, [0.1, 0.2, 0.7]) == [1, 2, 7]  # float cumsum gave 1/3/6
    assert stage_lengths(3, [1, 1, 1]) == [1, 1, 1]
    assert stage_lengths(2, [1, 1, 1]) == [1, 1, 0]  # ties go to the earlier stage
    for shares in ([0.1, 0.2, 0.7], [0.4, 0.3, 0.3], [1 / 3, 1 / 3, 1 / 3], [0.15, 0.35, 0.5], [0.3, 0.7]):
        for total in range(0, 1001):
            lengths = stage_lengths(total, shares)
            assert sum(lengths) == total
            quotas = [total * s / sum(shares) for s in shares]
            assert all(abs(n - q) < 1 for n, q in zip(lengths, quotas)), (total, shares, lengths)


def test_staged_objectives_follow_the_integer_stages():
    schedule = ScheduleSettings("staged", ["random", "next", "next_all"], [0.1, 0.2, 0.7])
    names = [objective_for_step(s, 10, schedule) for s in range(10)]
    assert names == ["random"] + ["next"] * 2 + ["next_all"] * 7


def test_each_stage_has_its_own_warmup_and_cosine_and_the_mixture_one_curve():
    from tokenunify.pretrain.schedule import lr_for_step, stage_lengths
    from tokenunify.training.step import cosine_lr

    lr, final, total = 1e-3, 1e-5, 400
    staged = ScheduleSettings("staged", ["random", "next", "next_all"], [0.4, 0.3, 0.3])
    rates = [lr_for_step(s, total, staged, lr, final) for s in range(total)]
    start = 0
    for length in stage_lengths(total, staged.shares):
        stage = rates[start:start + length]
        assert stage == [cosine_lr(i, length, lr, final) for i in range(length)]
        assert stage[0] < lr / 5 and max(stage) == pytest.approx(lr) and stage[-1] < lr / 50
        start += length
    means = [sum(rates[a:a + n]) / n for a, n in ((0, 160), (160, 120), (280, 120))]
    assert max(means) / min(means) < 1.1  # one cosine over the run gave 8.2e-4 / 5.1e-4 / 9.7e-5
    mixture = ScheduleSettings("mixture", ["random", "next"], [1, 1])
    assert [lr_for_step(s, total, mixture, lr, final) for s in range(total)] == [
        cosine_lr(s, total, lr, final) for s in range(total)]
