"""Ranking by thresholds: each positive's key turned into a similarity threshold, negatives counted by comparison.

A query's AP and Mann-Whitney U need, for its k-th best positive (k = 0 .. M-1), only D[k] = the number of its
negatives ranked above that positive (ties: the positive first). With copairs' keys the ranking key of a
similarity s is ``key(s)`` (float32 ``1 - s`` negated; see :func:`key_of`), a non-decreasing function of s; so
for a positive with key K there is one largest similarity T = ``threshold(K)`` of the block's float32 type with
key(T) <= K, and a negative v ranks above the positive exactly when v > T. D[k] is then a plain count of
``row > T[k]`` over the query's row of a tile: M compare-and-add passes over a contiguous float32 row, which the
compiler vectorises (a fraction of a nanosecond per pair for the M of MOA rule sets), instead of a key, a pair
rule and a bucket search per pair.

Every active candidate that is a negative of some query of the tile is counted, and for each query the counted
candidates that are not its negatives are taken back out: with no ``neg_sameby``, those are the ones sharing one of
its codes in a ``neg_diffby`` column (itself, its replicates, its positives, ...), found through the tile's own
(column, code) groups (:func:`tile_groups`, :func:`exclude_shared`), their values read from the same tile. A tile's
column queries are counted from the tile itself, in strips (no transposed copy). Each query's D[k] is summed over
every tile that holds its row or column; :func:`ap_of_cumulative` gives AP and U by
:func:`phenovec.evaluate.backend.ap_and_u` (``cumulative=True``), so the results are the bucket kernel's bit for bit
(tested).
"""
from __future__ import annotations

import numba
import numpy as np

from phenovec.evaluate.backend import ap_and_u

FAST_MAX_M = 64  # queries with at most this many positives are counted by thresholds (~0.05 ns per positive per pair)
MAX_COUNT_COLUMNS = 1 << 24  # float32 counts are exact integers below this
REASSOC = {"reassoc", "nsz", "contract"}  # fast-math flags that allow a vectorised sum; no "nnan" / "ninf"


@numba.njit(inline="always")
def key_of(s, f32_keys, euclidean):
    """The ranking key of similarity ``s`` (larger ranks first): copairs' float32 ``1 - s`` negated, or ``s``."""
    if not f32_keys:
        return s
    if euclidean:
        return -np.float64(np.float32(1.0) - np.float32(1.0 / (1.0 - s)))
    return -np.float64(np.float32(1.0) - np.float32(s))


@numba.njit(inline="always")
def _ordered(bits):
    """A float32's bit pattern (as int64 of its uint32) -> an integer that orders as the float does (-0.0 == 0.0)."""
    if bits >= 0x80000000:
        return -(bits & 0x7FFFFFFF)
    return bits


@numba.njit(inline="always")
def _from_ordered(o, buf_u, buf_f):
    if o >= 0:
        buf_u[0] = np.uint32(o)
    else:
        buf_u[0] = np.uint32((-o) | 0x80000000)
    return buf_f[0]


@numba.njit(cache=True)
def thresholds(keys_desc, f32_keys, euclidean, out):
    """``out[k]`` = the largest float32 T with ``key_of(T) <= keys_desc[k]`` (keys of float32 similarities).

    A binary search over the float32 values in their order (32 steps), up to +inf (0 for euclidean, whose
    similarities are -distance <= 0 and whose key is monotone only there). Equal keys give equal thresholds.
    """
    buf_f = np.empty(1, np.float32)
    buf_u = buf_f.view(np.uint32)
    top = np.float32(0.0) if euclidean else np.float32(np.inf)
    buf_f[0] = top
    hi_o = _ordered(np.int64(buf_u[0]))
    prev_key, prev_t = np.nan, np.float32(0.0)
    for k in range(keys_desc.shape[0]):
        kk = keys_desc[k]
        if kk == prev_key:
            out[k] = prev_t
            continue
        if key_of(np.float64(top), f32_keys, euclidean) <= kk:
            t = top
        elif not f32_keys:
            t = np.float32(kk)  # key = s itself: the positive's own float32 value
        else:
            # the predicate key_of(s) <= kk is true at -inf (key -inf for cosine, -1 for euclidean: every key is
            # >= that) and false at top: bisect between them
            lo, h = _ordered(np.int64(0xFF800000)), hi_o
            while h - lo > 1:
                mid = lo + (h - lo) // 2
                if key_of(np.float64(_from_ordered(mid, buf_u, buf_f)), f32_keys, euclidean) <= kk:
                    lo = mid
                else:
                    h = mid
            t = _from_ordered(lo, buf_u, buf_f)
        out[k] = t
        prev_key, prev_t = kk, t


@numba.njit(cache=True, fastmath=REASSOC)
def _count_row(row, thr, k0, k1, dcnt):
    """``dcnt[k] += #{c: row[c] > thr[k]}`` for k in [k0, k1): a float32 sum per threshold, which ``REASSOC`` lets the
    compiler vectorise (exact: a lane's partial count is an integer far below 2^24, ``count_above`` checks the length)."""
    for k in range(k0, k1):
        tk = thr[k]
        acc = np.float32(0.0)
        for c in range(row.shape[0]):
            acc += np.float32(1.0) if row[c] > tk else np.float32(0.0)
        dcnt[k] += np.int64(acc)


