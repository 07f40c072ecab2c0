"""Aggregation of the integration metrics: min-max scaling across methods and the overall score.

As scib-metrics' ``Benchmarker.get_results`` (0.6.1) and Arevalo et al. 2024 (Nature Communications): each
metric is min-max scaled across the compared methods (scikit-learn's ``MinMaxScaler``: ``(x - min) / (max -
min)``, a constant metric scaled to 0, NaN left out of min / max and kept), the scaled metrics are averaged
per type (``batch correction``, ``bio conservation``; NaN skipped), and ``total = 0.4 x batch + 0.6 x bio``.
``min_max_scale=False`` averages the raw values (scib-metrics' default since 0.5.6).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

BATCH = "batch correction"
BIO = "bio conservation"
TOTAL = "total"
WEIGHTS = {BATCH: 0.4, BIO: 0.6}


def min_max_scale(wide: pd.DataFrame) -> pd.DataFrame:
    """Each column (metric) of a methods x metrics table scaled to [0, 1] across the methods, as scikit-learn's
    ``MinMaxScaler`` (scib-metrics' ``Benchmarker``) scales: a column whose range is below ``10 * eps`` is taken as
    constant (divided by 1, not by its range), so rounding noise between tied methods is not stretched to 0 and 1."""
    w = wide.astype(float)
    lo, hi = w.min(axis=0), w.max(axis=0)
    rng = (hi - lo).where(hi - lo >= 10 * np.finfo(np.float64).eps, 1.0)
    return (w - lo) / rng


def overall_scores(wide: pd.DataFrame, metric_types: dict[str, str], min_max: bool = True) -> pd.DataFrame:
    """Per-method ``batch correction``, ``bio conservation`` and ``total`` (0.4 batch + 0.6 bio), with ``rank``.

    ``wide``: one row per method, one column per metric; ``metric_types``: metric -> ``batch correction`` or
    ``bio conservation``. Rank 1 = highest total.
    """
    unknown = [m for m in wide.columns if metric_types.get(m) not in (BATCH, BIO)]
    if unknown:
        raise ValueError(f"metric type unknown for {unknown}: each metric must be {BATCH!r} or {BIO!r}")
    vals = min_max_scale(wide) if min_max else wide.astype(float)
    out = pd.DataFrame(index=wide.index)
    for t in (BATCH, BIO):
        cols = [m for m in wide.columns if metric_types[m] == t]
        out[t] = vals[cols].mean(axis=1, skipna=True) if cols else np.nan
    out[TOTAL] = WEIGHTS[BATCH] * out[BATCH] + WEIGHTS[BIO] * out[BIO]
    out["rank"] = out[TOTAL].rank(ascending=False, method="min").astype("Int64")
    return out
