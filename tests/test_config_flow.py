"""`predict` and `segment` read --config sections and section.key=value overrides through the dataclasses."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from tokenunify.cli import _sections
from tokenunify.data.synthetic_affinities import NEAREST_OFFSETS, SyntheticAffinities
from tokenunify.errors import ConfigError
from tokenunify.io import open_volume, write_volume
from tokenunify.predict.run import predict_settings
from tokenunify.predict.settings import PredictSettings


def test_predict_settings_layer_in_order():
    state = {"config": {"predict": {"block": [32, 64, 64], "overlap": [8, 16, 16], "bf16": False}}}
    assert predict_settings(state, "m.pt") == PredictSettings(block=(32, 64, 64), overlap=(8, 16, 16), bf16=False)
    # a config or an override beats the checkpoint; None (a flag not given) does not
    got = predict_settings(state, "m.pt", {"overlap": [4, 8, 8], "bf16": None, "block": None})
    assert got == PredictSettings(block=(32, 64, 64), overlap=(4, 8, 8), bf16=False)
    # a checkpoint without predict settings gets the dataclass defaults, the same as a new config
    assert predict_settings({}, "m.pt") == PredictSettings()
    with pytest.raises(ConfigError, match="m.pt"):
        predict_settings(state, "m.pt", {"overlap": [40, 8, 8]})


def test_sections_take_only_their_own(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"segment": {"fragments": "2d"}, "train": {"steps": 3}}))
    got = _sections(path, ["segment.thresholds=[0.2, 0.4]", "blockwise.workers=2"], ("segment", "blockwise"))
    assert got == {"segment": {"fragments": "2d", "thresholds": [0.2, 0.4]}, "blockwise": {"workers": 2}}
    with pytest.raises(ConfigError, match="reads only the segment, blockwise"):
        _sections(path, ["train.steps=4"], ("segment", "blockwise"))


@pytest.fixture(scope="module")
def affs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flow")
    syn = SyntheticAffinities((16, 64, 64), seed=1)
    write_volume(f"{folder}/a.zarr:affs", syn.affinities(), (40, 8, 8), attrs={"offsets": NEAREST_OFFSETS})
    return folder


def test_segment_config_overrides_and_flags(affs, run_cli, tmp_path):
    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump({"segment": {"fragments": "3d", "min_seed_distance": 4},
                                      "blockwise": {"block": [8, 32, 32], "context": [2, 8, 8]}}))
    code, out, err = run_cli("segment", "--affs", f"{affs}/a.zarr:affs", "-o", f"{tmp_path}/s.zarr:seg", "-c",
                             str(config), "segment.fragments=2d", "--blockwise", "--threshold", "0.4",
                             "--no-progress")
    assert code == 0, err
    assert "fragments: 8 of 8 blocks computed" in out  # the config's block shape
    seg = open_volume(f"{tmp_path}/s.zarr:seg")
    assert seg.attrs["blockwise"] == {"block": [8, 32, 32], "context": [2, 8, 8]}
    # the override made the fragments 2d: no fragment spans two sections
    fragments = open_volume(f"{tmp_path}/s.zarr.seg.work/fragments.zarr:fragments").read()
    assert not np.intersect1d(np.unique(fragments[0]), np.unique(fragments[1])).size


@pytest.mark.parametrize(
    "extra, message",
    [
        (["segment.nope=1"], "unknown key"),
        (["train.steps=1"], "reads only the segment, blockwise"),
        (["--workers", "2"], "need --blockwise"),
        (["--blockwise", "blockwise.block=[0, 8, 8]"], "block shape must be three positive"),
    ],
)
def test_segment_bad_config_exits_2(affs, run_cli, tmp_path, extra, message):
    code, _, err = run_cli("segment", "--affs", f"{affs}/a.zarr:affs", "-o", f"{tmp_path}/s.zarr:seg",
                           "--threshold", "0.4", *extra)
    assert code == 2 and message in err
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "s.zarr.seg.work").exists()
