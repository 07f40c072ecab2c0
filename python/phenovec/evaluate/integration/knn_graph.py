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
``k`` smallest kept. Each row's list is then proved exact (:func:`certified_graph`): a left-out row ``j`` had a
screened value of at least the row's largest kept one ``h``, which is within ``(d + 8) eps (|x_i| + |x_j|)^2`` of
its true squared distance (the rounding bound of the product in the pass's float type), and a ``j`` with
``|x_j| > |x_i| + d_k`` is farther than ``d_k`` by the triangle inequality; so when ``d_k^2 < h - (d + 8) eps
(2 |x_i| + d_k)^2`` no left-out row is as near as the ``k``-th kept one. A row that this does not prove (float32
rows in tight clusters far from the centre, or many exact ties such as duplicated rows) is screened again from float64
products and proved the same way, and a row still not proved (ties at its ``k``-th distance) is recomputed from its
direct float64 distances to every row. Cost: ``O(n^2 d)`` (BLAS) + ``O(n^2)`` selection, plus ``O(n d)`` per recomputed
row; memory ``O(n k)``.

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
from phenovec.evaluate.integration.distance_pass import TILE, _sift_down, distance_pass, screen_sizes



@numba.njit(parallel=True, cache=True)
def _refine(X, rows, cand, k, out_idx, out_dist):
    """Row ``rows[t]``'s ``k`` nearest among its candidates ``cand[t]``, by direct float64 distances."""
    n, kk = cand.shape
    d_feat = X.shape[1]
    for t in numba.prange(n):
        i = rows[t]
        dist = np.empty(kk, dtype=np.float64)
        idx = np.empty(kk, dtype=np.int64)
        for c in range(kk):
            j = cand[t, c]
            s = 0.0
            for f in range(d_feat):
                u = np.float64(X[i, f]) - np.float64(X[j, f])
                s += u * u
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
            out_idx[t, c] = idx[c]
            out_dist[t, c] = dist[c]


@numba.njit(parallel=True, cache=True)
def _exact_rows(X, rows, k, out_idx, out_dist):
    """Each row of ``rows``: its ``k`` nearest among all rows by direct float64 distances, self first, then by
    distance, ties by row number (a bounded max-heap over every row, then sorted)."""
    n, d_feat = X.shape
    for t in numba.prange(rows.shape[0]):
        i = rows[t]
        hd = np.empty(k, dtype=np.float64)
        hi = np.empty(k, dtype=np.int64)
        for j in range(n):
            s = 0.0
            for f in range(d_feat):
                u = np.float64(X[i, f]) - np.float64(X[j, f])
                s += u * u
            key = -1.0 if j == i else np.sqrt(s)  # self first, whatever its duplicates
            if j < k:
                hd[j] = key
                hi[j] = j
                if j == k - 1:
                    for p in range(k // 2 - 1, -1, -1):
                        _sift_down(hd, hi, k, p, hd[p], hi[p])
            elif key < hd[0] or (key == hd[0] and j < hi[0]):
                _sift_down(hd, hi, k, 0, key, j)
        for a in range(k - 1, 0, -1):  # heap sort: largest last
            dv, iv = hd[a], hi[a]
            hd[a], hi[a] = hd[0], hi[0]
            _sift_down(hd, hi, a, 0, dv, iv)
        for c in range(k):
            out_idx[t, c] = hi[c]
            out_dist[t, c] = max(hd[c], 0.0)


def knn_graph(X, n_neighbors: int = 90, *, tile: int = TILE) -> "KnnGraph":
    """Exact Euclidean ``n_neighbors``-nearest-neighbour graph of the rows of ``X`` (self included, first)."""
    x = embedding_matrix(X)
    k, kk = screen_sizes(n_neighbors, x.shape[0])
    xc = (x - x.mean(axis=0, dtype=np.float64)).astype(x.dtype)
    norms = np.einsum("ij,ij->i", xc, xc, dtype=np.float64)
    p = distance_pass(xc, norms, kk, tile=tile)
    return certified_graph(x, p.candidates, p.screen, norms, k, xc.dtype)


def refined_graph(x: np.ndarray, cand: np.ndarray, k: int, rows: np.ndarray | None = None) -> "KnnGraph":
    """The graph of each row's ``k`` nearest among its screened candidates, on float64 distances (``rows``: the
    rows ``cand``'s lines belong to; default all, in order)."""
    rows = np.arange(x.shape[0], dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    idx = np.empty((len(rows), k), dtype=np.int64)
    dist = np.empty((len(rows), k), dtype=np.float64)
    _refine(x, rows, cand, k, idx, dist)
    return KnnGraph(indices=idx, distances=dist)


def _float64_screen(x: np.ndarray, rows: np.ndarray, kk: int, block: int = 128):
    """``(candidates, screen values, centred squared norms)`` of ``rows`` from float64 products (``x`` centred in
    float64; blocks of ``block`` rows against all)."""
    x64 = x.astype(np.float64)
    x64 -= x64.mean(axis=0)
    n64 = np.einsum("ij,ij->i", x64, x64)
    cand = np.empty((len(rows), kk), dtype=np.int64)
    screen = np.empty(len(rows))
    for a in range(0, len(rows), block):
        r = rows[a:a + block]
        d2 = n64[r][:, None] + n64[None, :] - 2.0 * (x64[r] @ x64.T)
        d2[np.arange(len(r)), r] = -1.0  # each row keeps itself
        part = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
        cand[a:a + len(r)] = part
        screen[a:a + len(r)] = np.take_along_axis(d2, part, axis=1).max(axis=1)
    if x.shape[0] <= kk:
        screen[:] = np.inf
    return cand, screen, n64[rows]


def uncertain_rows(g: "KnnGraph", screen: np.ndarray, norms: np.ndarray, d: int, dtype) -> np.ndarray:
    """The rows whose refined ``k``-th distance the screen does not prove to beat every left-out row (module
    docstring): ``d_k^2 >= h - (d + 8) eps (2 |x_i| + d_k)^2``, ``h`` the row's largest screened value kept, ``|x_i|``
    its centred norm, ``eps`` that of the pass's float type (with a relative margin for the float64 checks)."""
    dk = g.distances[:, -1]
    slack = (d + 8) * float(np.finfo(dtype).eps) * (2.0 * np.sqrt(norms) + dk) ** 2
    with np.errstate(invalid="ignore"):  # screen = inf where no row was left out
        return np.flatnonzero(~(dk * dk * (1 + 1e-12) < np.asarray(screen, dtype=np.float64) - slack))


def certified_graph(x: np.ndarray, cand: np.ndarray, screen: np.ndarray, norms: np.ndarray, k: int,
                    dtype) -> "KnnGraph":
    """The refined graph of the screened candidates, each row proved exact or recomputed exactly (module docstring):
    ``x`` the rows, ``norms`` their centred squared norms, ``screen`` each row's largest kept screened value and
    ``dtype`` the float type the screen ran in."""
    g = refined_graph(x, cand, k)
    redo = uncertain_rows(g, screen, norms, x.shape[1], dtype)
    if len(redo) and np.finfo(dtype).eps > np.finfo(np.float64).eps:  # screened again in float64 (BLAS)
        c64, s64, n64 = _float64_screen(x, redo, cand.shape[1])
        again = refined_graph(x, c64, k, redo)
        g.indices[redo], g.distances[redo] = again.indices, again.distances
        redo = redo[uncertain_rows(again, s64, n64, x.shape[1], np.float64)]
    if len(redo):  # ties at the k-th distance (duplicated rows) or float64 cancellation: every row, directly
        idx = np.empty((len(redo), k), dtype=np.int64)
        dist = np.empty((len(redo), k), dtype=np.float64)
        _exact_rows(x, redo.astype(np.int64), k, idx, dist)
        g.indices[redo], g.distances[redo] = idx, dist
    return g


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
