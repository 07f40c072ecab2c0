"""The one exact k-nearest-neighbour graph every kNN metric of the integration benchmark reads.

``knn_graph(X, n_neighbors)`` returns a :class:`KnnGraph` with the attribute names of scib-metrics'
``NeighborsResults`` (``indices``, ``distances``, ``n_samples``, ``n_neighbors``, ``subset_neighbors``,
``knn_graph_distances``, ``knn_graph_connectivities``), so a metric takes either object, and scib-metrics'
functions accept ours. Each row lists itself first (distance 0), then its neighbours by increasing Euclidean
distance, ties by increasing row number.

How (phenovec's Rust similarity engine returns similarity blocks, not top-k lists, so the graph is built here):
the rows are centred and :func:`~phenovec.evaluate.integration.distance_pass.distance_pass` keeps each row's
``k + 8`` smallest squared distances (cache-sized BLAS tiles, ``|x|^2 + |y|^2 - 2 x.y`` in the input's float
type); those candidates' distances are then recomputed directly in float64 (``sqrt(sum (x - y)^2)``) and the
``k`` smallest kept. The result is the exact
kNN graph unless the float rounding of the screening product reorders a row's ``k``-th and ``k + 8``-th
neighbour (not seen in practice). Cost: ``O(n^2 d)`` (BLAS) + ``O(n^2)`` selection; memory ``O(n k)``.

``knn_graph_connectivities`` is UMAP's fuzzy simplicial set (umap-learn 0.5's ``fuzzy_simplicial_set`` with
``set_op_mix_ratio = local_connectivity = 1``, as scib-metrics calls it): the same float32 arithmetic in
Numba, then the same scipy set operations.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.sparse as sp

from phenovec.evaluate.integration.annotations import embedding_matrix
from phenovec.evaluate.integration.distance_pass import TILE, distance_pass, screen_sizes



@numba.njit(parallel=True, cache=True)
def _refine(X, cand, k, out_idx, out_dist):
    n, kk = cand.shape
    d_feat = X.shape[1]
    for i in numba.prange(n):
        dist = np.empty(kk, dtype=np.float64)
        idx = np.empty(kk, dtype=np.int64)
        for c in range(kk):
            j = cand[i, c]
            s = 0.0
            for f in range(d_feat):
                t = np.float64(X[i, f]) - np.float64(X[j, f])
                s += t * t
            dist[c] = np.sqrt(s)
            idx[c] = j
        # insertion sort by (distance, not self, index)
        for a in range(1, kk):
            dv = dist[a]
            iv = idx[a]
            sv = 0 if iv == i else 1
            p = a
            while p > 0:
                dq = dist[p - 1]
                iq = idx[p - 1]
                sq = 0 if iq == i else 1
                if dq > dv or (dq == dv and (sq > sv or (sq == sv and iq > iv))):
                    dist[p] = dq
                    idx[p] = iq
                    p -= 1
                else:
                    break
            dist[p] = dv
            idx[p] = iv
        for c in range(k):
            out_idx[i, c] = idx[c]
            out_dist[i, c] = dist[c]


def knn_graph(X, n_neighbors: int = 90, *, tile: int = TILE) -> "KnnGraph":
    """Exact Euclidean ``n_neighbors``-nearest-neighbour graph of the rows of ``X`` (self included, first)."""
    x = embedding_matrix(X)
    k, kk = screen_sizes(n_neighbors, x.shape[0])
    xc = (x - x.mean(axis=0, dtype=np.float64)).astype(x.dtype)
    norms = np.einsum("ij,ij->i", xc, xc, dtype=np.float64)
    cand = distance_pass(xc, norms, kk, tile=tile)[0]
    return refined_graph(x, cand, k)


def refined_graph(x: np.ndarray, cand: np.ndarray, k: int) -> "KnnGraph":
    """The graph of each row's ``k`` nearest among its screened candidates, on float64 distances."""
    n = x.shape[0]
    idx = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float64)
    _refine(x, cand, k, idx, dist)
    return KnnGraph(indices=idx, distances=dist)


@dataclass
class KnnGraph:
    """kNN lists (``indices``, ``distances``: n x k, self first), as scib-metrics' ``NeighborsResults``."""

    indices: np.ndarray
    distances: np.ndarray
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.indices = np.asarray(self.indices)
        self.distances = np.asarray(self.distances)
        if self.indices.shape != self.distances.shape or self.indices.ndim != 2:
            raise ValueError(f"indices {self.indices.shape} and distances {self.distances.shape} must be the same "
                             f"n x k shape")

    @property
    def n_samples(self) -> int:
        return self.indices.shape[0]

    @property
    def n_neighbors(self) -> int:
        return self.indices.shape[1]

    def subset_neighbors(self, n: int) -> "KnnGraph":
        """The first ``n`` neighbours of every row (self included)."""
        if n > self.n_neighbors:
            raise ValueError(f"n = {n} neighbours asked of a graph with {self.n_neighbors}")
        return KnnGraph(indices=self.indices[:, :n], distances=self.distances[:, :n])

    @property
    def knn_graph_distances(self) -> sp.csr_matrix:
        """n x n CSR matrix holding each row's kNN distances (self edges stored, as zeros)."""
        if "dist" not in self._cache:
            n, k = self.indices.shape
            rowptr = np.arange(0, n * k + 1, k)
            self._cache["dist"] = sp.csr_matrix((self.distances.ravel(), self.indices.ravel(), rowptr), shape=(n, n))
        return self._cache["dist"]

    @property
    def knn_graph_connectivities(self) -> sp.csr_matrix:
        """UMAP connectivities (fuzzy union of the directed kNN memberships)."""
        if "conn" not in self._cache:
            self._cache["conn"] = fuzzy_connectivities(self.indices, self.distances)
        return self._cache["conn"]


