"""Blockwise prediction on daisy workers against the in-process prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from tokenunify.blockwise.predict import PredictOptions, predict_blockwise_daisy
from tokenunify.errors import InputError
from tokenunify.io import open_volume, write_volume
from tokenunify.io.checkpoint import save_checkpoint
from tokenunify.models.registry import build_model, register
from tokenunify.predict.run import predict_volume

SPEC = {"name": "unet", "in_channels": 1, "out_channels": 3, "width": (4, 8, 8), "anisotropic": False}
PREDICT = {"block": [16, 32, 32], "overlap": [4, 8, 8], "bf16": False, "batch_size": 1}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bwpredict")
    torch.manual_seed(0)
    model = build_model(SPEC)
    save_checkpoint(folder / "m.pt", {"model_spec": SPEC, "model": model.state_dict(),
                                      "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]],
                                      "config": {"predict": PREDICT}})
    rng = np.random.default_rng(0)
    raw = (rng.random((20, 70, 60)) * 255).astype(np.uint8)
    write_volume(f"{folder}/raw.h5:raw", raw, (10, 10, 10), offset=(100, 0, 50))
    whole = predict_volume(folder / "m.pt", f"{folder}/raw.h5:raw", f"{folder}/p.zarr:whole", progress=False,
                           device="cpu")
    return folder, whole


def test_one_region_equals_the_in_process_prediction(setup):
    folder, _ = setup
    result = predict_blockwise_daisy(folder / "m.pt", f"{folder}/raw.h5:raw", f"{folder}/p.zarr:one",
                                     PredictOptions(region=(20, 72, 60), multiprocessing=False), device="cpu",
                                     progress=False)
    assert result["blocks"]["blocks"] == 1
    one = zarr.open_array(store=f"{folder}/p.zarr/one", mode="r")[:]
    whole = zarr.open_array(store=f"{folder}/p.zarr/whole", mode="r")[:]
    np.testing.assert_allclose(one, whole, atol=1e-6)


class _Pointwise(torch.nn.Module):
    """A 1x1x1 convolution: no spatial context, so any tiling gives the same affinities."""

    downsample_factor = (2, 2, 2)

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_regions_are_placed_exactly(setup):
    # the registry entry lives in this process only: serial mode
    folder, _ = setup
    register("test_pointwise")(_Pointwise)
    torch.manual_seed(1)
    save_checkpoint(folder / "pw.pt", {"model_spec": {"name": "test_pointwise"}, "model": _Pointwise().state_dict(),
                                       "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]], "config": {"predict": PREDICT}})
    predict_volume(folder / "pw.pt", f"{folder}/raw.h5:raw", f"{folder}/p.zarr:pw_whole", progress=False, device="cpu")
    result = predict_blockwise_daisy(folder / "pw.pt", f"{folder}/raw.h5:raw", f"{folder}/p.zarr:pw_blocks",
                                     PredictOptions(region=(8, 32, 32), context=(4, 8, 8), multiprocessing=False),
                                     device="cpu", progress=False)
    assert result["blocks"]["computed"] == 3 * 3 * 2  # partial regions on the far faces included
    np.testing.assert_allclose(open_volume(f"{folder}/p.zarr:pw_blocks").read(),
                               open_volume(f"{folder}/p.zarr:pw_whole").read(), atol=1e-6)


def test_two_workers_give_the_serial_result(setup):
    folder, _ = setup
    options = {"region": (8, 32, 32), "context": (8, 16, 16)}
    result = predict_blockwise_daisy(folder / "m.pt", f"{folder}/raw.h5:raw", f"{folder}/p.zarr:workers",
                                     PredictOptions(**options, workers=2), device="cpu", progress=False)
    assert result["blocks"]["computed"] == 18
    predict_blockwise_daisy(folder / "m.pt", f"{folder}/raw.h5:raw", f"{folder}/p.zarr:serial",
                            PredictOptions(**options, multiprocessing=False), device="cpu", progress=False)
    out = open_volume(f"{folder}/p.zarr:workers")
    assert tuple(out.offset) == (100, 0, 50) and tuple(out.voxel_size) == (10, 10, 10)
    assert out.attrs["offsets"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    # each worker loads the model itself and runs on its share of the threads
    np.testing.assert_allclose(out.read(), open_volume(f"{folder}/p.zarr:serial").read(), atol=1e-5)


def test_predict_options_are_checked(setup):
    folder, _ = setup
    with pytest.raises(InputError, match="multiple of the model's downsample factor"):
        predict_blockwise_daisy(folder / "m.pt", f"{folder}/raw.h5:raw", f"{folder}/p.zarr:bad",
                                PredictOptions(region=(9, 32, 32), multiprocessing=False), device="cpu", progress=False)
    with pytest.raises(InputError, match="written to zarr"):
        predict_blockwise_daisy(folder / "m.pt", f"{folder}/raw.h5:raw", f"{folder}/p.h5:bad",
                                PredictOptions(multiprocessing=False), device="cpu", progress=False)
    assert not (folder / "p.zarr.bad.work").exists()
