"""benchmarks/threshold_grid.py: each grid's figures are read off one sweep, and the table counts floor misses."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark_loader import load_benchmark

grid_mod = load_benchmark("threshold_grid")


def _row(t: float, voi: float, arand: float) -> dict[str, float]:
    return {"threshold": t, "voi": voi, "voi_split": voi / 2, "voi_merge": voi / 2, "arand": arand}


ROWS = [_row(0.5, 1.9, 0.20), _row(0.55, 1.7, 0.18), _row(0.6, 1.8, 0.21), _row(0.65, 1.6, 0.25)]


def test_grid_picks_best_voi_among_its_own_thresholds() -> None:
    assert grid_mod.grid_figures(ROWS, [0.5, 0.6])["threshold"] == 0.6
    fine = grid_mod.grid_figures(ROWS, [0.5, 0.55, 0.6, 0.65])
    assert fine["threshold"] == 0.65 and fine["arand"] == 0.25  # ARAND is read at the best-VOI row, not minimised


def test_parse_grid_sorts_and_rejects_a_bare_list() -> None:
    assert grid_mod.parse_grid("g=0.7,0.5") == ("g", [0.5, 0.7])
    with pytest.raises(SystemExit, match="name=t1"):
        grid_mod.parse_grid("0.5,0.7")


def test_table_means_and_floor_count() -> None:
    runs = [{"tuning": {"a": _row(0.5, 2.0, 0.3)}, "validation": {"a": _row(0.5, 1.0, 0.19)}},
            {"tuning": {"a": _row(0.6, 3.0, 0.5)}, "validation": {"a": _row(0.6, 2.0, grid_mod.FLOOR_ARAND)}}]
    last = grid_mod.table(runs, {"a": [0.5, 0.6]}).splitlines()[-1]
    assert last == "| a | 2.500 | 0.400 | 1.500 | 0.194 | 1 of 2 |"  # a tie with the floor does not beat it


def test_study_segment_settings_follow_the_config_and_its_extends(monkeypatch) -> None:
    monkeypatch.setenv("TOKENUNIFY_DATA", "/nonexistent")
    configs = Path(__file__).resolve().parents[2] / "configs"
    default = grid_mod.study_segment_settings(configs / "study_fib.yaml")
    assert default.cross_fit_parts == 1 and default.jitter_repeats == 3 and "MeanAffinity" in default.scoring
    assert default.thresholds == grid_mod.FINE
    investigation = grid_mod.study_segment_settings(configs / "study_fib_investigate.yaml")
    assert investigation.thresholds == grid_mod.COARSE and "HistogramQuantile" in investigation.scoring
