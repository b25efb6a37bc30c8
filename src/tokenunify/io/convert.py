"""`tokenunify convert-checkpoint`: rewrite a trusted old checkpoint so it loads weights-only.

Checkpoints written before loading became weights-only can hold numpy scalars
(the validation sweep's numpy.float64 VOI/ARAND values in their history rows),
which `torch.load(weights_only=True)` refuses. This module loads such a file
with the full unpickler, which can run code, so it must only be used on a file
the user trusts and names explicitly; it then keeps only tensors and plain data
(the same conversion as `save_checkpoint`) and writes the result atomically.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from tokenunify.errors import InputError, OutputError
from tokenunify.io.checkpoint import check_payload, load_checkpoint, one_line_error, save_checkpoint, to_checkpoint_data


def convert_checkpoint(old: str | Path, new: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Load trusted `old` with the full unpickler and write it to `new` as tensors and plain data only.

    Returns {"path": new, "conversions": {"numpy.float64 -> float": n, ...}}.
    """
    old, new = Path(old), Path(new)
    if not old.is_file():
        raise InputError(old, "no such checkpoint file")
    if new.exists() and not overwrite:
        raise OutputError(new, "already exists; pass --overwrite to replace it")
    try:
        # Deliberately not weights-only: the user vouches for this file by converting it.
        payload = torch.load(old, map_location="cpu", weights_only=False)
    except Exception as err:  # torch (and whatever the pickle builds) raise many types
        raise InputError(old, f"not a readable checkpoint ({one_line_error(err)})") from None
    check_payload(old, payload)
    conversions: Counter = Counter()
    try:
        data = to_checkpoint_data(payload, conversions=conversions)
    except TypeError as err:
        raise InputError(old, f"cannot be converted: {err}") from None
    try:
        save_checkpoint(new, data)
    except OSError as err:
        raise OutputError(new, f"cannot be written ({one_line_error(err)})") from None
    load_checkpoint(new)  # proves the new file reads weights-only
    return {"path": new, "conversions": dict(conversions)}
