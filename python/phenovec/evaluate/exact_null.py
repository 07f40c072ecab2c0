"""Exact null distributions of average precision for small (M, L) configurations, by enumeration.

Under random ranking every choice of the M positive positions among L is equally likely, so for
C(L, M) <= ``max_arrangements`` the null distribution of AP is enumerated exactly instead of sampled:

- per query: p = P(AP' >= AP), the exact probability (the sampled estimate is (#{AP' >= AP} + 1) / (n + 1));
- per group (mAP): the members' APs are independent under the null, so the distribution of their mean is the
  convolution of their exact distributions; p = P(mean' >= mAP) while its support stays below
  ``max_support`` values, else the group falls back to the sampled null.

copairs 0.5.5 samples every AP null (its development branch enumerates only the Mann-Whitney null of ROC-AUC:
:mod:`phenovec.evaluate.roc_auc`), so these p-values have no copairs counterpart; they are what its sampled
p-values converge to (tested). Values within ``TOL`` are treated as equal (AP is a sum of fractions; the
observed arrangement must count itself).
"""
from __future__ import annotations

from functools import lru_cache
from itertools import combinations
from math import comb

import numpy as np

MAX_ARRANGEMENTS = 1_000_000
MAX_SUPPORT = 2_000_000
TOL = 1e-10
_GRID = 1e10  # support values are merged on this grid (1 / TOL)


def n_arrangements(m: int, l: int) -> int:
    return comb(int(l), int(m))


@lru_cache(maxsize=1024)
def ap_distribution(m: int, l: int, max_arrangements: int = MAX_ARRANGEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """(AP values ascending, their probabilities) over all C(l, m) positions of m positives among l."""
    m, l = int(m), int(l)
    if not 0 < m <= l:
        raise ValueError(f"exact AP null needs 0 < n_pos_pairs <= n_total_pairs, got ({m}, {l})")
    count = comb(l, m)
    if count > max_arrangements:
        raise ValueError(f"exact AP null of ({m}, {l}): C({l}, {m}) = {count} arrangements > max_arrangements "
                         f"{max_arrangements}")
    ranks = np.fromiter((r for c in combinations(range(1, l + 1), m) for r in c), dtype=np.float64,
                        count=count * m).reshape(count, m)
    ap = (np.arange(1, m + 1, dtype=np.float64) / ranks).sum(axis=1) / m
    return _merge(ap, np.full(count, 1.0 / count))


def _merge(values: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values equal on the 1/TOL grid merged (one representative value each, ascending), probabilities summed."""
    _, first, inverse = np.unique(np.round(values * _GRID), return_index=True, return_inverse=True)
    return values[first], np.bincount(inverse.ravel(), weights=probs)


def sf(values: np.ndarray, probs: np.ndarray, x: float) -> float:
    """P(V >= x - TOL)."""
    return float(probs[np.searchsorted(values, x - TOL, side="left"):].sum())


def exact_p_values(ap, n_pos, n_total, max_arrangements: int = MAX_ARRANGEMENTS) -> np.ndarray:
    """Per-query P(AP' >= AP); NaN where the configuration has more than ``max_arrangements`` arrangements."""
    ap = np.asarray(ap, np.float64)
    m, l = np.asarray(n_pos, np.int64), np.asarray(n_total, np.int64)
    out = np.full(len(ap), np.nan)
    for (mi, li) in {(int(a), int(b)) for a, b in zip(m, l)}:
        if mi < 1 or n_arrangements(mi, li) > max_arrangements:
            continue
        v, p = ap_distribution(mi, li, max_arrangements)
        sel = np.flatnonzero((m == mi) & (l == li))
        out[sel] = [sf(v, p, a) for a in ap[sel]]
    return out


def mean_distribution(configs, max_arrangements: int = MAX_ARRANGEMENTS, max_support: int = MAX_SUPPORT):
    """(values, probabilities) of the mean AP of independent members with these (M, L), or None when too large."""
    configs = [(int(a), int(b)) for a, b in configs]
    if any(n_arrangements(mi, li) > max_arrangements for mi, li in configs):
        return None
    total_v, total_p = np.zeros(1), np.ones(1)
    for mi, li in configs:
        v, p = ap_distribution(mi, li, max_arrangements)
        if len(total_v) * len(v) > max_support:
            return None
        total_v, total_p = _merge((total_v[:, None] + v[None, :]).ravel(), (total_p[:, None] * p[None, :]).ravel())
    return total_v / len(configs), total_p


def exact_group_p_value(map_score: float, configs, max_arrangements: int = MAX_ARRANGEMENTS,
                        max_support: int = MAX_SUPPORT) -> float | None:
    """P(mean' >= mAP) for a group whose members have the (M, L) ``configs``; None when not enumerable."""
    dist = mean_distribution(configs, max_arrangements, max_support)
    return None if dist is None else sf(dist[0], dist[1], map_score)
