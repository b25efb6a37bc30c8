"""torchrun DDP on two CPU processes (gloo): equivalence with one process, kill and resume.

Each test starts torchrun in a subprocess (about 10 s per launch here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tokenunify.io.checkpoint import load_checkpoint

HERE = Path(__file__).parent


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENUNIFY_DIST_TIMEOUT_S": "120"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE)


def test_two_ranks_on_half_batches_equal_one_process_on_the_whole(tmp_path):
    subprocess.run([sys.executable, str(HERE / "ddp_equivalence_worker.py"), str(tmp_path / "one.pt")], check=True,
                   timeout=240)
    ddp = torchrun("ddp_equivalence_worker.py", tmp_path / "ddp.pt")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    naive = torchrun("ddp_equivalence_worker.py", tmp_path / "naive.pt", "naive")
    assert naive.returncode == 0, naive.stderr[-3000:]
    one, two, wrong = (torch.load(tmp_path / f, weights_only=True) for f in ("one.pt", "ddp.pt", "naive.pt"))
    for kind in ("finetune", "pretrain"):
        ddp_gap = max(float((one[kind][n] - two[kind][n]).abs().max()) for n in one[kind])
        naive_gap = max(float((one[kind][n] - wrong[kind][n]).abs().max()) for n in one[kind])
        # float tolerance; and the test can fail: averaging per-rank means instead is 1e-4 off
        assert ddp_gap < 1e-6, (kind, ddp_gap)
        assert naive_gap > 1e-5, (kind, naive_gap)


@pytest.fixture
def config(tmp_path, small_labelled_volume) -> Path:
    data = small_labelled_volume
    cfg = {
        "data": {"raw": f"{data}:raw", "labels": f"{data}:labels", "train_z": [0, 6], "val_z": [6, 8]},
        "model": {"width": [4, 8], "anisotropic": True, "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]},
        "train": {"steps": 4, "batch_size": 1, "crop": [4, 32, 32], "bf16": False, "checkpoint_every": 2,
                  "val_every": 1000},
        "augment": {"rotate_prob": 0.0, "elastic_prob": 0.0},
        "predict": {"block": [4, 32, 32], "overlap": [0, 8, 8], "bf16": False},
        "segment": {"thresholds": [0.5]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_rank_run_killed_and_resumed_matches_an_unbroken_one(config, tmp_path):
    common = ["train", "-c", config, "--no-progress", "--device", "cpu"]
    straight = torchrun("-m", "tokenunify", *common, f"out_dir={tmp_path / 'a'}")
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    assert a["step"] == 4 and a["world_size"] == 2
    # each rank drew its own crops: their generator states differ
    assert a["rng"][0]["numpy"] != a["rng"][1]["numpy"]

    killed = torchrun("ddp_kill_worker.py", *common, f"out_dir={tmp_path / 'b'}")
    assert killed.returncode != 0  # rank 0 was stopped too, not left hanging (the timeout would raise)
    assert "Signals.SIGKILL" in killed.stderr or "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 2

    resumed = torchrun("-m", "tokenunify", *common, f"out_dir={tmp_path / 'b'}", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-5)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][name], rtol=1e-5, atol=1e-6)
    # one process cannot resume a two-process run: every rank's RNG state is needed
    single = subprocess.run([sys.executable, "-m", "tokenunify", *map(str, common), f"out_dir={tmp_path / 'b'}",
                             "--resume", "train.steps=4"], capture_output=True, text=True, timeout=240)
    assert single.returncode == 2 and "nproc_per_node 2" in single.stderr, single.stderr


def test_two_rank_pretraining_sums_tokens_and_writes_once(config, tmp_path):
    data = yaml.safe_load(config.read_text())["data"]["raw"]
    cfg = {"data": {"volumes": [data]}, "model": {"preset": "tiny", "mixer": "vit"},
           "train": {"steps": 2, "batch_size": 1, "crop": [16, 32, 32], "bf16": False, "checkpoint_every": 1,
                     "preview_every": 1},
           "schedule": {"kind": "staged", "objectives": ["random", "next"], "shares": [0.5, 0.5]},
           "augment": {"rotate_prob": 0.0, "elastic_prob": 0.0, "isotropic": True}}
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = torchrun("-m", "tokenunify", "pretrain", "-c", path, "--no-progress", "--device", "cpu",
                   f"out_dir={tmp_path / 'pre'}")
    assert run.returncode == 0, run.stderr[-3000:]
    state = load_checkpoint(tmp_path / "pre" / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and [h["objective"] for h in state["history"]] == ["random", "next"]
    # tokens are summed over ranks: 2 ranks x 1 crop x 32 tokens per step
    assert state["tokens_seen"] == 2 * 2 * 32
    assert run.stdout.count('"tokens_seen"') == 1  # only rank 0 prints the summary
    assert (tmp_path / "pre" / "preview_next.png").exists()
