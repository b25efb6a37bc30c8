"""Pick the best threshold of an agglomeration sweep and print it as Markdown.

A sweep yields one metric dict per threshold (the keys of
``evaluate_segmentation`` plus ``threshold``). The best row is the one with the
lowest total VOI, ties broken by the lower ARAND and then the lower threshold,
so the choice does not depend on the order in which the rows arrive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["best_row", "format_markdown_table", "sweep_table"]

# metric columns in the order a reader expects them; other keys follow
_PREFERRED = (
    "threshold",
    "voi_split",
    "voi_merge",
    "voi",
    "arand",
    "cremi_score",
    "n_seg_ids",
    "n_gt_ids",
    "n_voxels",
)
_REQUIRED = ("threshold", "voi", "arand")


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    if len(rows) == 0:
        raise ValueError("a sweep table needs at least one row")
    for i, row in enumerate(rows):
        missing = [key for key in _REQUIRED if key not in row]
        if missing:
            raise ValueError(f"row {i} lacks the key(s) {missing}; it has {sorted(row)}")


def row_rank(row: Mapping[str, Any]) -> tuple[float, float, float]:
    """Sort key of a sweep row: lower is better (voi, then arand, then threshold; NaN last)."""
    # a NaN (e.g. from a failed evaluation) must never win
    def finite(value: Any) -> float:
        value = float(value)
        return math.inf if math.isnan(value) else value

    return finite(row["voi"]), finite(row["arand"]), finite(row["threshold"])


def best_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The row with the lowest ``voi``; ties by ``arand``, then ``threshold``.

    Raises:
        ValueError: for no rows, or a row without ``threshold``/``voi``/``arand``.
    """
    _check_rows(rows)
    return dict(min(rows, key=row_rank))


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    # per-slab scores of a cross-fitted sweep are nested lists: no table column
    present = {k for row in rows for k, v in row.items() if not isinstance(v, (list, dict))}
    columns = [key for key in _PREFERRED if key in present]
    seen = set(columns)
    for row in rows:
        for key in row:
            if key in present and key not in seen:
                columns.append(key)
                seen.add(key)
    return columns


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if key == "threshold":
            return f"{value:g}"
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def format_markdown_table(
    rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None = None
) -> str:
    """A Markdown table of the sweep, one row per threshold, sorted by threshold.

    The best row (``best``, or ``best_row(rows)`` when not given) is marked with
    ``*`` in the first column and bold cells. Metrics are shown to 4 decimals.
    Rows lacking a key get an empty cell.
    """
    _check_rows(rows)
    if best is None:
        best = best_row(rows)
    columns = _columns(rows)
    ordered = sorted(rows, key=lambda row: float(row["threshold"]))

    lines = [
        "| best | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    marked = False
    for row in ordered:
        cells = [_cell(key, row.get(key)) for key in columns]
        # mark one row only, even if two rows carry identical values
        is_best = not marked and all(row.get(key) == best.get(key) for key in _REQUIRED)
        if is_best:
            marked = True
            cells = [f"**{cell}**" if cell else cell for cell in cells]
        lines.append(f"| {'*' if is_best else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_table(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], str]:
    """The best row of a sweep and the sweep as Markdown, with the best marked."""
    best = best_row(rows)
    return best, format_markdown_table(rows, best)
