"""TVN, typical variation normalisation (EFAAR, Celik et al. 2024, Recursion's ``efaar_benchmarking``): PCA fitted on
the control rows, then per-batch CORAL (Sun et al. 2016) alignment of each batch's control covariance to the
controls'.

Peer: ``efaar_benchmarking.efaar.tvn_on_controls``:

1. standardise by the controls (sklearn ``StandardScaler`` fitted on the control rows: mean, population sd, a zero
   sd taken as 1);
2. ``PCA()`` (all components, sklearn, full SVD) fitted on the control rows, applied to every row;
3. standardise by the controls again;
4. per batch b: ``x @ (C_b + lambda I)^(-1/2)`` with ``C_b`` the covariance (ddof 1) of b's control rows and
   ``lambda = regularization`` (0.5 in the peer).

``target="controls"`` (default here: CORAL proper) then recolours every batch with ``(C + lambda I)^(1/2)``, ``C``
the covariance of all control rows after step 3; ``target="identity"`` stops after the whitening, as the peer
does. With ``regularization=0`` each batch's control covariance after TVN equals ``C`` exactly (tested). Matrix
powers of the symmetric positive-definite covariances by ``eigh`` (the peer: ``scipy.linalg.fractional_matrix_power``,
equal up to rounding).

Refused (``ValueError`` naming the batch): a batch with fewer than 2 control rows (its covariance is undefined);
fewer than 2 control rows in all; a batch covariance that is not positive definite with ``regularization=0``.
"""
from __future__ import annotations

import numpy as np

from phenovec.batch.fit_record import BatchFit


def _scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sklearn ``StandardScaler`` (the peer's): mean, population sd, (near-)constant columns scaled by 1."""
    from sklearn.preprocessing import StandardScaler

    s = StandardScaler().fit(x)
    return s.mean_, s.scale_


def _spd_power(c: np.ndarray, power: float, what: str) -> np.ndarray:
    lam, v = np.linalg.eigh(c)
    if lam.min() <= lam.max() * 1e-12:
        raise ValueError(f"TVN: the covariance of {what} is not positive definite (smallest eigenvalue {lam.min():.3g}); "
                         "use regularization > 0 or more control rows")
    return (v * lam**power) @ v.T


def fit_tvn(x: np.ndarray, controls: np.ndarray, batches: np.ndarray | None = None, regularization: float = 0.5,
            target: str = "controls") -> BatchFit:
    """Fit TVN on ``x`` (n x d floats): ``controls`` a boolean row mask, ``batches`` one label per row (None: no CORAL
    step). Returns a :class:`BatchFit` (``apply_tvn`` applies it)."""
    if target not in ("controls", "identity"):
        raise ValueError(f"target must be 'controls' or 'identity', got {target!r}")
    if not (np.isfinite(regularization) and regularization >= 0):
        raise ValueError(f"regularization must be a finite number >= 0, got {regularization!r}")
    x = np.asarray(x, dtype=np.float64)
    controls = np.asarray(controls, dtype=bool)
    if controls.sum() < 2:
        raise ValueError(f"TVN needs at least 2 control rows, got {int(controls.sum())}")
    from sklearn.decomposition import PCA

    m1, s1 = _scaler(x[controls])
    z = (x - m1) / s1
    pca = PCA(svd_solver="full").fit(z[controls])
    z = pca.transform(z)
    m2, s2 = _scaler(z[controls])
    z = (z - m2) / s2
    arrays = {"mean1": m1, "scale1": s1, "pca_mean": pca.mean_, "pca_components": pca.components_,
              "mean2": m2, "scale2": s2}
    labels: list = []
    if batches is not None:
        batches = np.asarray(batches)
        eye = np.eye(z.shape[1])
        tgt = _spd_power(np.cov(z[controls], rowvar=False, ddof=1) + regularization * eye, 0.5, "all control rows") \
            if target == "controls" else eye
        mats = []
        for b in _labels(batches):
            rows = (batches == b) & controls
            if rows.sum() < 2:
                raise ValueError(f"TVN: batch {b!r} has {int(rows.sum())} control row(s); CORAL needs at least 2 per batch")
            c = np.cov(z[rows], rowvar=False, ddof=1) + regularization * eye
            mats.append(_spd_power(c, -0.5, f"batch {b!r}'s control rows") @ tgt)
            labels.append(b.item() if isinstance(b, np.generic) else b)
        arrays["coral"] = np.stack(mats)
    return BatchFit("tvn", {"regularization": float(regularization), "target": target, "batches": labels,
                            "coral": batches is not None}, arrays)


def _labels(batches: np.ndarray) -> list:
    uniq = list(dict.fromkeys(batches.tolist()))
    try:
        return sorted(uniq)
    except TypeError:
        return uniq


def apply_tvn(fit: BatchFit, x: np.ndarray, batches: np.ndarray | None = None, in_place: bool = False) -> np.ndarray:
    """Apply a TVN fit to rows ``x`` (their batches among the fitted ones). ``in_place=True``: ``x`` (a float64
    array the caller owns and no longer needs) is standardised and centred in place, the same operations without
    one or two float64 copies of the table before the projection."""
    a = fit.arrays
    if in_place and isinstance(x, np.ndarray) and x.dtype == np.float64 and x.flags.writeable:
        x -= a["mean1"]
        x /= a["scale1"]
        x -= a["pca_mean"]
        z = x @ a["pca_components"].T
    else:
        z = (np.asarray(x, dtype=np.float64) - a["mean1"]) / a["scale1"]
        z = (z - a["pca_mean"]) @ a["pca_components"].T
    z -= a["mean2"]  # z is the projection's own new array
    z /= a["scale2"]
    if fit.params["coral"]:
        if batches is None:
            raise ValueError("this TVN fit has per-batch CORAL matrices: give the batch of every row")
        batches = np.asarray(batches)
        index = {b: i for i, b in enumerate(fit.params["batches"])}
        out = np.empty_like(z)
        for b in dict.fromkeys(batches.tolist()):
            if b not in index:
                raise KeyError(f"TVN fit has no batch {b!r} (fitted batches: {fit.params['batches'][:10]})")
            rows = batches == b
            out[rows] = z[rows] @ a["coral"][index[b]]
        z = out
    return z


def tvn(x: np.ndarray, controls: np.ndarray, batches: np.ndarray | None = None, regularization: float = 0.5,
        target: str = "controls") -> tuple[np.ndarray, BatchFit]:
    """Fit TVN and apply it to the same rows: ``(corrected, fit)``."""
    fit = fit_tvn(x, controls, batches, regularization, target)
    return apply_tvn(fit, x, batches), fit
