"""Several copairs rule sets ranked from one pass of similarity blocks.

``evaluate_many(meta, feats, {name: rules, ...})`` returns ``{name: DataFrame}``, each frame equal to
``average_precision(meta[rows], feats[rows], **rules)`` (same rows, columns and values; AP values are
bit-identical: the blocks come from the same Rust kernel (``phenovec._core.Prepared``, rows prepared once; a
similarity's value does not depend on the block it is computed in), and the
ranking below repeats the core's arithmetic: copairs' float32 keys with ``ties="copairs"``, positives first
on ties, AP summed in rank order). A rule set is a mapping with ``pos_sameby``, ``pos_diffby``,
``neg_sameby``, ``neg_diffby`` and optionally ``rows``: a boolean mask over ``meta``'s rows or a filter
string in :mod:`phenovec.io.row_filter`'s language (never executed as code).

How the work is shared:

- each row's positives M and candidates L are counted from group sizes (inclusion-exclusion over the
  ``diffby`` columns; no similarities, no pair scan);
- only rows with M > 0 under some rule set are queries (AP is NaN otherwise, as copairs);
- queries are taken in blocks; for each block the union of the candidate columns of all rule sets is
  found, and the block's similarities are computed ONCE against those columns: against all N rows
  when the union is large (replicate-vs-all, MOA consistency), against the block's own rows plus the
  union when it is small (replicate vs control wells: each query's replicates plus the reference rows,
  cost N x (M + R) x D instead of N^2 x D). Every rule set is then ranked from that block.

Ranking (``_rank_block``, Numba, one query per thread): for each rule set only the block columns that can pair
with one of the block's queries are visited; a query's M positive keys are collected and sorted, and every
negative is binned by how many positives rank at or above it (a bucket table over the positive keys; nothing to
find for a negative outside their range). AP and the Mann-Whitney U (for ROC-AUC) follow from the bins.

Precision and device (``precision="fp32" | "bf16" | "fp16" | "tf32"``, ``device="cpu" | "cuda" | "auto" |
"torch-cpu"``): see :mod:`phenovec.evaluate.precision` and :mod:`phenovec.evaluate.backend`. The defaults
(fp32, cpu) are the exact Rust path above; the equalities with ``average_precision`` hold for them.

Symmetric tiles (``symmetric=True``, the default with ``columns="auto"``, on host blocks): the queries
that need every column are not taken in row blocks; instead each tile S_IJ of query rows I and J is computed once
and serves the queries of I (its rows) and of J (its transpose: the core's similarities are bit-for-bit symmetric),
halving the GEMM; the other candidate rows come in tiles against the query rows only. A query's positive keys are
found first (S[G, G] of its ``pos_sameby`` group G, same values), sorted with their bucket table; every tile then
bins its negatives into the query's counts. Used where every rule set has one combined ``pos_sameby`` code and the
queries' positive state fits ``SYMMETRIC_STATE_BYTES``; AP and U are the row path's bit for bit (tested). In the tiles,
a query with at most ``threshold_counts.FAST_MAX_M`` positives under a rule set without ``neg_sameby`` is ranked by
thresholds (:mod:`phenovec.evaluate.threshold_counts`: each positive's key as a float32 similarity threshold, the
negatives counted above each by vectorised compares, the tile's non-negatives taken back out by their
``neg_diffby`` codes; a tile's column queries are counted from its columns, no transposed copy); other queries keep
the bucket kernel. Both give the same counts, so the same AP and U bit for bit (tested). Symmetric tiles also run on
PyTorch's CPU blocks (``precision="bf16"``, ``engine="torch"``), where a positive's similarity comes from its
group's product and a negative's from a tile's: equal but for last-bit rounding of products of different shapes.

``columns="all"`` forces full rows (the reduced path is identical in value; the switch exists to
measure it). Multilabel rules and grouped query units are not supported here: use
:func:`phenovec.evaluate.average_precision` for those.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping

import numba
import numpy as np
import pandas as pd

from phenovec import _core
from phenovec.evaluate.average_precision import TIES, UnpairedError, _inputs, normalize_ap
from phenovec.evaluate.backend import DEFAULT_DEVICE_BLOCK_BYTES, Similarities, TorchRules, ap_and_u, rank_block_torch
from phenovec.evaluate.pairs import PairRules, block_rows_for
from phenovec.evaluate.roc_auc import METHODS as ROC_AUC_METHODS, add_roc_auc
from phenovec.evaluate.similarity import check_metric
from phenovec.evaluate.threshold_counts import (FAST_MAX_M, ap_of_cumulative, count_above, exclude_shared, key_of,
                                               thresholds, tile_groups)
from phenovec.io.row_filter import filter_mask

RULE_KEYS = ("pos_sameby", "pos_diffby", "neg_sameby", "neg_diffby")
OPTIONAL_KEYS = ("rows",)
COLUMNS = ("auto", "all")
REDUCED_FRACTION = 0.5  # a block's column union below this fraction of N is computed as a reduced block
REDUCED_QUERY_ROWS = 512  # queries of the first reduced block (doubled while its columns stay few)
# blocks larger than average_precision's: fewer passes of the block's rule-set ranking (1 GiB = ~2,600 queries at N = 100k)
MANY_BLOCK_BYTES = 1 << 30
SYMMETRIC_STATE_BYTES = 2 << 30  # symmetric tiles: all queries' positive keys, bucket tables and counts at most this
SYMMETRIC_MIN_TILE, SYMMETRIC_MAX_TILE = 64, 4096  # rows per symmetric tile (a tile is at most block_bytes / 2)
POS_BATCH_ROWS = 512  # rows of whole pos_sameby groups per block of the symmetric pass's positives


@numba.njit(inline="always")
def _match(i, j, same, diff):
    for c in range(same.shape[0]):
        if same[c, i] != same[c, j]:
            return False
    for c in range(diff.shape[0]):
        if diff[c, i] == diff[c, j]:
            return False
    return True


_key = key_of  # the ranking key (threshold_counts.key_of)


@numba.njit(inline="always")
def _positive_keys(block, t, i, cols, sub, active, ps, pd_, f32_keys, euclidean, grp_order, grp_start, out):
    """Keys of query i's positives in row t of ``block`` (columns ``cols``) into ``out`` (as many as fit); returns how
    many were found. With a group index (``grp_start`` not empty) only i's ``pos_sameby`` group is visited (its
    columns found in the sorted ``cols``), else the block columns ``sub``."""
    cap = out.shape[0]
    mp = 0
    if grp_start.shape[0] > 0:
        g = ps[0, i]
        for k in range(grp_start[g], grp_start[g + 1]):
            j = grp_order[k]
            if j == i or not _match(i, j, ps, pd_):
                continue
            c = np.searchsorted(cols, j)
            if c < cols.shape[0] and cols[c] == j:
                if mp < cap:
                    out[mp] = _key(np.float64(block[t, c]), f32_keys, euclidean)
                mp += 1
    else:
        for k in range(sub.shape[0]):
            c = sub[k]
            j = cols[c]
            if j == i or not active[j] or not _match(i, j, ps, pd_):
                continue
            if mp < cap:
                out[mp] = _key(np.float64(block[t, c]), f32_keys, euclidean)
            mp += 1
    return mp


@numba.njit(parallel=True, cache=True)
def _rank_block(block, queries, want, m_cap, n_neg, cols, sub, active, ps, pd_, ns, nd, f32_keys, euclidean, ap_out,
                u_out, mp_out, grp_order, grp_start):
    """AP and Mann-Whitney U of each wanted query (row t of ``block``; ``cols`` are the global rows of its columns).

    Only the block columns ``sub`` (those that can pair with some query of the block under this rule) are visited.
    Pass 1 keeps the query's positive keys (``m_cap`` of them at most: its M), sorted ascending; pass 2 bins every
    negative by the number of positives at or above it (ties: positive first): nothing to find for a negative
    below every positive (it precedes none) or above every positive, else a bucket table over the positives' key
    range gives its place in O(1) for spread keys (a short scan where positives crowd one bucket). ``mp_out``
    receives the number of positives found, which the caller checks against M; ``n_neg`` (L - M, counted without
    similarities) is each query's number of negatives, so a column below every positive is skipped unmatched. With a group index (``grp_start``
    not empty: the rule's one combined ``pos_sameby`` code, rows ``grp_order[grp_start[g]:grp_start[g + 1]]`` in
    group g), pass 1 visits the query's group only (its columns found in the sorted ``cols``).
    """
    for t in numba.prange(queries.shape[0]):
        if not want[t]:
            continue
        i = queries[t]
        cap = m_cap[t]
        pos = np.empty(cap, np.float64)
        mp = _positive_keys(block, t, i, cols, sub, active, ps, pd_, f32_keys, euclidean, grp_order, grp_start, pos)
        mp_out[t] = mp
        if mp == 0 or mp > cap:
            ap_out[t] = np.nan
            u_out[t] = np.nan
            continue
        asc = np.sort(pos[:mp])
        start = np.empty(4 * mp + 1, np.int64)
        scale = _bucket_table(asc, start)
        cnt = np.zeros(mp + 1, np.int64)
        for k in range(sub.shape[0]):
            c = sub[k]
            v = _key(np.float64(block[t, c]), f32_keys, euclidean)
            if v <= asc[0]:
                continue  # at or below every positive: cnt[mp], which AP never reads (negative or not)
            j = cols[c]
            if j == i or not active[j] or not _match(i, j, ns, nd):
                continue
            cnt[_bin_of(v, asc, start, scale)] += 1
        ap_out[t], u_out[t] = ap_and_u(cnt, mp, n_neg[t])


@numba.njit(parallel=True, cache=True)
def _block_positive_thresholds(block, queries, want, cols, sub, active, ps, pd_, f32_keys, euclidean, key_start, keys,
                               thr, found, grp_order, grp_start):
    """``_rank_block``'s first pass for the wanted queries (row t of ``block``, global row i = queries[t]): the positive
    keys into ``keys[key_start[i]:key_start[i + 1]]``, sorted, and their thresholds (best first) into ``thr``;
    ``found[t]`` = the number found (checked against M)."""
    for t in numba.prange(queries.shape[0]):
        if not want[t]:
            continue
        i = queries[t]
        k0, cap = key_start[i], key_start[i + 1] - key_start[i]
        mp = _positive_keys(block, t, i, cols, sub, active, ps, pd_, f32_keys, euclidean, grp_order, grp_start,
                            keys[k0 : k0 + cap])
        found[t] = mp
        if mp != cap:
            continue
        desc = np.sort(keys[k0 : k0 + cap])[::-1].copy()
        thresholds(desc, f32_keys, euclidean, thr[k0 : k0 + cap])


@numba.njit(inline="always")
def _bucket_table(asc, start):
    """Bucket table over (lowest, highest] of the ascending positive keys ``asc`` (``start`` has 4 M + 1 slots, 4 buckets
    per positive): start[b] = first positive whose bucket is >= b, so a negative in bucket b has its first positive >= it
    at or after start[b], usually at it. Returns the scale (buckets per unit of key)."""
    mp = asc.shape[0]
    nb = start.shape[0] - 1
    lowest, highest = asc[0], asc[mp - 1]
    scale = nb / (highest - lowest) if highest > lowest else 0.0
    p = 0
    for b in range(nb + 1):
        while p < mp and min(np.int64((asc[p] - lowest) * scale), nb) < b:
            p += 1
        start[b] = p
    return scale


@numba.njit(inline="always")
def _bin_of(v, asc, start, scale):
    """The count slot of a negative with key ``v`` > the lowest positive: the number of positives ranked above it
    (ties: positive first), 0 when it is above every positive."""
    mp = asc.shape[0]
    if v > asc[mp - 1]:
        return 0
    lo = start[min(np.int64((v - asc[0]) * scale), start.shape[0] - 1)]
    while asc[lo] < v:  # first position with asc >= v (asc[mp - 1] >= v ends the scan)
        lo += 1
    return mp - lo


@numba.njit(cache=True)
def _group_positive_keys(block, rows, want, ps, pd_, f32_keys, euclidean, key_start, keys, found):
    """Positive keys of the wanted rows among ``rows`` (whole ``pos_sameby`` groups; ``block`` = S[rows, rows]) into
    ``keys[key_start[i]:key_start[i + 1]]`` (unsorted); ``found[i]`` = the number found (checked against M).
    Serial: a batch is small, and a parallel region's start costs more than its work on a loaded machine."""
    for t in range(rows.shape[0]):
        i = rows[t]
        if not want[i]:
            continue
        k0, cap, mp = key_start[i], key_start[i + 1] - key_start[i], 0
        for c in range(rows.shape[0]):
            j = rows[c]
            if j == i or not _match(i, j, ps, pd_):  # codes of inactive rows are -1: never equal to an active row's
                continue
            if mp < cap:
                keys[k0 + mp] = _key(np.float64(block[t, c]), f32_keys, euclidean)
            mp += 1
        found[i] = mp


