"""Cell-count regression (JUMP profiling recipe, ``correct.corrections.regress_out_cell_counts_parallel``): each
feature with more than ``min_unique`` distinct values is replaced by its residual from an ordinary least-squares fit
``feature ~ 1 + cell_count`` (statsmodels ``ols``: fitted on the rows where both are present); rows where either is
missing keep the original value; features with ``min_unique`` or fewer distinct values are not touched.
Differences: the recipe stores residuals as float32 (phenovec keeps float64) and then drops every feature that still
has a missing value (phenovec leaves that to ``feature_select``)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def fit_cell_count(x: np.ndarray, counts: np.ndarray, min_unique: int = 100):
    """Per column: ``(regressed mask, intercept, slope)`` (intercept/slope NaN where not regressed)."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    d = x.shape[1]
    mask = np.array([pd.Series(x[:, j]).nunique() > min_unique for j in range(d)], dtype=bool)
    intercept = np.full(d, np.nan)
    slope = np.full(d, np.nan)
    for j in np.flatnonzero(mask):
        ok = np.isfinite(x[:, j]) & np.isfinite(c)
        if ok.sum() < 2 or np.ptp(c[ok]) == 0:
            mask[j] = False
            continue
        design = np.column_stack([np.ones(ok.sum()), c[ok]])
        (a, b), *_ = np.linalg.lstsq(design, x[ok, j], rcond=None)
        intercept[j], slope[j] = a, b
    return mask, intercept, slope


def apply_cell_count(x: np.ndarray, counts: np.ndarray, mask, intercept, slope, in_place: bool = False,
                     slab_rows: int = 16_384) -> np.ndarray:
    """Residuals of the regressed columns (original values where the count or the value is missing).
    ``in_place=True`` writes them into ``x`` (a C-contiguous float64 array the caller owns) instead of a copy.
    Computed a slab of rows at a time, each entry as ``x - (intercept + count * slope)``: the whole-table residual,
    outer product, sum and ``np.where`` were four float64 tables beside ``x`` and its copy."""
    if in_place and isinstance(x, np.ndarray) and x.dtype == np.float64 and x.flags.writeable:
        out = x
    else:
        out = np.array(x, dtype=np.float64, copy=True)
    c = np.asarray(counts, dtype=np.float64)
    cols = np.flatnonzero(mask)
    if cols.size == 0:
        return out
    a, b = intercept[cols], slope[cols]
    every = cols.size == out.shape[1]  # every column regressed: the slab itself, no gather / scatter
    for r0 in range(0, out.shape[0], slab_rows):
        r1 = min(out.shape[0], r0 + slab_rows)
        block = out[r0:r1] if every else out[r0:r1, cols]
        resid = np.multiply.outer(c[r0:r1], b)  # np.outer's products
        resid += a  # intercept + count * slope (the same sum either way round)
        np.subtract(block, resid, out=resid)
        np.copyto(block, resid, where=np.isfinite(resid))
        if not every:
            out[r0:r1, cols] = block
    return out
