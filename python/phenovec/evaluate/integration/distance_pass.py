"""The one pass over all pairwise distances behind the kNN graph and the silhouettes.

:func:`knn_graph`, :func:`silhouette_samples` and :func:`knn_graph_and_silhouettes` all run
:func:`distance_pass`: the rows (sorted by class when silhouettes are wanted, so each class is a contiguous
range of columns) are cut into tiles of ``TILE`` rows; a parallel Numba loop over row tiles multiplies its tile
by every column tile, its own (diagonal) tile first (one small single-threaded BLAS ``gemm`` each, so the
``TILE x TILE`` block of products stays in the core's cache instead of streaming an ``n``-wide block through
memory), turns the products into squared distances (``|x|^2 + |y|^2 - 2 x.y`` on centred rows, in the input's
float type; cosine: ``1 - x.y`` on unit rows) and, while the block is hot, hands it to both consumers:

- the kNN screen: each row's ``k + 8`` smallest squared distances in a bounded max-heap (ties: the smaller column
  first, by the row's number in the input even when the rows are sorted by class, so the kept set does not depend
  on the scan order); a chunk of ``CHUNK`` columns whose smallest value
  (a vectorised minimum) is above the heap's largest is skipped, which after the near diagonal tile is most of
  them. :func:`~phenovec.evaluate.integration.knn_graph.certified_graph` then recomputes the candidates'
  distances in float64, keeps the ``k`` nearest and proves them exact (or recomputes the row exactly).
- the per-class distance sums of the silhouettes: ``sum sqrt(max(d^2, 0))`` (cosine: ``clip(1 - x.y, 0, 2)``)
  over each class's columns, the row's own distance set to exactly 0; at the end of the row tile each row's
  ``a_i`` sum and nearest (or furthest, or mean other) class mean distance.

Cost: ``n^2 d`` multiply-adds in BLAS plus ``O(n^2)`` vectorised work; memory ``O(n (k + d))`` plus per-thread
``TILE x (TILE + classes)`` blocks.
"""
from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from threadpoolctl import threadpool_limits

TILE = 256
CHUNK = 32
SCREEN_MARGIN = 8
BETWEEN = {"nearest": 0, "mean_other": 1, "furthest": 2}


@numba.njit(inline="always")
def _after(d1, i1, d2, i2):
    return d1 > d2 or (d1 == d2 and i1 > i2)


@numba.njit(inline="always")
def _sift_down(hd, hi, kk, p, d, j):
    """Put ``(d, j)`` at position ``p`` of the max-heap ``hd[:kk]`` (``hi``: its columns) and sift it down."""
    while True:
        left = 2 * p + 1
        if left >= kk:
            break
        m = left
        if left + 1 < kk and _after(hd[left + 1], hi[left + 1], hd[left], hi[left]):
            m = left + 1
        if _after(hd[m], hi[m], d, j):
            hd[p] = hd[m]
            hi[p] = hi[m]
            p = m
        else:
            break
    hd[p] = d
    hi[p] = j


@numba.njit(fastmath=True, cache=True)
def _to_sq_dists(g, nb, norms, c0, cols, two):
    for jj in range(cols):
        g[jj] = nb + norms[c0 + jj] - two * g[jj]


@numba.njit(fastmath=True, cache=True)
def _to_cosine_dists(g, cols, zero, one, two):
    for jj in range(cols):
        g[jj] = min(max(one - g[jj], zero), two)


@numba.njit(fastmath=True, cache=True)
def _sqrt_sum(g, lo, hi, zero):
    s = 0.0
    for jj in range(lo, hi):
        s += np.sqrt(max(g[jj], zero))
    return s


@numba.njit(fastmath=True, cache=True)
def _plain_sum(g, lo, hi):
    s = 0.0
    for jj in range(lo, hi):
        s += g[jj]
    return s


@numba.njit(fastmath=True, cache=True)
def _smallest(g, lo, hi):
    m = g[lo]
    for jj in range(lo + 1, hi):
        m = min(m, g[jj])
    return m


