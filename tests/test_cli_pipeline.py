"""The commands chained end to end on a tiny synthetic volume, plus evaluate on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenunify.data.synthetic import make_synthetic_volume
from tokenunify.evaluate.metrics import evaluate_segmentation
from tokenunify.io import open_volume, write_volume

CONFIG = """
data:
  raw: {d}:raw
  labels: {d}:labels
  train_z: [0, 6]
  val_z: [6, 8]
model:
  width: [4, 8]
  anisotropic: true
  offsets: [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -4, 0], [0, 0, -4]]
train:
  steps: 3
  batch_size: 1
  crop: [4, 32, 32]
  bf16: false
  val_every: 3
augment:
  rotate_prob: 0.0
predict:
  block: [4, 32, 32]
  overlap: [0, 8, 8]
segment:
  fragments: 2d
  thresholds: [0.2, 0.5, 0.8]
"""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    vol = make_synthetic_volume((8, 64, 64), (40, 8, 8), seed=7)
    write_volume(f"{folder}/d.h5:raw", vol.raw, vol.voxel_size)
    write_volume(f"{folder}/d.h5:labels", vol.labels, vol.voxel_size)
    (folder / "c.yaml").write_text(CONFIG.format(d=folder / "d.h5"))
    return folder


def test_train_predict_segment_evaluate(run_cli, synthetic):
    d = synthetic
    code, out, err = run_cli("train", "--config", d / "c.yaml", f"out_dir={d}/run", "--no-progress")
    assert code == 0, err
    assert json.loads(out[out.index("{\n") : out.rindex("}") + 1])["steps"] == 3
    code, out, err = run_cli("predict", "--model", d / "run/checkpoints/last.pt", "--input", f"{d}/d.h5:raw", "--output", f"{d}/o.zarr:affs", "--no-progress")
    assert code == 0, err
    affs = open_volume(f"{d}/o.zarr:affs")
    assert affs.shape == (5, 8, 64, 64) and affs.voxel_size == (40.0, 8.0, 8.0)
    values = affs.read()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    code, out, err = run_cli("segment", "--affs", f"{d}/o.zarr:affs", "--output", f"{d}/o.zarr:seg", "--fragments", "2d",
                             "--gt", f"{d}/d.h5:labels", "--raw", f"{d}/d.h5:raw", "--preview", d / "seg.png")
    assert code == 0, err
    assert "| threshold |" in out.replace("| best ", "|")
    assert (d / "seg.png").stat().st_size > 0
    seg = open_volume(f"{d}/o.zarr:seg")
    assert seg.dtype == np.uint64 and seg.shape == (8, 64, 64)
    code, out, err = run_cli("evaluate", "--seg", f"{d}/o.zarr:seg", "--gt", f"{d}/d.h5:labels", "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert {"voi_split", "voi_merge", "voi", "arand"} <= set(scores)
    expected = evaluate_segmentation(seg.read(), open_volume(f"{d}/d.h5:labels").read())
    assert scores["voi"] == pytest.approx(expected["voi"])


def test_mutex_watershed_segment(run_cli, synthetic, tmp_path):
    from tokenunify.finetune.affinities import affinities_from_labels

    labels = open_volume(f"{synthetic}/d.h5:labels").read()
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -4, 0], [0, 0, -4]]
    write_volume(f"{tmp_path}/a.zarr:affs", affinities_from_labels(labels, offsets), (40, 8, 8), attrs={"offsets": offsets})
    code, out, err = run_cli("segment", "--affs", f"{tmp_path}/a.zarr:affs", "--output", f"{tmp_path}/a.zarr:seg", "--method", "mws", "--gt", f"{synthetic}/d.h5:labels")
    assert code == 0, err
    seg = open_volume(f"{tmp_path}/a.zarr:seg").read()
    assert evaluate_segmentation(seg, labels)["voi"] < 0.1  # ideal affinities: near-perfect


def test_evaluate_snemi_fragments(run_cli, real_data):
    path = real_data / "snemi3d_mini_gt_fragments.h5"
    code, out, err = run_cli("evaluate", "--seg", f"{path}:fragments", "--gt", f"{path}:labels", "--json")
    assert code == 0, err
    scores = json.loads(out)
    # an over-segmentation: splits dominate, merges are small
    assert scores["voi_split"] > 3 * scores["voi_merge"]
    assert scores["n_seg_ids"] > scores["n_gt_ids"]
