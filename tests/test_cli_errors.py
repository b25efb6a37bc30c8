"""Bad input: one line naming the file and the problem, non-zero exit, nothing written or overwritten."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tokenunify.io import open_volume, write_volume
from tokenunify.io.checkpoint import save_checkpoint
from tokenunify.models.registry import build_model


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, size=(8, 32, 32), dtype=np.uint8)
    labels = rng.integers(1, 4, size=(8, 32, 32)).astype(np.uint64)
    write_volume(f"{tmp_path}/d.h5:raw", raw, (10, 10, 10))
    write_volume(f"{tmp_path}/d.h5:labels", labels, (10, 10, 10))
    write_volume(f"{tmp_path}/d.h5:small", labels[:, :16], (10, 10, 10))
    write_volume(f"{tmp_path}/d.h5:float_labels", labels.astype(np.float32), (10, 10, 10))
    write_volume(f"{tmp_path}/d.h5:flat", raw[0], (10, 10))
    nan = raw.astype(np.float32) / 255
    nan[3, 4, 5] = np.nan
    write_volume(f"{tmp_path}/d.h5:nan", nan, (10, 10, 10))
    with h5py.File(tmp_path / "d.h5", "a") as handle:
        handle.create_dataset("empty", shape=(0, 32, 32), dtype=np.uint8)
    spec = {"name": "unet", "in_channels": 1, "out_channels": 3, "width": (4, 8, 8, 8), "anisotropic": True}
    model = build_model(spec)
    save_checkpoint(tmp_path / "m.pt", {"model_spec": spec, "model": model.state_dict(), "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]})
    return tmp_path


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def _predict(run_cli, files, input_name, output="o.zarr:affs", *extra):
    return run_cli("predict", "--model", files / "m.pt", "--input", f"{files}/d.h5:{input_name}", "--output", f"{files}/{output}", "--no-progress", *extra)


def test_missing_file(run_cli, files):
    code, _, err = run_cli("evaluate", "--seg", f"{files}/nope.h5:seg", "--gt", f"{files}/d.h5:labels")
    _one_line_error(code, err, "nope.h5", "no such file")


def test_missing_dataset(run_cli, files):
    code, _, err = run_cli("evaluate", "--seg", f"{files}/d.h5:seg", "--gt", f"{files}/d.h5:labels")
    _one_line_error(code, err, "d.h5:seg", "no dataset 'seg'")


def test_wrong_number_of_dimensions(run_cli, files):
    code, _, err = _predict(run_cli, files, "flat")
    _one_line_error(code, err, "d.h5:flat", "2 dimensions")
    assert not (files / "o.zarr").exists()


def test_different_shapes(run_cli, files):
    code, _, err = run_cli("evaluate", "--seg", f"{files}/d.h5:small", "--gt", f"{files}/d.h5:labels")
    _one_line_error(code, err, "d.h5:small", "differs")


def test_different_shapes_in_training(run_cli, files, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  raw: {files}/d.h5:raw\n  labels: {files}/d.h5:small\nout_dir: {tmp_path}/run\n")
    code, _, err = run_cli("train", "--config", config, "--no-progress")
    _one_line_error(code, err, "d.h5:small", "differs")
    assert not (tmp_path / "run").exists()


def test_float_labels(run_cli, files):
    code, _, err = run_cli("evaluate", "--seg", f"{files}/d.h5:labels", "--gt", f"{files}/d.h5:float_labels")
    _one_line_error(code, err, "float_labels", "integer ids")


def test_empty_volume(run_cli, files):
    code, _, err = _predict(run_cli, files, "empty")
    _one_line_error(code, err, "d.h5:empty", "empty")
    assert not (files / "o.zarr").exists()


def test_nan_input(run_cli, files):
    code, _, err = _predict(run_cli, files, "nan")
    _one_line_error(code, err, "d.h5:nan", "NaN")
    assert not (files / "o.zarr").exists()


def test_existing_output_not_overwritten(run_cli, files):
    code, _, err = run_cli("segment", "--affs", f"{files}/d.h5:nan", "--output", f"{files}/d.h5:labels")
    _one_line_error(code, err, "d.h5:labels", "already exists", "--overwrite")
    before = open_volume(f"{files}/d.h5:raw").read()
    code, _, err = _predict(run_cli, files, "labels", "d.h5:raw")
    _one_line_error(code, err, "d.h5:raw", "already exists")
    np.testing.assert_array_equal(open_volume(f"{files}/d.h5:raw").read(), before)


def test_unwritable_output(run_cli, files):
    (files / "blocker").write_text("a file, not a folder")
    code, _, err = _predict(run_cli, files, "raw", "blocker/out.zarr:affs")
    _one_line_error(code, err, "blocker/out.zarr", "cannot be written")


def test_missing_checkpoint(run_cli, files):
    code, _, err = run_cli("predict", "--model", files / "none.pt", "--input", f"{files}/d.h5:raw", "--output", f"{files}/o.zarr:affs")
    _one_line_error(code, err, "none.pt", "no such checkpoint")
    assert not (files / "o.zarr").exists()


def test_help_shows_an_example(run_cli):
    for command in ("train", "predict", "segment", "evaluate", "demo"):
        code, out, _ = run_cli(command, "--help")
        assert code == 0
        assert f"Example: tokenunify {command}" in out
