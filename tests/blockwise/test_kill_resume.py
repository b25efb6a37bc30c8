"""`tokenunify segment --blockwise` killed with SIGKILL and started again: no finished block redone, same bytes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from tokenunify.blockwise.segment import BlockwiseOptions, segment_blockwise
from tokenunify.data.synthetic_affinities import NEAREST_OFFSETS, SyntheticAffinities
from tokenunify.io import write_volume
from tokenunify.postprocess.settings import SegmentSettings

SHAPE = (32, 192, 192)
BLOCK = ("16", "48", "48")
N_BLOCKS = 2 * 4 * 4


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kill")
    write_volume(f"{folder}/v.zarr:affs", SyntheticAffinities(SHAPE, seed=5).affinities(), (40, 8, 8),
                 attrs={"offsets": NEAREST_OFFSETS})
    segment_blockwise(f"{folder}/v.zarr:affs", f"{folder}/v.zarr:reference",
                      SegmentSettings(fragments="2d", min_seed_distance=4),
                      BlockwiseOptions(block=tuple(map(int, BLOCK)), context=(4, 16, 16), multiprocessing=False),
                      threshold=0.4, progress=False)
    return folder


def _command(folder: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "tokenunify", "segment", "--affs", f"{folder}/v.zarr:affs",
            "--output", f"{folder}/v.zarr:{name}", "--blockwise", "--workers", "2", "--block", *BLOCK,
            "--context", "4", "16", "16", "--threshold", "0.4", "segment.fragments=2d",
            "segment.min_seed_distance=4", "--no-progress"]


def _written(work: Path, stage: str) -> int:
    """Blocks whose output file exists (a chunk of fragments, or an edge table)."""
    if stage == "fragments":
        chunks = work / "fragments.zarr" / "fragments" / "c"
        return sum(1 for p in chunks.rglob("*") if p.is_file()) if chunks.exists() else 0
    edges = work / "edges"
    return len(list(edges.glob("*.npz"))) if edges.exists() else 0


def _done(work: Path, stage: str) -> int:
    path = work / "tracking" / stage / "done"
    return int(zarr.open_array(store=str(path), mode="r")[:].sum()) if path.exists() else 0


@pytest.mark.parametrize("stage", ["fragments", "edges"])
def test_killed_run_resumes_to_the_same_bytes(store, stage):
    name = f"killed_{stage}"
    work = store / f"v.zarr.{name}.work"
    proc = subprocess.Popen(_command(store, name), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while _written(work, stage) < 6 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # the whole process group: the scheduler and its workers die at once, as with a node failure
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    assert not (store / "v.zarr" / name).exists()
    done = {s: _done(work, s) for s in ("fragments", "edges", "relabel")}
    print("done at the kill:", done)
    assert done[stage] < N_BLOCKS and sum(done.values()) > 0

    again = subprocess.run(_command(store, name), capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    for step, before in done.items():
        match = re.search(rf"^{step}: (\d+) of {N_BLOCKS} blocks computed, (\d+) already done", again.stdout, re.MULTILINE)
        assert match, again.stdout
        # every block recorded as finished is skipped; only the others are computed
        assert (int(match[1]), int(match[2])) == (N_BLOCKS - before, before)
    np.testing.assert_array_equal(zarr.open_array(store=str(store / "v.zarr" / name), mode="r")[:],
                                  zarr.open_array(store=str(store / "v.zarr" / "reference"), mode="r")[:])


def test_cli_bad_input_exits_2_with_one_line(store):
    # context larger than the volume
    bad = _command(store, "bad")
    bad[bad.index("--context") + 1] = "40"
    result = subprocess.run(bad, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "context" in result.stderr and "smaller" in result.stderr
    assert not (store / "v.zarr.bad.work").exists() and not (store / "v.zarr" / "bad").exists()
    # an existing output without --overwrite
    result = subprocess.run(_command(store, "reference"), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "already exists" in result.stderr
