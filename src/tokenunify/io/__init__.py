"""Volume I/O: `open_volume` and `create_volume` are the whole surface."""

from tokenunify.io.spec import VolumeSpec, parse_spec
from tokenunify.io.volumes import Volume, describe, open_volume, volume_exists
from tokenunify.io.writer import WritableVolume, check_output, create_volume, write_volume

__all__ = [
    "Volume",
    "VolumeSpec",
    "WritableVolume",
    "check_output",
    "create_volume",
    "describe",
    "open_volume",
    "parse_spec",
    "volume_exists",
    "write_volume",
]
