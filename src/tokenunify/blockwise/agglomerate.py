"""The global step: agglomerate the region graph of all blocks into a fragment -> segment lookup table.

Two methods, both on the summed `EdgeTable` of every block:

- ``waterz``: the hierarchical merging of waterz's ``IterativeRegionMerging``,
  re-implemented on the graph so it needs no voxels. It replays waterz's
  algorithm step by step: the same initial scores, the same priority queue
  (a binary min-heap comparing scores only, whose tie order Python's `heapq`
  shares with libstdc++'s ``std::priority_queue``), the same stale and
  deleted edges, the same rule for which of two parallel edges survives, and
  the smaller id as the merged region's id. On identical fragments and a
  histogram scorer it gives waterz's segmentation exactly (tested); with the
  mean scorer the means are computed from float64 sums, not waterz's running
  float32 means, so ties can break differently in the last bit.
- ``mws``: mutex watershed on the graph (mwatershed's ``cluster``), with the
  edge weight ``mean affinity + bias``: positive edges attract, negative ones
  repel, strongest first.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass

import numpy as np

from tokenunify.blockwise.edges import BINS, EdgeTable

_MEAN = re.compile(r"^OneMinus<MeanAffinity<RegionGraphType,ScoreValue>>$")
_QUANTILE = re.compile(r"^OneMinus<HistogramQuantileAffinity<RegionGraphType,(\d+),ScoreValue,256(?:,(true|false))?>>$")


@dataclass(frozen=True)
class Scorer:
    """A waterz scoring function this module can replay: ``mean`` or a histogram ``quantile``."""

    kind: str
    quantile: int = 50
    init_with_max: bool = True


def parse_scoring(scoring: str) -> Scorer:
    """The `Scorer` for a waterz scoring-function string; raises ValueError for one it cannot replay."""
    compact = re.sub(r"\s+", "", scoring)
    if _MEAN.match(compact):
        return Scorer("mean")
    match = _QUANTILE.match(compact)
    if match:
        return Scorer("quantile", int(match.group(1)), match.group(2) != "false")
    raise ValueError(
        f"blockwise agglomeration replays OneMinus<MeanAffinity<RegionGraphType, ScoreValue>> and "
        f"OneMinus<HistogramQuantileAffinity<RegionGraphType, Q, ScoreValue, 256[, true|false]>>, not {scoring!r}"
    )


class _Entry:
    """A queue entry ordered by score alone, like waterz's ``PriorityQueue::Entry``."""

    __slots__ = ("edge", "score")

    def __init__(self, score: float, edge: int) -> None:
        self.score = score
        self.edge = edge

    def __lt__(self, other: _Entry) -> bool:
        return self.score < other.score


def _f32(x: float) -> float:
    return float(np.float32(x))


class _Statistics:
    """Per-edge statistics and their score, as waterz's providers keep them.

    With ``InitWithMax`` every edge starts as the histogram ``{top bin: 1}``;
    that start is kept as the top bin alone, and a dictionary is made only for
    the edges that absorb another (a small share), which keeps the graph of a
    large volume in memory.
    """

    def __init__(self, table: EdgeTable, scorer: Scorer) -> None:
        self.scorer = scorer
        n = len(table)
        if scorer.kind == "mean":
            self.sum = table.sum.astype(np.float64).tolist()
            self.count = table.count.astype(np.int64).tolist()
            return
        self.hist: dict[int, dict[int, int]] = {}
        if scorer.init_with_max:
            # waterz's InitWithMax keeps one count of the highest bin an edge has seen
            top = np.full(n, -1, np.int64)
            np.maximum.at(top, table.hist_edge.astype(np.int64), table.hist_bin.astype(np.int64))
            self.top: list[int] | None = top.tolist()
        else:
            self.top = None
            for e, b, c in zip(table.hist_edge.tolist(), table.hist_bin.tolist(), table.hist_count.tolist()):
                self.hist.setdefault(e, {})[b] = c

    def _histogram(self, e: int) -> dict[int, int]:
        found = self.hist.get(e)
        if found is not None:
            return found
        return {self.top[e]: 1} if self.top is not None else {}

    def merge(self, source: int, target: int) -> None:
        """Add the statistics of edge `source` to edge `target` (waterz's notifyEdgeMerge)."""
        if self.scorer.kind == "mean":
            self.sum[target] += self.sum[source]
            self.count[target] += self.count[source]
            return
        into = self.hist.get(target)
        if into is None:
            into = self.hist[target] = dict(self._histogram(target))
        for b, c in self._histogram(source).items():
            into[b] = into.get(b, 0) + c
        self.hist[source] = {}  # emptied, like waterz's cleared histogram

    def score(self, e: int) -> float:
        """The float32 score waterz computes: one minus the edge's mean or quantile affinity."""
        if self.scorer.kind == "mean":
            return _f32(1.0 - _f32(self.sum[e] / self.count[e]))
        hist = self._histogram(e)
        pivot = self.scorer.quantile * sum(hist.values()) // 100 + 1
        total = 0
        chosen = BINS - 1
        for b in sorted(hist):
            total += hist[b]
            if total >= pivot:
                chosen = b
                break
        return _f32(1.0 - _f32((chosen + 0.5) / BINS))


