"""One-sided paired Wilcoxon signed-rank tests between learners over tasks (FSL-CP thesis, table 2.1: "row beats
column", on per-task mean AUROC).

:func:`paired_wilcoxon` tests H1: ``a`` tends to exceed ``b``. Zero differences are dropped (Wilcoxon's method,
SciPy's default), tied absolute differences get average ranks, and the statistic is W+ (the rank sum of the
positive differences). For up to ``exact_max_n`` non-zero differences the p-value is exact: the null distribution of
W+ over the 2^n sign patterns, computed on the doubled (integer) ranks, so it stays exact with ties (conditional on
the observed ranks). With n = 18 tasks all favouring ``a`` it is 1/2^18 = 3.81e-06, the thesis' smallest p-value.
Above ``exact_max_n`` it is the normal approximation with the tie-corrected variance (no continuity correction, as
``scipy.stats.wilcoxon(..., method="approx")``). No non-zero difference gives NaN (no evidence either way).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

EXACT_MAX_N = 100


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of ``values``."""
    order = np.argsort(values, kind="mergesort")
    sv = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    i = 0
    while i < len(sv):
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def paired_wilcoxon(a, b, *, exact_max_n: int = EXACT_MAX_N) -> tuple[float, float]:
    """``(W+, p)`` of the one-sided paired test that ``a`` exceeds ``b`` (see the module docstring)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be two 1-D arrays of one length, got shapes {a.shape} and {b.shape}")
    d = a - b
    if not np.isfinite(d).all():
        raise ValueError("paired samples hold non-finite values")
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 0.0, float("nan")
    r = _ranks(np.abs(d))
    w = float(r[d > 0].sum())
    if n <= exact_max_n:
        twice = np.rint(2 * r).astype(np.int64)  # average ranks are multiples of 1/2
        dist = np.zeros(int(twice.sum()) + 1)
        dist[0] = 1.0
        for t in twice:  # each sign +/- with probability 1/2: P(S) <- (P(S) + P(S - t)) / 2
            shifted = np.zeros_like(dist)
            shifted[t:] = dist[:-t]
            dist = 0.5 * (dist + shifted)
        p = float(dist[int(round(2 * w)):].sum())
        return w, min(p, 1.0)
    mean = n * (n + 1) / 4.0
    _, counts = np.unique(np.abs(d), return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24.0 - float((counts ** 3 - counts).sum()) / 48.0
    z = (w - mean) / math.sqrt(var)
    return w, 0.5 * math.erfc(z / math.sqrt(2.0))


def wilcoxon_matrix(scores: pd.DataFrame, *, exact_max_n: int = EXACT_MAX_N) -> pd.DataFrame:
    """p-values of "row beats column" for every ordered pair of learners. ``scores``: one row per task, one column per
    learner (per-task mean AUROC, say); tasks with a missing score for either learner of a pair are left out of that
    pair. The diagonal is NaN."""
    names = list(scores.columns)
    out = pd.DataFrame(np.nan, index=pd.Index(names, name="learner"), columns=names)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i == j:
                continue
            both = scores[[a, b]].dropna()
            out.iloc[i, j] = paired_wilcoxon(both[a].to_numpy(), both[b].to_numpy(), exact_max_n=exact_max_n)[1]
    return out
