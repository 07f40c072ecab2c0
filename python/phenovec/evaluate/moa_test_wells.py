"""The wells the MOAProfiler analyses evaluate: no DMSO, no single-compound MOA (Wong et al. 2023, B5).

"All embedding analyses use well-level embeddings of the held-out test set, filtered to multi-compound
MOAs, and exclude DMSO wells." The metrics compute exactly on what they are handed; this is the
callers' filter.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.evaluate.pairs import check_columns
from phenovec.evaluate.similarity import as_profiles


def moa_test_wells(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    *,
    moa_col: str,
    compound_col: str,
    control: str | None = "DMSO",
    min_compounds: int = 2,
    missing: str = "raise",
    keep_controls: bool = False,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Select the evaluated wells; returns ``(meta, feats)`` (index reset, feats a float matrix).

    - Control rows (``compound_col`` or ``moa_col`` equal to ``control``) are dropped, unless ``keep_controls``
      (:func:`batch_diagnostic` scores them). A ``control`` that no row has is an error (a misspelt control would
      otherwise be evaluated as a MOA); ``control=None`` when the table has none.
    - A missing MOA on a non-control row is an error naming the column and row (``missing="raise"``), or the row
      is dropped (``missing="drop"``).
    - MOAs with fewer than ``min_compounds`` distinct compounds are dropped (2: the paper's single-compound
      filter; 1 keeps every MOA).
    """
    if missing not in ("raise", "drop"):
        raise ValueError(f"missing must be 'raise' or 'drop', got {missing!r}")
    if isinstance(min_compounds, bool) or not isinstance(min_compounds, (int, np.integer)) or min_compounds < 1:
        raise ValueError(f"min_compounds must be a positive integer, got {min_compounds!r}")
    prof = as_profiles(profiles, feats, features=features, meta_features=meta_features)
    meta = prof.meta.reset_index(drop=True)
    check_columns(meta, [moa_col], "moa_col")
    check_columns(meta, [compound_col], "compound_col")
    if meta[compound_col].isna().any():
        r = int(np.flatnonzero(meta[compound_col].isna().to_numpy())[0])
        raise ValueError(f"compound_col: column {compound_col!r} has a missing value at row {r}")
    ctrl = np.zeros(len(meta), dtype=bool)
    if control is not None:
        ctrl = ((meta[compound_col] == control) | (meta[moa_col] == control)).to_numpy()
        if not ctrl.any():
            raise ValueError(f"compound_col: no row has the control {control!r} in column {compound_col!r} or "
                             f"{moa_col!r} (pass control=None when the table has no control wells)")
    na = meta[moa_col].isna().to_numpy() & ~ctrl
    if na.any() and missing == "raise":
        r = int(np.flatnonzero(na)[0])
        raise ValueError(f"moa_col: column {moa_col!r} has a missing MOA at row {r} ({compound_col} = "
                         f"{meta[compound_col].iloc[r]!r}; {int(na.sum())} such rows; missing='drop' drops them)")
    trt = ~ctrl & ~na
    n_cpd = meta[trt].groupby(moa_col)[compound_col].nunique()
    keep_moa = set(n_cpd.index[n_cpd >= min_compounds])
    keep = trt & meta[moa_col].isin(keep_moa).to_numpy()
    if not keep.any():
        raise ValueError(f"moa_col: no MOA of column {moa_col!r} has {min_compounds} or more compounds "
                         f"(of {compound_col!r}) outside the controls; nothing to evaluate")
    if keep_controls:
        keep |= ctrl
    rows = np.flatnonzero(keep)
    return meta.iloc[rows].reset_index(drop=True), np.asarray(prof.feats)[rows]
