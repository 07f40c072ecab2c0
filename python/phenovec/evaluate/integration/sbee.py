"""sBEE, the single-cell Batch Effect Evaluator (Myradov et al. 2026): scib-metrics 0.6.1's ``sbee``.

Per row, the harmonic mean of two scores in [0, 1] (higher = better mixed):

- **composition**: ``1 - JS``, the base-2 Jensen-Shannon distance between the batch counts of the row's
  same-label neighbours among its first ``min(k, rows of its label)`` kNN entries and the batch counts of its
  whole label (both clipped at 1e-10 and normalised);
- **distance**: with ``intra`` the median distance to the other rows of its (label, batch) group (0 for a group
  of one) and ``inter`` the median distance to its label's rows in other batches (``intra`` when there are none),
  ``exp(-|1 - min(intra / inter, 1)| / sensitivity)``; undefined (``intra`` or ``inter`` 0) scores the row 0, as
  there.

Score = mean over labels of the mean over the label's batches of the rows' mean.

scib-metrics builds the distributions in a Python loop over rows and batches that scans every row
(``O(n^2 B)``) and the distances with ``cdist`` per group. Here the counts are one ``bincount``
over the kNN table, and the medians come from one pass per label over row blocks of its distance matrix (a float64
GEMM, ``np.partition`` for the two medians); rows whose median distance is within rounding of 0 are recomputed
from differences, so a duplicate-row group gives scib's exact 0 (and its undefined score).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.spatial.distance import jensenshannon
from threadpoolctl import threadpool_limits

from phenovec.evaluate.integration.annotations import annotation_codes, embedding_matrix
from phenovec.evaluate.integration.knn_graph import as_neighbors
from phenovec.evaluate.integration.threads import usable_cores

#: cells of one distance block (rows x label rows), float64
BLOCK_CELLS = 4_000_000
#: rows from which the labels' medians run on several threads
PARALLEL_ROWS = 20000
#: a GEMM distance below this share of the rows' norms is recomputed from differences
_ZERO_REL = 1e-6


def composition_scores(indices: np.ndarray, batch: np.ndarray, label: np.ndarray) -> np.ndarray:
    """``1 - JS`` distance of each row's local (same-label kNN) and global (its label's) batch distributions."""
    n, k = indices.shape
    nb = int(batch.max()) + 1
    nl = int(label.max()) + 1
    glob = np.bincount(label * nb + batch, minlength=nl * nb).reshape(nl, nb).astype(np.float64)
    k_adj = np.minimum(k, glob.sum(axis=1).astype(np.int64))[label]
    local = np.zeros((n, nb))
    step = max(1, 8_000_000 // max(k, 1))
    cols = np.arange(k)
    for s in range(0, n, step):
        idx = indices[s:s + step]
        rows = np.arange(s, s + len(idx))
        keep = (cols[None, :] < k_adj[rows, None]) & (label[idx] == label[rows, None])
        flat = ((rows[:, None] - s) * nb + batch[idx])[keep]
        local[s:s + len(idx)] = np.bincount(flat, minlength=len(idx) * nb).reshape(len(idx), nb)
    p = np.clip(local, 1e-10, None)
    q = np.clip(glob[label], 1e-10, None)
    p /= p.sum(axis=1, keepdims=True)
    q /= q.sum(axis=1, keepdims=True)
    return 1.0 - jensenshannon(p, q, base=2.0, axis=1)


def _median_sorted_after(part: np.ndarray, skip: int, count: int) -> np.ndarray:
    """Median of ``count`` values per row that follow ``skip`` leading (smallest) entries of ``part`` (partitioned
    in place at the needed order statistics)."""
    hi = skip + count // 2
    if count % 2:
        part.partition(hi, axis=1)
        return part[:, hi].copy()
    part.partition([hi - 1, hi], axis=1)
    return (part[:, hi - 1] + part[:, hi]) / 2


def _exact_row_medians(x, r, own, other):
    d_own = np.sqrt(((x[own] - x[r]) ** 2).sum(axis=1))
    d_oth = np.sqrt(((x[other] - x[r]) ** 2).sum(axis=1))
    d_own = d_own[own != r]
    return (np.median(d_own) if len(d_own) else 0.0), (np.median(d_oth) if len(d_oth) else None)


def _label_medians(x, rows, batch, intra, inter) -> None:
    """:func:`intra_inter_medians` of one label's ``rows`` (written into ``intra`` / ``inter``). The rows are centred
    on their label's mean first: ``|x|^2 + |y|^2 - 2 x.y`` on uncentred rows (raw CellProfiler units, an offset of
    1e6) cancelled to 6e-6 off scib's direct distances."""
    rows = rows[np.argsort(batch[rows], kind="stable")]  # the label's rows, grouped by batch
    xl, bl = x[rows], batch[rows]
    xl = xl - xl.mean(axis=0)
    sql = np.einsum("ij,ij->i", xl, xl)
    m = len(rows)
    starts = np.flatnonzero(np.r_[True, bl[1:] != bl[:-1]])
    ends = np.r_[starts[1:], m]
    step = max(1, BLOCK_CELLS // m)
    for g0, g1 in zip(starts, ends):
        size, others = g1 - g0, m - (g1 - g0)
        for s in range(g0, g1, step):
            e = min(s + step, g1)
            d2 = sql[s:e, None] + sql[None, :] - 2.0 * (xl[s:e] @ xl.T)
            np.maximum(d2, 0.0, out=d2)
            d = np.sqrt(d2, out=d2)
            a = np.zeros(e - s)
            if size > 1:
                own = d[:, g0:g1].copy()
                own[np.arange(e - s), np.arange(s - g0, e - g0)] = -np.inf  # itself: first, skipped
                a = _median_sorted_after(own, 1, size - 1)
            b = _median_sorted_after(np.concatenate([d[:, :g0], d[:, g1:]], axis=1), 0, others) if others else a
            # medians within rounding of 0 (duplicate rows): exact distances, as cdist gives them
            scale = _ZERO_REL * np.sqrt(sql[s:e])
            for j in np.flatnonzero(((a <= scale) & (size > 1)) | ((b <= scale) & (others > 0))):
                a_j, b_j = _exact_row_medians(xl, s + j, np.arange(g0, g1), np.r_[0:g0, g1:m])
                a[j], b[j] = a_j, (a_j if b_j is None else b_j)
            intra[rows[s:e]], inter[rows[s:e]] = a, b


def intra_inter_medians(x: np.ndarray, batch: np.ndarray, label: np.ndarray,
                        workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: median euclidean distance to the other rows of its (label, batch) group, and to its label's rows
    of other batches (``intra`` where there are none). Labels run on ``workers`` threads (default: the usable
    cores once there are ``PARALLEL_ROWS`` rows; NumPy's GEMM and partition release the GIL), BLAS on one thread
    each, so the result does not depend on ``workers``."""
    n = x.shape[0]
    intra = np.zeros(n)
    inter = np.zeros(n)
    order = np.argsort(label, kind="stable")
    bounds = np.flatnonzero(np.r_[True, label[order][1:] != label[order][:-1], True])
    groups = sorted((order[a:b] for a, b in zip(bounds[:-1], bounds[1:])), key=len, reverse=True)
    if workers is None:
        workers = usable_cores() if n >= PARALLEL_ROWS else 1
    with threadpool_limits(1):  # also on one worker: the same GEMM kernels, so the same bits, on any thread count
        if workers <= 1 or len(groups) == 1:
            for rows in groups:
                _label_medians(x, rows, batch, intra, inter)
        else:
            with ThreadPoolExecutor(workers) as pool:
                for f in [pool.submit(_label_medians, x, rows, batch, intra, inter) for rows in groups]:
                    f.result()
    return intra, inter


def sbee(X, X_emb, batches, labels, sensitivity: float = 0.15) -> float:
    """sBEE score in [0, 1] (higher = better batch mixing) of the kNN graph ``X`` (phenovec's :class:`KnnGraph`
    or scib-metrics' ``NeighborsResults``) of the embedding ``X_emb``."""
    g = as_neighbors(X)
    n = g.n_samples
    if len(batches) != n:
        raise ValueError(f"batches: {len(batches)} values for {n} rows of the kNN graph")
    if len(labels) != n:
        raise ValueError(f"labels: {len(labels)} values for {n} rows of the kNN graph")
    x = embedding_matrix(X_emb, "X_emb").astype(np.float64)
    if x.shape[0] != n:
        raise ValueError(f"X_emb: {x.shape[0]} rows for {n} rows of the kNN graph")
    if not sensitivity > 0:
        raise ValueError(f"sensitivity must be > 0, got {sensitivity}")
    b, _ = annotation_codes(batches, "batches", n)
    lab, _ = annotation_codes(labels, "labels", n)
    js_score = composition_scores(np.asarray(g.indices), b, lab)
    intra, inter = intra_inter_medians(x, b, lab)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((intra == 0) | (inter == 0), np.nan, intra / inter)
        ratio_score = np.exp(-np.abs(1.0 - np.minimum(ratio, 1.0)) / sensitivity)
        denom = js_score + ratio_score
        per_row = np.where(denom > 0, 2 * js_score * ratio_score / denom, 0.0)
    nb = int(b.max()) + 1
    group = lab * nb + b
    counts = np.bincount(group, minlength=(int(lab.max()) + 1) * nb)
    sums = np.bincount(group, weights=per_row, minlength=len(counts))
    present = counts > 0
    group_means = np.where(present, sums / np.maximum(counts, 1), 0.0).reshape(-1, nb)
    label_means = group_means.sum(axis=1) / present.reshape(-1, nb).sum(axis=1)
    return float(label_means.mean())
