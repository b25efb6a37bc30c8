"""Edge tables and the graph agglomeration against waterz on the same fragments."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tokenunify.blockwise.agglomerate import mws_merge, parse_scoring, waterz_merge
from tokenunify.blockwise.edges import (
    block_edges,
    discretize,
    load_table,
    merge_tables,
    save_table,
)
from tokenunify.postprocess.agglomerate import waterz_sweep
from tokenunify.postprocess.fragments import watershed_fragments

QUANTILE = "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, true>>"
QUANTILE_FULL = "OneMinus<HistogramQuantileAffinity<RegionGraphType, 75, ScoreValue, 256, false>>"
MEAN = "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>"
THRESHOLDS = [0.1, 0.3, 0.5, 0.7, 0.9]


def _volume(seed: int, shape=(12, 40, 40)) -> tuple[np.ndarray, np.ndarray]:
    """Noisy affinities of a random Voronoi volume and watershed fragments of them."""
    rng = np.random.default_rng(seed)
    points = rng.integers(0, shape, size=(25, 3))
    seeds = np.zeros(shape, np.int32)
    seeds[tuple(points.T)] = np.arange(1, 26)
    _, index = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[tuple(index)]
    affs = np.ones((3, *shape), np.float32)
    for c in range(3):
        cut = np.moveaxis(labels, c, 0)[1:] != np.moveaxis(labels, c, 0)[:-1]
        np.moveaxis(affs[c], c, 0)[1:][cut] = 0.0
    affs = np.clip(ndimage.gaussian_filter(affs, (0, 1, 1, 1)) + rng.normal(0, 0.15, affs.shape), 0, 1).astype(np.float32)
    fragments = watershed_fragments(affs, min_seed_distance=4)
    return affs, fragments


def _table(fragments: np.ndarray, affs: np.ndarray, block: tuple[int, int, int] | None):
    """The whole-volume table, or the merge of one table per block of shape `block`."""
    if block is None:
        return block_edges(fragments, affs, (0, 0, 0))
    tables = []
    for z in range(0, fragments.shape[0], block[0]):
        for y in range(0, fragments.shape[1], block[1]):
            for x in range(0, fragments.shape[2], block[2]):
                start = (z, y, x)
                low = tuple(int(s > 0) for s in start)
                grown = tuple(slice(s - lo, s + b) for s, lo, b in zip(start, low, block))
                write = tuple(slice(s, s + b) for s, b in zip(start, block))
                tables.append(block_edges(fragments[grown], affs[(slice(None), *write)], low))
    return merge_tables(tables)


def _apply(nodes: np.ndarray, segment: np.ndarray, fragments: np.ndarray) -> np.ndarray:
    lut = dict(zip(nodes.tolist(), segment.tolist()))
    return np.vectorize(lambda f: lut.get(int(f), int(f)), otypes=[np.uint64])(fragments)


def test_discretize_matches_waterz_bins():
    values = np.array([-1.0, 0.0, 1e-9, 0.5, 0.99999, 1.0, 2.0, 0.00390625], np.float32)
    assert discretize(values).tolist() == [0, 0, 0, 128, 255, 255, 255, 1]


@pytest.mark.parametrize("block", [(5, 17, 13), (12, 40, 40), (4, 8, 40)])
def test_blockwise_table_equals_whole_volume_table(block):
    affs, fragments = _volume(0)
    whole, parts = _table(fragments, affs, None), _table(fragments, affs, block)
    np.testing.assert_array_equal(whole.u, parts.u)
    np.testing.assert_array_equal(whole.v, parts.v)
    np.testing.assert_array_equal(whole.count, parts.count)
    np.testing.assert_allclose(whole.sum, parts.sum, rtol=1e-12)
    for key in ("hist_edge", "hist_bin", "hist_count", "nodes"):
        np.testing.assert_array_equal(getattr(whole, key), getattr(parts, key))
    # every voxel edge between two fragments is counted exactly once
    pairs = sum(int((np.moveaxis(fragments, c, 0)[1:] != np.moveaxis(fragments, c, 0)[:-1]).sum()) for c in range(3))
    assert int(whole.count.sum()) == pairs


def test_table_round_trips_through_npz(tmp_path):
    affs, fragments = _volume(1)
    table = block_edges(fragments, affs, (0, 0, 0))
    save_table(tmp_path / "t.npz", table)
    back = load_table(tmp_path / "t.npz")
    for key in table.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(table, key), getattr(back, key))


@pytest.mark.parametrize("scoring", [QUANTILE, QUANTILE_FULL])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_graph_merge_equals_waterz_exactly(scoring, seed):
    affs, fragments = _volume(seed)
    table = _table(fragments, affs, (5, 17, 13))
    merged = waterz_merge(table, THRESHOLDS, scoring)
    for threshold, expected in waterz_sweep(affs, fragments, THRESHOLDS, scoring=scoring):
        np.testing.assert_array_equal(_apply(table.nodes, merged[threshold], fragments), expected)


def test_graph_merge_mean_scorer_agrees_with_waterz():
    affs, fragments = _volume(3)
    table = _table(fragments, affs, (5, 17, 13))
    merged = waterz_merge(table, THRESHOLDS, MEAN)
    for threshold, expected in waterz_sweep(affs, fragments, THRESHOLDS, scoring=MEAN):
        got = _apply(table.nodes, merged[threshold], fragments)
        # float64 sums instead of waterz's running float32 means: at most a tie breaks differently
        assert (got == expected).mean() > 0.99


def test_parse_scoring_refuses_what_it_cannot_replay():
    assert parse_scoring(QUANTILE).quantile == 50
    assert parse_scoring(QUANTILE_FULL).init_with_max is False
    with pytest.raises(ValueError, match="MaxAffinity"):
        parse_scoring("OneMinus<MaxAffinity<RegionGraphType, ScoreValue>>")


def test_mws_merge_joins_strong_edges_and_keeps_mutexes():
    from tokenunify.blockwise.edges import table_from_samples

    # 1-2 strong, 2-3 strong, 1-3 repulsive but weaker than both: all merge; 3-4 repulsive: apart
    u = np.array([1, 2, 1, 3], np.uint64)
    v = np.array([2, 3, 3, 4], np.uint64)
    sums = np.array([0.95, 0.9, 0.2, 0.05])
    table = table_from_samples(u, v, sums, np.ones(4), discretize(sums), np.arange(1, 6, dtype=np.uint64))
    segment = mws_merge(table, bias=-0.5)
    assert segment.tolist() == [1, 1, 1, 4, 5]
    # a repulsive edge stronger than the path's weakest link keeps 1 and 3 apart
    sums2 = np.array([0.95, 0.6, 0.0, 0.05])
    table2 = table_from_samples(u, v, sums2, np.ones(4), discretize(sums2), np.arange(1, 6, dtype=np.uint64))
    assert mws_merge(table2, bias=-0.5).tolist() == [1, 1, 3, 4, 5]


def test_top_bins_are_enough_for_init_with_max():
    from tokenunify.blockwise.edges import keep_top_bins

    affs, fragments = _volume(4)
    full = _table(fragments, affs, (6, 20, 20))
    pruned = merge_tables([keep_top_bins(block_edges(fragments, affs, (0, 0, 0)))])
    assert pruned.hist_edge.size == len(pruned) < full.hist_edge.size
    np.testing.assert_array_equal(pruned.u, full.u)
    np.testing.assert_array_equal(pruned.count, full.count)  # edge sizes survive the cut histograms
    np.testing.assert_allclose(pruned.sum, full.sum)
    for scoring in (QUANTILE, MEAN):
        a, b = waterz_merge(full, THRESHOLDS, scoring), waterz_merge(pruned, THRESHOLDS, scoring)
        for t in THRESHOLDS:
            np.testing.assert_array_equal(a[t], b[t])
