"""Outlier handling of the JUMP profiling recipe (``preprocessing.clean.remove_outliers``): drop every feature whose
99th percentile of absolute values (pandas ``quantile``, linear interpolation, missing values skipped) exceeds
``threshold`` (1e2), then clip the remaining features to ``[-threshold, threshold]``.

The recipe's clip is written ``dframe.loc[:, cols].clip(..., inplace=True)``, which clips a copy and so changes
nothing (pandas chained assignment): ``clip=False`` reproduces the recipe's actual output, ``clip=True`` (default)
what it means to do."""
from __future__ import annotations

import numpy as np


def outlier_features(x: np.ndarray, threshold: float = 100.0) -> np.ndarray:
    """Boolean mask of the columns whose 99th percentile of ``|x|`` (NaN skipped) is above ``threshold``."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column has no percentile: kept
            q = np.nanpercentile(a, 99, axis=0, method="linear")
    return q > threshold