def as_neighbors(X, key: str = "X") -> KnnGraph:
    """A :class:`KnnGraph` from ours or any object with ``indices`` and ``distances`` (scib's NeighborsResults)."""
    if isinstance(X, KnnGraph):
        return X
    if hasattr(X, "indices") and hasattr(X, "distances"):
        return KnnGraph(indices=np.asarray(X.indices), distances=np.asarray(X.distances))
    raise TypeError(f"{key}: expected a kNN graph (phenovec.evaluate.integration.knn_graph(...) or scib-metrics' "
                    f"NeighborsResults), got {type(X).__name__}")


# ---- UMAP connectivities (umap-learn 0.5.x fuzzy_simplicial_set, same float32 arithmetic) ----------------------
_SMOOTH_K_TOLERANCE = 1e-5
_MIN_K_DIST_SCALE = 1e-3
_NPY_FLOATMAX = np.finfo(np.float32).max


@numba.njit(locals={"psum": numba.types.float32, "lo": numba.types.float32, "mid": numba.types.float32,
                    "hi": numba.types.float32}, parallel=True, cache=True)
def _smooth_knn_dist(distances, k, n_iter=64, local_connectivity=1.0, bandwidth=1.0):
    target = np.log2(k) * bandwidth
    rho = np.zeros(distances.shape[0], dtype=np.float32)
    result = np.zeros(distances.shape[0], dtype=np.float32)
    mean_distances = np.mean(distances)
    for i in numba.prange(distances.shape[0]):
        lo = 0.0
        hi = _NPY_FLOATMAX
        mid = 1.0
        ith_distances = distances[i]
        non_zero_dists = ith_distances[ith_distances > 0.0]
        if non_zero_dists.shape[0] >= local_connectivity:
            index = int(np.floor(local_connectivity))
            interpolation = local_connectivity - index
            if index > 0:
                rho[i] = non_zero_dists[index - 1]
                if interpolation > _SMOOTH_K_TOLERANCE:
                    rho[i] += interpolation * (non_zero_dists[index] - non_zero_dists[index - 1])
            else:
                rho[i] = interpolation * non_zero_dists[0]
        elif non_zero_dists.shape[0] > 0:
            rho[i] = np.max(non_zero_dists)
        for n in range(n_iter):
            psum = 0.0
            for j in range(1, distances.shape[1]):
                d = distances[i, j] - rho[i]
                if d > 0:
                    psum += np.exp(-(d / mid))
                else:
                    psum += 1.0
            if np.fabs(psum - target) < _SMOOTH_K_TOLERANCE:
                break
            if psum > target:
                hi = mid
                mid = (lo + hi) / 2.0
            else:
                lo = mid
                if hi >= _NPY_FLOATMAX:
                    mid *= 2
                else:
                    mid = (lo + hi) / 2.0
        result[i] = mid
        if rho[i] > 0.0:
            mean_ith_distances = np.mean(ith_distances)
            if result[i] < _MIN_K_DIST_SCALE * mean_ith_distances:
                result[i] = _MIN_K_DIST_SCALE * mean_ith_distances
        else:
            if result[i] < _MIN_K_DIST_SCALE * mean_distances:
                result[i] = _MIN_K_DIST_SCALE * mean_distances
    return result, rho


@numba.njit(locals={"sigmas": numba.types.float32[::1], "rhos": numba.types.float32[::1],
                    "val": numba.types.float32}, parallel=True, cache=True)
def _membership_strengths(knn_indices, knn_dists, sigmas, rhos):
    n_samples = knn_indices.shape[0]
    n_neighbors = knn_indices.shape[1]
    rows = np.zeros(knn_indices.size, dtype=np.int32)
    cols = np.zeros(knn_indices.size, dtype=np.int32)
    vals = np.zeros(knn_indices.size, dtype=np.float32)
    for i in range(n_samples):
        for j in range(n_neighbors):
            if knn_indices[i, j] == -1:
                continue
            if knn_indices[i, j] == i:
                val = 0.0
            elif knn_dists[i, j] - rhos[i] <= 0.0 or sigmas[i] == 0.0:
                val = 1.0
            else:
                val = np.exp(-((knn_dists[i, j] - rhos[i]) / (sigmas[i])))
            rows[i * n_neighbors + j] = i
            cols[i * n_neighbors + j] = knn_indices[i, j]
            vals[i * n_neighbors + j] = val
    return rows, cols, vals


def fuzzy_connectivities(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """UMAP's symmetric fuzzy connectivities of a kNN graph (float32 CSR, as scib-metrics / scanpy)."""
    n, k = indices.shape
    d32 = np.ascontiguousarray(distances, dtype=np.float32)
    sigmas, rhos = _smooth_knn_dist(d32, float(k), 64, 1.0, 1.0)
    rows, cols, vals = _membership_strengths(np.ascontiguousarray(indices), d32, sigmas, rhos)
    result = sp.coo_matrix((vals, (rows, cols)), shape=(n, n))
    result.eliminate_zeros()
    transpose = result.transpose()
    prod = result.multiply(transpose)
    result = 1.0 * (result + transpose - prod) + (1.0 - 1.0) * prod
    result.eliminate_zeros()
    return result.tocsr()
