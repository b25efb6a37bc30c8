"""Cross-fitted threshold choice: score each z-slab at the threshold chosen on the others.

Choosing the agglomeration threshold on the volume it is scored on (the
best row of a sweep) is an oracle: it flatters every arm, and most the ones
whose sweep is noisy. Cross-fitting cuts the scored volume into slabs along
z; each slab is scored at the threshold that is best on the other slabs,
and the slabs' scores are averaged. With two slabs this is "choose on
z 120-139, score z 140-159, then the reverse".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from tokenunify.evaluate.sweep import best_row

__all__ = ["CROSS_FIT_METRICS", "cross_fit", "part_slices"]

#: The metrics a cross-fitted score reports (each the mean over the slabs).
CROSS_FIT_METRICS = ("voi_split", "voi_merge", "voi", "arand")


def part_slices(depth: int, parts: int) -> list[slice]:
    """`parts` contiguous z-slabs of a volume `depth` sections deep, as equal as possible.

    Raises:
        ValueError: unless 2 <= parts <= depth.
    """
    if not 2 <= parts <= depth:
        raise ValueError(f"cannot cut {depth} sections into {parts} cross-fitting parts (need 2 <= parts <= depth)")
    edges = np.linspace(0, depth, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in pairwise(edges)]


def _mean_over(parts: Sequence[Mapping[str, Any]], indices: Sequence[int], key: str) -> float:
    return float(np.mean([float(parts[i][key]) for i in indices]))


def cross_fit(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The cross-fitted score of a sweep whose rows carry per-slab metrics under ``"parts"``.

    For slab ``i`` the threshold is the best row (lowest VOI, then ARAND,
    then threshold, as `best_row`) on the mean metrics of every other slab;
    slab ``i``'s metrics at that threshold are its score. Returns the mean
    of each metric of :data:`CROSS_FIT_METRICS` over the slabs, plus
    ``thresholds`` (the one chosen for each slab), ``per_part`` (each
    slab's score) and ``oracle_voi`` / ``oracle_arand`` (the mean over the
    slabs of each slab's best row: what choosing on the scored slab would
    give, the figure the cross-fitted one is to be compared with).

    Raises:
        ValueError: for no rows, rows without ``parts``, or rows that
            disagree on the number of slabs.
    """
    if not rows:
        raise ValueError("cross-fitting needs at least one sweep row")
    counts = {len(row.get("parts") or ()) for row in rows}
    if len(counts) != 1 or min(counts) < 2:
        raise ValueError(f"every sweep row needs the same number (>= 2) of per-part scores, got {sorted(counts)}")
    n = counts.pop()
    chosen, per_part = [], []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        ranked = [{"threshold": row["threshold"], "voi": _mean_over(row["parts"], others, "voi"),
                   "arand": _mean_over(row["parts"], others, "arand")} for row in rows]
        threshold = best_row(ranked)["threshold"]
        row = next(r for r in rows if r["threshold"] == threshold)
        chosen.append(float(threshold))
        per_part.append({k: float(row["parts"][i][k]) for k in CROSS_FIT_METRICS})
    result: dict[str, Any] = {k: float(np.mean([p[k] for p in per_part])) for k in CROSS_FIT_METRICS}
    # The same slabs scored at their own best thresholds: the oracle on the
    # cross-fit's footing (a slab's VOI is not comparable with the whole volume's).
    own = [best_row([{"threshold": r["threshold"], "voi": r["parts"][i]["voi"], "arand": r["parts"][i]["arand"]}
                     for r in rows]) for i in range(n)]
    result.update(thresholds=chosen, per_part=per_part, oracle_voi=float(np.mean([o["voi"] for o in own])),
                  oracle_arand=float(np.mean([o["arand"] for o in own])))
    return result
