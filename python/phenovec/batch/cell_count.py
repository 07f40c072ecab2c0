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


def apply_cell_count(x: np.ndarray, counts: np.ndarray, mask, intercept, slope) -> np.ndarray:
    """Residuals of the regressed columns (original values where the count or the value is missing)."""
    out = np.array(x, dtype=np.float64, copy=True)
    c = np.asarray(counts, dtype=np.float64)
    cols = np.flatnonzero(mask)
    resid = out[:, cols] - (intercept[cols] + np.outer(c, slope[cols]))
    keep = np.isfinite(resid)
    out[:, cols] = np.where(keep, resid, out[:, cols])
    return out
