"""Initialise a network from another checkpoint's weights (fine-tuning).

:func:`load_pretrained` copies tensors by name and is strict about it:

- The **task head** (tensors whose names start with one of ``head_prefixes``)
  is only filled from a checkpoint whose head predicts the same thing: an
  affinity checkpoint (not ``kind == "pretrain"``, not
  ``model_spec["pretraining"]``) trained for exactly the offsets the new model
  is trained for. Otherwise it keeps its fresh initialisation, even where the
  shapes happen to match (a one-offset affinity head has the shape of the
  one-channel reconstruction head of a pretraining checkpoint).
- Every **other** tensor of the model must be filled: one that is missing from
  the checkpoint or has another shape there is an :class:`InputError`, unless
  ``allow_mismatch`` is set (then it keeps its fresh initialisation and the
  report lists it).

:func:`format_init_report` turns the returned report into a few lines for the
training log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tokenunify.errors import InputError
from tokenunify.io.checkpoint import load_checkpoint

_FEW = 3  # names shown in one-line messages and in the summary before "+N more"


def _few(names: Sequence[str], limit: int = _FEW) -> str:
    """``"a, b, c (+4 more)"``: the first `limit` names and how many were left out."""
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _normalise_offsets(offsets: Any) -> list[tuple[int, ...]] | None:
    """Offsets as a list of int tuples (order kept: it is the channel order); None if absent or malformed."""
    if offsets is None:
        return None
    try:
        return [tuple(int(v) for v in offset) for offset in offsets]
    except (TypeError, ValueError):
        return None


def _is_pretraining(checkpoint: Mapping[str, Any]) -> bool:
    spec = checkpoint.get("model_spec")
    return checkpoint.get("kind") == "pretrain" or bool(isinstance(spec, Mapping) and spec.get("pretraining"))


def _head_refusal(checkpoint: Mapping[str, Any], offsets: Sequence[Sequence[int]] | None) -> str | None:
    """Why the checkpoint's head must not fill this model's head, or None if it may."""
    if _is_pretraining(checkpoint):
        return "the checkpoint is a pretraining checkpoint; its head reconstructs the image, not affinities"
    target = _normalise_offsets(offsets)
    if target is None:
        return "the offsets this model is trained for were not given"
    source = _normalise_offsets(checkpoint.get("offsets"))
    if source is None:
        return "the checkpoint does not record the affinity offsets its head predicts"
    if source != target:
        return (f"the checkpoint's head predicts offsets {[list(o) for o in source]}, "
                f"this model is trained for {[list(o) for o in target]}")
    return None


def load_pretrained(
    model: torch.nn.Module,
    path: str | Path,
    allow_mismatch: bool = False,
    head_prefixes: Sequence[str] = (),
    *,
    offsets: Sequence[Sequence[int]] | None = None,
    keep_fresh: Sequence[str] = (),
) -> dict[str, Any]:
    """Fill `model` with the tensors of the checkpoint at `path` whose name and shape match.

    Args:
        model: the freshly built network; changed in place.
        path: the checkpoint (a pretraining or an affinity training checkpoint).
        allow_mismatch: keep tensors outside the head that are missing from the
            checkpoint or have another shape there at their fresh
            initialisation (listed in the report) instead of failing.
        head_prefixes: name prefixes of the task head (e.g. ``"decoder.head."``).
        offsets: the affinity offsets (``[dz, dy, dx]`` each) the model is
            trained for. The head is loaded only from an affinity checkpoint
            whose stored ``offsets`` are exactly these; None (unknown) never
            loads the head.
        keep_fresh: name prefixes of tensors that keep their fresh
            initialisation although the checkpoint holds them (``"decoder."``:
            transfer the encoder alone). They are neither missing nor an error.

    Returns:
        A JSON-serialisable report:

        - ``checkpoint``: `path` as a string;
        - ``source``: ``"pretrain"`` or ``"affinity"``;
        - ``loaded``: names copied from the checkpoint, in its order;
        - ``fresh``: sorted names of model tensors that kept their fresh
          initialisation (the head when not loaded, plus whatever
          ``allow_mismatch`` let through);
        - ``head_loaded``: sorted head tensor names copied from the checkpoint;
        - ``head_reinitialised``: sorted head tensor names that stayed fresh;
        - ``head_reason``: why the head stayed fresh (None if it loaded or the
          model has no head tensors);
        - ``missing``: sorted non-head names absent from the checkpoint (only
          non-empty with ``allow_mismatch``);
        - ``mismatched``: ``"name: checkpoint (..) vs model (..)"`` for non-head
          tensors whose shapes differ (only non-empty with ``allow_mismatch``);
        - ``unused``: sorted checkpoint names the model has no tensor for.
        - ``kept_fresh``: sorted names that `keep_fresh` left at their fresh
          initialisation.

    Raises:
        InputError: no tensor matches at all, or (without `allow_mismatch`) a
            tensor outside the head would stay freshly initialised.
    """
    checkpoint = load_checkpoint(path)
    state: Mapping[str, torch.Tensor] = checkpoint["model"]
    own = model.state_dict()
    prefixes = tuple(head_prefixes)
    refusal = _head_refusal(checkpoint, offsets)

    loaded: list[str] = []
    mismatched: list[str] = []
    head_notes: list[str] = []  # per-tensor reasons when the head was allowed but still did not fit
    skip = tuple(keep_fresh)
    kept = lambda name: bool(skip) and name.startswith(skip)
    kept_fresh = sorted(n for n in own if kept(n))
    for name, tensor in state.items():
        if name not in own or kept(name):
            continue
        is_head = bool(prefixes) and name.startswith(prefixes)
        if is_head and refusal is not None:
            continue
        if own[name].shape != tensor.shape:
            note = f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(own[name].shape)}"
            (head_notes if is_head else mismatched).append(note)
            continue
        own[name] = tensor
        loaded.append(name)

    if not loaded:
        raise InputError(path, "no tensor of this checkpoint matches the model; is it for another architecture?")
    head = {n for n in own if prefixes and n.startswith(prefixes)}  # empty prefixes: no head
    head_fresh = sorted(head - set(loaded))
    missing = sorted(n for n in own if n not in state and n not in head and not kept(n))
    if (missing or mismatched) and not allow_mismatch:
        parts = ([f"missing from the checkpoint: {_few(missing)}"] if missing else []) + (
            [f"differ in shape: {_few(mismatched)}"] if mismatched else [])
        raise InputError(path, f"{len(missing) + len(mismatched)} tensor(s) outside the task head would stay freshly "
                               f"initialised ({'; '.join(parts)}); pass --allow-mismatch to train anyway")
    model.load_state_dict(own)

    if not head_fresh:
        head_reason = None
    elif refusal is not None:
        head_reason = refusal
    else:
        absent = [n for n in head_fresh if n not in state]
        head_reason = "; ".join(head_notes + ([f"missing from the checkpoint: {', '.join(absent)}"] if absent else []))
    return {
        "checkpoint": str(path),
        "source": "pretrain" if _is_pretraining(checkpoint) else "affinity",
        "loaded": loaded,
        "fresh": sorted(set(own) - set(loaded)),
        "head_loaded": sorted(head & set(loaded)),
        "head_reinitialised": head_fresh,
        "head_reason": head_reason,
        "missing": missing,
        "mismatched": mismatched,
        "unused": sorted(set(state) - set(own)),
        "kept_fresh": kept_fresh,
    }


def format_init_report(report: Mapping[str, Any]) -> str:
    """A few lines summarising a :func:`load_pretrained` report, for the log before the first step.

    Example::

        initialised from runs/pre/checkpoints/last.pt (pretrain checkpoint): 230 tensors loaded
          head re-initialised: decoder.head.bias, decoder.head.weight (the checkpoint is a pretraining ...)
          fresh: 2 (decoder.head.bias, decoder.head.weight)
          unused checkpoint tensors: 51 (mask_token, next_head.layers.0.attn.k.bias, ... (+48 more))

    Lines for tensors let through by ``allow_mismatch`` appear only when there are some.
    """
    source = report.get("source")
    lines = [f"initialised from {report['checkpoint']}" + (f" ({source} checkpoint)" if source else "")
             + f": {len(report['loaded'])} tensors loaded"]
    head = list(report.get("head_reinitialised", []))
    if head:
        reason = report.get("head_reason")
        lines.append(f"  head re-initialised: {', '.join(head)}" + (f" ({reason})" if reason else ""))
    elif report.get("head_loaded"):
        lines.append(f"  head loaded from the checkpoint: {', '.join(report['head_loaded'])}")
    fresh = list(report["fresh"])
    lines.append(f"  fresh: {len(fresh)}" + (f" ({_few(fresh, 6)})" if fresh else ""))
    kept = list(report.get("kept_fresh", []))
    if kept:
        lines.append(f"  kept fresh by init_keep_fresh: {len(kept)} ({_few(kept)})")
    missing, mismatched = list(report.get("missing", [])), list(report.get("mismatched", []))
    if missing:
        lines.append(f"  missing from the checkpoint (allowed): {len(missing)} ({_few(missing)})")
    if mismatched:
        lines.append(f"  shape differs (allowed): {len(mismatched)} ({_few(mismatched)})")
    unused = list(report["unused"])
    lines.append(f"  unused checkpoint tensors: {len(unused)}" + (f" ({_few(unused)})" if unused else ""))
    return "\n".join(lines)
