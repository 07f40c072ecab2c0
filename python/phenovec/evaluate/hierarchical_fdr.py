"""Hierarchical FDR for grouped mAP hypotheses, as copairs 0.5.5 ``map/hierarchical_fdr.py``.

Two stages (dose-response: a compound is active when some dose is):

- stage 1: per group of ``hierarchical_by`` (a proper subset of ``sameby``, e.g. compound within
  compound x dose), the minimum p-value; Benjamini-Hochberg over groups; a group passes when its
  corrected p-value is <= ``stage1_alpha`` (0.05: statsmodels' ``multipletests`` default, which copairs uses);
- stage 2: within each passing group, Benjamini-Hochberg over its members (a single member keeps its
  p-value); members of groups that did not pass get ``corrected_p_value`` 1.0.

Columns added, in copairs' order: ``stage1_p_value``, ``stage1_corrected_p_value``, ``stage1_significant``,
``corrected_p_value`` (replacing an existing one).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.evaluate.fdr import benjamini_hochberg
from phenovec.evaluate.map import mean_average_precision
from phenovec.evaluate.pairs import as_list, check_columns

STAGE1_ALPHA = 0.05


def hierarchical_fdr(map_scores: pd.DataFrame, hierarchical_by: Sequence[str], sameby: Sequence[str],
                     stage1_alpha: float = STAGE1_ALPHA) -> pd.DataFrame:
    """Two-stage (min-p, then within-group BH) correction of ``map_scores['p_value']`` (copairs'
    ``apply_hierarchical_fdr_correction``); returns a new frame, rows in input order."""
    hierarchical_by, sameby = as_list(hierarchical_by), as_list(sameby)
    if not set(hierarchical_by) <= set(sameby):
        raise ValueError(f"hierarchical_by columns {hierarchical_by} must be a subset of sameby columns {sameby}")
    if set(hierarchical_by) == set(sameby):
        raise ValueError(f"hierarchical_by columns {hierarchical_by} must be a proper subset of sameby columns {sameby}; "
                         "if they are equal, use mean_average_precision's standard correction")
    check_columns(map_scores, hierarchical_by, "hierarchical_by")
    if "p_value" not in map_scores.columns:
        raise KeyError("map_scores: missing column 'p_value' (pass the output of mean_average_precision)")
    out = map_scores.drop(columns=[c for c in ("stage1_p_value", "stage1_corrected_p_value", "stage1_significant",
                                               "corrected_p_value") if c in map_scores.columns]).reset_index(drop=True)
    p = out["p_value"].to_numpy(dtype=np.float64)
    groups = out.groupby(hierarchical_by, observed=True, sort=True).indices
    members = [np.asarray(ix) for ix in groups.values()]
    stage1 = np.array([p[ix].min() for ix in members])
    stage1_corrected = benjamini_hochberg(stage1)
    passed = stage1_corrected <= stage1_alpha
    corrected = np.ones(len(out))
    s1_p, s1_c, s1_s = np.empty(len(out)), np.empty(len(out)), np.zeros(len(out), dtype=bool)
    for g, ix in enumerate(members):
        s1_p[ix], s1_c[ix], s1_s[ix] = stage1[g], stage1_corrected[g], passed[g]
        if passed[g]:
            corrected[ix] = p[ix] if len(ix) == 1 else benjamini_hochberg(p[ix])
    out["stage1_p_value"] = s1_p
    out["stage1_corrected_p_value"] = s1_c
    out["stage1_significant"] = s1_s
    out["corrected_p_value"] = corrected
    return out


def mean_average_precision_hierarchical(
    ap_scores: pd.DataFrame,
    sameby: Sequence[str],
    null_size: int,
    threshold: float,
    seed: int,
    hierarchical_by: Sequence[str],
    progress_bar: bool = True,
    max_workers: int | None = None,
    cache_dir=None,
    null_method: str = "copairs",
) -> pd.DataFrame:
    """mAP and p-values per ``sameby`` group with hierarchical FDR (copairs'
    ``mean_average_precision_hierarchical``: same arguments, columns and values)."""
    scores = mean_average_precision(ap_scores, sameby, null_size, threshold, seed, progress_bar=progress_bar,
                                    null_method=null_method)
    scores = scores.drop(columns=["corrected_p_value", "below_p", "below_corrected_p"])
    scores = hierarchical_fdr(scores, hierarchical_by, sameby)
    scores["below_p"] = scores["p_value"] < threshold
    scores["below_corrected_p"] = scores["corrected_p_value"] < threshold
    return scores
