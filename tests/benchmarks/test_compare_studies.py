"""benchmarks/compare_studies.py: the paired table it prints, against a plain computation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmark_loader import load_benchmark

compare = load_benchmark("compare_studies")


def _report(path: Path, vois: dict[tuple[str, int], float]) -> Path:
    runs = [{"arm": arm, "seed": seed, "budget": "scarce", "part": "main", "cf_voi": v, "cf_arand": 0.2,
             "test_voi": 1.0, "train_minutes": 5.0} for (arm, seed), v in vois.items()]
    runs.append({"arm": "scratch", "seed": 0, "budget": "full", "part": "main", "cf_voi": 9.0})  # other budget
    path.write_text(json.dumps({"runs": runs}))
    return path


def test_paired_rows_over_common_seeds(tmp_path, monkeypatch, capsys) -> None:
    first = _report(tmp_path / "a.json", {("scratch", 0): 1.5, ("scratch", 1): 1.7, ("scratch", 2): 1.6,
                                          ("mae", 0): 2.0})
    second = _report(tmp_path / "b.json", {("scratch", 0): 1.4, ("scratch", 1): 1.8, ("unet", 0): 1.0})
    monkeypatch.setattr(sys, "argv", ["compare_studies.py", str(first), str(second)])
    compare.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines] == ["| arm", "| scratch"]  # only arms in both
    cells = lines[1].split(" | ")
    assert cells[1] == "0,1"  # seed 2 ran in the first report only
    assert cells[2] == "1.600" and cells[3] == "1.600"  # means over the common seeds
    assert cells[4].startswith("+0.000 [")  # (-0.1 + 0.1) / 2


def test_no_common_arm_is_an_error(tmp_path, monkeypatch) -> None:
    first = _report(tmp_path / "a.json", {("mae", 0): 2.0})
    second = _report(tmp_path / "b.json", {("unet", 0): 1.0})
    monkeypatch.setattr(sys, "argv", ["compare_studies.py", str(first), str(second)])
    with pytest.raises(SystemExit, match="no arm"):
        compare.main()
