"""Mean, SD and count of pairwise similarities by pair category, streamed block by block.

The MOAProfiler analyses (same vs different MOA, the three compound / MOA groups, within vs across
plates) average the similarity of every unique pair of wells (i < j, no self pair) in a category.
All categories used are symmetric (a property of the unordered pair), so the sums over ordered pairs
(i != j) are exactly twice those over unique pairs; the ordered form also gives, per row group
(e.g. the MOA of row i), the statistics of the pairs each group takes part in. The N x N matrix never
exists: the Rust core yields row blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.stats import norm

from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES
from phenovec.evaluate.similarity import iter_similarity_blocks


@dataclass
class PairStats:
    """Sums over *ordered* pairs (i != j), indexed ``[row group, category]``."""

    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    def unique(self, category: int) -> tuple[int, float, float]:
        """(pairs, mean, SD with ddof=1) of one category over unique pairs, all row groups together."""
        n = self.count[:, category].sum() / 2
        s = self.total[:, category].sum() / 2
        ss = self.total_sq[:, category].sum() / 2
        return int(round(n)), *_mean_sd(n, s, ss)

    def by_group(self, category: int, halve: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row group: (pairs, mean, SD). ``halve`` when both members of every pair are in the group."""
        f = 0.5 if halve else 1.0
        n, s, ss = self.count[:, category] * f, self.total[:, category] * f, self.total_sq[:, category] * f
        mean, sd = zip(*(_mean_sd(a, b, c) for a, b, c in zip(n, s, ss))) if len(n) else ((), ())
        return np.rint(n).astype(np.int64), np.asarray(mean, dtype=float), np.asarray(sd, dtype=float)


def _mean_sd(n: float, s: float, ss: float) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    mean = s / n
    var = max(ss - s * s / n, 0.0) / (n - 1) if n > 1 else float("nan")
    return float(mean), float(np.sqrt(var))


def pair_stats(x: np.ndarray, metric: str, category: Callable[[np.ndarray], np.ndarray], n_categories: int,
               row_group: np.ndarray, n_groups: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> PairStats:
    """Accumulate similarities of ordered pairs by (``row_group[i]``, ``category(rows)[k, j]``).

    ``category(rows)`` returns an int array (len(rows) x N): the category of each pair (rows[k], j), -1 to skip
    it; the diagonal is skipped here.
    """
    size = n_groups * n_categories
    count = np.zeros(size)
    total = np.zeros(size)
    total_sq = np.zeros(size)
    for rows, block in iter_similarity_blocks(x, metric, block_bytes=block_bytes):
        cat = np.asarray(category(rows), dtype=np.int64)
        cat[np.arange(len(rows)), rows] = -1
        ok = cat >= 0
        key = (row_group[rows][:, None] * n_categories + cat)[ok]
        v = block[ok].astype(np.float64)
        count += np.bincount(key, minlength=size)
        total += np.bincount(key, weights=v, minlength=size)
        total_sq += np.bincount(key, weights=v * v, minlength=size)
    shape = (n_groups, n_categories)
    return PairStats(count.reshape(shape), total.reshape(shape), total_sq.reshape(shape))


def z_test(mean1: float, sd1: float, n1: int, mean2: float, sd2: float, n2: int) -> tuple[float, float]:
    """Two-sided two-sample z-test for a difference of means (unpooled variances, as statsmodels'
    ``ztest(x1, x2, usevar="unequal")``): ``(z, p)``. Each sample is one pair's similarity."""
    if n1 < 2 or n2 < 2:
        return float("nan"), float("nan")
    se = np.sqrt(sd1 * sd1 / n1 + sd2 * sd2 / n2)
    if se == 0:
        return float("nan"), float("nan")
    z = (mean1 - mean2) / se
    return float(z), float(2 * norm.sf(abs(z)))
