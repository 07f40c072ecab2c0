"""ROC-AUC per query with one-sided Mann-Whitney p-values (copairs' development branch, PR #103).

For a query with M positives and L - M negatives in its ranked list (the same list as average precision:
copairs' pair rules, its float32 keys and its tie rule, a positive first), U counts the (positive, negative)
pairs with the positive ranked first and ROC-AUC = U / (M (L - M)). Under random ranking U has the Mann-Whitney
null distribution; the p-value is P(U' >= U) for the alternative "positives rank higher", as
``scipy.stats.mannwhitneyu(pos, neg, alternative="greater")`` and copairs' ``compute_auc_pvalues(u, n_pos,
n_total)``:

- exact where M (L - M) <= 10,000 and max(M, L - M) <= 50 (copairs' threshold): the distribution of U counted
  with exact integers (the Gaussian binomial coefficient), P(U' >= ceil(U)); U above its maximum gives 0, below 0
  gives 1;
- asymptotic otherwise: the normal approximation with continuity correction, z = (U - 1/2 - mu) / sigma,
  mu = M (L - M) / 2, sigma^2 = M (L - M) (L + 1) / 12 (no tie correction: the ranked list has no ties);
- 1 where the query has no positive or no negative.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import pandas as pd

EXACT_MAX_PAIRS = 10_000
EXACT_MAX_SIDE = 50
METHODS = ("auto", "exact", "asymptotic")


@lru_cache(maxsize=4096)
def u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """Number of the C(n1 + n2, n1) orderings with U = 0 .. n1 n2 (exact Python integers).

    The generating function is the Gaussian binomial [n1 + n2 choose n1]_q = prod_i (1 - q^(n2+i)) / (1 - q^i).
    """
    poly = np.zeros(n1 * n2 + 1, dtype=object)
    poly[0] = 1
    for i in range(1, n1 + 1):
        s = n2 + i
        poly[s:] = poly[s:] - poly[:-s].copy() if s < len(poly) else poly[s:]
        for k in range(i, len(poly)):  # divide by (1 - q^i): b[k] = a[k] + b[k - i]
            poly[k] = poly[k] + poly[k - i]
    return tuple(int(v) for v in poly)


def exact_sf(u: float, n1: int, n2: int) -> float:
    """P(U' >= u) under the null, exactly."""
    counts = u_counts(int(n1), int(n2))
    k = int(np.ceil(u - 1e-9))
    if k <= 0:
        return 1.0
    if k >= len(counts):
        return 0.0
    return sum(counts[k:]) / sum(counts)


def asymptotic_sf(u, n1, n2) -> np.ndarray:
    from scipy.special import ndtr

    n1, n2 = np.asarray(n1, np.float64), np.asarray(n2, np.float64)
    mu = n1 * n2 / 2.0
    sigma = np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0)
    return ndtr(-(np.asarray(u, np.float64) - 0.5 - mu) / sigma)


def mann_whitney_p_values(u_scores, n_pos, n_total, method: str = "auto") -> np.ndarray:
    """One-sided ("greater") Mann-Whitney p-value of each U with n_pos positives among n_total (module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    u = np.asarray(u_scores, dtype=np.float64).ravel()
    n1 = np.asarray(n_pos, dtype=np.int64).ravel()
    n2 = np.asarray(n_total, dtype=np.int64).ravel() - n1
    if not (len(u) == len(n1) == len(n2)):
        raise ValueError(f"u_scores, n_pos and n_total differ in length: {len(u)}, {len(n1)}, {len(n2)}")
    if (n1 < 0).any() or (n2 < 0).any():
        bad = int(np.flatnonzero((n1 < 0) | (n2 < 0))[0])
        raise ValueError(f"row {bad}: need 0 <= n_pos <= n_total, got n_pos={n1[bad]}, n_total={n1[bad] + n2[bad]}")
    out = np.ones(len(u))
    live = (n1 > 0) & (n2 > 0) & np.isfinite(u)
    small = (n1 * n2 <= EXACT_MAX_PAIRS) & (np.maximum(n1, n2) <= EXACT_MAX_SIDE)
    exact = live & (small if method == "auto" else np.full(len(u), method == "exact"))
    asym = live & ~exact
    for i in np.flatnonzero(exact):
        out[i] = exact_sf(u[i], n1[i], n2[i])
    out[asym] = asymptotic_sf(u[asym], n1[asym], n2[asym])
    out[~np.isfinite(u)] = np.nan
    return out


def add_roc_auc(frame: pd.DataFrame, u: np.ndarray, method: str = "auto") -> pd.DataFrame:
    """``roc_auc`` = U / (M (L - M)) and its ``roc_auc_p_value`` beside AP (NaN where the row has no positive)."""
    m = frame["n_pos_pairs"].to_numpy()
    n_neg = frame["n_total_pairs"].to_numpy() - m
    with np.errstate(invalid="ignore", divide="ignore"):
        frame["roc_auc"] = np.where((m > 0) & (n_neg > 0), u / (m * n_neg), np.nan)
    frame["mann_whitney_u"] = u
    p = np.full(len(frame), np.nan)
    ok = np.isfinite(u)
    p[ok] = mann_whitney_p_values(u[ok], m[ok], frame["n_total_pairs"].to_numpy()[ok], method)
    frame["roc_auc_p_value"] = p
    return frame


def roc_auc(meta, feats, pos_sameby: Sequence[str], pos_diffby: Sequence[str], neg_sameby: Sequence[str],
            neg_diffby: Sequence[str], distance: str = "cosine", method: str = "auto", **kwargs) -> pd.DataFrame:
    """``average_precision``'s frame plus ``roc_auc``, ``mann_whitney_u`` and ``roc_auc_p_value`` per query.

    ``kwargs`` go to :func:`phenovec.evaluate.evaluate_many` (``ties``, ``precision``, ``device`` ...).
    """
    from phenovec.evaluate.evaluate_many import evaluate_many

    rules = dict(pos_sameby=pos_sameby, pos_diffby=pos_diffby, neg_sameby=neg_sameby, neg_diffby=neg_diffby)
    return evaluate_many(meta, feats, {"q": rules}, distance=distance, roc_auc=True, roc_auc_method=method,
                         **kwargs)["q"]
