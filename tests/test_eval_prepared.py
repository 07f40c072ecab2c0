"""``phenovec._core.Prepared``: rows prepared once, blocks against all rows or given columns, bit for bit.

- ``Prepared(x, metric).block(q)`` equals ``_core.similarity_block(x, metric, q)`` bit for bit (every metric,
  float32 and float64, several block sizes including one row);
- ``block(q, cols)`` equals the full block's columns ``cols`` and the old column path
  (``similarity_block(x[cols], metric, searchsorted(cols, q))``) bit for bit: a similarity's value does not depend
  on the block it is computed in;
- the GEMM is the core's shape-independent one: at D = 1,280 (three depth chunks) blocks of 1, 16 and 300 rows agree;
- bad rows / columns and bad features are refused with messages naming them.
"""
import numpy as np
import pytest

from phenovec import _core

METRICS = ["cosine", "pearson", "spearman", "euclidean"]


def feats(n, d, dtype, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_bit_identical_to_similarity_block(metric, dtype):
    x = feats(300, 37, dtype)
    p = _core.Prepared(x, metric)
    assert p.n == 300 and p.metric == metric
    full = _core.similarity_block(x, metric, np.arange(300, dtype=np.int64))
    assert full.dtype == dtype
    for q in (np.arange(300), np.array([5]), np.array([299, 0, 17]), np.arange(40, 140)):
        q = q.astype(np.int64)
        got = p.block(q)
        assert got.dtype == dtype and got.shape == (len(q), 300)
        np.testing.assert_array_equal(got, _core.similarity_block(x, metric, q))
        np.testing.assert_array_equal(got, full[q])
    cols = np.sort(np.random.default_rng(1).choice(300, 70, replace=False)).astype(np.int64)
    q = cols[::3]
    sub = p.block(q, cols)
    np.testing.assert_array_equal(sub, full[np.ix_(q, cols)])
    # the old column path: the sub-matrix prepared on its own (rows are prepared one by one)
    np.testing.assert_array_equal(sub, _core.similarity_block(np.ascontiguousarray(x[cols]), metric, np.searchsorted(cols, q)))
    np.testing.assert_array_equal(p.block(q, np.array([q[0]], dtype=np.int64)), full[q][:, [q[0]]])


def test_wide_features_blocks_of_any_size_agree():
    x = feats(300, 1280, np.float32, seed=2)
    p = _core.Prepared(x, "cosine")
    full = p.block(np.arange(300, dtype=np.int64))
    for q in (np.array([7]), np.arange(16), np.arange(100, 300)):
        np.testing.assert_array_equal(p.block(q.astype(np.int64)), full[q])
    cols = np.arange(3, 300, 7, dtype=np.int64)
    np.testing.assert_array_equal(p.block(np.array([3], dtype=np.int64), cols), full[[3]][:, cols])
    # and it is the cosine of float64 arithmetic to float32 rounding
    x64 = x.astype(np.float64)
    u = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    np.testing.assert_allclose(full, u @ u.T, rtol=0, atol=2e-6)


def test_bad_input_is_refused_with_its_name():
    x = feats(20, 5, np.float32)
    p = _core.Prepared(x, "cosine")
    with pytest.raises(ValueError, match="rows: row 20 out of range"):
        p.block(np.array([20], dtype=np.int64))
    with pytest.raises(ValueError, match="cols: row 25 out of range"):
        p.block(np.array([1], dtype=np.int64), np.array([25], dtype=np.int64))
    with pytest.raises(ValueError, match="rows: negative value -1"):
        p.block(np.array([-1], dtype=np.int64))
    y = x.copy()
    y[4, 2] = np.nan
    with pytest.raises(ValueError, match="row 4, feature column 2"):
        _core.Prepared(y, "cosine")
    with pytest.raises(ValueError, match="unknown similarity metric"):
        _core.Prepared(x, "bogus")
