"""Multiple-testing correction: Benjamini-Hochberg, as statsmodels' ``multipletests(method="fdr_bh")``."""
from __future__ import annotations

import numpy as np


def benjamini_hochberg(p_values) -> np.ndarray:
    """BH-adjusted p-values (step-up, monotone, clipped at 1), in input order."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError("p_values must be one-dimensional")
    if np.isnan(p).any():
        raise ValueError(f"p_values has a missing value at position {int(np.flatnonzero(np.isnan(p))[0])}")
    n = len(p)
    if n == 0:
        return p.copy()
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adj, 1.0)
    return out
