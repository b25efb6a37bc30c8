"""Shared fixtures: the real-data folder (skipped when absent) and a CLI runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    """`$TOKENUNIFY_DATA`, else ../shared/data beside the repository."""
    return Path(os.environ.get("TOKENUNIFY_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def real_data() -> Path:
    """The folder of real EM volumes; tests using it skip with a reason when it is absent."""
    folder = real_data_dir()
    if not (folder / "README.md").exists() and not any(folder.glob("*.h5")):
        pytest.skip(f"real EM data not found in {folder} (set TOKENUNIFY_DATA)")
    return folder


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the `tokenunify` entry point in-process; returns (exit code, stdout, stderr)."""
    from tokenunify import cli

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["tokenunify", *map(str, args)])
        code = 0
        try:
            cli.main()
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def small_labelled_volume(tmp_path_factory) -> Path:
    """An anisotropic synthetic volume (8 x 64 x 64, 40 x 8 x 8 nm) with `raw` and `labels` in one HDF5 file."""
    from tokenunify.data.synthetic import make_synthetic_volume
    from tokenunify.io import write_volume

    folder = tmp_path_factory.mktemp("labelled")
    vol = make_synthetic_volume((8, 64, 64), (40, 8, 8), seed=4)
    write_volume(f"{folder}/d.h5:raw", vol.raw, vol.voxel_size)
    write_volume(f"{folder}/d.h5:labels", vol.labels, vol.voxel_size)
    return folder / "d.h5"