@numba.njit(parallel=True, cache=True)
def _sort_positive_keys(queries, key_start, keys, tab_start, tabs, scale):
    """Each query's positive keys sorted ascending in place, and its bucket table (``_bucket_table``)."""
    for t in numba.prange(queries.shape[0]):
        i = queries[t]
        k0, k1 = key_start[i], key_start[i + 1]
        keys[k0:k1] = np.sort(keys[k0:k1])
        scale[i] = _bucket_table(keys[k0:k1], tabs[tab_start[i] : tab_start[i + 1]])


@numba.njit(parallel=True, cache=True)
def _positive_thresholds(queries, key_start, keys, f32_keys, euclidean, thr):
    """Each query's positive keys (ascending in ``keys``) as similarity thresholds, best positive first (``thresholds``)."""
    for t in numba.prange(queries.shape[0]):
        i = queries[t]
        k0, k1 = key_start[i], key_start[i + 1]
        thresholds(keys[k0:k1][::-1].copy(), f32_keys, euclidean, thr[k0:k1])


@numba.njit(parallel=True, cache=True)
def _bin_tile(block, rows, cols, sub, want, active, ns, nd, f32_keys, euclidean, key_start, keys, tab_start, tabs, scale,
              cnt):
    """Bin the negatives of one tile (``block`` = S[rows, cols]) into the counts of its wanted query rows, visiting only
    the tile columns ``sub`` (those that can pair with one of its queries under this rule).

    ``cnt[key_start[i] + i : key_start[i + 1] + i + 1]`` holds query i's M + 1 counts (``_rank_block``'s ``cnt``)."""
    for t in numba.prange(rows.shape[0]):
        i = rows[t]
        if not want[i]:
            continue
        k0, k1 = key_start[i], key_start[i + 1]
        asc = keys[k0:k1]
        start = tabs[tab_start[i] : tab_start[i + 1]]
        sc = scale[i]
        lowest = asc[0]
        c0 = k0 + i
        for k in range(sub.shape[0]):
            c = sub[k]
            v = _key(np.float64(block[t, c]), f32_keys, euclidean)
            if v <= lowest:
                continue
            j = cols[c]
            if j == i or not active[j] or not _match(i, j, ns, nd):
                continue
            cnt[c0 + _bin_of(v, asc, start, sc)] += 1


