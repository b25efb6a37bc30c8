"""`tokenunify view` headless: the viewer's state, and chunks fetched over HTTP equal to the data."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request
import zlib
from urllib.parse import urlparse

import numpy as np
import pytest

from tokenunify.errors import InputError
from tokenunify.io import open_volume, write_volume

neuroglancer = pytest.importorskip("neuroglancer", reason="the view extra (neuroglancer) is not installed")

from tokenunify.view import open_viewer


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("view")
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (10, 40, 50), dtype=np.uint8)
    affs = rng.random((3, 10, 40, 50), dtype=np.float32)
    seg = rng.integers(1, 20, (10, 40, 50)).astype(np.uint64)
    write_volume(f"{folder}/v.zarr:raw", raw, (40, 8, 8), offset=(400, 80, 0))
    write_volume(f"{folder}/v.zarr:affs", affs, (40, 8, 8), offset=(400, 80, 0))
    write_volume(f"{folder}/v.zarr:seg", seg, (40, 8, 8), offset=(400, 80, 0))
    return folder, {"raw": raw, "affs": affs, "segmentation": seg}


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def _chunk(base: str, token: str, start: list[int], end: list[int]) -> np.ndarray:
    scale = ",".join("1" * len(start))
    url = f"{base}/neuroglancer/npz/{token}/{scale}/{','.join(map(str, start))}/{','.join(map(str, end))}"
    return np.load(io.BytesIO(zlib.decompress(_get(url))))


def test_state_and_chunks_over_http(store):
    folder, data = store
    viewer = open_viewer({"raw": f"{folder}/v.zarr:raw", "affs": f"{folder}/v.zarr:affs",
                          "segmentation": f"{folder}/v.zarr:seg"})
    try:
        url = viewer.get_viewer_url()
        parsed = urlparse(url)
        assert parsed.hostname == "127.0.0.1"
        base = f"{parsed.scheme}://{parsed.netloc}"
        state = json.loads(json.dumps(viewer.state.to_json()))
        names = [layer["name"] for layer in state["layers"]]
        assert names == ["raw", "affs", "segmentation"]
        kinds = {layer["name"]: layer["type"] for layer in state["layers"]}
        assert kinds == {"raw": "image", "affs": "image", "segmentation": "segmentation"}
        assert "emitRGB" in state["layers"][1]["shader"]
        assert b"<html" in _get(url).lower()  # the bundled client is served offline
        for name in names:
            # the state refers to a served volume by URL: python://<server>/<token>
            source = viewer.state.layers[name].layer.source[0].url
            token = source.rstrip("/").rsplit("/", 1)[-1]
            info = json.loads(_get(f"{base}/neuroglancer/info/{token}"))
            array = data[name]
            assert info["shape"] == list(array.shape)
            spatial = info["coordinateSpace"]
            assert spatial["z"] == [pytest.approx(40e-9), "m"] and spatial["x"] == [pytest.approx(8e-9), "m"]
            # the world offset (400, 80, 0) nm is 10, 10, 0 voxels
            assert [int(o) for o in info["voxelOffset"][-3:]] == [10, 10, 0]
            start = [0] * (array.ndim - 3) + [2, 5, 7]
            end = list(array.shape[:-3]) + [6, 30, 41]
            chunk = _chunk(base, token, start, end)
            expect = array[tuple(slice(a, b) for a, b in zip(start, end))]
            np.testing.assert_array_equal(chunk, expect)
    finally:
        neuroglancer.stop()


def test_layers_are_read_lazily(store, monkeypatch):
    folder, _ = store
    from tokenunify.io.volumes import Volume

    calls = []
    original = Volume.read

    def spy(self, *args, **kwargs):
        calls.append(self.spec)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Volume, "read", spy)
    viewer = open_viewer({"segmentation": f"{folder}/v.zarr:seg"})
    neuroglancer.stop()
    assert viewer is not None and calls == []  # nothing is read until a chunk is asked for


@pytest.mark.parametrize(
    "layers, message",
    [
        ({"affs": "raw"}, "needs 4 axes"),
        ({"segmentation": "affs"}, "needs 3 axes"),
        ({"segmentation": "float"}, "integer labels"),
        ({"raw": "raw", "gt": "other_voxel"}, "voxel size"),
        ({"raw": "raw", "gt": "small"}, "spatial shape"),
        ({}, "nothing to show"),
    ],
)
def test_bad_layers(store, layers, message):
    folder, data = store
    write_volume(f"{folder}/v.zarr:float", data["affs"][0], (40, 8, 8), overwrite=True, offset=(400, 80, 0))
    write_volume(f"{folder}/v.zarr:other_voxel", data["segmentation"], (30, 8, 8), overwrite=True,
                 offset=(400, 80, 0))
    write_volume(f"{folder}/v.zarr:small", data["segmentation"][:5], (40, 8, 8), overwrite=True, offset=(400, 80, 0))
    with pytest.raises(InputError, match=message):
        open_viewer({kind: f"{folder}/v.zarr:{name}" for kind, name in layers.items()})


def test_cli_prints_the_url_and_exits(store):
    folder, _ = store
    command = [sys.executable, "-m", "tokenunify", "view", "--raw", f"{folder}/v.zarr:raw",
               "--seg", f"{folder}/v.zarr:seg", "--timeout", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("viewer: http://127.0.0.1:")
    assert "serving raw, segmentation for 1 s" in result.stdout
    bad = subprocess.run(command[:4] + ["--affs", f"{folder}/v.zarr:raw"], capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "needs 4 axes" in bad.stderr and bad.stderr.count("\n") == 1
    assert open_volume(f"{folder}/v.zarr:raw").shape == (10, 40, 50)
