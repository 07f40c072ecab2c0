"""Ranking by thresholds (phenovec.evaluate.threshold_counts) and its use in evaluate_many's symmetric tiles.

- a positive's key turned into a float32 similarity threshold ranks every float32 similarity as its key does
  (copairs' float32 keys and exact keys, cosine and euclidean), near ties and float32 neighbours included;
- the counts of similarities above each threshold equal a brute-force count, by rows and by columns (transposed
  tiles), over all candidates or a subset;
- taking back out the candidates that share a neg_diffby code leaves exactly the negatives' counts;
- evaluate_many's AP and U with threshold counts equal the bucket kernel's bit for bit, in symmetric tiles and in
  row blocks (both kernels in one run too, by the number of positives), and the fast path is what ran;
- control-only row blocks (replicate vs DMSO) are ranked by thresholds and equal average_precision's;
- symmetric tiles on PyTorch CPU blocks (engine="torch", bf16) agree with their row blocks.
"""
import importlib

import numpy as np
import pytest

from phenovec.evaluate.evaluate_many import evaluate_many
from phenovec.evaluate.threshold_counts import (MAX_COUNT_COLUMNS, count_above, exclude_shared, key_of, thresholds,
                                               tile_groups)

from test_evaluate_many import ACT, synthetic
from test_eval_symmetric import rule_sets

em = importlib.import_module("phenovec.evaluate.evaluate_many")


def _similarities(rng, euclidean):
    if euclidean:
        s = -np.abs(rng.normal(0, 3, 4000))
    else:
        s = np.concatenate([rng.uniform(-1, 1, 2000), rng.normal(0, 1e-7, 1000), 1 - np.abs(rng.normal(0, 1e-7, 1000))])
    s = s.astype(np.float32)
    return np.concatenate([s, np.nextafter(s, np.float32(np.inf)), np.nextafter(s, np.float32(-np.inf)),
                           np.float32([0.0, -0.0])])


@pytest.mark.parametrize("f32_keys", [True, False])
@pytest.mark.parametrize("euclidean", [False, True])
def test_thresholds_rank_as_keys(f32_keys, euclidean):
    rng = np.random.default_rng(1)
    s = _similarities(rng, euclidean)
    if euclidean:
        s = -np.abs(s)
    keys = np.array([key_of.py_func(np.float64(v), f32_keys, euclidean) for v in s])
    kd = np.sort(keys[rng.choice(len(s), 200, replace=False)])[::-1].copy()
    thr = np.empty(len(kd), np.float32)
    thresholds(kd, f32_keys, euclidean, thr)
    assert np.all(np.diff(thr.astype(np.float64)) <= 0)
    for k in range(len(kd)):
        np.testing.assert_array_equal(s > thr[k], keys > kd[k], err_msg=f"threshold {k}")


def _thresholds_csr(rng, n, m_max):
    m = rng.integers(0, m_max + 1, n)
    start = np.concatenate([[0], np.cumsum(m)]).astype(np.int64)
    thr = np.sort(rng.normal(0, 1, start[-1]).astype(np.float32))[::-1].copy()
    return start, thr


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("subset", [False, True])
def test_counts_equal_brute_force(transposed, subset):
    rng = np.random.default_rng(2)
    n, nr, nc = 500, 70, 150  # 70 query rows, 150 candidates (more than one strip of transposed queries)
    start, thr = _thresholds_csr(rng, n, 9)
    rows = rng.choice(n, nr, replace=False).astype(np.int64)
    want = rng.uniform(size=n) < 0.8
    s = rng.normal(0, 1, (nr, nc)).astype(np.float32)
    sub = np.sort(rng.choice(nc, 60, replace=False)).astype(np.int64) if subset else np.zeros(0, np.int64)
    dcnt = np.full(start[-1], 5, np.int64)
    count_above(s.T.copy() if transposed else s, rows, want, sub, start, thr, dcnt, transposed=transposed)
    cand = sub if subset else np.arange(nc)
    for t, i in enumerate(rows):
        for k in range(start[i], start[i + 1]):
            expect = 5 + (int((s[t, cand] > thr[k]).sum()) if want[i] else 0)
            assert dcnt[k] == expect, (t, k)
    untouched = np.ones(start[-1], bool)
    for i in rows[want[rows]]:
        untouched[start[i] : start[i + 1]] = False
    assert np.all(dcnt[untouched] == 5)


def test_count_refuses_a_tile_too_long_to_count_exactly():
    big = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="counted exactly"):
        count_above(np.lib.stride_tricks.as_strided(big, (1, MAX_COUNT_COLUMNS)), np.zeros(1, np.int64),
                    np.ones(1, bool), np.zeros(0, np.int64), np.zeros(2, np.int64), np.zeros(0, np.float32),
                    np.zeros(0, np.int64))