@numba.njit(parallel=True, cache=True)
def _pass(tiles, norms, n, kk, cand, screen, ids, bounds, codes, n_classes, mode, cosine, one, intra, inter):
    """``mode``: -1 no silhouette sums, else ``BETWEEN``'s code; ``kk`` = 0: no kNN screen; ``one``: 1 in the
    rows' float type; ``ids``: each row's number in the caller's order (the heap's tie-break and the candidates);
    ``screen``: each row's largest kept screened value (every other column's is at least that)."""
    nt, T, _ = tiles.shape
    zero, two = one - one, one + one
    for bt in numba.prange(nt):
        r0 = bt * T
        rows = min(T, n - r0)
        A = tiles[bt]
        csum = np.zeros((T, max(n_classes, 1)))
        hd = np.empty((T, max(kk, 1)), dtype=tiles.dtype)
        hi = np.empty((T, max(kk, 1)), dtype=np.int64)
        cnt = np.zeros(T, dtype=np.int64)
        for step in range(nt):  # the diagonal tile first: near rows (same class when sorted) tighten the heap early
            ct = (bt + step) % nt
            c0 = ct * T
            cols = min(T, n - c0)
            G = np.dot(A, tiles[ct].T)
            for r in range(rows):
                i = r0 + r
                g = G[r]
                if cosine:
                    _to_cosine_dists(g, cols, zero, one, two)
                else:
                    _to_sq_dists(g, norms[i], norms, c0, cols, two)
                own = i - c0 if ct == bt else -1
                if mode >= 0:
                    if own >= 0:
                        g[own] = zero
                    c = codes[c0]
                    j = 0
                    while j < cols:
                        end = min(bounds[c + 1] - c0, cols)
                        csum[r, c] += _plain_sum(g, j, end) if cosine else _sqrt_sum(g, j, end, zero)
                        j = end
                        c += 1
                if kk > 0:
                    if own >= 0:
                        g[own] = -one
                    hdr, hir = hd[r], hi[r]
                    q = 0
                    while cnt[r] < kk and q < cols:  # filling the heap, ordered once full
                        hdr[cnt[r]] = g[q]
                        hir[cnt[r]] = ids[c0 + q]
                        cnt[r] += 1
                        q += 1
                        if cnt[r] == kk:
                            for p in range(kk // 2 - 1, -1, -1):
                                _sift_down(hdr, hir, kk, p, hdr[p], hir[p])
                    while q < cols:  # chunks whose smallest value cannot enter the heap are skipped
                        qe = min(q + CHUNK, cols)
                        if _smallest(g, q, qe) <= hdr[0]:
                            for jj in range(q, qe):
                                if _after(hdr[0], hir[0], g[jj], ids[c0 + jj]):
                                    _sift_down(hdr, hir, kk, 0, g[jj], ids[c0 + jj])
                        q = qe
        for r in range(rows):
            i = r0 + r
            if kk > 0:
                for c in range(kk):
                    cand[i, c] = hi[r, c]
                screen[i] = np.inf if kk >= n else hd[r, 0]  # kk = n: no column left out
            if mode >= 0:
                own_c = codes[i]
                best = np.inf if mode == 0 else -np.inf
                other = 0.0
                for c in range(n_classes):
                    if c == own_c:
                        continue
                    size = bounds[c + 1] - bounds[c]
                    if mode == 1:
                        other += csum[r, c]
                    else:
                        mc = csum[r, c] / size
                        if (mode == 0 and mc < best) or (mode == 2 and mc > best):
                            best = mc
                intra[i] = csum[r, own_c]
                if mode == 1:
                    tot = n - (bounds[own_c + 1] - bounds[own_c])
                    inter[i] = other / tot if tot > 0 else np.nan
                else:
                    inter[i] = best


class Pass(NamedTuple):
    """What :func:`distance_pass` found: per row (in the caller's row numbers for ``candidates``, in ``x``'s order
    for the rest) its ``kk`` screened candidates, the largest kept screened value (every left-out column's value is
    at least that: what :func:`~phenovec.evaluate.integration.knn_graph.certified_graph` checks the candidates
    with), and the silhouettes' sums."""

    candidates: np.ndarray | None
    screen: np.ndarray | None
    intra: np.ndarray | None
    inter: np.ndarray | None


def distance_pass(x: np.ndarray, norms: np.ndarray, kk: int = 0, *, codes: np.ndarray | None = None,
                  bounds: np.ndarray | None = None, between: str | None = None, cosine: bool = False,
                  ids: np.ndarray | None = None, tile: int = TILE):
    """A :class:`Pass` (candidates n x kk, screen values, intra sums, between-class values; None where not asked) of
    the rows ``x``
    (prepared: centred, or unit rows for ``cosine``; sorted by ``codes`` when silhouettes are asked, ``bounds``
    their class ranges) and their squared norms ``norms``; ``tile``: rows per tile (tests use small ones).
    ``ids``: the rows' numbers in the caller's order when ``x`` is a reordering (default ``0..n-1``): the
    candidates are given as these numbers, and equal distances are kept by increasing number, so the kept set is
    the one an unsorted pass keeps."""
    n, d = x.shape
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    nt = -(-n // tile)
    tiles = np.zeros((nt * tile, d), dtype=x.dtype)
    tiles[:n] = x
    tiles = tiles.reshape(nt, tile, d)
    nrm = np.zeros(nt * tile, dtype=x.dtype)
    nrm[:n] = norms
    cand = np.empty((n, kk) if kk else (0, 0), dtype=np.int64)
    screen = np.empty(n if kk else 0)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    mode = -1 if between is None else BETWEEN[between]
    if mode >= 0:
        intra, inter = np.empty(n), np.empty(n)
        n_classes = len(bounds) - 1
    else:
        codes, bounds = np.zeros(1, np.int64), np.zeros(2, np.int64)
        intra = inter = np.empty(0)
        n_classes = 0
    with threadpool_limits(1):  # one BLAS thread per Numba thread
        _pass(tiles, nrm, n, kk, cand, screen, ids, bounds, codes, n_classes, mode, cosine, x.dtype.type(1), intra,
              inter)
    return Pass(cand if kk else None, screen if kk else None, intra if mode >= 0 else None,
                inter if mode >= 0 else None)


def screen_sizes(n_neighbors, n: int) -> tuple[int, int]:
    """``(k, k + screening margin)`` for ``n`` rows; refuses a bad or too large ``n_neighbors``."""
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    if n_neighbors > n:
        raise ValueError(f"n_neighbors = {n_neighbors} exceeds the number of rows ({n})")
    return int(n_neighbors), min(n, int(n_neighbors) + SCREEN_MARGIN)


def knn_graph_and_silhouettes(X, labels, n_neighbors: int = 90, *, tile: int = TILE):
    """``(knn_graph(X, n_neighbors), silhouette_samples(X, labels))`` from one pass over the distances."""
    from phenovec.evaluate.integration.annotations import embedding_matrix
    from phenovec.evaluate.integration.knn_graph import certified_graph
    from phenovec.evaluate.integration.silhouette import silhouettes_from_sums, sorted_by_label

    x = embedding_matrix(X)
    k, kk = screen_sizes(n_neighbors, x.shape[0])
    order, sc, freqs, bounds, xs, norms = sorted_by_label(x, labels)
    p = distance_pass(xs, norms, kk, codes=sc, bounds=bounds, between="nearest", ids=order, tile=tile)
    cand, screen, xn = np.empty_like(p.candidates), np.empty_like(p.screen), np.empty_like(norms)
    cand[order], screen[order], xn[order] = p.candidates, p.screen, norms  # candidates: already original numbers
    return certified_graph(x, cand, screen, xn, k, xs.dtype), silhouettes_from_sums(p.intra, p.inter, freqs, sc, order)
