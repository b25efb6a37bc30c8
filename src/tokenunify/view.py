"""`tokenunify view`: raw, affinities, fragments, segmentation and ground truth in a local neuroglancer viewer.

The viewer is neuroglancer's own Python server (the optional `tokenunify[view]`
extra). Every layer is read lazily: the browser asks for one chunk at a time
and only that region is read from the zarr, HDF5 or TIFF file, so volumes
larger than memory can be browsed. The server binds to 127.0.0.1 unless told
otherwise, so nothing is exposed beyond the machine (use an SSH tunnel).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenunify.errors import InputError
from tokenunify.io import Volume, open_volume

if TYPE_CHECKING:
    import neuroglancer

LAYER_KINDS = ("raw", "affs", "fragments", "segmentation", "gt")
SEGMENTATION_KINDS = frozenset({"fragments", "segmentation", "gt"})
# the command-line option that names each kind, for error messages
OPTION = {"raw": "--raw", "affs": "--affs", "fragments": "--fragments", "segmentation": "--seg", "gt": "--gt"}
# neuroglancer's image layers take these types; others are converted chunk by chunk
_IMAGE_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"})
# A mesh is built from the whole label volume in memory, so only small volumes offer one.
_MESH_MAX_BYTES = 256 * 1024**2


def _import_neuroglancer() -> Any:
    try:
        import neuroglancer
    except ImportError:
        raise InputError("tokenunify view", "needs the neuroglancer package: pip install 'tokenunify[view]'") from None
    return neuroglancer


class _Source:
    """A volume as LocalVolume reads it: per-request slices, cast to the type neuroglancer shows."""

    def __init__(self, volume: Volume, dtype: np.dtype) -> None:
        self.volume = volume
        self.dtype = np.dtype(dtype)
        self.shape = volume.shape

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.volume[key]).astype(self.dtype, copy=False)

    def transpose(self) -> np.ndarray:
        # only neuroglancer's mesh generator calls this, and only under _MESH_MAX_BYTES
        return self[(slice(None),) * len(self.shape)].transpose()


@lru_cache(maxsize=1)
def _lazy_volume_class() -> type:
    ng = _import_neuroglancer()
    from neuroglancer.local_volume import MeshesNotSupportedForVolume

    class LazyVolume(ng.LocalVolume):  # type: ignore[misc, name-defined]
        """LocalVolume that refuses meshes for volumes too large to hold in memory."""

        def get_object_mesh(self, object_id: int) -> bytes:
            # refuse before neuroglancer's generator starts: a failure inside it
            # leaves a pending flag that blocks every later mesh request forever
            if self.data.nbytes > _MESH_MAX_BYTES:
                raise MeshesNotSupportedForVolume()
            return super().get_object_mesh(object_id)

    return LazyVolume


def _display_dtype(kind: str, volume: Volume) -> np.dtype:
    """The dtype neuroglancer gets for a layer; raises InputError for a shape or type it cannot show."""
    want_ndim = 4 if kind == "affs" else 3
    if volume.ndim != want_ndim:
        what = "--affs needs 4 axes (C,z,y,x)" if kind == "affs" else f"{OPTION[kind]} needs 3 axes (z,y,x)"
        raise InputError(str(volume.spec), f"{what}; this volume has shape {volume.shape}")
    dtype = volume.dtype
    if kind in SEGMENTATION_KINDS:
        if dtype.kind not in "biu":
            raise InputError(str(volume.spec), f"{OPTION[kind]} needs integer labels; this volume is {dtype}")
        # neuroglancer's segmentation layers read 32- or 64-bit ids
        return np.dtype(np.uint32 if dtype.itemsize <= 4 else np.uint64)
    if dtype.kind not in "biuf":
        raise InputError(str(volume.spec), f"{OPTION[kind]} needs numbers; this volume is {dtype}")
    if dtype.name in _IMAGE_DTYPES:
        return dtype
    return np.dtype(np.uint8 if dtype.kind == "b" else np.float32)


def _voxel_sizes(volumes: Mapping[str, Volume]) -> dict[str, tuple[float, ...]]:
    """One voxel size for all layers; raises InputError where the layers disagree.

    A layer whose file stores no voxel size takes the others' (a bare label
    file beside a calibrated raw). Shapes must match too, unless the layers'
    offsets place them apart (a segmentation of a region of the raw).
    """
    known = [(k, v) for k, v in volumes.items() if getattr(v, "voxel_size_known", True)]
    ref_kind, ref = known[0] if known else next(iter(volumes.items()))
    first_kind, first = next(iter(volumes.items()))
    for vol in volumes.values():
        if getattr(vol, "voxel_size_known", True) and tuple(vol.voxel_size) != tuple(ref.voxel_size):
            raise InputError(str(vol.spec), f"voxel size {vol.voxel_size} nm differs from {OPTION[ref_kind]} "
                             f"{ref.spec} ({ref.voxel_size} nm)")
        same_place = tuple(getattr(vol, "offset", (0.0,) * 3)) == tuple(getattr(first, "offset", (0.0,) * 3))
        if same_place and vol.shape[-3:] != first.shape[-3:]:
            raise InputError(str(vol.spec), f"spatial shape {vol.shape[-3:]} differs from {OPTION[first_kind]} "
                             f"{first.spec} {first.shape[-3:]}")
    return {kind: tuple(ref.voxel_size) for kind in volumes}


def _affinity_shader(channels: int) -> str:
    """RGB from the first three affinity channels (missing ones are black)."""
    parts = [f"toNormalized(getDataValue({c}))" if c < channels else "0.0" for c in range(3)]
    return "void main() {\n  emitRGB(vec3(" + ", ".join(parts) + "));\n}\n"


def _local_volume(kind: str, volume: Volume, voxel_size_nm: tuple[float, ...]) -> Any:
    """A lazily served neuroglancer data source for one layer, placed at the volume's world offset."""
    ng = _import_neuroglancer()
    voxel_size = [float(v) for v in voxel_size_nm]
    offset_nm = getattr(volume, "offset", (0.0, 0.0, 0.0))
    voxel_offset = [round(o / v) for o, v in zip(offset_nm, voxel_size)]
    names, units, scales = ["z", "y", "x"], ["nm"] * 3, voxel_size
    if kind == "affs":
        # `c^` makes the channel axis a local one, so the shader can read all channels at once
        names, units, scales, voxel_offset = ["c^", *names], ["", *units], [1.0, *scales], [0, *voxel_offset]
    return _lazy_volume_class()(
        _Source(volume, _display_dtype(kind, volume)),
        dimensions=ng.CoordinateSpace(names=names, units=units, scales=scales),
        voxel_offset=voxel_offset,
        volume_type="segmentation" if kind in SEGMENTATION_KINDS else "image",
    )


