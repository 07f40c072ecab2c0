"""Well-position mean subtraction (JUMP profiling recipe, ``correct.corrections.subtract_well_mean``): subtract from
every feature its mean over all rows in the same well position (``Metadata_Well``, across plates), the mean
ignoring missing values (pandas ``groupby().transform("mean")``); a missing value stays missing.

Difference: before the means, the recipe drops every row with a missing feature when fewer than 100 rows have one
(``drop_rows_with_na_features``, called by its ``subtract_well_mean``), so those rows leave the output and their other features leave the means.
phenovec keeps every row: a missing value is skipped in its own feature's mean only, the row's other features
count, and the row is corrected like the others."""
from __future__ import annotations

import numpy as np
import pandas as pd


def well_means(x: np.ndarray, wells, index=None, columns=None) -> tuple[list, np.ndarray]:
    """Per well position (sorted labels) the NaN-ignoring mean of each column: ``(labels, means)``. An infinite
    value is refused (pandas' mean would spread it over its well); errors name the row by ``index`` (its labels;
    default the positions) and the feature by ``columns``."""
    label = (lambda r: r) if index is None else (lambda r: index[r])
    codes, labels = pd.factorize(pd.Series(wells), sort=True)
    if (codes < 0).any():
        raise ValueError(f"well position missing in row {label(int(np.argmax(codes < 0)))!r}; fill it or drop the row")
    x = np.asarray(x, dtype=np.float64)
    if np.isinf(x).any():
        r, c = np.argwhere(np.isinf(x))[0]
        raise ValueError(f"well-position mean: value {x[r, c]} in row {label(int(r))!r}, feature "
                         f"{int(c) if columns is None else columns[int(c)]!r}; an infinite "
                         "value has no mean")
    ok = np.isfinite(x)
    sums = np.zeros((len(labels), x.shape[1]))
    counts = np.zeros((len(labels), x.shape[1]))
    np.add.at(sums, codes, np.where(ok, x, 0.0))
    np.add.at(counts, codes, ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return [v.item() if isinstance(v, np.generic) else v for v in labels], means


def subtract_well_means(x: np.ndarray, wells, labels: list, means: np.ndarray) -> np.ndarray:
    """``x`` minus the mean of each row's well position (the labels fitted; another one raises ``KeyError``)."""
    index = {w: i for i, w in enumerate(labels)}
    rows = []
    for w in pd.Series(wells).tolist():
        if w not in index:
            raise KeyError(f"well position {w!r} has no fitted mean (fitted: {labels[:10]})")
        rows.append(index[w])
    return np.asarray(x, dtype=np.float64) - means[np.asarray(rows, dtype=np.int64)]
