"""Exact quantiles and threshold counts over all pairs of profiles, without the N x N matrix.

cytominer-eval melts the whole similarity matrix into a long table and calls pandas
``Series.quantile`` (linear interpolation) on it. Here the unordered pairs ``i < j`` are streamed
block by block (:func:`iter_upper_pairs`) and the needed order statistics are selected exactly in
two passes:

1. a histogram of the similarities over ``2**HIST_BITS`` bins of their order-preserving 64-bit
   keys (no range needed, works for every metric), one histogram per pair class
   (replicate / non-replicate);
2. the values of the few bins that hold the needed order statistics (and the threshold) are
   collected and sorted; the threshold is interpolated exactly as numpy/pandas do.

The counts of each class above the threshold come from the histogram plus the collected bins, so
no third pass is needed (one is run only if the threshold falls, by rounding, into a bin that was
not collected). Memory: the histograms (16 MiB), one similarity block, and the collected bins.

A pair's similarity is taken from the upper triangle only, so a metric that is not bitwise
symmetric still gives one value per unordered pair; pandas mirrors ``corr`` the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES, as_list, encode_columns
from phenovec.evaluate.similarity import iter_similarity_blocks

HIST_BITS = 20
N_BINS = 1 << HIST_BITS
_SIGN = np.uint64(1 << 63)


def replicate_codes(meta: pd.DataFrame, replicate_groups) -> np.ndarray:
    """One integer per row; two rows are replicates when their codes are equal, i.e. when they are
    equal in **every** ``replicate_groups`` column (cytominer-eval's ``group_replicate``).

    Unknown columns raise ``KeyError``; missing values raise ``ValueError`` naming column and row.
    """
    cols = as_list(replicate_groups)
    if not cols:
        raise ValueError("replicate_groups: name at least one metadata column")
    enc = encode_columns(meta, cols, "replicate_groups")
    if len(cols) == 1:
        return enc[0]
    _, inv = np.unique(enc, axis=1, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def sortable_keys(v: np.ndarray) -> np.ndarray:
    """Order-preserving map float64 -> uint64 (``-0.0`` must be normalised to ``+0.0`` first)."""
    b = np.ascontiguousarray(v, dtype=np.float64).view(np.uint64)
    neg = (b & _SIGN) != 0
    return np.where(neg, ~b, b | _SIGN)


def bins_of(v: np.ndarray) -> np.ndarray:
    return (sortable_keys(v) >> np.uint64(64 - HIST_BITS)).astype(np.int64)


def linear_quantile_index(n: int, q: float) -> tuple[int, int, float]:
    """numpy's ``method="linear"`` (pandas' default): ``(previous, next, gamma)`` for ``n`` values.

    pandas >= 2 calls ``np.quantile(values, q)``; pandas 1.x called ``np.percentile(values, q*100)``,
    which is the same unless ``q*100/100 != q`` in floating point (not the case for 0.9 ... 0.995).
    """
    virtual = (n - 1) * float(q)
    if virtual >= n - 1:
        return n - 1, n - 1, 0.0
    prev = int(np.floor(virtual))
    return prev, prev + 1, virtual - prev


def lerp(a: float, b: float, t: float) -> float:
    """numpy's ``_lerp`` (the branch for ``t >= 0.5`` keeps the result monotone)."""
    a, b, t = np.float64(a), np.float64(b), np.float64(t)
    d = b - a
    return float(b - d * (1 - t)) if t >= 0.5 else float(a + d * t)


def pandas_linear_quantile(sorted_values: np.ndarray, q: float) -> float:
    """The linear quantile of an already sorted array (reference for small data)."""
    p, nx, g = linear_quantile_index(len(sorted_values), q)
    return lerp(sorted_values[p], sorted_values[nx], g)


