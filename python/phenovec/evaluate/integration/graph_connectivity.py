"""Graph connectivity (``graph_connectivity``): does each label's kNN subgraph stay in one piece?

Definition: scib-metrics 0.6.1's. For each label, the directed kNN graph (``knn_graph_distances``: an edge
from every row to each of its ``k`` neighbours, self edges and zero distances included) restricted to the
label's rows is split into strongly connected components; the label scores ``largest component / rows``;
the metric is the mean over labels. scipy's ``connected_components`` does the splitting on the same CSR
graph; here the graph is permuted by label once, so each label's subgraph is a contiguous diagonal block
(linear time instead of one full-graph mask per label).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from phenovec.evaluate.integration.annotations import label_codes as _label_codes
from phenovec.evaluate.integration.knn_graph import as_neighbors


def graph_connectivity(X, labels) -> float:
    """Mean over labels of the largest strongly connected share of the label's kNN subgraph."""
    g = as_neighbors(X)
    codes = _label_codes(labels, "labels", g.n_samples)
    order = np.argsort(codes, kind="stable")
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    n, k = g.indices.shape
    rows = inv[np.repeat(np.arange(n), k)]
    cols = inv[g.indices.ravel()]
    keep = codes[order][rows] == codes[order][cols]
    perm = sp.csr_matrix((g.distances.ravel()[keep], (rows[keep], cols[keep])), shape=(n, n))
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes))])
    scores = []
    for c in range(len(bounds) - 1):
        s, e = bounds[c], bounds[c + 1]
        if e == s:
            continue
        _, comps = connected_components(perm[s:e, s:e], connection="strong")
        scores.append(np.bincount(comps).max() / (e - s))
    return float(np.mean(scores))
