"""Agglomeration of affinities into a segmentation: waterz and mutex watershed.

Affinity convention (DESIGN.md): channel i of ``affs`` (C, z, y, x) holds, at
voxel v, the affinity of the edge between v and v + offsets[i]; the nearest
neighbour offsets are (-1, 0, 0), (0, -1, 0), (0, 0, -1). Both libraries read
affinities this way:

- waterz reads ``affs[0..2]`` as the edges to the previous z, y and x voxel
  (checked in the tests: a 0 at index p of channel c cuts between p - 1 and p).
- mwatershed reads weight ``w[i]`` at v as the edge between v and v +
  offsets[i], for negative offsets too.

Gotchas this module hides:

- waterz agglomerates *in place*: it writes into the fragments it was given and
  yields that same buffer for every threshold. Fragments are copied in and each
  segmentation is copied out.
- waterz compiles any scoring function that is not shipped prebuilt (with
  witty and a C++ compiler, minutes, and only where a compiler exists). Only
  the prebuilt ones are accepted here; ``prebuilt_scoring_functions`` lists
  them. Notably the exact ``QuantileAffinity`` is *not* prebuilt; the
  histogram-based ``HistogramQuantileAffinity`` (256 bins) is, for quantiles
  10, 15, ..., 95 (see ``quantile_scoring``).
- waterz prints its progress from C++ to stdout; that cannot be switched off.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Iterator, Sequence

import fastremap
import numpy as np

from tokenunify.offsets import check_offsets

__all__ = [
    "DEFAULT_SCORING",
    "mutex_watershed",
    "prebuilt_scoring_functions",
    "quantile_scoring",
    "waterz_sweep",
]

DEFAULT_SCORING = "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>"


def _waterz_prebuilt() -> tuple[object, list[tuple[str, int]]]:
    """waterz's spelling normaliser and the variants compiled into the wheel."""
    try:
        from waterz import _codegen
        from waterz._prebuilt import agglomerate as prebuilt
    except ImportError as e:  # pragma: no cover - depends on the waterz build
        raise RuntimeError(
            "waterz has no prebuilt agglomeration module (built with "
            "WATERZ_NO_PREBUILT or an unsupported version); tokenunify needs "
            "waterz 0.10 with its prebuilt variants"
        ) from e
    specs = [(str(function), int(queue)) for function, queue in prebuilt.SPECS]
    return _codegen.normalize, specs


def prebuilt_scoring_functions(discretize_queue: int = 0) -> list[str]:
    """The waterz scoring functions usable without a compiler, for that queue.

    Spelled as waterz normalises them (no spaces); any spacing is accepted by
    ``waterz_sweep``. For waterz 0.10.1 the queues are 0 (exact priority queue)
    and 256 (bins), each with the same 38 functions.
    """
    _, specs = _waterz_prebuilt()
    return [function for function, queue in specs if queue == discretize_queue]


def quantile_scoring(quantile: int, init_with_max: bool = True) -> str:
    """The prebuilt quantile scoring function: 1 - q-th affinity quantile.

    waterz ships ``HistogramQuantileAffinity`` (256-bin histogram) for
    quantiles 10, 15, ..., 95; ``init_with_max`` seeds the histogram of an edge
    with its max affinity, as in the waterz default.
    """
    init = "true" if init_with_max else "false"
    return (
        f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {quantile}, "
        f"ScoreValue, 256, {init}>>"
    )


