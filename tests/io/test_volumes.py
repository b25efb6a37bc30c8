"""Reading and writing volumes in every format through one API."""

from __future__ import annotations

import numpy as np
import pytest

from tokenunify.errors import InputError, OutputError
from tokenunify.io import create_volume, open_volume, parse_spec, volume_exists, write_volume

FORMATS = ["vol.h5:raw", "vol.zarr:raw", "vol.zarr:group/raw", "vol.tif"]


@pytest.fixture
def data() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(6, 20, 30), dtype=np.uint8)


def test_parse_spec_forms():
    assert parse_spec("a/b.h5:raw").dataset == "raw"
    assert parse_spec("out.zarr:volumes/affs").dataset == "volumes/affs"
    assert parse_spec("stack.tiff").dataset is None
    assert parse_spec("dir:with:colons/x.zarr:seg").path.name == "x.zarr"
    with pytest.raises(InputError, match="names no dataset"):
        parse_spec("a.h5")
    with pytest.raises(InputError, match="not a volume name"):
        parse_spec("a.txt:raw")
    with pytest.raises(InputError, match="leave out"):
        parse_spec("a.tif:raw")


@pytest.mark.parametrize("name", FORMATS)
def test_round_trip_with_voxel_size(tmp_path, data, name):
    spec = f"{tmp_path / name}"
    write_volume(spec, data, (40, 4, 4))
    with open_volume(spec) as vol:
        assert vol.shape == data.shape and vol.dtype == np.uint8
        assert vol.voxel_size == (40.0, 4.0, 4.0) and vol.voxel_size_known
        np.testing.assert_array_equal(vol.read(), data)
        np.testing.assert_array_equal(vol[2:4, 5:9, ::2], data[2:4, 5:9, ::2])


@pytest.mark.parametrize("name", FORMATS)
def test_existing_output_is_never_clobbered(tmp_path, data, name):
    spec = f"{tmp_path / name}"
    write_volume(spec, data, (1, 1, 1))
    with pytest.raises(OutputError, match="already exists"):
        write_volume(spec, data * 0, (1, 1, 1))
    # A failed overwrite leaves the old data in place.
    with pytest.raises(RuntimeError):
        with create_volume(spec, data.shape, data.dtype, (1, 1, 1), overwrite=True) as out:
            out[0] = 0
            raise RuntimeError("crash mid-write")
    with open_volume(spec) as vol:
        np.testing.assert_array_equal(vol.read(), data)
    write_volume(spec, data[:2], (2, 2, 2), overwrite=True)
    with open_volume(spec) as vol:
        assert vol.shape == (2, 20, 30)


@pytest.mark.parametrize("name", FORMATS)
def test_failed_new_output_leaves_nothing(tmp_path, data, name):
    spec = f"{tmp_path / name}"
    with pytest.raises(RuntimeError):
        with create_volume(spec, data.shape, data.dtype, (1, 1, 1)) as out:
            out[0] = 1
            raise RuntimeError("crash")
    assert not volume_exists(spec)
    assert list(tmp_path.iterdir()) == []


def test_second_dataset_in_existing_container(tmp_path, data):
    write_volume(f"{tmp_path}/c.h5:raw", data, (1, 1, 1))
    with pytest.raises(RuntimeError):
        with create_volume(f"{tmp_path}/c.h5:labels", data.shape, np.uint64, (1, 1, 1)):
            raise RuntimeError("crash")
    import h5py

    with h5py.File(tmp_path / "c.h5", "r") as handle:
        assert list(handle) == ["raw"]


def test_missing_file_and_dataset(tmp_path, data):
    with pytest.raises(InputError, match="no such file"):
        open_volume(f"{tmp_path}/none.h5:raw")
    write_volume(f"{tmp_path}/c.h5:raw", data, (1, 1, 1))
    with pytest.raises(InputError, match="no dataset 'labels'.*raw"):
        open_volume(f"{tmp_path}/c.h5:labels")
    write_volume(f"{tmp_path}/c.zarr:raw", data, (1, 1, 1))
    with pytest.raises(InputError, match="no array 'labels'"):
        open_volume(f"{tmp_path}/c.zarr:labels")


