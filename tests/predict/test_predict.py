"""Blockwise prediction must reproduce whole-volume prediction while streaming slabs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage
from torch import nn

from tokenunify.models.unet import build_unet
from tokenunify.predict.inference import (
    block_starts,
    gaussian_weights,
    predict_blockwise,
    predict_whole,
)
from tokenunify.training.devices import cpu_has_fast_bf16


class PointwiseNet(nn.Module):
    """1x1x1 conv: every output voxel depends on one input voxel only."""

    def __init__(self, downsample_factor: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 3, 1)
        self.downsample_factor = downsample_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4.0 * self.conv(x)


class Conv3Net(nn.Module):
    """A single 3x3x3 conv: receptive-field radius 1, zero padded."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4.0 * self.conv(x)


class RecordingArray:
    """Array-like wrapper that records every read/write region (to check laziness)."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.shape = arr.shape
        self.dtype = arr.dtype
        self.reads: list[tuple[int, ...]] = []
        self.writes: list[tuple[slice, ...]] = []

    def __getitem__(self, key):
        res = self.arr[key]
        self.reads.append(res.shape)
        return res

    def __setitem__(self, key, value) -> None:
        self.writes.append(key)
        self.arr[key] = value


def _em_like(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Smooth uint8 noise: structure at a few voxels, like blurred membranes."""
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.random(shape), 1.5)
    return ((v - v.min()) / (v.max() - v.min()) * 255).astype(np.uint8)


def _small_unet(vol: np.ndarray) -> nn.Module:
    """Seeded 2-level U-Net (df (2,2,2), receptive field z -6..+4, y/x -12..+10).

    BatchNorm running statistics are calibrated on the data so activations are
    normalised like in a trained net; with the raw init statistics the logits
    are huge, the sigmoid saturates and hides any blockwise error.
    """
    torch.manual_seed(0)
    model = build_unet(width=(8, 16))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(vol[None, None, :16, :64, :64].astype(np.float32) / 255))
    return model.eval()


VOL = _em_like((24, 80, 80))


def test_gaussian_weights() -> None:
    w = gaussian_weights((16, 48, 48))
    assert w.shape == (16, 48, 48) and w.dtype == np.float32
    assert w.min() > 0
    assert w.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1], rtol=1e-6)
    # Peak in the middle, decaying towards the faces.
    assert w[8, 24, 24] > w[8, 24, 0] > w[0, 24, 0] > w[0, 0, 0]


def test_block_starts_cover_and_align() -> None:
    assert block_starts(80, 48, 16, 16) == [0, 16, 32]
    assert block_starts(10, 48, 16, 16) == [0]
    assert block_starts(70, 48, 16, 16) == [0, 16, 32]  # virtual extent 80
    # Evenly spread instead of squeezing the last block: 0, 13, 26, 39, 52.
    assert block_starts(100, 48, 16) == [0, 13, 26, 39, 52]
    for size, block, stride, align in [(101, 16, 8, 4), (100, 48, 16, 4), (22, 16, 4, 2), (333, 32, 24, 8)]:
        starts = block_starts(size, block, stride, align)
        assert all(s % align == 0 for s in starts)
        assert starts[0] == 0 and starts[-1] + block >= size
        assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))


def test_pointwise_model_is_exact() -> None:
    model = PointwiseNet()
    ref = predict_whole(model, VOL)
    out = np.zeros((3,) + VOL.shape, np.float32)
    predict_blockwise(model, VOL, out, (16, 48, 48), (8, 16, 16), batch_size=3, progress=False)
    assert np.abs(out - ref).max() < 1e-6


def test_conv3_model_close() -> None:
    # Only block-border voxels are wrong and their Gaussian weight is tiny next
    # to an overlapping block's centre: measured max 8.3e-4.
    model = Conv3Net()
    ref = predict_whole(model, VOL)
    out = np.zeros((3,) + VOL.shape, np.float32)
    predict_blockwise(model, VOL, out, (16, 48, 48), (8, 32, 32), batch_size=2, progress=False)
    assert np.abs(out - ref).max() < 2e-3


def test_unet_blockwise_matches_whole() -> None:
    # Overlap >= 2x the receptive-field radius, so every voxel is far from the
    # borders of at least one block. The remaining error comes from the blocks
    # in which it is near a zero-padded border and which still get some
    # Gaussian weight; an untrained net reacts strongly to that padding.
    # Measured (seeded): sigma 1/8 max 0.047, mean 0.0014; sigma 1/12 max 0.007.
    model = _small_unet(VOL)
    ref = predict_whole(model, VOL)
    out = np.zeros((3,) + VOL.shape, np.float32)
    predict_blockwise(model, VOL, out, (16, 48, 48), (12, 32, 32), batch_size=4, progress=False)
    diff = np.abs(out - ref)
    assert diff.max() < 0.08
    assert diff.mean() < 0.003
    predict_blockwise(
        model, VOL, out, (16, 48, 48), (12, 32, 32), batch_size=4, progress=False,
        sigma_scale=1 / 12,
    )
    assert np.abs(out - ref).max() < 0.02
    assert not model.training


def test_output_shape_dtype_and_range() -> None:
    model = _small_unet(VOL).train()  # predict must switch to eval and back
    out = np.full((3,) + VOL.shape, -1.0, np.float32)
    res = predict_blockwise(model, VOL, out, (16, 48, 48), (4, 16, 16), progress=False)
    assert res is out
    assert out.dtype == np.float32 and out.shape == (3, 24, 80, 80)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert model.training


