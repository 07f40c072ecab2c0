"""Batch and label annotations of an integration benchmark: checked once, coded as integers.

Every metric takes the batch and label values as arrays (one per row, as scib-metrics). A missing value
(NaN / None) is an error naming the key and the first row; a batch annotation with a single value is an
error (no metric of batch mixing is defined on one batch).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from phenovec.evaluate.similarity import as_features


def annotation_codes(values, key: str, n: int | None = None, *, min_levels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, levels)`` of one annotation: ``codes[i]`` indexes the sorted ``levels``.

    ``key`` names the annotation in errors (a column name such as ``Metadata_Plate``, or ``batch``).
    """
    s = pd.Series(np.asarray(values, dtype=object) if not isinstance(values, pd.Series) else values.to_numpy(),
                  copy=False)
    if n is not None and len(s) != n:
        raise ValueError(f"{key}: {len(s)} values for {n} rows")
    na = s.isna().to_numpy()
    if na.any():
        raise ValueError(f"{key}: missing value (NaN / None) at row {int(np.flatnonzero(na)[0])} "
                         f"({int(na.sum())} missing); drop or fill those rows first")
    codes, levels = pd.factorize(s, sort=True)
    if len(levels) < min_levels:
        raise ValueError(f"{key}: {len(levels)} distinct value(s) ({', '.join(map(str, levels[:3]))}); "
                         f"at least {min_levels} needed")
    return codes.astype(np.int64), np.asarray(levels)


def batch_codes(values, key: str = "batch", n: int | None = None) -> np.ndarray:
    """Integer batch codes; refuses NaN and a single batch."""
    return annotation_codes(values, key, n, min_levels=2)[0]


def label_codes(values, key: str = "labels", n: int | None = None) -> np.ndarray:
    """Integer label codes; refuses NaN."""
    return annotation_codes(values, key, n, min_levels=1)[0]


def embedding_matrix(X, key: str = "X") -> np.ndarray:
    """A finite 2-D float matrix (float32 and float64 kept, anything numeric as float64)."""
    try:
        x = as_features(X)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None
    if x.shape[0] < 2:
        raise ValueError(f"{key}: at least 2 rows needed, got {x.shape[0]}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        c = int(np.flatnonzero(~np.isfinite(x[r]))[0])
        raise ValueError(f"{key}: non-finite value {x[r, c]} (NaN / inf) in row {r}, column {c} "
                         f"({int(bad.sum())} such rows)")
    return np.ascontiguousarray(x)