def test_lazy_crop_reads_only_touched_chunks(tmp_path):
    """A crop must read only its chunks: removing a far chunk file does not affect it."""
    big = np.random.default_rng(1).integers(1, 255, size=(32, 32, 32), dtype=np.uint8)
    write_volume(f"{tmp_path}/big.zarr:raw", big, (1, 1, 1), chunks=(16, 16, 16))
    far_chunk = tmp_path / "big.zarr" / "raw" / "c" / "1" / "1" / "1"
    assert far_chunk.exists()
    vol = open_volume(f"{tmp_path}/big.zarr:raw")
    far_chunk.unlink()
    np.testing.assert_array_equal(vol[0:16, 0:16, 0:16], big[0:16, 0:16, 0:16])
    assert not np.array_equal(vol[16:, 16:, 16:], big[16:, 16:, 16:])


def test_real_data_attributes(real_data):
    with open_volume(f"{real_data}/fib_medulla_labeled_z0-160.h5:labels") as vol:
        assert vol.shape == (160, 250, 250)
        assert vol.voxel_size == (10.0, 10.0, 10.0)
        assert vol[0:2, 0:3, 0:4].shape == (2, 3, 4)


def test_region_of_interest(tmp_path, data):
    write_volume(f"{tmp_path}/r.h5:raw", data, (40, 4, 4))
    vol = open_volume(f"{tmp_path}/r.h5:raw[2:5,:,10:-5]")
    assert vol.shape == (3, 20, 15) and vol.voxel_size == (40.0, 4.0, 4.0)
    np.testing.assert_array_equal(vol.read(), data[2:5, :, 10:-5])
    np.testing.assert_array_equal(vol[1, 3:7, ::2], data[3, 3:7, 10:-5:2])
    np.testing.assert_array_equal(vol[-1], data[4, :, 10:-5])
    affs = np.stack([data, data + 1])
    write_volume(f"{tmp_path}/r.zarr:affs", affs, (40, 4, 4))
    np.testing.assert_array_equal(open_volume(f"{tmp_path}/r.zarr:affs[1:3]").read(), affs[:, 1:3])
    with pytest.raises(InputError, match="empty or outside"):
        open_volume(f"{tmp_path}/r.h5:raw[7:9]")
    with pytest.raises(OutputError, match="region cannot be written"):
        write_volume(f"{tmp_path}/r.h5:other[0:2]", data, (1, 1, 1))
    assert str(parse_spec("a.h5:raw[120:160]")) == "a.h5:raw[120:160]"


@pytest.mark.parametrize("suffix", ["h5", "zarr", "tif"])
def test_region_offsets_land_in_world_coordinates(tmp_path, suffix):
    from tokenunify.io import open_volume, write_volume

    data = np.arange(6 * 8 * 10, dtype=np.uint8).reshape(6, 8, 10)
    name = f"v.{suffix}" + ("" if suffix == "tif" else ":raw")
    spec = str(tmp_path / name)
    write_volume(spec, data, (8.0, 4.0, 4.0), offset=(80.0, 0.0, 40.0))
    whole = open_volume(spec)
    assert whole.offset == (80.0, 0.0, 40.0)
    region = open_volume(spec + "[2:5,1:,3:7]")
    # the region's first voxel sits 2, 1, 3 voxels further into the world
    assert region.offset == (80.0 + 2 * 8, 0.0 + 1 * 4, 40.0 + 3 * 4)
    np.testing.assert_array_equal(region.read(), data[2:5, 1:, 3:7])


def test_volume_without_offset_sits_at_the_origin(tmp_path):
    import h5py

    from tokenunify.io import open_volume

    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["raw"] = np.zeros((2, 3, 4), np.uint8)
    assert open_volume(str(tmp_path / "a.h5") + ":raw").offset == (0.0, 0.0, 0.0)
    assert open_volume(str(tmp_path / "a.h5") + ":raw[1:2]").offset == (1.0, 0.0, 0.0)
