"""Mean average precision per group with permutation p-values, as ``copairs.map.mean_average_precision``.

Per group of ``sameby``: mAP = mean AP over its rows with at least one positive. Null: for each member,
the null AP row of its (M, L) configuration (see :mod:`phenovec.evaluate.null`); the group's null is
their element-wise mean; p = (#{null > mAP} + 1) / (null_size + 1) (strict ``>`` as copairs' mAP; the
per-query AP p-value uses ``>=``, also as copairs). Benjamini-Hochberg over groups gives
``corrected_p_value``; ``below_p`` / ``below_corrected_p`` use strict ``< threshold``.

With ``null_method="copairs"`` (default) p-values are identical to copairs 0.5.5 run with an empty
cache; ``null_method="fast"`` is statistically equivalent and much faster for large lists.
``null_method="exact"``: groups whose members' (M, L) are small enough get the exact P(mean' >= mAP) by
enumeration (:mod:`phenovec.evaluate.exact_null`), the others the ``"fast"`` sampled null; the column
``p_value_exact`` says which.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.evaluate.fdr import benjamini_hochberg
from phenovec.evaluate.exact_null import exact_group_p_value
from phenovec.evaluate.null import NULL_METHODS, null_distributions, unique_configs
from phenovec.evaluate.pairs import as_list, check_columns


def mean_average_precision(
    ap_scores: pd.DataFrame,
    sameby: Sequence[str],
    null_size: int,
    threshold: float,
    seed: int,
    progress_bar: bool = True,
    max_workers: int | None = None,
    cache_dir=None,
    null_method: str = "copairs",
) -> pd.DataFrame:
    """Per-group mAP, p-value, BH-corrected p-value and threshold flags (copairs' columns)."""
    sameby = as_list(sameby)
    check_columns(ap_scores, sameby, "sameby")
    for c in ("average_precision", "n_pos_pairs", "n_total_pairs"):
        if c not in ap_scores.columns:
            raise KeyError(f"ap_scores: missing column {c!r} (pass the output of average_precision)")
    df = ap_scores[ap_scores["average_precision"].notna() & (ap_scores["n_pos_pairs"] > 0)].reset_index(drop=True)
    if df.empty:
        raise ValueError("no row has a positive pair: mean average precision is undefined")
    na = df[sameby].isna().any(axis=1).to_numpy()
    if na.any():
        raise ValueError(f"sameby: a grouping column has a missing value at (filtered) row {int(np.flatnonzero(na)[0])}")
    if null_method not in NULL_METHODS + ("exact",):
        raise ValueError(f"null_method must be one of {NULL_METHODS + ('exact',)}, got {null_method!r}")
    confs, inv = unique_configs(df["n_pos_pairs"].to_numpy(), df["n_total_pairs"].to_numpy())
    nulls = None
    agg = {"average_precision": "mean"}
    has_norm = "normalized_average_precision" in df.columns
    if has_norm:
        agg["normalized_average_precision"] = "mean"
    grouped = df.groupby(sameby, observed=True, sort=True)
    out = grouped.agg(agg).reset_index()
    out = out.rename(columns={"average_precision": "mean_average_precision",
                              "normalized_average_precision": "mean_normalized_average_precision"})
    indices = list(grouped.indices.values())
    out.insert(len(sameby) + 1, "indices", [list(ix) for ix in indices])
    pvals = np.empty(len(out))
    exact = np.zeros(len(out), dtype=bool)
    for g, (score, ix) in enumerate(zip(out["mean_average_precision"].to_numpy(), indices)):
        if null_method == "exact":
            p = exact_group_p_value(score, confs[inv[ix]])
            if p is not None:
                pvals[g], exact[g] = p, True
                continue
        if nulls is None:
            nulls = null_distributions(confs, null_size, seed, "fast" if null_method == "exact" else null_method,
                                       progress_bar)
        null = nulls[inv[ix]].mean(axis=0)
        pvals[g] = ((null > score).sum() + 1) / (null_size + 1)
    out["p_value"] = pvals
    if null_method == "exact":
        out["p_value_exact"] = exact
    out["corrected_p_value"] = benjamini_hochberg(pvals)
    out["below_p"] = out["p_value"] < threshold
    out["below_corrected_p"] = out["corrected_p_value"] < threshold
    return out
