"""Symmetric tiles in evaluate_many: each tile S_IJ computed once for the queries of I and of J.

- the core's similarity blocks are bit-for-bit symmetric (S[j, i] == S[i, j]), which the tiles rely on;
- with several tiles (small ``block_bytes``), AP and the Mann-Whitney U from symmetric tiles equal the row-block
  path's (``symmetric=False``) bit for bit: replicate vs DMSO + MOA consistency (filtered rows) + replicate vs all,
  every metric, both tie modes, float32 and float64 (4 combinations); and they compute fewer similarities;
- a rule set without a group index (no ``pos_sameby``) falls back to row blocks.
"""
import numpy as np
import pytest

from phenovec import _core
from phenovec.evaluate.evaluate_many import evaluate_many

from test_evaluate_many import ACT, synthetic


def rule_sets(meta):
    return {
        "act": ACT,
        "moa": dict(pos_sameby=["Metadata_moa"], pos_diffby=["Metadata_cpd"], neg_sameby=[], neg_diffby=["Metadata_moa"],
                    rows=(meta["Metadata_cpd"] != "DMSO").to_numpy()),
        "all": dict(pos_sameby=["Metadata_cpd"], pos_diffby=[], neg_sameby=[], neg_diffby=["Metadata_cpd"]),
    }


@pytest.mark.parametrize("metric", ["cosine", "pearson", "spearman", "euclidean"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_core_blocks_are_bit_symmetric(metric, dtype):
    x = np.random.default_rng(3).normal(size=(200, 700)).astype(dtype)
    p = _core.Prepared(x, metric)
    s = p.block(np.arange(200, dtype=np.int64))
    np.testing.assert_array_equal(s, s.T)
    rows, cols = np.arange(10, 60, dtype=np.int64), np.arange(100, 190, dtype=np.int64)
    np.testing.assert_array_equal(p.block(rows, cols), p.block(cols, rows).T)


@pytest.mark.parametrize("metric,ties,dtype", [("cosine", "copairs", np.float32), ("pearson", "exact", np.float64),
                                               ("spearman", "copairs", np.float64), ("euclidean", "exact", np.float32)])
def test_symmetric_tiles_equal_row_blocks(metric, ties, dtype):
    meta, x = synthetic(n_cpd=200, n_ctrl=90, d=24, seed=4, dtype=dtype)
    sets = rule_sets(meta)
    bb = 150 * len(meta) * x.itemsize  # 150-row blocks; tiles of ~250 rows: 4 query tiles and a tile of other rows
    rows_stats, tile_stats = {}, {}
    rows = evaluate_many(meta, x, sets, distance=metric, ties=ties, block_bytes=bb, symmetric=False, stats=rows_stats,
                         roc_auc=True)
    tiles = evaluate_many(meta, x, sets, distance=metric, ties=ties, block_bytes=bb, stats=tile_stats, roc_auc=True)
    assert rows_stats["symmetric_tiles"] == 0 and rows_stats["full_blocks"] > 1
    assert tile_stats["symmetric_tiles"] >= 10
    assert tile_stats["similarities"] < 0.7 * rows_stats["similarities"]
    for k in sets:
        for c in ("n_pos_pairs", "n_total_pairs", "average_precision", "mann_whitney_u", "roc_auc"):
            np.testing.assert_array_equal(tiles[k][c].to_numpy(), rows[k][c].to_numpy(), err_msg=f"{k} {c}")
        assert np.isfinite(tiles[k]["average_precision"]).sum() > 300


def test_rule_without_group_index_uses_row_blocks():
    meta, x = synthetic(n_cpd=40, n_ctrl=20, d=8, seed=5)
    # no pos_sameby: no group index
    sets = {"diff": dict(pos_sameby=[], pos_diffby=["Metadata_cpd"], neg_sameby=["Metadata_cpd"], neg_diffby=[])}
    stats, stats_rows = {}, {}
    out = evaluate_many(meta, x, sets, stats=stats)
    ref = evaluate_many(meta, x, sets, stats=stats_rows, symmetric=False)
    assert stats["symmetric_tiles"] == 0 and stats["full_blocks"] > 0
    np.testing.assert_array_equal(out["diff"]["average_precision"].to_numpy(), ref["diff"]["average_precision"].to_numpy())