@numba.njit(parallel=True, cache=True)
def _transpose(block):
    """``block.T`` as a C-ordered copy, in 64 x 64 tiles (numpy's strided copy is several times slower)."""
    r, c = block.shape
    out = np.empty((c, r), block.dtype)
    for bi in numba.prange((r + 63) // 64):
        for bj in range(0, c, 64):
            for i in range(bi * 64, min(r, bi * 64 + 64)):
                for j in range(bj, min(c, bj + 64)):
                    out[j, i] = block[i, j]
    return out


@numba.njit(parallel=True, cache=True)
def _ap_of_counts(queries, key_start, cnt, n_neg, ap_out, u_out):
    for t in numba.prange(queries.shape[0]):
        i = queries[t]
        mp = key_start[i + 1] - key_start[i]
        ap_out[t], u_out[t] = ap_and_u(cnt[key_start[i] + i : key_start[i + 1] + i + 1], mp, n_neg[i])


@dataclass
class _Rule:
    name: str
    rows: np.ndarray  # global row indices of the rule set's rows, ascending
    active: np.ndarray  # bool[N]
    ps: np.ndarray
    pd_: np.ndarray
    ns: np.ndarray
    nd: np.ndarray
    m: np.ndarray = None
    l: np.ndarray = None
    ap: np.ndarray = None
    u: np.ndarray = None  # Mann-Whitney U: (positive, negative) pairs with the positive ranked first
    terms: list = None  # [positive terms, negative terms] of _terms
    torch: object = None  # TorchRules on the torch path
    groups: tuple = None  # (order, start) of the rows by their combined pos_sameby code, or two empty arrays
    thr_state: tuple = None  # row blocks ranked by thresholds: (queries, key_start, keys, thresholds, counts, code base)


def _rows_mask(meta: pd.DataFrame, spec, name: str) -> np.ndarray:
    key = f"rule set {name!r}: rows"
    if spec is None:
        return np.ones(len(meta), dtype=bool)
    if isinstance(spec, str):
        return filter_mask(meta, spec, key=key)
    mask = np.asarray(spec)
    if mask.dtype != bool or mask.shape != (len(meta),):
        raise ValueError(f"{key}: expected a filter string or a boolean mask of {len(meta)} rows, "
                         f"got dtype {mask.dtype} shape {mask.shape}")
    return mask


def _build_rule(meta: pd.DataFrame, name: str, spec: Mapping) -> _Rule:
    if not isinstance(spec, Mapping):
        raise TypeError(f"rule set {name!r}: expected a mapping of {', '.join(RULE_KEYS)}, got {type(spec).__name__}")
    unknown = set(spec) - set(RULE_KEYS) - set(OPTIONAL_KEYS)
    if unknown:
        raise ValueError(f"rule set {name!r}: unknown key(s) {sorted(unknown)}; allowed: {list(RULE_KEYS + OPTIONAL_KEYS)}")
    missing = [k for k in RULE_KEYS if k not in spec]
    if missing:
        raise ValueError(f"rule set {name!r}: missing key(s) {missing}")
    active = _rows_mask(meta, spec.get("rows"), name)
    rows = np.flatnonzero(active)
    if len(rows) == 0:
        raise ValueError(f"rule set {name!r}: the rows filter selects no row")
    sub = meta.iloc[rows].reset_index(drop=True)
    try:
        pr = PairRules.build(sub, *(spec[k] for k in RULE_KEYS))
    except (KeyError, ValueError) as e:
        raise type(e)(f"rule set {name!r}: {e.args[0] if e.args else e}") from None

    def full(codes):  # codes over the selected rows -> codes over all N rows (inactive rows never compared)
        out = np.full((codes.shape[0], len(meta)), -1, dtype=np.int64)
        out[:, rows] = codes
        return np.ascontiguousarray(out)

    rule = _Rule(name, rows, active, full(_combine(pr.pos_same)), full(pr.pos_diff), full(_combine(pr.neg_same)),
                 full(pr.neg_diff))
    rule.terms = [_terms(rule.ps, rule.pd_), _terms(rule.ns, rule.nd)]
    rule.groups = _group_index(rule.ps)
    return rule


def _group_index(ps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Active rows sorted by their one combined ``pos_sameby`` code, and each code's start (empty without one)."""
    if ps.shape[0] != 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    codes = ps[0]
    act = np.flatnonzero(codes >= 0)
    order = act[np.argsort(codes[act], kind="stable")].astype(np.int64)
    start = np.concatenate([[0], np.cumsum(np.bincount(codes[act], minlength=int(codes.max()) + 1))]).astype(np.int64)
    return order, start


def _terms(same: np.ndarray, diff: np.ndarray) -> list:
    """Inclusion-exclusion terms (sign, dense group code or None, number of codes) of "equal in ``same``, different
    in every ``diff`` row": the count of partners = sum over subsets T of diff of (-1)^|T| #(equal in same + T)."""
    out = []
    k = diff.shape[0]
    for subset in itertools.chain.from_iterable(itertools.combinations(range(k), t) for t in range(k + 1)):
        rows = [*same, *(diff[c] for c in subset)]
        sign = -1 if len(subset) % 2 else 1
        if not rows:
            out.append((sign, None, 0))
            continue
        _, code = np.unique(np.vstack(rows).T, axis=0, return_inverse=True)
        code = code.reshape(-1).astype(np.int64)
        out.append((sign, code, int(code.max()) + 1))
    return out


def _combine(codes: np.ndarray) -> np.ndarray:
    """Several ``sameby`` code rows -> one (equal in all of them <=> equal combined code): one compare per pair."""
    if codes.shape[0] <= 1:
        return codes
    _, inverse = np.unique(codes.T, axis=0, return_inverse=True)
    return inverse.reshape(1, -1).astype(np.int64)


def _query_order(queries: np.ndarray, rules: list[_Rule]) -> np.ndarray:
    """Queries grouped by their positive keys, so a block's replicates mostly sit inside the block."""
    keys = [r.ps[c, queries] for r in rules for c in range(r.ps.shape[0])]
    if not keys:
        return queries
    return queries[np.lexsort(keys[::-1])]


def _partners(terms: list, queries: np.ndarray, n: int) -> np.ndarray:
    """For every row j of N, how many of ``queries`` pair with it under one rule (``_terms``), j itself included
    when it is a query and the rule has no ``diffby`` column (the signs of a rule with one sum to 0)."""
    total = np.zeros(n, dtype=np.int64)
    for sign, code, k in terms:
        total += sign * (len(queries) if code is None else np.bincount(code[queries], minlength=k)[code])
    return total


def _counts(r: "_Rule") -> tuple[np.ndarray, np.ndarray]:
    """(M, L) per row of all N (0 outside the rule set's rows), without similarities: O(N log N)."""
    m, l = np.zeros(len(r.active), dtype=np.int64), np.zeros(len(r.active), dtype=np.int64)
    pos, neg = (_partners(t, r.rows, len(r.active))[r.rows] - sum(sign for sign, _, _ in t) for t in r.terms)
    m[r.rows] = pos
    l[r.rows] = pos + neg
    return m, l


def _columns_for(q: np.ndarray, rules: list[_Rule], n: int) -> np.ndarray | None:
    """Sorted rows the block ``q`` needs (itself + every rule set's candidates), or None when that is most rows.

    Row j is a candidate of some query when the number of queries i in ``q`` (with positives) pairing with it is
    > 0; that number is counted for all j at once by inclusion-exclusion over the ``diffby`` columns (the rule's
    precomputed group codes, one ``bincount`` per term): O(N) per block, no similarity and no N x |q| scan.
    """
    mask = np.zeros(n, dtype=bool)
    mask[q] = True
    limit = REDUCED_FRACTION * n
    for r in rules:
        w = q[r.m[q] > 0]
        for terms in r.terms:
            mask |= (_partners(terms, w, n) > 0) & r.active
        if mask.sum() >= limit:
            return None
    return np.flatnonzero(mask).astype(np.int64)


def _rule_columns(r: "_Rule", w: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """Positions in ``cols`` of the rows that pair (positive or negative) with at least one of the queries ``w``."""
    mask = np.zeros(n, dtype=bool)
    for terms in r.terms:
        mask |= _partners(terms, w, n) > 0
    mask &= r.active
    return np.flatnonzero(mask[cols]).astype(np.int64)


def _reduced_block(queries, pos, step, rules, n, sims, block_bytes, device_block_bytes):
    """The next reduced block from ``pos``: (queries, their columns), or (None, None) when their columns are most rows.

    Starts with ``REDUCED_QUERY_ROWS`` queries (at most ``step``, a full block's) and doubles while the columns stay few and the block within budget
    (few large blocks: each block gathers its columns once and ranks every rule set over them).
    """
    rows = min(REDUCED_QUERY_ROWS, step)
    q = queries[pos : pos + rows]
    cols = _columns_for(q, rules, n)
    if cols is None:
        return None, None
    while pos + rows < len(queries):
        bigger = queries[pos : pos + 2 * rows]
        more = _columns_for(bigger, rules, n)
        if more is None or sims.block_rows(len(more), block_bytes, device_block_bytes) < len(bigger):
            break
        rows, q, cols = 2 * rows, bigger, more
    return q, cols


def _one_block(sims: Similarities, q, cols, rules, n, f32_keys, euclidean, counters) -> None:
    """Similarities of the queries ``q`` once (all columns, or only ``cols``), then every rule set ranked."""
    q = np.ascontiguousarray(q, dtype=np.int64)
    if cols is None:
        block = sims.block(q)
        counters["full_blocks"] += 1
    else:
        block = sims.block(q, cols)
        counters["reduced_blocks"] += 1
    counters["similarities"] += int(block.shape[0]) * int(block.shape[1])
    all_cols = np.arange(n, dtype=np.int64) if cols is None else cols
    for r in rules:
        w = np.ascontiguousarray(r.m[q] > 0)
        if sims.torch_ranking:
            out, u = rank_block_torch(block, q, w, cols, r.torch, f32_keys, euclidean)
        else:
            out, u, found = np.empty(len(q)), np.empty(len(q)), np.zeros(len(q), dtype=np.int64)
            sub = _rule_columns(r, q[w], all_cols, n)
            fast = w & _threshold_queries(r, block)[q]
            slow = w & ~fast
            if slow.any():
                _rank_block(block, q, slow, np.ascontiguousarray(r.m[q]), np.ascontiguousarray(r.l[q] - r.m[q]), all_cols,
                            sub, r.active, r.ps, r.pd_, r.ns, r.nd,
                            f32_keys, euclidean, out, u, found, *r.groups)
            if fast.any():
                _threshold_rank_block(block, q, fast, all_cols, sub, r, n, f32_keys, euclidean, out, u, found)
            if not np.array_equal(found[w], r.m[q][w]):
                bad = int(np.flatnonzero(found[w] != r.m[q][w])[0])
                raise RuntimeError(f"rule set {r.name!r}: row {int(q[w][bad])} has {int(found[w][bad])} positives in its "
                                   f"block but {int(r.m[q][w][bad])} by count (internal error)")
        r.ap[q[w]] = out[w]
        r.u[q[w]] = u[w]


def _threshold_queries(r: "_Rule", block) -> np.ndarray:
    """bool[N]: the rule set's queries ranked by thresholds in float32 blocks (at most ``FAST_MAX_M`` positives, no
    ``neg_sameby``); their positive keys, thresholds and counts (CSR by row) are kept on the rule set."""
    if r.ns.shape[0] > 0 or r.nd.shape[0] == 0 or block.dtype != np.float32:
        return np.zeros(len(r.m), dtype=bool)
    if r.thr_state is None:
        fast = (r.m > 0) & (r.m <= FAST_MAX_M)
        key_start = np.concatenate([[0], np.cumsum(np.where(fast, r.m, 0))]).astype(np.int64)
        size = int(key_start[-1])
        r.thr_state = (fast, key_start, np.empty(size), np.empty(size, np.float32), np.zeros(size, np.int64),
                       int(r.nd.max()) + 2)
    return r.thr_state[0]


def _threshold_rank_block(block, q, fast, all_cols, sub, r: "_Rule", n, f32_keys, euclidean, out, u, found) -> None:
    """AP and U of the block's ``fast`` queries by thresholds (:mod:`threshold_counts`): positives from the block,
    negatives counted over the block's candidate columns, non-negatives taken back out by their neg_diffby codes."""
    mask, key_start, keys, thr, dcnt, base = r.thr_state
    _block_positive_thresholds(block, q, fast, all_cols, sub, r.active, r.ps, r.pd_, f32_keys, euclidean, key_start,
                               keys, thr, found, *r.groups)
    qf = q[fast]
    if not np.array_equal(found[fast], r.m[qf]):
        return  # the caller reports the row
    neg = (_partners(r.terms[1], qf, n) > 0)[all_cols] & r.active[all_cols]
    if neg.any():
        idx = np.flatnonzero(neg).astype(np.int64)
        count_above(block, q, mask, np.zeros(0, np.int64) if neg.all() else idx, key_start, thr, dcnt)
        exclude_shared(block, q, mask, all_cols, r.nd, base, *tile_groups(r.nd, base, all_cols, idx), key_start, thr,
                       dcnt, False)
    ap, uu = np.empty(len(qf)), np.empty(len(qf))
    ap_of_cumulative(qf, key_start, dcnt, r.l - r.m, ap, uu)
    out[fast] = ap
    u[fast] = uu


def _symmetric_ok(sims: Similarities, rules: list["_Rule"], block_bytes: int) -> bool:
    """Symmetric tiles need host blocks (the Rust core's, or PyTorch's on the CPU in a reduced precision or
    ``engine="torch"``), a group index per rule set (one combined ``pos_sameby`` code), groups whose S[G, G] fits a
    block, and every query's positive state (keys, bucket table, counts: ~48 bytes per positive pair) within
    ``SYMMETRIC_STATE_BYTES``. On the Rust path every similarity is the row path's bit for bit; on the PyTorch CPU
    path a positive's similarity comes from its group's block and a negative's from a tile, products of different
    shapes whose float rounding may differ in the last bit (the row path takes both from one block)."""
    if sims.torch_ranking:
        return False
    state = 0
    for r in rules:
        order, start = r.groups
        if len(start) == 0:
            return False
        if int(np.diff(start).max(initial=0)) ** 2 * sims.itemsize > block_bytes:
            return False
        state += 48 * int(r.m.sum()) + 16 * len(r.m)
    return state <= SYMMETRIC_STATE_BYTES


class _PositiveState:
    """One rule set's queries of the symmetric pass: sorted positive keys, bucket tables and negative counts (CSR by row)."""

    def __init__(self, sims: Similarities, r: "_Rule", want: np.ndarray, f32_keys: bool, euclidean: bool,
                 fast: bool = True):
        n = len(want)
        self.want, self.queries = want, np.flatnonzero(want).astype(np.int64)
        m = np.where(want, r.m, 0)
        self.key_start = np.concatenate([[0], np.cumsum(m)]).astype(np.int64)
        self.keys = np.empty(int(self.key_start[-1]), np.float64)
        self.tab_start = np.concatenate([[0], np.cumsum(np.where(want, 4 * m + 1, 0))]).astype(np.int64)
        self.tabs = np.empty(int(self.tab_start[-1]), np.int64)
        self.scale = np.zeros(n)
        self.cnt = np.zeros(len(self.keys) + n, np.int64)
        found = np.zeros(n, np.int64)
        # the positives: S[G, G] of the queries' pos_sameby groups G, a batch of whole groups per block
        order, start = r.groups
        groups = np.unique(r.ps[0, self.queries])
        batch, batch_rows = [], 0
        for k, g in enumerate(groups):
            batch.append(order[start[g] : start[g + 1]])
            batch_rows += len(batch[-1])
            if batch_rows >= POS_BATCH_ROWS or k == len(groups) - 1:
                rows = np.concatenate(batch).astype(np.int64)
                _group_positive_keys(sims.block(rows, rows), rows, want, r.ps, r.pd_, f32_keys, euclidean,
                                     self.key_start, self.keys, found)
                batch, batch_rows = [], 0
        if not np.array_equal(found[want], r.m[want]):
            bad = int(self.queries[np.flatnonzero(found[want] != r.m[want])[0]])
            raise RuntimeError(f"rule set {r.name!r}: row {bad} has {int(found[bad])} positives in its group blocks but "
                               f"{int(r.m[bad])} by count (internal error)")
        _sort_positive_keys(self.queries, self.key_start, self.keys, self.tab_start, self.tabs, self.scale)
        # queries counted by thresholds (threshold_counts): no neg_sameby, float32 blocks, few positives; the others
        # keep the bucket kernel
        self.fast = np.zeros(n, dtype=bool)
        if fast and r.ns.shape[0] == 0 and r.nd.shape[0] > 0 and sims.itemsize == 4:
            self.fast = want & (m <= FAST_MAX_M)
            self.base = int(r.nd.max()) + 2
        self.slow = want & ~self.fast
        if self.fast.any():
            self.thr = np.empty(len(self.keys), np.float32)
            self.dcnt = np.zeros(len(self.keys), np.int64)
            _positive_thresholds(np.flatnonzero(self.fast), self.key_start, self.keys, f32_keys, euclidean, self.thr)

    def bin(self, block, rows, cols, r: "_Rule", f32_keys: bool, euclidean: bool, transposed=None) -> None:
        """Count the negatives of the queries ``rows`` among the candidates ``cols``: ``block`` = S[rows, cols], or
        with ``transposed`` (a function giving S[rows, cols] when the bucket kernel needs it) ``block`` = S[cols, rows]."""
        n = len(self.want)
        w = rows[self.slow[rows]]
        if len(w):
            sub = _rule_columns(r, w, cols, n)
            _bin_tile(block if transposed is None else transposed(), rows, cols, sub, self.slow, r.active, r.ns, r.nd,
                      f32_keys, euclidean, self.key_start, self.keys, self.tab_start, self.tabs, self.scale, self.cnt)
        w = rows[self.fast[rows]]
        if not len(w):
            return
        # every active candidate that is a negative of some query of the tile is counted; those that are not negatives
        # of a given query share one of its neg_diffby codes and are taken back out
        neg = (_partners(r.terms[1], w, n) > 0)[cols] & r.active[cols]
        if not neg.any():
            return
        sub = np.zeros(0, np.int64) if neg.all() else np.flatnonzero(neg).astype(np.int64)
        t = transposed is not None
        count_above(block, rows, self.fast, sub, self.key_start, self.thr, self.dcnt, transposed=t)
        groups = tile_groups(r.nd, self.base, cols, np.flatnonzero(neg).astype(np.int64))
        exclude_shared(block, rows, self.fast, cols, r.nd, self.base, *groups, self.key_start, self.thr, self.dcnt, t)

    def finish(self, r: "_Rule") -> None:
        slow = np.flatnonzero(self.slow).astype(np.int64)
        ap, u = np.empty(len(slow)), np.empty(len(slow))
        _ap_of_counts(slow, self.key_start, self.cnt, r.l - r.m, ap, u)
        r.ap[slow] = ap
        r.u[slow] = u
        fast = np.flatnonzero(self.fast).astype(np.int64)
        if len(fast):
            ap, u = np.empty(len(fast)), np.empty(len(fast))
            ap_of_cumulative(fast, self.key_start, self.dcnt, r.l - r.m, ap, u)
            r.ap[fast] = ap
            r.u[fast] = u


def _symmetric_pass(sims: Similarities, queries: np.ndarray, rules: list["_Rule"], n: int, f32_keys: bool,
                    euclidean: bool, block_bytes: int, counters: dict) -> None:
    """Rank ``queries`` against all their candidates from symmetric tiles (see the module docstring)."""
    is_query = np.zeros(n, dtype=bool)
    is_query[queries] = True
    candidate = np.zeros(n, dtype=bool)
    for r in rules:
        candidate |= r.active
    qs = np.sort(queries).astype(np.int64)
    others = np.flatnonzero(candidate & ~is_query).astype(np.int64)
    tile = int(max(SYMMETRIC_MIN_TILE, min(SYMMETRIC_MAX_TILE, np.sqrt(block_bytes / (2 * sims.itemsize)))))
    q_tiles = [qs[s : s + tile] for s in range(0, len(qs), tile)]
    o_tiles = [others[s : s + tile] for s in range(0, len(others), tile)]
    states = [_PositiveState(sims, r, is_query & (r.m > 0), f32_keys, euclidean) for r in rules]
    for a, rows in enumerate(q_tiles):
        for b, cols in enumerate(q_tiles[a:] + o_tiles, start=a):
            block = sims.block(rows, cols)
            counters["symmetric_tiles"] += 1
            counters["similarities"] += int(block.shape[0]) * int(block.shape[1])
            for r, st in zip(rules, states):
                st.bin(block, rows, cols, r, f32_keys, euclidean)
            if a < b < len(q_tiles):  # the same tile serves the column tile's queries: S[J, I] = S[I, J]ᵀ bit for bit
                block_t = []  # S[J, I] as a copy, made once if the bucket kernel needs it (threshold counts read S[I, J])

                def transposed():
                    if not block_t:
                        block_t.append(_transpose(block))
                    return block_t[0]

                for r, st in zip(rules, states):
                    st.bin(block, cols, rows, r, f32_keys, euclidean, transposed=transposed)
    for r, st in zip(rules, states):
        st.finish(r)


def evaluate_many(
    meta,
    feats,
    rule_sets: Mapping[str, Mapping],
    distance: str = "cosine",
    block_bytes: int = MANY_BLOCK_BYTES,
    ties: str = "copairs",
    columns: str = "auto",
    stats: dict | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    emulate: bool = False,
    device_block_bytes: int = DEFAULT_DEVICE_BLOCK_BYTES,
    roc_auc: bool = False,
    roc_auc_method: str = "auto",
    engine: str = "auto",
    symmetric: bool = True,
) -> dict[str, pd.DataFrame]:
    """Per-query AP for every rule set from one pass of similarity blocks (see the module docstring).

    ``stats``, when a dict, receives ``full_blocks``, ``reduced_blocks``, ``symmetric_tiles`` and ``similarities``
    (the number of similarity values computed), so a caller can see which path ran, and ``device``. ``symmetric``
    (with ``columns="auto"``): the queries that need every column are ranked from symmetric tiles where possible
    (each tile S_IJ computed once for the queries of I and of J; identical values); False keeps row blocks.
    ``precision`` / ``emulate``: the similarity GEMM's arithmetic (:mod:`phenovec.evaluate.precision`; "fp32"
    is exact). ``device``: "cpu" (default), "cuda", "auto" or "torch-cpu" (:mod:`phenovec.evaluate.backend`);
    ``device_block_bytes`` bounds a torch block's temporaries. ``engine="torch"``: the CPU fp32 GEMM through
    PyTorch instead of the Rust core (not bit-identical to ``average_precision``). ``roc_auc``: add ``roc_auc``, ``mann_whitney_u``
    and ``roc_auc_p_value`` from the same ranked lists (:mod:`phenovec.evaluate.roc_auc`; ``roc_auc_method``
    "auto" | "exact" | "asymptotic").
    """
    if not isinstance(rule_sets, Mapping) or not rule_sets:
        raise ValueError("rule_sets: expected a non-empty mapping of name -> rules")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if roc_auc_method not in ROC_AUC_METHODS:
        raise ValueError(f"roc_auc_method must be one of {ROC_AUC_METHODS}, got {roc_auc_method!r}")
    if columns not in COLUMNS:
        raise ValueError(f"columns must be one of {COLUMNS}, got {columns!r}")
    metric = check_metric(distance)
    meta, x = _inputs(meta, feats)
    meta = meta.reset_index(drop=True)
    _core.check_features(x, metric)
    n = len(x)
    rules = [_build_rule(meta, str(name), spec) for name, spec in rule_sets.items()]
    for r in rules:
        r.m, r.l = _counts(r)
        if r.m.sum() == 0:
            raise UnpairedError(f"rule set {r.name!r}: unable to find positive pairs: no two rows satisfy pos_sameby/pos_diffby")
        if (r.l - r.m).sum() == 0:
            raise UnpairedError(f"rule set {r.name!r}: unable to find negative pairs: no two rows satisfy neg_sameby/neg_diffby")
        r.ap = np.full(n, np.nan)
        r.u = np.full(n, np.nan)
    wanted = np.zeros(n, dtype=bool)
    for r in rules:
        wanted |= r.m > 0
    queries = _query_order(np.flatnonzero(wanted).astype(np.int64), rules)
    f32_keys, euclidean = ties == "copairs", metric == "euclidean"
    sims = Similarities(x, metric, precision, device, emulate, engine)
    if sims.torch_ranking:
        for r in rules:
            r.torch = TorchRules(r, sims.tdev)
        step = sims.block_rows(n, block_bytes, device_block_bytes)
    else:
        step = block_rows_for(n, sims.itemsize, block_bytes)
    counters = {"full_blocks": 0, "reduced_blocks": 0, "symmetric_tiles": 0, "similarities": 0, "device": sims.device}
    tiles = columns == "auto" and symmetric and _symmetric_ok(sims, rules, block_bytes)
    full_queries = []  # queries that need every column, ranked from symmetric tiles at the end
    pos = 0
    while pos < len(queries):
        q, cols = queries[pos : pos + step], None
        if columns == "auto":
            q, cols = _reduced_block(queries, pos, step, rules, n, sims, block_bytes, device_block_bytes)
            if cols is None:
                q = queries[pos : pos + step]
        if cols is None and tiles:
            full_queries.append(q)
            counters["full_blocks"] += 1
        else:
            _one_block(sims, q, cols, rules, n, f32_keys, euclidean, counters)
        pos += len(q)
    if full_queries:
        _symmetric_pass(sims, np.concatenate(full_queries), rules, n, f32_keys, euclidean, block_bytes, counters)
    if stats is not None:
        stats.update(counters)
    results = {}
    for r in rules:
        df = meta.iloc[r.rows].reset_index(drop=True).copy()
        m, l, ap = r.m[r.rows], r.l[r.rows], r.ap[r.rows]
        df["n_pos_pairs"] = m
        df["n_total_pairs"] = l
        df["average_precision"] = ap
        norm = normalize_ap(np.nan_to_num(ap), m, l)
        norm[np.isnan(ap)] = np.nan
        df["normalized_average_precision"] = norm
        if roc_auc:
            add_roc_auc(df, r.u[r.rows], roc_auc_method)
        results[r.name] = df
    return results
