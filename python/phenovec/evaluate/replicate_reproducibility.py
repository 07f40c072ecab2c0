"""Replicate reproducibility ("percent replicating", pairwise form) of cytominer-eval.

cytominer-eval (git 643d3e7, ``operations/replicate_reproducibility.py``) keeps the upper triangle
of the similarity matrix (every unordered pair once) and marks a pair *replicate* when its rows are
equal in every ``replicate_groups`` column. Then

- T = pandas ``quantile(quantile_over_null)`` (linear) of the non-replicate similarities;
- score = (number of replicate pairs with similarity > T) / (number of replicate pairs);
- optionally, the median similarity of the replicate pairs of each replicate group (a table with
  the ``replicate_groups`` columns and ``similarity_metric``, groups ordered by the string form of
  their keys, as cytominer-eval's ``groupby`` on ``str`` metadata; only groups with a pair appear).

Here the pairs are streamed block by block and T is the exact order statistic, selected in two
passes (:mod:`phenovec.evaluate.pair_quantile`); no N x N matrix. The median table needs the
replicate pairs' similarities (memory O(number of replicate pairs)), gathered in one more pass.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.evaluate.pair_quantile import iter_upper_pairs, pair_thresholds, replicate_codes
from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES, as_list
from phenovec.evaluate.similarity import as_profiles, check_metric


def replicate_reproducibility(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    replicate_groups=None,
    quantile_over_null: float = 0.95,
    similarity_metric: str = "pearson",
    return_median_correlations: bool = False,
    block_bytes: int = DEFAULT_BLOCK_BYTES // 4,
):
    """Fraction of replicate pairs more similar than the ``quantile_over_null`` of non-replicates.

    Returns the fraction (float) or, with ``return_median_correlations=True``, ``(fraction,
    median_table)`` as cytominer-eval. Exact cytominer-eval semantics (module docstring).
    ``quantile_over_null`` must be in (0, 1]. Raises when there is no replicate pair or no
    non-replicate pair.
    """
    if isinstance(quantile_over_null, (bool, np.bool_)) or not isinstance(quantile_over_null, (int, float, np.integer, np.floating)) \
            or not 0 < quantile_over_null <= 1:
        raise ValueError(f"quantile_over_null must be in (0, 1], got {quantile_over_null!r}")
    p = as_profiles(profiles, feats, features, meta_features)
    metric = check_metric(similarity_metric)
    cols = as_list(replicate_groups)
    codes = replicate_codes(p.meta, cols)
    if len(np.unique(codes)) == len(codes):
        raise ValueError(f"no replicate pairs: no two rows are equal in all of {cols}")
    (res,) = pair_thresholds(p.feats, metric, codes, [float(quantile_over_null)], over="nonreplicate",
                             block_bytes=block_bytes)
    score = res.above[1] / res.total[1]
    if not return_median_correlations:
        return score
    vals, grp = [], []
    for v, rep, row_a in iter_upper_pairs(p.feats, metric, codes, block_bytes, with_rows=True):
        vals.append(v[rep])
        grp.append(row_a[rep])
    pairs = p.meta.loc[np.concatenate(grp), cols].astype(str).reset_index(drop=True)
    pairs["similarity_metric"] = np.concatenate(vals)
    med = pairs.groupby(cols, sort=True)["similarity_metric"].median().reset_index()
    # original (not string) key values, taken from one member row of each group
    first = p.meta[cols].astype(str).reset_index().drop_duplicates(cols).set_index(cols)["index"]
    rows = first.loc[pd.MultiIndex.from_frame(med[cols]) if len(cols) > 1 else med[cols[0]]].to_numpy()
    out = p.meta.loc[rows, cols].reset_index(drop=True)
    out["similarity_metric"] = med["similarity_metric"].to_numpy()
    return score, out