def _start_server(ng: Any, bind: str, port: int) -> None:
    from neuroglancer import server

    current = server.global_server_args
    if server.is_server_running() and (current["bind_address"] != bind or (port and current["bind_port"] != port)):
        # the bind address only applies to a new server; this ends earlier viewers of this process
        ng.stop()
    ng.set_server_bind_address(bind, bind_port=port)


def open_viewer(layers: Mapping[str, str | Volume], bind: str = "127.0.0.1", port: int = 0) -> neuroglancer.Viewer:
    """Start a neuroglancer viewer showing `layers` and return it (the server runs in a background thread).

    `layers` maps a kind (raw, affs, fragments, segmentation, gt; any subset, at
    least one) to a volume spec such as ``"data.h5:raw"`` or an open `Volume`.
    The server listens on `bind`:`port` (0 picks a free port); get the address
    with ``viewer.get_viewer_url()``. Raises InputError for an unknown kind, a
    volume that cannot be shown (wrong axes, float labels), layers that
    disagree in voxel size or shape, a port that cannot be bound, or a missing
    neuroglancer package.
    """
    unknown = sorted(set(layers) - set(LAYER_KINDS))
    if unknown:
        raise InputError("tokenunify view", f"unknown layer kind(s) {', '.join(unknown)}; use {', '.join(LAYER_KINDS)}")
    if not layers:
        raise InputError("tokenunify view", "nothing to show; give at least one of --raw, --affs, --fragments, --seg, --gt")
    ng = _import_neuroglancer()
    ordered = {kind: layers[kind] for kind in LAYER_KINDS if kind in layers}
    volumes = {kind: spec if isinstance(spec, Volume) else open_volume(spec) for kind, spec in ordered.items()}
    voxel_sizes = _voxel_sizes(volumes)
    sources = {kind: _local_volume(kind, vol, voxel_sizes[kind]) for kind, vol in volumes.items()}
    _start_server(ng, bind, port)
    try:
        viewer = ng.Viewer()
    except OSError as err:
        raise InputError(f"{bind}:{port}", f"cannot listen for the viewer ({err.strerror or err})") from None
    with viewer.txn() as state:
        for kind, source in sources.items():
            if kind in SEGMENTATION_KINDS:
                state.layers[kind] = ng.SegmentationLayer(source=source)
            elif kind == "affs":
                state.layers[kind] = ng.ImageLayer(source=source, shader=_affinity_shader(volumes[kind].shape[0]))
            else:
                state.layers[kind] = ng.ImageLayer(source=source)
    return viewer


def serve(
    layers: Mapping[str, str | Volume], bind: str = "127.0.0.1", port: int = 0, timeout: float | None = None,
    echo: Callable[[str], object] = print,
) -> str:
    """Open the viewer, print ``viewer: URL`` with `echo`, and block until Ctrl-C or `timeout` seconds.

    Returns the URL. The server is stopped on the way out, so the URL stops working.
    """
    ng = _import_neuroglancer()
    viewer = open_viewer(layers, bind=bind, port=port)
    url = viewer.get_viewer_url()
    echo(f"viewer: {url}")
    names = ", ".join(layer.name for layer in viewer.state.layers)
    echo(f"serving {names} " + (f"for {timeout:g} s" if timeout is not None else "until Ctrl-C"))
    try:
        if timeout is None:
            while True:
                time.sleep(3600)
        time.sleep(max(0.0, timeout))
    except KeyboardInterrupt:
        pass
    finally:
        ng.stop()
    return url