@numba.njit(parallel=True, cache=True)
def _count_rows(block, rows, want, sub, thr_start, thr, dcnt):
    gather = sub.shape[0] > 0
    for t in numba.prange(rows.shape[0]):
        i = rows[t]
        if not want[i]:
            continue
        if gather:
            row = np.empty(sub.shape[0], block.dtype)
            for c in range(sub.shape[0]):
                row[c] = block[t, sub[c]]
            _count_row(row, thr, thr_start[i], thr_start[i + 1], dcnt)
        else:
            _count_row(block[t], thr, thr_start[i], thr_start[i + 1], dcnt)


STRIP = 64  # tile columns gathered at a time by the transposed count (4 cache lines of float32 per candidate)


@numba.njit(parallel=True, cache=True)
def _count_cols(block, cols, want, sub, thr_start, thr, dcnt):
    """``_count_rows`` for the queries of the tile's columns (``block`` = S[candidates, cols]): strips of ``STRIP``
    columns are gathered into contiguous rows (each candidate's ``STRIP`` values read as whole cache lines), then
    counted as rows are."""
    gather = sub.shape[0] > 0
    length = sub.shape[0] if gather else block.shape[0]
    for s in numba.prange((cols.shape[0] + STRIP - 1) // STRIP):
        j0 = s * STRIP
        j1 = min(cols.shape[0], j0 + STRIP)
        wanted = False
        for j in range(j0, j1):
            wanted = wanted or want[cols[j]]
        if not wanted:
            continue
        buf = np.empty((STRIP, length), block.dtype)
        for p in range(length):
            r = sub[p] if gather else p
            for j in range(j0, j1):
                buf[j - j0, p] = block[r, j]
        for j in range(j0, j1):
            i = cols[j]
            if want[i]:
                _count_row(buf[j - j0], thr, thr_start[i], thr_start[i + 1], dcnt)


def count_above(block, rows, want, sub, thr_start, thr, dcnt, transposed=False):
    """``dcnt[thr_start[i] + k] += #{c in sub: S[i, c] > thr[thr_start[i] + k]}`` for each wanted query i of ``rows``.

    ``block`` is a C-ordered float32 tile: S[rows, candidates], or with ``transposed`` S[candidates, rows] (the
    queries are its columns: no transposed copy is made). ``sub`` = the positions of the active candidates, or empty
    for all of them (no gather)."""
    length = block.shape[0] if transposed else block.shape[1]
    if length >= MAX_COUNT_COLUMNS:
        raise ValueError(f"count_above: {length} candidates in a tile; at most {MAX_COUNT_COLUMNS - 1} are counted exactly")
    if transposed:
        _count_cols(np.ascontiguousarray(block), rows, want, sub, thr_start, thr, dcnt)
    else:
        _count_rows(np.ascontiguousarray(block), rows, want, sub, thr_start, thr, dcnt)


def tile_groups(nd: np.ndarray, base: int, cols: np.ndarray, sub: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The counted candidates (``sub``, positions in ``cols``) grouped by (``neg_diffby`` column d, code): sorted keys
    d * base + code (``base`` > every code), each key's start in ``members`` (tile column positions), for
    :func:`exclude_shared`."""
    codes = nd[:, cols[sub]]  # D x len(sub); rows counted are active: codes >= 0
    keys = (np.arange(nd.shape[0], dtype=np.int64)[:, None] * base + codes).ravel()
    members = np.tile(sub, nd.shape[0])
    order = np.argsort(keys, kind="stable")
    keys, members = keys[order], members[order]
    uniq, start = np.unique(keys, return_index=True)
    return uniq, np.append(start, len(keys)).astype(np.int64), members.astype(np.int64)


@numba.njit(parallel=True, cache=True)
def exclude_shared(block, rows, want, cols, nd, base, uniq, start, members, thr_start, thr, dcnt, transposed):
    """Take back out of ``dcnt`` the counted candidates (``cols``) that are not negatives of query i = rows[t]: those
    sharing i's code in some ``neg_diffby`` column (i itself, its replicates, its positives, ...), each once
    (``tile_groups``). ``block`` = S[rows, cols], or S[cols, rows] with ``transposed``."""
    for t in numba.prange(rows.shape[0]):
        i = rows[t]
        if not want[i]:
            continue
        k0, k1 = thr_start[i], thr_start[i + 1]
        for d in range(nd.shape[0]):
            key = d * base + nd[d, i]
            g = np.searchsorted(uniq, key)
            if g >= uniq.shape[0] or uniq[g] != key:
                continue
            for q in range(start[g], start[g + 1]):
                c = members[q]
                j = cols[c]
                earlier = False  # shares an earlier column's code too: already taken out
                for e in range(d):
                    if nd[e, j] == nd[e, i]:
                        earlier = True
                        break
                if earlier:
                    continue
                v = block[c, t] if transposed else block[t, c]
                for kk in range(k0, k1):
                    if v > thr[kk]:
                        dcnt[kk] -= 1


@numba.njit(parallel=True, cache=True)
def ap_of_cumulative(queries, thr_start, dcnt, n_neg, ap_out, u_out):
    """AP and U of each query from its D[k] (``ap_and_u`` with ``cumulative``: bit-identical given equal counts)."""
    for t in numba.prange(queries.shape[0]):
        i = queries[t]
        k0, k1 = thr_start[i], thr_start[i + 1]
        ap_out[t], u_out[t] = ap_and_u(dcnt[k0:k1], k1 - k0, n_neg[i], True)
