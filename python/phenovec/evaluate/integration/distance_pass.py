"""One pass over all pairwise distances for the two metrics that need them: the kNN graph and the label silhouettes.

:func:`knn_graph` and :func:`silhouette_samples` each compute every row's distance to every other row (one BLAS
product per block of rows). :func:`knn_graph_and_silhouettes` computes each block once, on the rows sorted by
label, and hands it to both Numba kernels (the top-``k + 8`` screen and the per-class distance sums), which
halves the ``O(n^2 d)`` work of the benchmark. The results are those of the two functions (the kNN candidates
are re-ranked on float64 distances and original row numbers as :func:`knn_graph` does; tests check equality).
"""
from __future__ import annotations

import numpy as np

from phenovec.evaluate.integration.annotations import embedding_matrix
from phenovec.evaluate.integration.knn_graph import (
    DEFAULT_BLOCK_BYTES,
    KnnGraph,
    _screen_block,
    refined_graph,
    screen_sizes,
)
from phenovec.evaluate.integration.silhouette import _reduce_block, silhouettes_from_sums, sorted_by_label


def knn_graph_and_silhouettes(X, labels, n_neighbors: int = 90, *,
                              block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[KnnGraph, np.ndarray]:
    """``(knn_graph(X, n_neighbors), silhouette_samples(X, labels))`` from one pass over the distances."""
    x = embedding_matrix(X)
    n = x.shape[0]
    k, kk = screen_sizes(n_neighbors, n)
    order, sc, freqs, bounds, xs, norms = sorted_by_label(x, labels)
    intra, inter = np.empty(n), np.empty(n)
    cand_sorted = np.empty((n, kk), dtype=np.int64)
    step = int(max(1, min(n, block_bytes // max(1, n * xs.itemsize))))
    for s in range(0, n, step):
        e = min(n, s + step)
        G = xs[s:e] @ xs.T
        _screen_block(G, norms[s:e], norms, s, kk, cand_sorted)
        _reduce_block(G, norms[s:e], norms, s, bounds, sc, False, 0, intra, inter)
    cand = np.empty_like(cand_sorted)
    cand[order] = order[cand_sorted]
    return refined_graph(x, cand, k), silhouettes_from_sums(intra, inter, freqs, sc, order)
