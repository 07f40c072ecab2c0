"""The batch steps' lean paths (blocks of columns, slabs of rows, in place) give the numbers of the plain whole-table
expressions they replaced, bit for bit, on NaN, infinite and edge-sized inputs."""
import numpy as np
import pytest

from phenovec.batch.cell_count import apply_cell_count
from phenovec.batch.finite import require_finite
from phenovec.batch.outliers import keep_columns, outlier_features


def _whole_table_residuals(x, counts, mask, intercept, slope):
    """apply_cell_count as it was written before the slabs."""
    out = np.array(x, dtype=np.float64, copy=True)
    cols = np.flatnonzero(mask)
    resid = out[:, cols] - (intercept[cols] + np.outer(counts, slope[cols]))
    out[:, cols] = np.where(np.isfinite(resid), resid, out[:, cols])
    return out


@pytest.mark.parametrize("seed", range(12))
def test_cell_count_slabs_equal_the_whole_table(seed):
    r = np.random.default_rng(seed)
    n, d = int(r.integers(1, 2000)), int(r.integers(1, 30))
    x = r.normal(size=(n, d)) * 100
    x[r.random(x.shape) < 0.02] = np.nan
    c = r.integers(1, 3000, size=n).astype(float)
    c[r.random(n) < 0.02] = np.nan
    mask = r.random(d) < (0.5 if seed % 2 else 2)  # some columns, or every column (the no-gather path)
    a, b = r.normal(size=d), r.normal(size=d)
    want = _whole_table_residuals(x, c, mask, a, b)
    for in_place in (False, True):
        y = x.copy()
        got = apply_cell_count(y, c, mask, a, b, in_place=in_place, slab_rows=int(r.integers(1, 300)))
        np.testing.assert_array_equal(got, want)
        assert (got is y) == in_place


@pytest.mark.parametrize("seed", range(8))
def test_outlier_blocks_and_kept_columns_equal_the_whole_table(seed):
    r = np.random.default_rng(seed)
    x = r.standard_cauchy((int(r.integers(1, 3000)), 70)) * 30
    x[:, :35][r.random((x.shape[0], 35)) < 0.02] = np.nan  # NaN in the first blocks only: both percentile paths
    x[:, 3] = np.nan
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        want = np.nanpercentile(np.abs(x), 99, axis=0, method="linear") > 100
    np.testing.assert_array_equal(outlier_features(x, 100), want)
    for keep in (np.arange(70), np.flatnonzero(~want), np.array([], dtype=int), np.array([5, 2, 9])):
        got = keep_columns(x.copy(), keep, slab_rows=int(r.integers(1, 400)))
        np.testing.assert_array_equal(got, x[:, keep])


def test_require_finite_names_the_first_bad_entry_across_slabs():
    x = np.zeros((5000, 600))  # 2**21 // 600 = 3495 rows a slab: the bad entries sit in the second
    x[4000, 7], x[4100, 2] = np.inf, np.nan
    with pytest.raises(ValueError, match=r"value inf in row 4000, column 7"):
        require_finite(x, "t")
    with pytest.raises(ValueError, match=r"value nan in row 'r1', column 'c2'"):
        require_finite(np.array([[1.0, 2], [3, 4], [5, np.nan]]).T.reshape(2, 3), "t", lambda r: f"r{r}",
                       lambda c: f"c{c}")
    require_finite(np.ones((7, 0)), "t")


def test_tvn_in_place_equals_the_copying_path():
    from phenovec.batch.tvn import apply_tvn, fit_tvn

    r = np.random.default_rng(3)
    x = r.normal(size=(400, 12)) * r.random(12) * 10 + r.normal(size=12)
    batches = np.repeat(["a", "b", "c", "d"], 100)
    fit = fit_tvn(x, r.random(400) < 0.5, batches, 0.5, "controls")
    want = apply_tvn(fit, x, batches)
    y = x.copy()
    np.testing.assert_array_equal(apply_tvn(fit, y, batches, in_place=True), want)
    assert not np.array_equal(y, x)  # it did work in y
