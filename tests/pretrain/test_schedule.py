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
