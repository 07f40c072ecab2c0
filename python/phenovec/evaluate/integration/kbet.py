"""kBET (Buttner et al. 2018): ``kbet`` and the per-label ``kbet_per_label`` of the scib benchmark.

Definitions: scib-metrics 0.6.1's (``scib_metrics.metrics._kbet``, ``utils._diffusion_nn``).

``kbet``: for each row, the batch counts among its kNN list (self included) against the global batch
frequencies, Pearson's chi-square with ``B - 1`` degrees of freedom, p-value ``1 - chi2_cdf``
(the regularised lower incomplete gamma); acceptance rate = share of rows with ``p >= alpha``.

``kbet_per_label``: per label, on the UMAP connectivities of the (50-)NN graph restricted to its rows: skipped
(NaN) with fewer than 10 rows or one batch; ``k0 = min(70, max(10, floor(mean batch size / 4)))``; if the
subgraph is one strongly connected component, a diffusion map of it (density-normalised transitions, the
``n_comps = min(100, rows - 1)`` eigenpairs of largest magnitude, each eigenvector times ``e / (1 - e)``, 1 kept
as 1, in float32) gives a ``k0 + 1``-NN graph on which kBET is run; otherwise components of at least ``3 k0``
rows are used if they hold 75 % of the rows, else the label scores 0. Score = mean over labels (NaN skipped).

scib-metrics 0.6.1 also carries one label's cap over to the next: its loop reassigns ``diffusion_n_comps =
min(diffusion_n_comps, rows - 1)``, so a label with fewer than 101 rows (common for MOAs on well profiles) lowers
the components of every label sorted after it, and a label's score depends on the names of the others.
phenovec caps each label by its own rows (the definition above) unless ``scib_carry_over=True``, which reproduces
scib-metrics' numbers (tested both ways).

Deviations, both to compute the same definition exactly and faster: scib-metrics finds the diffusion-space
neighbours with pynndescent (approximate); phenovec uses its exact :func:`knn_graph` (the tests feed scib-metrics
the same exact neighbours, and then the two agree). Eigenpairs of subgraphs up to 2,000 rows come from a dense
LAPACK ``eigh`` instead of ARPACK ``eigsh`` (same eigenpairs to rounding; signs are immaterial).

Speed: ARPACK's reverse-communication loop holds the GIL, so the labels' diffusion maps run in worker processes
(one per usable core, largest label first) once the labels hold ``PARALLEL_ROWS`` rows; each worker runs one
label at a time single-threaded (:mod:`.threads`).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh
from scipy.special import gammainc

from phenovec.evaluate.integration.annotations import annotation_codes, batch_codes
from phenovec.evaluate.integration.knn_graph import KnnGraph, as_neighbors, knn_graph
from phenovec.evaluate.integration.threads import threads_for, usable_cores

logger = logging.getLogger(__name__)
_EPS = 1e-8
DENSE_EIGEN_ROWS = 2000
PARALLEL_ROWS = 20000


def kbet(X, batches, alpha: float = 0.05) -> tuple[float, np.ndarray, np.ndarray]:
    """``(acceptance_rate, chi2 statistics, p-values)`` of kBET on the kNN graph ``X``."""
    g = as_neighbors(X)
    if len(batches) != g.n_samples:
        raise ValueError("Length of batches does not match number of cells.")
    b = batch_codes(batches, "batches")  # kBET needs 2 batches at least (scib-metrics 0.6.1 raises too)
    nb = int(b.max()) + 1
    freq = np.bincount(b, minlength=nb) / len(b)
    nbr = b[g.indices]
    k = nbr.shape[1]
    observed = np.zeros((len(b), nb))
    np.add.at(observed, (np.repeat(np.arange(len(b)), k), nbr.ravel()), 1)
    expected = freq * k
    stats = np.sum((observed - expected) ** 2 / expected, axis=1)
    p = 1 - gammainc((nb - 1) / 2, stats / 2)
    return float((p >= alpha).mean()), stats, p


def _transitions(X: sp.spmatrix) -> sp.spmatrix:
    q = np.asarray(X.sum(axis=0))
    Q = sp.spdiags(1.0 / q, 0, X.shape[0], X.shape[0])
    K = Q @ X @ Q
    z = np.sqrt(np.asarray(K.sum(axis=0)))
    Z = sp.spdiags(1.0 / z, 0, K.shape[0], K.shape[0])
    return Z @ K @ Z


def _eigen(T: sp.spmatrix, n_comps: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_comps`` eigenpairs of largest magnitude, in decreasing algebraic order, as float32."""
    n_comps = min(T.shape[0] - 1, n_comps)
    T = T.astype(np.float64)
    if T.shape[0] <= DENSE_EIGEN_ROWS:
        w, v = np.linalg.eigh(T.toarray())
        pick = np.argsort(-np.abs(w), kind="stable")[:n_comps]
        pick = pick[np.argsort(w[pick], kind="stable")]
        w, v = w[pick], v[:, pick]
    else:
        w, v = eigsh(T, k=n_comps, which="LM")
    w, v = w.astype(np.float32), v.astype(np.float32)
    return w[::-1], v[:, ::-1]


def diffusion_nn(X: sp.spmatrix, k: int, n_comps: int = 100) -> KnnGraph:
    """Exact ``k + 1``-NN graph in the diffusion-map embedding of a connectivity graph (scib's ``diffusion_nn``)."""
    evals, evecs = _eigen(_transitions(X), n_comps)
    evals = evals + np.float32(_EPS)
    scaled = np.array([e if e == 1 else e / (1 - e) for e in evals])
    emb = evecs * scaled
    if k + 1 > emb.shape[0]:
        raise ValueError(f"diffusion_nn: {k + 1} neighbours asked of {emb.shape[0]} rows")
    return knn_graph(emb, k + 1)


