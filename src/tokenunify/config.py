"""YAML configs with `key=value` overrides, checked into typed dataclasses.

A config is a nested mapping. The command line may override any leaf with
`section.key=value`, the value parsed as YAML (so `train.steps=500`,
`model.width=[8,16,32]`, `train.bf16=false` all work). Unknown keys are an
error that names the key, so a typo never silently falls back to a default.
`${TOKENUNIFY_DATA}` in a string expands to that environment variable, or to
`../shared/data` where it is unset. A config may start from another one with
`extends: other.yaml` (relative to its own folder): its sections are merged
over the other's, mappings key by key, anything else (lists included)
replaced whole.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tokenunify.errors import ConfigError

T = TypeVar("T")
DATA_ENV = "TOKENUNIFY_DATA"
DEFAULT_DATA_DIR = "../shared/data"


def data_dir() -> Path:
    """The folder of real EM volumes: `$TOKENUNIFY_DATA` or `../shared/data`."""
    return Path(os.environ.get(DATA_ENV, DEFAULT_DATA_DIR))


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping, resolving `extends:`; a missing file, a non-mapping or a cycle is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    base_name = loaded.pop("extends", None)
    if base_name is None:
        return loaded
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(f"{path}: `extends` must name one config file, got {base_name!r}")
    base_path = path.parent / base_name
    if base_path.resolve() in {p.resolve() for p in (*_seen, path)}:
        raise ConfigError(f"{path}: `extends: {base_name}` makes a cycle of configs")
    if not base_path.is_file():
        raise ConfigError(f"{path}: `extends: {base_name}` names no config file ({base_path} does not exist)")
    return merge(load_yaml(base_path, (*_seen, path)), loaded)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base`: nested mappings merged key by key, any other value (a list too) replaced."""
    result = _deep_copy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = _deep_copy(value)
    return result


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `config` with each `a.b.c=value` applied."""
    result = _deep_copy(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw_value = item.split("=", 1)
        try:
            value = yaml.safe_load(raw_value)
        except yaml.YAMLError:
            value = raw_value
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def expand(value: str) -> str:
    """Expand `${TOKENUNIFY_DATA}` (with its default) and other environment variables."""
    value = value.replace("${" + DATA_ENV + "}", str(data_dir()))
    return os.path.expandvars(value)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build dataclass `cls` from a mapping, checking keys and converting values."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        items = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = hint(float(value)) if hint is float else int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        return number
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return expand(str(value))
    return value


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain YAML/JSON-friendly data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