def iter_upper_pairs(
    feats: np.ndarray, metric: str, codes: np.ndarray, block_bytes: int = DEFAULT_BLOCK_BYTES, with_rows: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield ``(similarity, replicate, row_a)`` for every unordered pair ``i < j``, block by block.

    ``replicate`` is ``codes[i] == codes[j]``; ``row_a`` is ``i`` (``None`` unless ``with_rows``).
    Within a block, pairs come row by row, ``j`` ascending. ``-0.0`` is returned as ``+0.0``.
    """
    for rows, block in iter_similarity_blocks(feats, metric, block_bytes=block_bytes):
        block = np.asarray(block, dtype=np.float64)
        vals = np.concatenate([block[k, r + 1 :] for k, r in enumerate(rows)]) + 0.0
        rep = np.concatenate([codes[r + 1 :] == codes[r] for r in rows])
        row_a = np.repeat(rows, len(codes) - 1 - rows) if with_rows else None
        yield vals, rep, row_a


@dataclass
class PairThreshold:
    """One quantile: the threshold and, per class (0 = non-replicate, 1 = replicate), the number
    of unordered pairs with similarity ``> threshold`` and in all."""

    q: float
    threshold: float
    above: tuple[int, int]
    total: tuple[int, int]


def pair_thresholds(
    feats: np.ndarray,
    metric: str,
    codes: np.ndarray,
    qs: Sequence[float],
    over: str = "all",
    doubled: bool = False,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> list[PairThreshold]:
    """Exact pandas-linear quantiles of the pair similarities and the counts above them.

    ``over="all"``: the quantile is over every pair; ``"nonreplicate"``: over the pairs with
    ``codes[i] != codes[j]`` only. ``doubled=True`` takes the quantile over the ordered pairs
    (every unordered pair twice, as cytominer-eval's full off-diagonal melt); counts stay per
    unordered pair (the caller doubles them).
    """
    if over not in ("all", "nonreplicate"):
        raise ValueError(f"over must be 'all' or 'nonreplicate', got {over!r}")
    codes = np.asarray(codes)
    # pass 1: histograms per class
    hist = np.zeros((2, N_BINS), dtype=np.int64)
    for vals, rep, _ in iter_upper_pairs(feats, metric, codes, block_bytes):
        b = bins_of(vals)
        hist[1] += np.bincount(b[rep], minlength=N_BINS)
        hist[0] += np.bincount(b[~rep], minlength=N_BINS)
    total = (int(hist[0].sum()), int(hist[1].sum()))
    h_sel = hist[0] if over == "nonreplicate" else hist[0] + hist[1]
    m = int(h_sel.sum())
    if m == 0:
        raise ValueError("no non-replicate pairs: every pair of profiles is a replicate pair"
                         if over == "nonreplicate" else "need at least two profiles (no pairs)")
    cum = np.cumsum(h_sel)

    def locate(k: int) -> tuple[int, int]:
        b = int(np.searchsorted(cum, k, side="right"))
        return b, k - (int(cum[b - 1]) if b > 0 else 0)

    n_q = 2 * m if doubled else m
    plan = []
    needed = np.zeros(N_BINS, dtype=bool)
    for q in qs:
        p, nx, g = linear_quantile_index(n_q, q)
        if doubled:
            p, nx = p // 2, nx // 2
        (bp, kp), (bn, kn) = locate(p), locate(nx)
        needed[bp : bn + 1] = True
        plan.append((q, bp, kp, bn, kn, g))
    # pass 2: the values of the needed bins
    got_v, got_r, got_b = [], [], []
    for vals, rep, _ in iter_upper_pairs(feats, metric, codes, block_bytes):
        b = bins_of(vals)
        sel = needed[b]
        got_v.append(vals[sel])
        got_r.append(rep[sel])
        got_b.append(b[sel])
    cv = np.concatenate(got_v) if got_v else np.zeros(0)
    cr = np.concatenate(got_r) if got_r else np.zeros(0, bool)
    cb = np.concatenate(got_b) if got_b else np.zeros(0, np.int64)
    in_sel = ~cr if over == "nonreplicate" else np.ones(len(cv), bool)

    def order_stat(b: int, k: int) -> float:
        return float(np.sort(cv[(cb == b) & in_sel])[k])

    out: list[PairThreshold] = []
    unresolved = []
    for q, bp, kp, bn, kn, g in plan:
        t = lerp(order_stat(bp, kp), order_stat(bn, kn), g) + 0.0
        bt = int(bins_of(np.array([t]))[0])
        if needed[bt]:
            inbin = cb == bt
            above = tuple(int(hist[c, bt + 1 :].sum()) + int(np.count_nonzero(inbin & (cr == bool(c)) & (cv > t)))
                          for c in (0, 1))
            out.append(PairThreshold(float(q), t, above, total))
        elif hist[:, bt].sum() == 0:
            out.append(PairThreshold(float(q), t, (int(hist[0, bt + 1 :].sum()), int(hist[1, bt + 1 :].sum())), total))
        else:  # pragma: no cover - only if rounding puts t into an uncollected, non-empty bin
            unresolved.append(len(out))
            out.append(PairThreshold(float(q), t, (0, 0), total))
    if unresolved:  # pragma: no cover
        counts = np.zeros((len(unresolved), 2), dtype=np.int64)
        ts = np.array([out[i].threshold for i in unresolved])
        for vals, rep, _ in iter_upper_pairs(feats, metric, codes, block_bytes):
            gt = vals[None, :] > ts[:, None]
            counts[:, 1] += (gt & rep[None, :]).sum(axis=1)
            counts[:, 0] += (gt & ~rep[None, :]).sum(axis=1)
        for i, c in zip(unresolved, counts):
            out[i].above = (int(c[0]), int(c[1]))
    return out
