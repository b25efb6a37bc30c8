"""Checkpoints written atomically and read without running code.

A checkpoint is one `torch.save` dict holding the model spec (to rebuild the
network), its weights, the optimiser state, the step, the config it was
trained with, RNG states and the loss history, so `--resume` continues exactly
and `predict` needs nothing but the file.

Loading a pickle can run arbitrary code, and checkpoints are shared between
people, so `load_checkpoint` reads with `torch.load(weights_only=True)`: only
tensors and plain data (dicts, lists, tuples, numbers, strings, bools, None)
are accepted, anything else is refused before it is built. `save_checkpoint`
converts a payload to exactly that data first (numpy scalars to Python
numbers, numpy arrays to tensors, paths to strings) and refuses anything else,
so it never writes a file that `load_checkpoint` would reject. Older files that
hold numpy scalars can be converted, by someone who trusts them, with
`tokenunify convert-checkpoint` (`tokenunify.io.convert`).
"""

from __future__ import annotations

import os
import pickle
import re
from collections import Counter, OrderedDict
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from tokenunify.errors import InputError
from tokenunify.io.atomic import atomic_path

FORMAT_VERSION = 1

_PLAIN = (type(None), bool, int, float, str)
_TENSORS = (torch.Tensor, torch.nn.Parameter)
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _type_name(obj: Any) -> str:
    kind = type(obj)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _child(where: str, key: Any) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{where}.{key}" if where else key
    return f"{where}[{key!r}]"


def _refuse(where: str, obj: Any, why: str = "") -> TypeError:
    return TypeError(f"{where or 'checkpoint'}: {_type_name(obj)} cannot be stored in a checkpoint{why} "
                     "(only tensors, numbers, strings, bools, None and dicts/lists/tuples of them)")


def _key(key: Any, where: str, conversions: Counter | None) -> Any:
    if isinstance(key, np.generic):
        return _key(_numpy_scalar(key, where, conversions), where, conversions)
    if type(key) in _PLAIN:
        return key
    if type(key) is tuple:
        return tuple(_key(k, where, conversions) for k in key)
    raise _refuse(f"{where} (a key)", key)


def _numpy_scalar(obj: np.generic, where: str, conversions: Counter | None) -> Any:
    value = obj.item()
    if type(value) not in _PLAIN:  # e.g. float128 stays numpy, datetime64 becomes datetime
        raise _refuse(where, obj)
    if conversions is not None:
        conversions[f"{_type_name(obj)} -> {type(value).__name__}"] += 1
    return value


def to_checkpoint_data(obj: Any, where: str = "", conversions: Counter | None = None) -> Any:
    """`obj` as only tensors, dicts/lists/tuples, numbers, strings, bools and None.

    Numpy scalars become Python numbers, numpy arrays become tensors, paths
    become strings; containers are rebuilt as plain ones (an OrderedDict, as a
    module's `state_dict()` is, stays one, with its `_metadata`). Anything
    else raises TypeError naming where it is (e.g. ``history[3].voi``).
    `conversions`, if given, counts what was changed ("numpy.float64 -> float").
    """
    if type(obj) in _PLAIN:
        return obj
    if isinstance(obj, np.generic):  # before float: numpy.float64 is a float subclass
        return _numpy_scalar(obj, where, conversions)
    if type(obj) in _TENSORS:
        return obj
    if isinstance(obj, dict):
        out: dict[Any, Any] = OrderedDict() if type(obj) is OrderedDict else {}
        for key, value in obj.items():
            out[_key(key, _child(where, key), conversions)] = to_checkpoint_data(value, _child(where, key), conversions)
        metadata = getattr(obj, "_metadata", None)
        if isinstance(out, OrderedDict) and metadata is not None:
            out._metadata = to_checkpoint_data(metadata, _child(where, "_metadata"), conversions)  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        items = [to_checkpoint_data(v, f"{where}[{i}]", conversions) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, np.ndarray):
        try:
            tensor = torch.tensor(obj)
        except (TypeError, RuntimeError, ValueError):
            raise _refuse(where, obj, f" (dtype {obj.dtype} has no tensor equivalent)") from None
        if conversions is not None:
            conversions["numpy.ndarray -> tensor"] += 1
        return tensor
    if isinstance(obj, PurePath):
        if conversions is not None:
            conversions[f"{_type_name(obj)} -> str"] += 1
        return str(obj)
    raise _refuse(where, obj)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` via a temporary file and an atomic rename.

    The payload is first converted by `to_checkpoint_data`, so a TypeError
    (naming the offending entry) is raised, and nothing written, for anything
    that `load_checkpoint` could not read back.
    """
    path = Path(path)
    data = to_checkpoint_data({"format_version": FORMAT_VERSION, **payload})
    with atomic_path(path) as staging:
        torch.save(data, staging)
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
    return path


def one_line_error(err: BaseException) -> str:
    """`Type: first line of the message`, at most about 200 characters, for a one-line error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def refused_message(err: BaseException, path: str | Path) -> str | None:
    """The one-line explanation for a file the weights-only unpickler refused, else None."""
    text = str(err)
    if not isinstance(err, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    convert = f"`tokenunify convert-checkpoint {path} NEW.pt`"
    found = _UNSUPPORTED_GLOBAL.search(text)
    if found:
        return (f"contains a pickled object other than tensors and plain data ({found.group(1)}); it was not "
                f"loaded, because loading it could run code. If you trust this file, convert it with {convert} "
                "and use NEW.pt")
    # Not a forbidden global but an opcode the safe unpickler does not take: garbage, or an unusual pickle.
    detail = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
    detail = " ".join(detail.split())[:120] if "WeightsUnpickler error:" in text else "refused"
    return (f"not a readable checkpoint (the weights-only unpickler stopped: {detail}); it was not loaded in "
            f"full, because that could run code. If it is a checkpoint you trust, {convert} converts it")


def check_payload(path: Path, payload: Any) -> dict[str, Any]:
    """Refuse anything that is not a tokenunify checkpoint dict."""
    if not isinstance(payload, dict) or "model_spec" not in payload or "model" not in payload:
        raise InputError(path, "not a tokenunify checkpoint (no model_spec/model entries)")
    return payload


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint weights-only; a missing, foreign or code-carrying file is an InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        refused = refused_message(err, path)
        raise InputError(path, refused or f"not a readable checkpoint ({one_line_error(err)})") from None
    return check_payload(path, payload)
