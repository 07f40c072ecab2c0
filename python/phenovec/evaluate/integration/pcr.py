"""Principal component regression: ``principal_component_regression`` and ``pcr_comparison``.

Definitions: scib-metrics 0.6.1's (Buttner et al. 2018); a constant covariate (one batch) is an error, as there.
PCR = ``sum_k var_k R2_k / sum_k var_k`` over the principal components ``k`` of ``X``, ``R2_k`` of regressing PC
``k`` on the covariate (one-hot if ``categorical``, centred, no intercept). ``pcr_comparison`` =
``(PCR_pre - PCR_post) / PCR_pre`` clipped at 0 with a warning (``scale=True``; higher = more batch variance
removed), or ``PCR_post - PCR_pre``. Undefined (:class:`UndefinedMetricError`, where scib-metrics returns NaN or
divides by zero): an embedding without variance, and with ``scale=True`` a baseline whose PCR is at most
``PCR_FLOOR`` (e.g. profiles standardised per plate: no batch variance left to remove, and the quotient of two
rounding errors, 1e-33 / 1e-33, is noise that min-max scaling stretched into a ranking).

How: with every component (``n_components=None``, as scib-metrics and its Benchmarker call it), the PCs are an
orthogonal rotation of the centred data, so ``sum_k var_k R2_k`` is the covariate's explained sum of squares
of the whole centred matrix over ``n - 1``: for a categorical covariate the between-group sum of squares
``sum_b n_b |mean_b - mean|^2``, for a numeric one ``|X_c^T c|^2 / |c|^2``; PCR is that over the total sum of
squares. No SVD is needed (``O(n d)``, float64). With ``n_components`` the top components come from the
eigendecomposition of the ``d x d`` scatter matrix and ``R2_k`` is computed per component.
"""
from __future__ import annotations

import warnings

import numpy as np

from phenovec.evaluate.integration.annotations import annotation_codes, embedding_matrix
from phenovec.evaluate.integration.undefined import UndefinedMetricError

#: a baseline PCR (a share of variance) at or below this is rounding error: ``pcr_comparison`` is undefined
PCR_FLOOR = 1e-12


def principal_component_regression(X, covariate, categorical: bool = False, n_components: int | None = None) -> float:
    """Share of ``X``'s variance (over its principal components) explained by ``covariate``."""
    x = embedding_matrix(X).astype(np.float64)
    n, d = x.shape
    cov = np.asarray(covariate)
    if cov.shape[0] != n:
        raise ValueError(f"covariate: {cov.shape[0]} values for {n} rows of X")
    max_comp = min(n, d)
    if n_components is not None and n_components > max_comp:
        raise ValueError(f"n_components = {n_components} must be <= min(n_rows, n_features) = {max_comp}")
    flat = cov.reshape(n, -1)
    if n and (flat == flat[:1]).all():
        raise UndefinedMetricError(f"covariate: every row has the value {flat.ravel()[0]!r}: principal component "
                                   f"regression is undefined for a constant covariate (e.g. a single batch), as there "
                                   f"is no variance to regress against")
    xc = x - x.mean(axis=0)
    if categorical:
        codes = annotation_codes(cov.ravel(), "covariate", n)[0]
        onehot = None
    else:
        try:
            c = cov.reshape(n, -1).astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError("covariate: not numeric; give categorical=True for labels such as batches") from None
        if c.shape[1] != 1:
            raise ValueError(f"covariate: a numeric covariate must be one column, got shape {cov.shape}")
        if not np.isfinite(c).all():
            r = int(np.flatnonzero(~np.isfinite(c[:, 0]))[0])
            raise ValueError(f"covariate: value {c[r, 0]} in row {r} ({int((~np.isfinite(c)).sum())} non-finite); "
                             "drop or fill those rows first")
        c = c[:, 0] - c[:, 0].mean()
    if n_components is None or n_components >= max_comp:
        tss = float(np.einsum("ij,ij->", xc, xc))
        if categorical:
            sums = np.zeros((codes.max() + 1, d))
            np.add.at(sums, codes, xc)
            counts = np.bincount(codes).astype(np.float64)
            ess = float(np.sum(np.einsum("ij,ij->i", sums, sums) / counts))
        else:
            cc = float(c @ c)
            ess = 0.0 if cc == 0 else float(np.sum((xc.T @ c) ** 2) / cc)
        if not tss > 0:
            raise UndefinedMetricError("X: every row is the same: principal component regression (a share of "
                                       "variance) is undefined without variance")
        return ess / tss
    # top n_components through the d x d scatter matrix
    if not np.einsum("ij,ij->", xc, xc) > 0:
        raise UndefinedMetricError("X: every row is the same: principal component regression (a share of "
                                   "variance) is undefined without variance")
    w, v = np.linalg.eigh(xc.T @ xc)
    top = np.argsort(w)[::-1][:n_components]
    coords = xc @ v[:, top]
    tss_k = np.einsum("ij,ij->j", coords, coords)
    if categorical:
        sums = np.zeros((codes.max() + 1, coords.shape[1]))
        np.add.at(sums, codes, coords)
        ess_k = np.sum(sums**2 / np.bincount(codes)[:, None], axis=0)
    else:
        cc = float(c @ c)
        ess_k = np.zeros(coords.shape[1]) if cc == 0 else (coords.T @ c) ** 2 / cc
    r2 = np.maximum(0, 1 - (tss_k - ess_k) / tss_k)
    var = tss_k / (n - 1)
    return float(r2 @ var / var.sum())


def pcr_comparison(X_pre, X_post, covariate, scale: bool = True, **kwargs) -> float:
    """Reduction of the covariate's PCR from ``X_pre`` (before integration) to ``X_post`` (after)."""
    n_pre = np.shape(X_pre)[0]
    if np.shape(X_post)[0] != n_pre:
        raise ValueError("Dimension mismatch: `X_pre` and `X_post` must have the same number of samples.")
    if np.shape(covariate)[0] != n_pre:
        raise ValueError("Dimension mismatch: `X_pre` and `covariate` must have the same number of samples.")
    pre = principal_component_regression(X_pre, covariate, **kwargs)
    post = principal_component_regression(X_post, covariate, **kwargs)
    if scale:
        if not pre > PCR_FLOOR:
            raise UndefinedMetricError(
                f"pcr_comparison: the covariate explains {pre:.3g} of X_pre's variance (rounding error at most): "
                "there is no batch variance to remove, so the share removed is undefined (scib-metrics divides by it "
                "anyway: 0 / 0, or rounding noise that min-max scaling then stretches to 0 or 1)")
        out = (pre - post) / pre
        if out < 0:
            warnings.warn("PCR comparison score is negative, meaning variance contribution increased after "
                          "integration. Setting to 0.")
            out = 0.0
        return float(out)
    return float(post - pre)
