"""Cluster-label agreement: ``nmi_ari_cluster_labels_kmeans`` and ``nmi_ari_cluster_labels_leiden``.

Definitions: scib-metrics 0.6.1's. NMI (arithmetic normalisation) and ARI (scikit-learn's) between the labels
and a clustering of the embedding:

- k-means with ``k`` = the number of labels, scib-metrics' :class:`KMeans`: rows centred, k-means++ seeding
  (first centre uniform, then ``2 + floor(log k)`` candidates drawn without replacement with probability
  proportional to the squared distance to the nearest chosen centre, the one lowering the potential most
  kept), Lloyd iterations in which an empty cluster's centre becomes the origin (the data mean), run for
  ``max_iter = 300`` iterations and on while the inertia still moves by more than ``tol`` x mean feature
  variance (scib-metrics' loop condition); here the loop stops early at a fixed point, which changes nothing.
  scib-metrics draws the seeding from JAX's random generator, which NumPy cannot reproduce: phenovec draws it
  from ``numpy.random.default_rng(seed)``; given the same initial centres (``init=`` an array, as the tests
  pass scib-metrics' own seeding) the clustering, NMI and ARI are identical.
- Leiden (igraph, modularity, on the UMAP connectivities of the 15-NN graph, seeded): the best NMI over the
  resolutions 0.2, 0.4, ..., 2.0 and the ARI of that resolution. Needs python-igraph.
"""
from __future__ import annotations

import random

import numba
import numpy as np
from sklearn.metrics.cluster import adjusted_rand_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from phenovec.evaluate.integration.annotations import annotation_codes, embedding_matrix
from phenovec.evaluate.integration.knn_graph import as_neighbors


@numba.njit(parallel=True, cache=True)
def _assign_kernel(P, xx, cc, labels, mind):
    n, k = P.shape
    for i in numba.prange(n):
        best = np.inf
        arg = 0
        for c in range(k):
            d = xx[i] + cc[c] - 2.0 * P[i, c]
            if d < 0.0:
                d = 0.0
            if d < best:
                best = d
                arg = c
        labels[i] = arg
        mind[i] = best


@numba.njit(cache=True)
def _centre_sums(X, labels, k):
    sums = np.zeros((k, X.shape[1]))
    for i in range(X.shape[0]):
        sums[labels[i]] += X[i]
    return sums