def kbet_per_label(X, batches, labels, alpha: float = 0.05, diffusion_n_comps: int = 100, return_df: bool = False,
                   *, n_jobs: int | None = None, scib_carry_over: bool = False):
    """kBET acceptance per label on diffusion neighbourhoods, averaged over labels (higher = better mixed).

    ``scib_carry_over=True``: each label's diffusion components capped by every earlier label's rows as well, as
    scib-metrics 0.6.1's loop does (module docstring); default: by its own rows.

    ``n_jobs``: worker processes for the per-label diffusion maps (ARPACK holds the GIL, so threads cannot share
    them); default: the usable cores when the labels hold at least ``PARALLEL_ROWS`` rows, else 1 (in process).
    """
    g = as_neighbors(X)
    if len(batches) != g.n_samples:
        raise ValueError("Length of batches does not match number of cells.")
    if len(labels) != g.n_samples:
        raise ValueError("Length of labels does not match number of cells.")
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1):
        raise ValueError(f"n_jobs must be a positive integer or None, got {n_jobs!r}")
    size_max = 2**31 - 1
    b = annotation_codes(batches, "batches", g.n_samples)[0]
    lab, levels = annotation_codes(labels, "labels", g.n_samples)
    conn = g.knn_graph_connectivities.tocsr()
    order = np.argsort(lab, kind="stable")
    conn_sorted = conn[order][:, order].tocsr()
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lab, minlength=len(levels)))])
    scores = np.full(len(levels), np.nan)
    tasks = {}
    for c in range(len(levels)):
        rows = order[bounds[c]:bounds[c + 1]]
        sub = conn_sorted[bounds[c]:bounds[c + 1], bounds[c]:bounds[c + 1]].tocsr()
        sub.sort_indices()
        n_obs = sub.shape[0]
        b_sub = b[rows]
        if n_obs < 10 or len(np.unique(b_sub)) == 1:
            continue
        quarter_mean = int(np.floor(np.mean(np.bincount(b_sub)[np.bincount(b_sub) > 0]) / 4))
        k0 = int(min(70, max(10, quarter_mean)))
        if k0 * n_obs >= size_max:
            k0 = int(np.floor(size_max / n_obs))
        if scib_carry_over:
            rows_used = _diffusion_rows(sub, k0)
            if rows_used is not None:  # scib caps before it tries the map, in label order
                diffusion_n_comps = min(diffusion_n_comps, rows_used - 1)
        tasks[c] = (sub, b_sub, k0, alpha, diffusion_n_comps)
    for c, score in zip(tasks, _run_labels(list(tasks.values()), n_jobs)):
        scores[c] = score
    df = pd.DataFrame({"cluster": levels, "kBET": scores})
    final = float(np.nanmean(df["kBET"])) if df["kBET"].notna().any() else float("nan")
    return (final, df) if return_df else final


def _run_labels(tasks: list, n_jobs: int | None) -> list[float]:
    """``_label_score`` of every task, in order: in process, or over ``n_jobs`` worker processes (largest first)."""
    if n_jobs is None:
        n_jobs = usable_cores() if sum(t[0].shape[0] for t in tasks) >= PARALLEL_ROWS else 1
    n_jobs = min(n_jobs, len(tasks))
    if n_jobs <= 1:
        out = []
        for t in tasks:
            with threads_for(t[0].shape[0]):
                out.append(_label_score(*t))
        return out
    from joblib import Parallel, delayed

    biggest_first = sorted(range(len(tasks)), key=lambda i: -tasks[i][0].shape[0])
    # joblib's loky workers: fresh interpreters (no fork of a threaded, or JAX, parent) that, unlike
    # multiprocessing's forkserver / spawn, do not run the caller's __main__ again: a plain script calling this
    # without an ``if __name__ == "__main__":`` guard ran its own top level in each worker and died there
    done = Parallel(n_jobs=n_jobs, backend="loky", batch_size=1, pre_dispatch="all")(
        delayed(_label_score_single_threaded)(tasks[i]) for i in biggest_first)
    out = [0.0] * len(tasks)
    for i, score in zip(biggest_first, done):
        out[i] = score
    return out


def _label_score_single_threaded(task) -> float:
    with threads_for(0):
        return _label_score(*task)


def _diffusion_rows(sub, k0: int) -> int | None:
    """The rows of a label's subgraph its diffusion map runs on (:func:`_label_score`'s branches), or None when the
    label scores 0 without one."""
    n_comp, comp = connected_components(sub, connection="strong")
    if n_comp == 1:
        return sub.shape[0]
    keep = int(np.isin(comp, np.flatnonzero(np.bincount(comp) >= 3 * k0)).sum())
    return keep if keep / len(comp) >= 0.75 else None


def _label_score(sub, b_sub, k0: int, alpha: float, diffusion_n_comps: int) -> float:
    """kBET of one label's connectivity subgraph (scib-metrics' branches on its connected components)."""
    n_comp, comp = connected_components(sub, connection="strong")
    if n_comp > 1:
        keep = np.flatnonzero(np.isin(comp, np.flatnonzero(np.bincount(comp) >= 3 * k0)))
        if len(keep) / len(comp) < 0.75:
            return 0.0  # too many small components: 100 % rejection
        sub = sub[keep][:, keep].tocsr()
        sub.sort_indices()
        b_sub = b_sub[keep]
    try:
        nn = diffusion_nn(sub, k=k0, n_comps=min(diffusion_n_comps, sub.shape[0] - 1))
        return kbet(nn, b_sub, alpha=alpha)[0]
    except ValueError:
        logger.info("Diffusion distance failed. Skip.")
        return 0.0