def test_lazy_reads_and_single_writes() -> None:
    model = PointwiseNet()
    raw = RecordingArray(VOL)
    out = RecordingArray(np.zeros((3,) + VOL.shape, np.float32))
    predict_blockwise(model, raw, out, (8, 32, 32), (4, 8, 8), batch_size=2, progress=False)
    assert raw.reads and all(np.prod(s) <= 8 * 32 * 32 for s in raw.reads)
    # Each z-range is written once, in order, covering the volume exactly.
    zs = [(k[1].start, k[1].stop) for k in out.writes]
    assert zs[0][0] == 0 and zs[-1][1] == VOL.shape[0]
    assert all(a[1] == b[0] for a, b in zip(zs, zs[1:]))
    np.testing.assert_allclose(out.arr, predict_whole(model, VOL), atol=1e-6)


def test_zarr_in_and_out(tmp_path) -> None:
    model = _small_unet(VOL)
    raw = zarr.create_array(store=tmp_path / "raw.zarr", shape=VOL.shape, chunks=(8, 32, 32), dtype="uint8")
    raw[...] = VOL
    out = zarr.create_array(
        store=tmp_path / "o.zarr", shape=(3,) + VOL.shape, chunks=(3, 8, 32, 32), dtype="float32"
    )
    predict_blockwise(model, raw, out, (16, 48, 48), (8, 16, 16), batch_size=2, progress=False)
    ref = np.zeros((3,) + VOL.shape, np.float32)
    predict_blockwise(model, VOL, ref, (16, 48, 48), (8, 16, 16), batch_size=2, progress=False)
    np.testing.assert_array_equal(out[...], ref)


def test_volume_smaller_than_block() -> None:
    vol = _em_like((5, 20, 30), seed=1)
    out = np.zeros((3,) + vol.shape, np.float32)
    model = PointwiseNet(downsample_factor=(2, 16, 16))
    predict_blockwise(model, vol, out, (16, 48, 48), (8, 16, 16), progress=False)
    np.testing.assert_allclose(out, predict_whole(model, vol), atol=1e-6)

    # A real U-Net sees reflected context past the far border where the whole
    # pass sees zero padding (measured max difference there 0.96), so only the
    # corner at the origin, whose receptive field (z +4, y/x +10) stays inside
    # the real data for both, must agree (measured 6e-8).
    unet = _small_unet(VOL)
    predict_blockwise(unet, vol, out, (16, 48, 48), (8, 16, 16), progress=False)
    assert np.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    ref = predict_whole(unet, vol)
    assert np.abs(out - ref)[:, :1, :8, :8].max() < 1e-4


def test_non_divisible_shapes() -> None:
    vol = _em_like((21, 70, 75), seed=2)
    model = PointwiseNet(downsample_factor=(4, 16, 16))
    out = np.zeros((3,) + vol.shape, np.float32)
    predict_blockwise(model, vol, out, (16, 48, 48), (8, 16, 16), batch_size=2, progress=False)
    np.testing.assert_allclose(out, predict_whole(model, vol), atol=1e-6)

    # df (2, 2, 2): 21 and 75 are odd. The z axis (virtual extent 22) gets
    # blocks at 0, 2, 6, less evenly placed than for 24, hence a slightly
    # larger error than in test_unet_blockwise_matches_whole: measured max
    # 0.083, mean 0.0030.
    unet = _small_unet(VOL)
    predict_blockwise(unet, vol, out, (16, 48, 48), (12, 32, 32), batch_size=4, progress=False)
    diff = np.abs(out - predict_whole(unet, vol))
    assert diff.max() < 0.12 and diff.mean() < 0.005


def test_bf16_close_to_fp32() -> None:
    model = _small_unet(VOL)
    f32 = np.zeros((3,) + VOL.shape, np.float32)
    b16 = np.zeros_like(f32)
    predict_blockwise(model, VOL, f32, (16, 48, 48), (4, 16, 16), batch_size=2, progress=False)
    predict_blockwise(model, VOL, b16, (16, 48, 48), (4, 16, 16), batch_size=2, progress=False, bf16=True)
    assert b16.dtype == np.float32
    if cpu_has_fast_bf16():
        # bf16 keeps 8 mantissa bits; measured mean |diff| 0.0057, max 0.13.
        assert np.abs(b16 - f32).mean() < 0.02
    else:
        # no native bf16 kernels: `autocast` runs fp32 (bf16 convolutions were 40-500x slower)
        np.testing.assert_array_equal(b16, f32)
    whole = predict_whole(model, VOL, bf16=True)
    assert whole.dtype == np.float32 and whole.shape == f32.shape


def test_bad_arguments() -> None:
    model = _small_unet(VOL)
    out = np.zeros((3,) + VOL.shape, np.float32)
    with pytest.raises(ValueError, match="downsample factor"):
        predict_blockwise(model, VOL, out, (15, 48, 48), (4, 16, 16), progress=False)
    with pytest.raises(ValueError, match="overlap"):
        predict_blockwise(model, VOL, out, (16, 48, 48), (16, 16, 16), progress=False)
    with pytest.raises(ValueError, match="out must have shape"):
        predict_blockwise(model, VOL, out[:, :-1], (16, 48, 48), (4, 16, 16), progress=False)
    with pytest.raises(ValueError, match="model output"):
        predict_blockwise(model, VOL, np.zeros((2,) + VOL.shape, np.float32), (16, 48, 48), (4, 16, 16), progress=False)