def _check_scoring(scoring: str, discretize_queue: int) -> None:
    normalize, specs = _waterz_prebuilt()
    if (normalize(scoring), discretize_queue) in specs:
        return
    supported = prebuilt_scoring_functions(discretize_queue)
    if not supported:
        queues = sorted({queue for _, queue in specs})
        raise ValueError(
            f"discretize_queue={discretize_queue} has no prebuilt waterz variant; "
            f"use one of {queues}"
        )
    shown = [f for f in supported if "HistogramQuantile" not in f]
    hint = ""
    exact = re.search(r"\bQuantileAffinity<\s*RegionGraphType\s*,\s*(\d+)", scoring)
    if exact and "HistogramQuantileAffinity" not in scoring:
        hint = (
            f" (the exact QuantileAffinity is not prebuilt; its 256-bin histogram "
            f"version is: {quantile_scoring(int(exact.group(1)))!r})"
        )
    raise ValueError(
        f"scoring function {scoring!r} is not prebuilt in waterz and would need a "
        f"C++ compiler; use one of {shown} or a histogram quantile "
        f"'OneMinus<HistogramQuantileAffinity<RegionGraphType, Q, ScoreValue, 256"
        f"[, true|false]>>' with Q in 10, 15, ..., 95 (see quantile_scoring){hint}"
    )


def _check_affinities(affs: np.ndarray, min_channels: int = 1) -> np.ndarray:
    if not isinstance(affs, np.ndarray):
        raise ValueError(f"affs must be a numpy array, not {type(affs).__name__}")
    if affs.dtype != np.float32:
        raise ValueError(f"affs must be float32, not {affs.dtype}; use affs.astype(np.float32)")
    if affs.ndim != 4 or affs.shape[0] < min_channels:
        raise ValueError(
            f"affs must have the shape (channels, z, y, x) with at least "
            f"{min_channels} channel(s), not {affs.shape}"
        )
    if not np.isfinite(affs).all():
        raise ValueError("affs must not contain NaN or infinite values")
    return affs


def waterz_sweep(
    affs: np.ndarray,
    fragments: np.ndarray,
    thresholds: Sequence[float],
    scoring: str = DEFAULT_SCORING,
    discretize_queue: int = 0,
) -> Iterator[tuple[float, np.ndarray]]:
    """Agglomerate ``fragments`` with waterz, one segmentation per threshold.

    Args:
        affs: float32 (C >= 3, z, y, x); channels 0..2 are the edges to the
            previous z, y, x voxel, further (long-range) channels are ignored.
            A non-contiguous array is copied.
        fragments: uint64 (z, y, x) over-segmentation, e.g. from
            ``watershed_fragments``; 0 is background and never merged. It is
            not modified.
        thresholds: merge scores to stop at; yielded in increasing order.
        scoring: a waterz scoring function compiled into the wheel (see
            ``prebuilt_scoring_functions``); others raise, not compile.
        discretize_queue: 0 (exact) or 256 (binned queue).

    Yields:
        ``(threshold, segmentation)`` with a fresh uint64 array each time.

    Raises:
        ValueError: for bad dtypes or shapes, empty or non-finite thresholds,
            or a scoring function / queue that waterz would have to compile.
    """
    _check_scoring(scoring, discretize_queue)
    affs = _check_affinities(affs, min_channels=3)
    fragments = np.asarray(fragments)
    if fragments.shape != affs.shape[1:]:
        raise ValueError(
            f"fragments must have the shape of affs without the channels, "
            f"{affs.shape[1:]}, not {fragments.shape}"
        )
    if fragments.dtype != np.uint64:
        if not np.issubdtype(fragments.dtype, np.integer) or (fragments < 0).any():
            raise ValueError(f"fragments must be non-negative integer ids, not {fragments.dtype}")
    ordered = sorted(float(t) for t in thresholds)
    if not ordered:
        raise ValueError("thresholds must not be empty")
    if not np.isfinite(ordered).all():
        raise ValueError(f"thresholds must be finite, not {ordered}")
    if os.environ.get("WATERZ_NO_PREBUILT", "").strip().lower() not in ("", "0", "false", "no", "off"):
        raise ValueError("WATERZ_NO_PREBUILT is set: waterz would compile; unset it")

    import waterz

    nearest = np.ascontiguousarray(affs[:3])
    # waterz writes the merges into this buffer: never hand it the caller's
    buffer = np.array(fragments, dtype=np.uint64, order="C", copy=True)
    return _yield_copies(
        waterz.agglomerate(
            nearest,
            ordered,
            fragments=buffer,
            scoring_function=scoring,
            discretize_queue=discretize_queue,
        ),
        ordered,
    )


