"""Enrichment: Fisher's exact odds ratio of replicate pairs among the most similar pairs.

cytominer-eval (git 643d3e7, ``operations/enrichment.py``) on the full off-diagonal melt (every
ordered pair (i, j), i != j, so every unordered pair twice): for each percentile p,

- T = ``similarity.quantile(p)`` (pandas, linear interpolation) over all those ordered pairs;
- the 2 x 2 table [[v11, v12], [v21, v22]] counts ordered pairs: rows ``sim > T`` / ``sim <= T``,
  columns replicate (equal in every ``replicate_groups`` column) / not;
- ``scipy.stats.fisher_exact(table, alternative="greater")`` gives the sample odds ratio
  (v11 * v22) / (v12 * v21) (``inf`` when v12 * v21 = 0) and the one-sided p-value.

Here the pairs are streamed block by block and T is the exact order statistic, selected in two
passes (:mod:`phenovec.evaluate.pair_quantile`), so the result is cytominer-eval's without the
N x N matrix. Counting both directions doubles every cell of the table, as cytominer-eval does
(the odds ratio is unchanged; the p-value is that of the doubled table). No ties problem: the
metric does not rank.

MOAProfiler (Wong et al. 2023, B5.2) defines the enrichment factor the same way (one-sided Fisher's
exact odds ratio of "strongly correlated" vs MOA-replicate pairs, PCC) at the 98th to 99.8th
percentile in steps of 0.2, headline at the 99th: ``percentile="moaprofiler"`` is that list
(:data:`MOAPROFILER_PERCENTILES`); ``replicate_groups`` is then the MOA column.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact

from phenovec.evaluate.pair_quantile import pair_thresholds, replicate_codes
from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES
from phenovec.evaluate.similarity import as_profiles, check_metric


# the paper's thresholds: 98th to 99.8th percentile in steps of 0.2 (headline: the 99th)
MOAPROFILER_PERCENTILES = tuple(round(0.98 + 0.002 * i, 3) for i in range(10))


def _check_percentiles(percentile) -> list[float]:
    if isinstance(percentile, str):
        if percentile != "moaprofiler":
            raise ValueError(f"percentile must be numbers in [0, 1] or 'moaprofiler', got {percentile!r}")
        return list(MOAPROFILER_PERCENTILES)
    ps = [percentile] if not isinstance(percentile, (list, tuple, np.ndarray)) else list(percentile)
    if not ps:
        raise ValueError("percentile: give at least one value")
    out = []
    for p in ps:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
            raise ValueError(f"percentile must be numbers in [0, 1], got {p!r}")
        if not 0 <= p <= 1:
            raise ValueError(f"percentile must be in [0, 1] (a fraction, e.g. 0.99), got {p!r}")
        out.append(float(p))
    return out


def enrichment(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    replicate_groups=None,
    percentile=0.99,
    similarity_metric: str = "pearson",
    block_bytes: int = DEFAULT_BLOCK_BYTES // 4,
) -> pd.DataFrame:
    """Enrichment odds ratio at each ``percentile`` (cytominer-eval semantics, exact).

    ``percentile``: a fraction, a list of them, or ``"moaprofiler"`` (0.98, 0.982, ..., 0.998).

    ``profiles`` is a whole profile table or a metadata frame with ``feats``. Output, one row per
    percentile: ``enrichment_percentile``, ``threshold``, ``ods_ratio`` (cytominer-eval's
    spelling), ``odds_ratio`` (the same value), ``p-value``, and the four table cells over ordered
    pairs ``replicate_above``, ``nonreplicate_above``, ``replicate_below``, ``nonreplicate_below``.
    Thresholds equal ``pandas.Series(all ordered-pair similarities).quantile(p)``.
    Raises when there is no replicate pair or no non-replicate pair, or when a percentile leaves no
    pair above (e.g. ``percentile=1``) or none at or below T: the odds ratio is undefined there
    (cytominer-eval returned NaN).
    """
    ps = _check_percentiles(percentile)
    p = as_profiles(profiles, feats, features, meta_features)
    metric = check_metric(similarity_metric)
    codes = replicate_codes(p.meta, replicate_groups)
    res = pair_thresholds(p.feats, metric, codes, ps, over="all", doubled=True, block_bytes=block_bytes)
    n_non, n_rep = res[0].total
    if n_rep == 0:
        raise ValueError(f"no replicate pairs: no two rows are equal in all of {list(np.atleast_1d(replicate_groups))}")
    if n_non == 0:
        raise ValueError("no non-replicate pairs: every pair of rows is a replicate pair")
    rows = []
    for r in res:
        v11, v12 = 2 * r.above[1], 2 * r.above[0]
        v21, v22 = 2 * (n_rep - r.above[1]), 2 * (n_non - r.above[0])
        if v11 + v12 == 0 or v21 + v22 == 0:
            raise ValueError(
                f"percentile {r.q}: threshold {r.threshold} leaves no pair "
                + ("above" if v11 + v12 == 0 else "at or below") + " it, so the odds ratio is undefined"
            )
        odds, pval = fisher_exact(np.array([[v11, v12], [v21, v22]]), alternative="greater")
        rows.append({
            "enrichment_percentile": r.q, "threshold": r.threshold, "ods_ratio": float(odds),
            "odds_ratio": float(odds), "p-value": float(pval),
            "replicate_above": v11, "nonreplicate_above": v12, "replicate_below": v21, "nonreplicate_below": v22,
        })
    return pd.DataFrame(rows)