def _assign(X: np.ndarray, C: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(nearest centre, its squared distance)`` per row: ``argmin`` / ``min`` of :func:`_sq_dists`, fused."""
    labels = np.empty(X.shape[0], dtype=np.int64)
    mind = np.empty(X.shape[0])
    with threadpool_limits(1):  # an n x k product: a second BLAS thread costs more than it brings
        P = X @ C.T
    _assign_kernel(P, xx, np.einsum("ij,ij->i", C, C), labels, mind)
    return labels, mind


def _sq_dists(X: np.ndarray, C: np.ndarray, xx: np.ndarray) -> np.ndarray:
    d = xx[:, None] + np.einsum("ij,ij->i", C, C)[None, :] - 2.0 * (X @ C.T)
    return np.maximum(d, 0.0)


def kmeans_plus_plus(X: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (scikit-learn's / scib-metrics' rule) of centred rows ``X``."""
    n = X.shape[0]
    xx = np.einsum("ij,ij->i", X, X)
    first = int(rng.integers(n))
    centres = [X[first]]
    min_d = _sq_dists(X, X[first][None, :], xx)[:, 0]
    trials = 2 + int(np.log(n_clusters))
    for _ in range(n_clusters - 1):
        p = min_d / min_d.sum() if min_d.sum() > 0 else np.full(n, 1.0 / n)
        size = min(trials, int((p > 0).sum()))
        cand = rng.choice(n, size=size, replace=False, p=p)
        d = np.minimum(min_d[None, :], _sq_dists(X, X[cand], xx).T)
        best = int(np.argmin(d.sum(axis=1)))
        min_d = d[best]
        centres.append(X[cand[best]])
    return np.stack(centres)


class KMeans:
    """k-means as scib-metrics' ``KMeans`` (one initialisation; ``init`` may be an array of centres)."""

    def __init__(self, n_clusters: int = 8, init="k-means++", n_init: int = 1, max_iter: int = 300,
                 tol: float = 1e-4, seed: int = 0):
        if isinstance(init, str) and init not in ("k-means++", "random"):
            raise ValueError("Invalid init method, must be one of ['k-means++' or 'random'] or an array of centres.")
        self.n_clusters, self.init, self.n_init, self.max_iter = n_clusters, init, n_init, max_iter
        self.tol_scale, self.seed = tol, seed

    def fit(self, X):
        X = embedding_matrix(X).astype(np.float64)
        if self.n_clusters > X.shape[0]:
            raise ValueError(f"n_clusters = {self.n_clusters} exceeds the number of rows ({X.shape[0]})")
        tol = float(np.mean(np.var(X, axis=0)) * self.tol_scale)
        mean = X.mean(axis=0)
        Xc = X - mean
        xx = np.einsum("ij,ij->i", Xc, Xc)
        rng = np.random.default_rng(self.seed)
        best = None
        for _ in range(self.n_init):
            if isinstance(self.init, str):
                C = (kmeans_plus_plus(Xc, self.n_clusters, rng) if self.init == "k-means++"
                     else Xc[rng.choice(Xc.shape[0], self.n_clusters, replace=False)])
            else:
                C = np.asarray(self.init, dtype=np.float64) - mean
                if C.shape != (self.n_clusters, X.shape[1]):
                    raise ValueError(f"init: expected centres of shape {(self.n_clusters, X.shape[1])}, got {C.shape}")
            C, inertia = self._lloyd(Xc, C, xx, tol)
            if best is None or inertia < best[1]:
                best = (C, inertia)
        C, inertia = best
        self.labels_ = _assign(Xc, C, xx)[0]
        self.cluster_centroids_ = C + mean
        self.inertia_ = inertia
        return self

    def _lloyd(self, X, C, xx, tol):
        k = self.n_clusters
        old, n_iter, prev_labels = np.inf, 0, None
        while True:
            labels, mind = _assign(X, C, xx)
            inertia = float(mind.sum())
            if prev_labels is not None and np.array_equal(labels, prev_labels):
                break  # fixed point: further iterations reproduce C exactly
            counts = np.maximum(np.bincount(labels, minlength=k), 1)
            C = _centre_sums(X, labels, k) / counts[:, None]
            n_iter += 1
            if not (abs(old - inertia) > tol or n_iter < self.max_iter):
                break
            old, prev_labels = inertia, labels
        return C, float(_assign(X, C, xx)[1].sum())


def nmi_ari_cluster_labels_kmeans(X, labels, *, seed: int = 0, init="k-means++") -> dict[str, float]:
    """NMI and ARI between the labels and k-means (k = number of labels) of ``X``."""
    x = embedding_matrix(X)
    lab = annotation_codes(labels, "labels", x.shape[0])[0]
    pred = KMeans(int(lab.max()) + 1, init=init, seed=seed).fit(x).labels_
    return {"nmi": float(normalized_mutual_info_score(lab, pred, average_method="arithmetic")),
            "ari": float(adjusted_rand_score(lab, pred))}


def _leiden(conn, resolution: float, seed: int) -> np.ndarray:
    try:
        import igraph
    except ModuleNotFoundError as e:  # pragma: no cover - igraph ships with scib-metrics' stack
        raise ModuleNotFoundError("nmi_ari_cluster_labels_leiden needs python-igraph (pip install igraph)",
                                  name=e.name) from e
    igraph.set_random_number_generator(random.Random(seed))
    g = igraph.Graph.Weighted_Adjacency(conn, mode="directed")
    g.to_undirected(mode="each")
    return np.asarray(g.community_leiden(objective_function="modularity", weights="weight",
                                         resolution=resolution).membership)


def nmi_ari_cluster_labels_leiden(X, labels, optimize_resolution: bool = True, resolution: float = 1.0,
                                  n_jobs: int = 1, seed: int = 42) -> dict[str, float]:
    """NMI / ARI of Leiden clusters of the kNN graph's connectivities (best NMI over 10 resolutions)."""
    g = as_neighbors(X)
    lab = annotation_codes(labels, "labels", g.n_samples)[0]
    conn = g.knn_graph_connectivities
    res = [2 * x / 10 for x in range(1, 11)] if optimize_resolution else [resolution]
    out = []
    for r in res:
        pred = _leiden(conn, r, seed)
        out.append((normalized_mutual_info_score(lab, pred, average_method="arithmetic"), adjusted_rand_score(lab, pred)))
    out = np.array(out)
    i = int(np.argmax(out[:, 0]))
    return {"nmi": float(out[i, 0]), "ari": float(out[i, 1])}