def _yield_copies(
    segmentations: Iterator[np.ndarray], thresholds: list[float]
) -> Iterator[tuple[float, np.ndarray]]:
    # a separate generator, so the checks above run at the call, not at the
    # first next()
    for threshold in thresholds:
        with _stdout_silenced():
            segmentation = next(segmentations)
        yield threshold, np.array(segmentation, dtype=np.uint64, copy=True)


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """waterz's C++ core prints progress lines to fd 1; keep them off the user's terminal.

    Set TOKENUNIFY_WATERZ_VERBOSE=1 to see them.
    """
    if os.environ.get("TOKENUNIFY_WATERZ_VERBOSE"):
        yield
        return
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real fd 1 (e.g. captured in tests)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def mutex_watershed(
    affs: np.ndarray,
    offsets: Sequence[Sequence[int]],
    bias: float = -0.5,
    strides: Sequence[Sequence[int]] | None = None,
    randomized_strides: bool = False,
    long_range_bias: float | None = None,
) -> np.ndarray:
    """Mutex watershed segmentation of affinities with mwatershed.

    mwatershed wants signed weights: positive = attractive (merge), negative =
    repulsive (mutex), processed in decreasing magnitude. The mapping is

    - nearest-neighbour channels (offset with one step on one axis):
      ``w = aff + bias``, attractive where ``aff > -bias``;
    - long-range channels: ``w = min(aff + long_range_bias, 0)``, i.e. they
      only ever repel (the mutex watershed of Wolf et al.), so a segment stays
      connected through nearest-neighbour edges. ``long_range_bias`` defaults
      to ``bias``.

    The bias is *added*, as in lsd / volara (``adjacent_edge_bias``,
    ``lr_edge_bias``), so it is negative in practice: -0.5 cuts at 0.5.

    Args:
        affs: float32 (C, z, y, x), channel i for ``offsets[i]``.
        offsets: one (z, y, x) offset per channel, e.g. the default
            ``[(-1, 0, 0), (0, -1, 0), (0, 0, -1)]`` plus long-range ones.
        bias: added to the affinities (see above); lower splits more.
        strides: per-channel (z, y, x) strides, passed to mwatershed: only every
            stride-th long-range edge is used, which avoids over-splitting.
        randomized_strides: use each edge with probability 1/prod(stride)
            instead of on a grid (not seedable: the result varies run to run).
        long_range_bias: bias of the long-range channels; default ``bias``.

    Returns:
        uint64 (z, y, x) segment ids 1..n, contiguous.
    """
    affs = _check_affinities(affs)
    checked = [list(o) for o in check_offsets(offsets, 3, affs.shape[0])]
    if strides is not None:
        strides = [[int(s) for s in stride] for stride in strides]
        if len(strides) != len(checked) or any(len(s) != 3 or min(s) < 1 for s in strides):
            raise ValueError(
                f"strides must be one (z, y, x) triple of positive integers per "
                f"offset ({len(checked)}), got {strides}"
            )
    if long_range_bias is None:
        long_range_bias = bias

    import mwatershed

    # mwatershed only takes float64
    weights = affs.astype(np.float64)
    for channel, offset in enumerate(checked):
        if sum(abs(o) for o in offset) == 1:
            weights[channel] += bias
        else:
            weights[channel] += long_range_bias
            np.minimum(weights[channel], 0.0, out=weights[channel])

    segmentation = mwatershed.agglom(
        weights, checked, strides=strides, randomized_strides=randomized_strides
    )
    segmentation, _ = fastremap.renumber(np.asarray(segmentation), preserve_zero=True)
    return segmentation.astype(np.uint64, copy=False)
