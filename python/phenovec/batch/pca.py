"""PCA keeping a fraction of the variance (JUMP profiling recipe, ``correct.corrections.transform_data``:
``sklearn.decomposition.PCA(0.98).fit_transform``): the smallest number of components whose explained-variance ratios
sum to more than ``variance``, on the centred features; outputs named ``PC1..PCk``."""
from __future__ import annotations

import numpy as np

from phenovec.batch.finite import require_finite
from phenovec.batch.fit_record import BatchFit


def fit_pca(x: np.ndarray, variance: float = 0.98) -> BatchFit:
    """sklearn's PCA(``variance``) fitted on ``x``; the fit keeps its mean and components."""
    from sklearn.decomposition import PCA

    if not (isinstance(variance, (int, float)) and 0 < variance < 1):
        raise ValueError(f"variance must be a fraction in (0, 1), got {variance!r}")
    x = np.asarray(x, dtype=np.float64)
    require_finite(x, "PCA")
    p = PCA(n_components=variance).fit(x)
    return BatchFit("pca", {"variance": float(variance), "n_components": int(p.n_components_),
                            "explained_variance_ratio": [float(v) for v in p.explained_variance_ratio_]},
                    {"mean": p.mean_, "components": p.components_})


def apply_pca(fit: BatchFit, x: np.ndarray, in_place: bool = False, dtype=np.float64) -> np.ndarray:
    """The scores ``(x - mean) @ components.T``; ``in_place=True`` centres ``x`` itself (a float64 array the caller
    owns and no longer needs) instead of a centred copy, one float64 table less at the peak. ``dtype=np.float32``:
    each slab of rows is projected in float64 and stored rounded once to float32, with no float64 scores table."""
    if in_place and isinstance(x, np.ndarray) and x.dtype == np.float64 and x.flags.writeable:
        x -= fit.arrays["mean"]
        centred = x
    else:
        centred = np.asarray(x, dtype=np.float64) - fit.arrays["mean"]
    components = fit.arrays["components"]
    if np.dtype(dtype) == np.float64:
        return centred @ components.T
    out = np.empty((centred.shape[0], components.shape[0]), dtype=dtype)
    for lo in range(0, centred.shape[0], _SLAB_ROWS):
        out[lo:lo + _SLAB_ROWS] = centred[lo:lo + _SLAB_ROWS] @ components.T
    return out


_SLAB_ROWS = 16384  # rows projected at a time when the scores are stored in float32
