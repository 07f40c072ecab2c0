"""Local inverse Simpson index (LISI, Korsunsky et al. 2019): ``lisi_knn``, ``ilisi_knn``, ``clisi_knn``.

Definitions are scib-metrics 0.6.1's (``scib_metrics.metrics._lisi`` / ``utils._lisi``), on the same kNN
graph: for each row, a Gaussian kernel ``P_j = exp(-beta d_j)`` over its neighbours (self weight 0; ``d`` the
Euclidean kNN distances, not squared) whose entropy is matched to ``log(perplexity)`` by bisection on
``beta`` (start 1, double / halve until bracketed, stop when ``|H - log perplexity| < 1e-5`` or after 50
steps); Simpson index = ``sum_c (sum_{j in c} P_j)^2`` over the annotation's classes; LISI = 1 / Simpson
(-1 where the kernel vanished). ``perplexity`` defaults to ``floor(k / 3)``.

- ``ilisi_knn`` = median LISI over rows with batches, scaled ``(m - 1) / (B - 1)`` (higher = better mixed);
- ``clisi_knn`` = median LISI with labels, scaled ``(L - m) / (L - 1)`` (higher = purer neighbourhoods).

scib-metrics evaluates the bisection in JAX's default float32; so does this Numba kernel (same operations in
the same order), so the two agree to float32 rounding (the tests hold them to 1e-6).
"""
from __future__ import annotations

import numba
import numpy as np

from phenovec.evaluate.integration.annotations import batch_codes, label_codes
from phenovec.evaluate.integration.knn_graph import as_neighbors
from phenovec.evaluate.integration.undefined import UndefinedMetricError


@numba.njit(parallel=True, cache=True)
def _simpson(dists, idx, labels, n_labels, perplexity, tol):
    n, k = dists.shape
    out = np.empty(n, dtype=np.float32)
    logp = np.float32(np.log(perplexity))
    for i in numba.prange(n):
        d = dists[i]
        mask = np.empty(k, dtype=np.bool_)
        for j in range(k):
            mask[j] = idx[i, j] != i
        P = np.zeros(k, dtype=np.float32)
        beta = np.float32(1.0)
        betamin = -np.inf
        betamax = np.inf
        H = np.float32(0.0)
        tries = 0
        while True:
            sumP = np.float32(0.0)
            for j in range(k):
                P[j] = np.exp(-d[j] * beta) if mask[j] else np.float32(0.0)
                sumP += P[j]
            if sumP == 0:
                H = np.float32(0.0)
                for j in range(k):
                    P[j] = 0.0
            else:
                dp = np.float32(0.0)
                for j in range(k):
                    dp += d[j] * P[j]
                H = np.float32(np.log(sumP) + beta * dp / sumP)
                for j in range(k):
                    P[j] = P[j] / sumP
            Hdiff = H - logp
            if not (abs(Hdiff) >= tol and tries < 50):
                break
            if Hdiff > 0:
                betamin = beta
                beta = beta * 2 if betamax == np.inf else (beta + betamax) / 2
            else:
                betamax = beta
                beta = beta / 2 if betamin == -np.inf else (beta + betamin) / 2
            beta = np.float32(beta)
            tries += 1
        if H == 0:
            out[i] = -1.0
        else:
            sums = np.zeros(n_labels, dtype=np.float32)
            for j in range(k):
                sums[labels[idx[i, j]]] += P[j]
            s = np.float32(0.0)
            for c in range(n_labels):
                s += sums[c] * sums[c]
            out[i] = s
    return out


def lisi_knn(X, labels, perplexity: float | None = None) -> np.ndarray:
    """Per-row LISI of ``labels`` on the kNN graph ``X`` (scib-metrics' ``lisi_knn``)."""
    g = as_neighbors(X)
    codes = label_codes(labels, "labels", g.n_samples)
    if perplexity is None:
        perplexity = np.floor(g.n_neighbors / 3)
    if not perplexity > 0:
        raise ValueError(f"perplexity must be positive, got {perplexity} (k = {g.n_neighbors} neighbours)")
    n_labels = int(codes.max()) + 1
    simpson = _simpson(np.ascontiguousarray(g.distances, dtype=np.float32), np.ascontiguousarray(g.indices),
                       codes, n_labels, float(perplexity), np.float32(1e-5))
    return 1 / simpson


def ilisi_knn(X, batches, perplexity: float | None = None, scale: bool = True) -> float:
    """Integration LISI: median LISI of the batches, scaled to [0, 1] (1 = fully mixed)."""
    g = as_neighbors(X)
    codes = batch_codes(batches, "batches", g.n_samples)
    lisi = lisi_knn(g, codes, perplexity=perplexity)
    ilisi = float(np.nanmedian(lisi))
    if scale:
        nb = int(codes.max()) + 1
        ilisi = (ilisi - 1) / (nb - 1)
    return ilisi


def clisi_knn(X, labels, perplexity: float | None = None, scale: bool = True) -> float:
    """Cell-type (label) LISI: median LISI of the labels, scaled to [0, 1] (1 = pure neighbourhoods)."""
    g = as_neighbors(X)
    codes = label_codes(labels, "labels", g.n_samples)
    if codes.max() < 1 and scale:
        raise UndefinedMetricError("labels: a single label; clisi_knn's scaling (L - m) / (L - 1) needs at least 2")
    lisi = lisi_knn(g, codes, perplexity=perplexity)
    clisi = float(np.nanmedian(lisi))
    if scale:
        nl = int(codes.max()) + 1
        clisi = (nl - clisi) / (nl - 1)
    return clisi
