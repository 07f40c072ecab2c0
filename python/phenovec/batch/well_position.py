"""Well-position mean subtraction (JUMP profiling recipe, ``correct.corrections.subtract_well_mean``): subtract from
every feature its mean over all rows in the same well position (``Metadata_Well``, across plates), the mean
ignoring missing values (pandas ``groupby().transform("mean")``); a missing value stays missing."""
from __future__ import annotations

import numpy as np
import pandas as pd


def well_means(x: np.ndarray, wells) -> tuple[list, np.ndarray]:
    """Per well position (sorted labels) the NaN-ignoring mean of each column: ``(labels, means)``."""
    codes, labels = pd.factorize(pd.Series(wells), sort=True)
    if (codes < 0).any():
        raise ValueError(f"well position missing in row {int(np.argmax(codes < 0))}; fill it or drop the row")
    x = np.asarray(x, dtype=np.float64)
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
