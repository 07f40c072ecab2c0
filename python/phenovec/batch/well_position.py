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


def _groups(codes: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """The rows of each group code, in row order."""
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
    return [order[bounds[g]:bounds[g + 1]] for g in range(n_groups)]


def well_means(x: np.ndarray, wells, index=None, columns=None) -> tuple[list, np.ndarray]:
    """Per well position (sorted labels) the NaN-ignoring mean of each column: ``(labels, means)``. An infinite
    value is refused (pandas' mean would spread it over its well); errors name the row by ``index`` (its labels;
    default the positions) and the feature by ``columns``. One well's rows at a time: no table-sized temporaries."""
    label = (lambda r: r) if index is None else (lambda r: index[r])
    codes, labels = pd.factorize(pd.Series(wells), sort=True)
    if (codes < 0).any():
        raise ValueError(f"well position missing in row {label(int(np.argmax(codes < 0)))!r}; fill it or drop the row")
    x = np.asarray(x, dtype=np.float64)
    means = np.empty((len(labels), x.shape[1]))
    for g, rows in enumerate(_groups(codes, len(labels))):
        block = x[rows]
        inf = np.isinf(block)
        if inf.any():
            first = int(rows[np.argwhere(inf)[:, 0].min()])
            c = int(np.flatnonzero(np.isinf(x[first]))[0])
            raise ValueError(f"well-position mean: value {x[first, c]} in row {label(first)!r}, feature "
                             f"{c if columns is None else columns[c]!r}; an infinite value has no mean")
        counts = np.count_nonzero(~np.isnan(block), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[g] = np.nansum(block, axis=0) / counts
    return [v.item() if isinstance(v, np.generic) else v for v in labels], means


def subtract_well_means(x: np.ndarray, wells, labels: list, means: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """``x`` minus the mean of each row's well position (the labels fitted; another one raises ``KeyError``).
    ``in_place=True`` (``x`` a float64 array of the caller's own) subtracts in ``x`` itself: no second table."""
    index = {w: i for i, w in enumerate(labels)}
    rows = []
    for w in pd.Series(wells).tolist():
        if w not in index:
            raise KeyError(f"well position {w!r} has no fitted mean (fitted: {labels[:10]})")
        rows.append(index[w])
    codes = np.asarray(rows, dtype=np.int64)
    out = x if in_place and isinstance(x, np.ndarray) and x.dtype == np.float64 else np.array(x, dtype=np.float64)
    for lo in range(0, len(codes), _SLAB_ROWS):
        out[lo:lo + _SLAB_ROWS] -= means[codes[lo:lo + _SLAB_ROWS]]
    return out


_SLAB_ROWS = 16384  # rows subtracted at a time (their means gathered: a slab, not a table, of temporary memory)