def waterz_merge(table: EdgeTable, thresholds: list[float], scoring: str) -> dict[float, np.ndarray]:
    """Replay waterz's merging on the graph; returns {threshold: segment id of each of `table.nodes`}.

    Thresholds are processed in increasing order, each continuing from the
    previous one, as ``waterz.agglomerate`` does. Segment ids are fragment ids
    (the smallest of each merged set), so they stay unique across blocks.
    """
    scorer = parse_scoring(scoring)
    stats = _Statistics(table, scorer)
    u, v = table.u.astype(np.int64).tolist(), table.v.astype(np.int64).tolist()
    n_edges = len(u)
    pair = {(u[e], v[e]): e for e in range(n_edges)}
    incident: dict[int, set[int]] = {}
    for e in range(n_edges):
        incident.setdefault(u[e], set()).add(e)
        incident.setdefault(v[e], set()).add(e)
    scores = [stats.score(e) for e in range(n_edges)]
    stale = [False] * n_edges
    deleted = [False] * n_edges
    queue: list[_Entry] = []
    for e in range(n_edges):
        heapq.heappush(queue, _Entry(scores[e], e))
    parent: dict[int, int] = {}

    def move(e: int, a: int, n: int) -> None:
        del pair[(u[e], v[e])]
        u[e], v[e] = min(a, n), max(a, n)
        pair[(u[e], v[e])] = e
        incident.setdefault(a, set()).add(e)

    def merge_regions(e: int) -> None:
        a, b = u[e], v[e]
        parent[b] = a
        # the merged edge stays in waterz's graph but is never queued again: dropping it changes nothing
        del pair[(a, b)]
        incident[a].discard(e)
        for ne in incident.pop(b, set()) - {e}:
            n = v[ne] if u[ne] == b else u[ne]
            ane = pair.get((min(a, n), max(a, n)))
            if ane is None:
                move(ne, a, n)
            elif scores[ne] > scores[ane]:
                stats.merge(ne, ane)
                del pair[(u[ne], v[ne])]
                incident[n].discard(ne)
                deleted[ne] = True
                stale[ane] = True
            else:
                stats.merge(ane, ne)
                del pair[(u[ane], v[ane])]
                incident[a].discard(ane)
                incident[n].discard(ane)
                move(ne, a, n)
                stale[ne] = True
                deleted[ane] = True

    nodes = table.nodes.astype(np.int64)
    result: dict[float, np.ndarray] = {}
    for threshold in sorted(float(t) for t in thresholds):
        limit = _f32(threshold)
        while queue:
            top = queue[0]
            if top.score >= limit:
                break
            heapq.heappop(queue)
            e = top.edge
            if deleted[e]:
                continue
            if stale[e]:
                scores[e] = stats.score(e)
                stale[e] = False
                heapq.heappush(queue, _Entry(scores[e], e))
                continue
            merge_regions(e)
        result[threshold] = _roots(nodes, parent)
    return result


def _roots(nodes: np.ndarray, parent: dict[int, int]) -> np.ndarray:
    """The root of each node under `parent` (nodes without a parent are roots), path-compressed."""
    out = np.empty(nodes.size, np.uint64)
    for i, node in enumerate(nodes.tolist()):
        root = node
        while root in parent:
            root = parent[root]
        while node != root:
            parent[node], node = root, parent[node]
        out[i] = root
    return out


def mws_merge(table: EdgeTable, bias: float) -> np.ndarray:
    """Mutex watershed on the graph; returns the segment id of each of `table.nodes`.

    Edge weight = mean boundary affinity + `bias` (negative in practice: -0.5
    cuts at 0.5), processed by decreasing magnitude; ties in (weight, u, v)
    order so the result does not depend on the order of the blocks.
    """
    import mwatershed

    weights = table.sum / np.maximum(table.count, 1) + bias
    order = np.lexsort((table.v, table.u, -np.abs(weights)))
    edges = [(bool(weights[i] > 0), int(table.u[i]), int(table.v[i])) for i in order.tolist() if weights[i] != 0]
    pairs = mwatershed.cluster(edges) if edges else []
    segment = {int(f): int(s) for f, s in pairs}
    # mwatershed names segments by an arbitrary member; name each by its smallest fragment instead
    nodes = table.nodes.astype(np.int64)
    ids = np.array([segment.get(n, n) for n in nodes.tolist()], np.int64)
    smallest: dict[int, int] = {}
    for node, s in zip(nodes.tolist(), ids.tolist()):
        if s not in smallest or node < smallest[s]:
            smallest[s] = node
    return np.array([smallest[s] for s in ids.tolist()], np.uint64)
