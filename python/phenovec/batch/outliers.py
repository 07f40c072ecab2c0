"""Outlier handling of the JUMP profiling recipe (``preprocessing.clean.remove_outliers``): drop every feature whose
99th percentile of absolute values (pandas ``quantile``, linear interpolation, missing values skipped) exceeds
``threshold`` (1e2), then clip the remaining features to ``[-threshold, threshold]``.

The recipe's clip is written ``dframe.loc[:, cols].clip(..., inplace=True)``, which clips a copy and so changes
nothing (pandas chained assignment): ``clip=False`` reproduces the recipe's actual output, ``clip=True`` (default)
what it means to do."""
from __future__ import annotations

import warnings

import numpy as np

# columns a block: |x| of the block and nanpercentile's working copy of it are the only table-shaped temporaries
# (64 MB each at 300k rows); the whole |x| and its copy were two more float64 tables at the step's peak
_BLOCK_COLUMNS = 32


def outlier_features(x: np.ndarray, threshold: float = 100.0) -> np.ndarray:
    """Boolean mask of the columns whose 99th percentile of ``|x|`` (NaN skipped) is above ``threshold``.
    Computed a block of columns at a time (each column's percentile depends on that column alone)."""
    x = np.asarray(x, dtype=np.float64)
    q = np.empty(x.shape[1])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column has no percentile: kept
        for j in range(0, x.shape[1], _BLOCK_COLUMNS):
            a = np.abs(x[:, j:j + _BLOCK_COLUMNS])
            nan = np.isnan(a).any(axis=0)
            if nan.any():  # nanpercentile drops a column's NaN and takes percentile of the rest, column by column
                q[j:j + _BLOCK_COLUMNS] = np.nanpercentile(a, 99, axis=0, method="linear", overwrite_input=True)
            else:  # the same numbers (no NaN to drop) without nanpercentile's per-column Python loop: a third faster
                q[j:j + _BLOCK_COLUMNS] = np.percentile(a, 99, axis=0, method="linear", overwrite_input=True)
    return q > threshold


def keep_columns(x: np.ndarray, keep, slab_rows: int = 16_384) -> np.ndarray:
    """``x[:, keep]`` (``keep``: column indices) for a C-contiguous ``x`` that may be overwritten, built in ``x``'s
    own buffer when ``keep`` is increasing: row slabs are compacted forward (a slab's kept values are copied out
    before any write, and a write reaches no row after the slab), so dropping columns holds one slab more, not a
    second table. ``x`` is invalid afterwards."""
    keep = np.asarray(keep, dtype=np.intp).reshape(-1)
    n, d = x.shape
    if keep.size == d and np.array_equal(keep, np.arange(d)):
        return x
    if not (x.flags.c_contiguous and x.flags.writeable and (keep.size < 2 or (np.diff(keep) > 0).all())):
        return x[:, keep]
    k = keep.size
    flat = x.reshape(-1)
    for r0 in range(0, n, slab_rows):
        r1 = min(n, r0 + slab_rows)
        block = x[r0:r1][:, keep]  # a copy: read before the write below overlaps these rows
        flat[r0 * k:r1 * k] = block.reshape(-1)
    return flat[:n * k].reshape(n, k)