@pytest.mark.parametrize("transposed", [False, True])
def test_exclusions_leave_the_negatives(transposed):
    """Count every candidate, take back those sharing a code in any of two neg_diffby columns: the negatives remain."""
    rng = np.random.default_rng(3)
    n = 300
    nd = np.vstack([rng.integers(0, 20, n), rng.integers(0, 6, n)]).astype(np.int64)  # overlapping groups
    start, thr = _thresholds_csr(rng, n, 6)
    rows = np.arange(0, 120, dtype=np.int64)
    cols = np.arange(100, 300, dtype=np.int64)  # overlaps the rows: a query meets itself
    want = np.ones(n, bool)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    s = (x[rows] @ x[cols].T).astype(np.float32)
    blk = s.T.copy() if transposed else s
    counted = np.flatnonzero(rng.uniform(size=len(cols)) < 0.7).astype(np.int64)
    dcnt = np.zeros(start[-1], np.int64)
    count_above(blk, rows, want, counted, start, thr, dcnt, transposed=transposed)
    base = int(nd.max()) + 2
    exclude_shared(blk, rows, want, cols, nd, base, *tile_groups(nd, base, cols, counted), start, thr, dcnt, transposed)
    for t, i in enumerate(rows):
        neg = [c for c in counted if nd[0, cols[c]] != nd[0, i] and nd[1, cols[c]] != nd[1, i]]
        for k in range(start[i], start[i + 1]):
            assert dcnt[k] == int((s[t, neg] > thr[k]).sum()), (i, k)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("metric,ties,fast_max", [("cosine", "copairs", 64), ("euclidean", "exact", 64),
                                                  ("pearson", "copairs", 3), ("spearman", "exact", 3)])
def test_evaluate_many_threshold_counts_equal_bucket_kernel(monkeypatch, metric, ties, fast_max, symmetric):
    """Threshold counts vs the bucket kernel (FAST_MAX_M = 0), float32, symmetric tiles and row blocks (full and
    control-only): AP and U bit for bit. With FAST_MAX_M = 3 the replicate rules (M = 3) are counted by thresholds
    and the MOA rule's queries by the bucket kernel, in one run."""
    meta, x = synthetic(n_cpd=200, n_ctrl=90, d=24, seed=4, dtype=np.float32)
    sets = rule_sets(meta)
    bb = 150 * len(meta) * x.itemsize
    calls = []
    real = em.count_above
    monkeypatch.setattr(em, "count_above", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(em, "FAST_MAX_M", fast_max)
    stats = {}
    fast = evaluate_many(meta, x, sets, distance=metric, ties=ties, block_bytes=bb, roc_auc=True, symmetric=symmetric,
                         stats=stats)
    assert len(calls) > 10
    assert (stats["symmetric_tiles"] > 0) == symmetric
    monkeypatch.setattr(em, "FAST_MAX_M", 0)
    calls.clear()
    slow = evaluate_many(meta, x, sets, distance=metric, ties=ties, block_bytes=bb, roc_auc=True, symmetric=symmetric)
    assert not calls
    for k in sets:
        for c in ("average_precision", "mann_whitney_u"):
            np.testing.assert_array_equal(fast[k][c].to_numpy(), slow[k][c].to_numpy(), err_msg=f"{k} {c}")
        assert np.isfinite(fast[k]["average_precision"]).sum() > 300


@pytest.mark.parametrize("engine,precision", [("torch", "fp32"), ("auto", "bf16")])
def test_symmetric_tiles_on_torch_cpu_blocks(engine, precision):
    """(The row blocks here are ranked by thresholds too: covered against the bucket kernel above.) bf16 runs natively
    where the CPU has AVX512-BF16 or AMX (asked now), else emulated: the same PyTorch CPU blocks, float32 GEMM."""
    pytest.importorskip("torch")
    from phenovec.evaluate.precision import cpu_has_bf16

    emulate = precision == "bf16" and not cpu_has_bf16()
    meta, x = synthetic(n_cpd=200, n_ctrl=90, d=24, seed=4, dtype=np.float32)
    sets = {"act": ACT, **{k: v for k, v in rule_sets(meta).items() if k != "act"}}
    bb = 150 * len(meta) * x.itemsize
    st_tiles, st_rows = {}, {}
    kw = dict(engine=engine, precision=precision, emulate=emulate, block_bytes=bb)
    tiles = evaluate_many(meta, x, sets, stats=st_tiles, **kw)
    rows = evaluate_many(meta, x, sets, stats=st_rows, symmetric=False, **kw)
    assert st_tiles["symmetric_tiles"] >= 10 and st_rows["symmetric_tiles"] == 0
    for k in sets:
        a, b = tiles[k]["average_precision"].to_numpy(), rows[k]["average_precision"].to_numpy()
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        ok = ~np.isnan(a)
        # one similarity per pair on each path, from products of different shapes: equal but for last-bit near-ties
        assert np.mean(a[ok] != b[ok]) < 0.01, k
        np.testing.assert_allclose(a[ok], b[ok], atol=0.05)


def test_control_only_blocks_by_thresholds_equal_average_precision(monkeypatch):
    import phenovec.evaluate as pe

    meta, x = synthetic(n_cpd=150, n_ctrl=80, d=16, seed=6, dtype=np.float32)
    calls = []
    real = em.count_above
    monkeypatch.setattr(em, "count_above", lambda *a, **k: calls.append(1) or real(*a, **k))
    stats = {}
    out = evaluate_many(meta, x, {"act": ACT}, block_bytes=64 * len(meta) * 4, stats=stats, roc_auc=True)
    assert stats["reduced_blocks"] > 0 and stats["full_blocks"] == 0 and calls
    single = pe.average_precision(meta, x, **ACT)
    np.testing.assert_array_equal(out["act"]["average_precision"].to_numpy(), single["average_precision"].to_numpy())
