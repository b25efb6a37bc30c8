"""Choosing the best threshold of a sweep and printing the sweep as Markdown."""

from __future__ import annotations

import math

import pytest

from tokenunify.evaluate.sweep import best_row, format_markdown_table, sweep_table


def row(threshold: float, voi: float, arand: float, **extra) -> dict:
    return {
        "threshold": threshold,
        "voi_split": voi / 2,
        "voi_merge": voi / 2,
        "voi": voi,
        "arand": arand,
        "cremi_score": math.sqrt(voi * arand),
        "n_seg_ids": 10,
        **extra,
    }


ROWS = [row(0.1, 1.5, 0.3), row(0.3, 0.8, 0.2), row(0.5, 0.9, 0.1), row(0.7, 2.0, 0.5)]


def test_best_row_has_the_lowest_voi():
    assert best_row(ROWS)["threshold"] == 0.3


def test_ties_in_voi_go_to_the_lower_arand_then_threshold():
    rows = [row(0.2, 0.8, 0.3), row(0.4, 0.8, 0.1), row(0.6, 0.8, 0.1), row(0.9, 1.0, 0.0)]
    assert best_row(rows)["threshold"] == 0.4
    assert best_row(rows[::-1])["threshold"] == 0.4


def test_nan_never_wins():
    rows = [row(0.1, float("nan"), 0.0), row(0.2, 3.0, 0.9)]
    assert best_row(rows)["threshold"] == 0.2


def test_best_row_is_a_copy():
    best = best_row(ROWS)
    best["voi"] = -1.0
    assert ROWS[1]["voi"] == 0.8


def test_empty_or_incomplete_rows_raise():
    with pytest.raises(ValueError, match="at least one row"):
        best_row([])
    with pytest.raises(ValueError, match="voi"):
        best_row([{"threshold": 0.1, "arand": 0.2}])
    with pytest.raises(ValueError, match="at least one row"):
        format_markdown_table([])


def test_markdown_table_lists_rows_by_threshold_and_marks_the_best():
    text = format_markdown_table(ROWS[::-1], best_row(ROWS))
    lines = text.strip().splitlines()
    assert lines[0].startswith("| best | threshold | voi_split | voi_merge | voi | arand |")
    assert set(lines[1]) <= set("|-:")
    body = lines[2:]
    assert len(body) == len(ROWS)
    thresholds = [float(line.split("|")[2].strip().strip("*")) for line in body]
    assert thresholds == sorted(thresholds)
    marked = [line for line in body if line.startswith("| * |")]
    assert len(marked) == 1
    assert "**0.3**" in marked[0] and "**0.8000**" in marked[0]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_markdown_table_marks_one_row_when_rows_repeat():
    rows = [row(0.5, 1.0, 0.2), row(0.5, 1.0, 0.2)]
    body = format_markdown_table(rows).strip().splitlines()[2:]
    assert sum(line.startswith("| * |") for line in body) == 1


def test_extra_keys_become_extra_columns_and_missing_ones_empty_cells():
    rows = [row(0.1, 1.0, 0.2, note="a|b"), row(0.2, 0.5, 0.1)]
    text = format_markdown_table(rows)
    header = text.splitlines()[0]
    assert header.rstrip(" |").endswith("note")
    assert "a\\|b" in text


def test_sweep_table_returns_best_and_markdown():
    best, text = sweep_table(ROWS)
    assert best == ROWS[1]
    assert text == format_markdown_table(ROWS, best)
