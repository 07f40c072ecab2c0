"""The check every correction makes before it touches numbers: where the first missing or infinite entry is."""
from __future__ import annotations

import numpy as np


def require_finite(x: np.ndarray, what: str, row_label=lambda r: r, column_label=lambda c: c) -> None:
    """``ValueError`` naming ``what``, the value and the row / column (labels through the two callables) of the first
    entry of ``x`` that is NaN or infinite."""
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{what}: value {x[r, c]} in row {row_label(int(r))!r}, column {column_label(int(c))!r}; "
                         "drop or impute missing values first")
