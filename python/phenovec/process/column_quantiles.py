"""Exact per-column (per-group) quantiles of data streamed in batches, with bounded memory.

Used by ``normalize_stream`` for robustize (median, 25th/75th percentiles) and mad_robustize (median, then the
median of ``|x - median|``). The result is *bit-identical* to ``np.nanmedian`` / ``np.nanpercentile``
(method ``"linear"``, the rule sklearn's RobustScaler and scipy's ``median_abs_deviation`` use) on the same
values held in memory, whatever the batch size and row order:

1. A counting pass (:class:`ColumnRange`): per (group, column) the number of non-NaN values, min and max.
   This fixes, for each requested quantile, the two order statistics numpy interpolates between
   (ranks ``floor((n-1)q)`` and the next one; ``(n-1)//2`` and ``n//2`` for the median).
2. Selection passes (:class:`QuantileSelector`): every float64 is mapped to a uint64 key with the same
   order (``-0.0`` folded onto ``+0.0``), so bins are exact integer ranges (a radix select). Each pass
   histograms, per target, the keys inside the target's current key interval into ``2**bits`` bins, and
   narrows the interval to the bin holding the two ranks. Ties and heavy tails need no special care:
   an interval of one key is one value, and each level divides the key range by ``2**bits`` (at most
   ``ceil(64 / bits)`` levels). Once an interval holds at most ``collect_limit`` values, the next pass
   collects them and the order statistics are read off exactly. When the two (adjacent) ranks fall in
   different bins, no value lies between those bins, so the next pass takes the largest key of the lower
   bin and the smallest of the upper one.
3. The two order statistics are combined with numpy's own formulas: ``(lo + hi) / 2`` for the median,
   numpy's ``_lerp`` (``a + (b-a)t``, or ``b - (b-a)(1-t)`` when ``t >= 0.5``) for percentiles.

Memory: histograms of ``targets x 2**bits`` counts (``bits`` chosen so that this is about ``max_cells``, at
least 16 bins) and at most ``max(max_values, 64 x targets)`` collected values, where targets = groups x
columns x quantiles: independent of the number of rows.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

_SIGN = np.uint64(1 << 63)
_HIST, _COLLECT, _DONE, _SPLIT = 0, 1, 2, 3


def float_keys(x: np.ndarray) -> np.ndarray:
    """uint64 keys whose unsigned order is the float64 order of ``x`` (``-0.0`` maps like ``+0.0``; NaN keys are
    meaningless: mask them)."""
    x = np.asarray(x, dtype=np.float64) + 0.0  # -0.0 + 0.0 == +0.0
    u = x.view(np.uint64)
    return np.where(u >= _SIGN, ~u, u | _SIGN)


def keys_to_float(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`float_keys`."""
    k = np.asarray(k, dtype=np.uint64)
    return np.where(k >= _SIGN, k & ~_SIGN, ~k).view(np.float64)


def _bit_length(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.uint64).copy()
    n = np.zeros(v.shape, dtype=np.int64)
    for b in (32, 16, 8, 4, 2, 1):
        m = (v >> np.uint64(b)) != 0
        v = np.where(m, v >> np.uint64(b), v)
        n += m * b
    return n + (v != 0)


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's ``_lerp`` (numpy/lib/_function_base_impl.py), element for element."""
    a, b, t = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(t, np.float64))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = b - a
        out = a + diff * t
        hi = t >= 0.5
        out = np.where(hi, b - diff * (1 - t), out)
    return out


def quantile_ranks(n: np.ndarray, q) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Order statistics (0-based ranks among the non-NaN values) numpy combines for quantile ``q``.

    ``q="median"``: ``np.nanmedian`` (ranks ``(n-1)//2`` and ``n//2``, result ``(lo+hi)/2``). A float ``q`` in
    [0, 1]: ``np.nanquantile(method="linear")`` (virtual index ``(n-1)q``; ranks ``floor`` and ``floor+1``,
    both ``n-1`` at or past the end; weight ``gamma`` as numpy computes it). Returns ``(lo, hi, gamma)``,
    gamma ``None`` for the median. Entries with ``n == 0`` get rank 0 (their result is NaN).
    """
    n = np.asarray(n, dtype=np.int64)
    if isinstance(q, str):
        if q != "median":
            raise ValueError(f"quantile must be 'median' or a float in [0, 1], got {q!r}")
        lo = np.maximum((n - 1) // 2, 0)
        hi = np.maximum(n // 2, 0)
        hi = np.where(n > 0, hi, 0)
        return lo, hi, None
    q = float(q)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    v = (n - 1) * np.float64(q)  # numpy: (values_count - 1) * quantiles
    prev = np.floor(v)
    above = v >= n - 1
    lo = np.where(above, n - 1, prev).astype(np.int64)
    hi = np.where(above, n - 1, prev + 1).astype(np.int64)
    gamma = v - np.where(above, -1.0, prev)  # numpy subtracts the (already clipped to -1) previous index
    lo = np.maximum(lo, 0)
    hi = np.maximum(hi, 0)
    return lo, hi, gamma


def combine(lo_val: np.ndarray, hi_val: np.ndarray, q, gamma, n: np.ndarray) -> np.ndarray:
    """The quantile from its two order statistics, with numpy's arithmetic (NaN where ``n == 0``)."""
    if isinstance(q, str):
        with np.errstate(invalid="ignore", over="ignore"):
            out = np.where(lo_val == hi_val, lo_val, (lo_val + hi_val) / 2.0)
    else:
        out = lerp(lo_val, hi_val, gamma)
    return np.where(np.asarray(n) > 0, out, np.nan)


def nan_quantiles(x: np.ndarray, qs: Sequence, overwrite: bool = False) -> np.ndarray:
    """``(len(qs), d)`` quantiles of the columns of ``x`` ignoring NaN, equal bit for bit to numpy's
    ``np.nanmedian`` (``"median"``) and ``np.nanpercentile(100 q)`` / ``np.nanquantile(q)`` (floats): what sklearn
    and scipy call. The order statistics come from one ``np.partition`` (few quantiles) or ``np.sort`` (many)
    of a column-major copy, vectorised over the columns without NaN; they are combined with numpy's formulas
    (:func:`combine`). The streamed :class:`QuantileSelector` gives the same values. All-NaN columns give NaN.
    (One deliberate difference: numpy's small-array ``nanmedian`` of an odd count computes ``(x + x) / 2``,
    which overflows for ``|x| > 8.9e307``; this returns ``x``.) ``overwrite=True`` lets a column-major ``x``
    without NaN be reordered in place instead of copied."""
    x = np.asarray(x, dtype=np.float64)
    m, d = x.shape
    out = np.full((len(qs), d), np.nan)
    if m == 0 or d == 0:
        return out
    nan = np.isnan(x)
    has_nan = nan.any(axis=0)
    clean = np.flatnonzero(~has_nan)
    if len(clean):
        if overwrite and len(clean) == d and x.flags.f_contiguous:
            block = x
        else:
            block = np.array(x[:, clean] if len(clean) < d else x, dtype=np.float64, order="F", copy=True)
        out[:, clean] = _select(block, m, qs)
    for j in np.flatnonzero(has_nan):
        v = x[~nan[:, j], j]
        if len(v):
            out[:, j] = _select(v[:, None].copy(), len(v), qs)[:, 0]
    return out


def _select(block: np.ndarray, n: int, qs: Sequence) -> np.ndarray:
    """Quantiles of the ``n`` rows of each column of ``block`` (no NaN; ``block`` is reordered in place)."""
    ranks = [quantile_ranks(np.array([n]), q) for q in qs]
    kth = sorted({int(r[0][0]) for r in ranks} | {int(r[1][0]) for r in ranks})
    if len(kth) > 32:
        block.sort(axis=0)
    else:
        block.partition(kth, axis=0)
    res = np.empty((len(qs), block.shape[1]))
    for i, (q, (lo, hi, gamma)) in enumerate(zip(qs, ranks)):
        res[i] = combine(block[lo[0]], block[hi[0]], q, None if gamma is None else gamma[0], np.array(n))
    return res


def nan_percentiles(x: np.ndarray, percents: np.ndarray) -> np.ndarray:
    """``np.nanpercentile(x, percents, axis=0)`` bit for bit (``len(percents) x d``), via :func:`nan_quantiles`
    with numpy's own ``q = percents / 100``."""
    q = np.true_divide(np.asarray(percents, dtype=np.float64), 100)
    return nan_quantiles(x, [float(v) for v in q])


def _group_slices(codes: np.ndarray):
    """Row order that sorts ``codes`` (stable), the distinct codes and the start of each run."""
    order = np.argsort(codes, kind="stable")
    sc = codes[order]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]]) if len(sc) else np.zeros(0, dtype=np.intp)
    return order, sc[starts] if len(sc) else sc, starts


class ColumnRange:
    """Counting pass: per (group, column) count of non-NaN values, minimum and maximum (groups may appear late)."""

    def __init__(self, n_cols: int, n_groups: int = 0):
        self.d = int(n_cols)
        self.count = np.zeros((n_groups, self.d), dtype=np.int64)
        self.min = np.full((n_groups, self.d), np.inf)
        self.max = np.full((n_groups, self.d), -np.inf)

    def _grow(self, g: int) -> None:
        if g <= len(self.count):
            return
        extra = g - len(self.count)
        self.count = np.vstack([self.count, np.zeros((extra, self.d), dtype=np.int64)])
        self.min = np.vstack([self.min, np.full((extra, self.d), np.inf)])
        self.max = np.vstack([self.max, np.full((extra, self.d), -np.inf)])

    def update(self, x: np.ndarray, codes: np.ndarray) -> None:
        """Add a batch: ``x`` (m x d) float64, ``codes`` (m,) group index of each row."""
        if len(x) == 0:
            return
        codes = np.asarray(codes, dtype=np.intp)
        self._grow(int(codes.max()) + 1)
        order, groups, starts = _group_slices(codes)
        xs = x[order]
        valid = ~np.isnan(xs)
        self.count[groups] += np.add.reduceat(valid, starts, axis=0, dtype=np.int64)
        with np.errstate(invalid="ignore"):
            self.min[groups] = np.fmin(self.min[groups], np.fmin.reduceat(xs, starts, axis=0))
            self.max[groups] = np.fmax(self.max[groups], np.fmax.reduceat(xs, starts, axis=0))


class QuantileSelector:
    """Exact quantiles per (group, column) over repeated passes of a batch stream (see module docstring).

    Usage::

        sel = QuantileSelector(rng.count, rng.min, rng.max, ["median", 0.25, 0.75])
        while not sel.done:
            for x, codes in batches():        # the same rows, any batching, every pass
                sel.update(x, codes)
            sel.end_pass()
        q = sel.values()                      # (3, groups, columns)

    ``bits`` (bins per level ``2**bits``; default from ``max_cells``), ``collect_limit`` (values per target
    gathered exactly; default from ``max_values``) only trade passes against memory; the result is the same.
    """

    def __init__(
        self,
        count: np.ndarray,
        vmin: np.ndarray,
        vmax: np.ndarray,
        qs: Sequence,
        *,
        bits: int | None = None,
        collect_limit: int | None = None,
        max_cells: int = 1 << 22,
        max_values: int = 1 << 22,
    ):
        count = np.asarray(count, dtype=np.int64)
        self.G, self.d = count.shape
        self.qs = list(qs)
        S = self.S = len(self.qs)
        self.n = count
        T = self.G * self.d * S
        ranks = [quantile_ranks(count, q) for q in self.qs]
        self.r_lo = np.stack([r[0] for r in ranks], axis=-1).reshape(T)
        self.r_hi = np.stack([r[1] for r in ranks], axis=-1).reshape(T)
        self.gamma = [r[2] for r in ranks]
        nn = np.repeat(count.reshape(-1), S)
        with np.errstate(invalid="ignore"):
            kmin = float_keys(np.where(count > 0, vmin, 0.0))
            kmax = float_keys(np.where(count > 0, vmax, 0.0))
        self.lo = np.repeat(kmin.reshape(-1), S)
        self.hi = np.repeat(kmax.reshape(-1), S)
        self.below = np.zeros(T, dtype=np.int64)
        self.lo2 = np.zeros(T, dtype=np.uint64)  # SPLIT: the upper bin [lo2, hi2]; the lower one is [lo, hi]
        self.hi2 = np.zeros(T, dtype=np.uint64)
        self.top = np.zeros(T, dtype=np.uint64)  # SPLIT: largest key seen in [lo, hi] / smallest in [lo2, hi2]
        self.bottom = np.full(T, np.iinfo(np.uint64).max, dtype=np.uint64)
        self.inside = nn.copy()
        self.val_lo = np.full(T, np.nan)
        self.val_hi = np.full(T, np.nan)
        self.state = np.full(T, _HIST, dtype=np.int8)
        self.fixed_bits = bits
        self.max_cells = int(max_cells)
        self.collect_limit = int(collect_limit) if collect_limit is not None else max(64, int(max_values) // max(T, 1))
        self.passes = 0
        self.levels = 0
        self._settle(np.arange(T))
        self._begin_pass()

    # -- state changes ------------------------------------------------------------------------------------
    def _settle(self, t: np.ndarray) -> None:
        """Targets ``t`` (in state HIST) whose interval is one key or few values become DONE / COLLECT."""
        if len(t) == 0:
            return
        empty = self.inside[t] == 0
        if empty.any():  # n == 0: result NaN
            self.state[t[empty]] = _DONE
        t = t[~empty]
        one = self.lo[t] == self.hi[t]
        if one.any():
            v = keys_to_float(self.lo[t[one]])
            self.val_lo[t[one]] = v
            self.val_hi[t[one]] = v
            self.state[t[one]] = _DONE
        t = t[~one]
        few = self.inside[t] <= self.collect_limit
        self.state[t[few]] = _COLLECT

    def _begin_pass(self) -> None:
        h = np.flatnonzero(self.state == _HIST)
        self.hist_targets = h
        self.hist_row = np.full(len(self.state), -1, dtype=np.int64)
        self.hist_row[h] = np.arange(len(h))
        if len(h):
            bits = self.fixed_bits
            if bits is None:
                bits = int(np.clip(np.floor(np.log2(max(self.max_cells // len(h), 1))), 4, 16))
            self.bits = int(bits)
            span_bits = _bit_length(self.hi[h] - self.lo[h])
            self.shift = np.zeros(len(self.state), dtype=np.uint64)
            self.shift[h] = np.maximum(span_bits - self.bits, 0).astype(np.uint64)
            self.hist = np.zeros(len(h) << self.bits, dtype=np.int64)
        else:
            self.hist = None
        self.col_t: list[np.ndarray] = []
        self.col_k: list[np.ndarray] = []

    @property
    def done(self) -> bool:
        return bool((self.state == _DONE).all())

    # -- one batch of a pass ------------------------------------------------------------------------------
    def update(self, x: np.ndarray, codes: np.ndarray, chunk_elems: int = 1 << 22) -> None:
        """Feed one batch of the current pass: ``x`` (m x d) float64 rows, ``codes`` (m,) their group index."""
        if self.done or len(x) == 0:
            return
        x = np.asarray(x, dtype=np.float64)
        codes = np.asarray(codes, dtype=np.int64)
        m, d = x.shape
        if d != self.d:
            raise ValueError(f"expected {self.d} columns, got {d}")
        step = max(1, chunk_elems // max(m, 1))
        S = self.S
        for c0 in range(0, d, step):
            xc = x[:, c0 : c0 + step]
            valid = ~np.isnan(xc)
            keys = float_keys(xc)
            base = (codes[:, None] * d + np.arange(c0, c0 + xc.shape[1])[None, :]) * S
            for s in range(S):
                tid = (base + s)[valid]
                k = keys[valid]
                st = self.state[tid]
                live = st != _DONE
                if not live.any():
                    continue
                tid, k, st = tid[live], k[live], st[live]
                sp = st == _SPLIT
                if sp.any():
                    ts, ks = tid[sp], k[sp]
                    low = (ks >= self.lo[ts]) & (ks <= self.hi[ts])
                    np.maximum.at(self.top, ts[low], ks[low])
                    up = (ks >= self.lo2[ts]) & (ks <= self.hi2[ts])
                    np.minimum.at(self.bottom, ts[up], ks[up])
                    tid, k, st = tid[~sp], k[~sp], st[~sp]
                inside = (k >= self.lo[tid]) & (k <= self.hi[tid])
                tid, k, st = tid[inside], k[inside], st[inside]
                h = st == _HIST
                if h.any():
                    th = tid[h]
                    b = (k[h] - self.lo[th]) >> self.shift[th]
                    idx = (self.hist_row[th] << self.bits) + b.astype(np.int64)
                    np.add.at(self.hist, idx, 1)
                c = st == _COLLECT
                if c.any():
                    self.col_t.append(tid[c])
                    self.col_k.append(k[c])

    def end_pass(self) -> None:
        """Close the pass: narrow histogrammed targets, read off collected ones, prepare the next pass."""
        self.passes += 1
        sp = np.flatnonzero(self.state == _SPLIT)
        if len(sp):
            self.val_lo[sp] = keys_to_float(self.top[sp])
            self.val_hi[sp] = keys_to_float(self.bottom[sp])
            self.state[sp] = _DONE
        # collected targets: exact order statistics
        ct = np.flatnonzero(self.state == _COLLECT)
        if len(ct):
            tids = np.concatenate(self.col_t) if self.col_t else np.zeros(0, np.int64)
            keys = np.concatenate(self.col_k) if self.col_k else np.zeros(0, np.uint64)
            order = np.lexsort((keys, tids))
            tids, keys = tids[order], keys[order]
            start = np.searchsorted(tids, ct, side="left")
            end = np.searchsorted(tids, ct, side="right")
            if not np.array_equal(end - start, self.inside[ct]):
                raise RuntimeError("streamed quantiles: a pass saw different rows than the counting pass "
                                   "(the source changed between passes?)")
            self.val_lo[ct] = keys_to_float(keys[start + self.r_lo[ct] - self.below[ct]])
            self.val_hi[ct] = keys_to_float(keys[start + self.r_hi[ct] - self.below[ct]])
            self.state[ct] = _DONE
        # histogrammed targets: keep the bins holding both ranks
        h = self.hist_targets
        if len(h) and self.hist is not None:
            self.levels += 1
            B = 1 << self.bits
            cum = np.cumsum(self.hist.reshape(len(h), B), axis=1)
            if not np.array_equal(cum[:, -1], self.inside[h]):
                raise RuntimeError("streamed quantiles: a pass saw different rows than the counting pass "
                                   "(the source changed between passes?)")
            a = (self.r_lo[h] - self.below[h])[:, None]
            b = (self.r_hi[h] - self.below[h])[:, None]
            b1 = (cum <= a).sum(axis=1)
            b2 = (cum <= b).sum(axis=1)
            rows = np.arange(len(h))
            before = np.where(b1 > 0, cum[rows, np.maximum(b1 - 1, 0)], 0)
            new_inside = cum[rows, b2] - before
            sh = self.shift[h]
            lo = self.lo[h]
            span = self.hi[h] - lo
            off_lo = b1.astype(np.uint64) << sh
            off_hi = np.minimum((b2.astype(np.uint64) << sh) | ((np.uint64(1) << sh) - np.uint64(1)), span)
            self.below[h] += before
            self.inside[h] = new_inside
            self.lo[h] = lo + off_lo
            self.hi[h] = lo + off_hi
            exact = sh == 0  # one key per bin: the two ranks' keys are the bins themselves
            if exact.any():
                te = h[exact]
                self.val_lo[te] = keys_to_float(lo[exact] + b1[exact].astype(np.uint64))
                self.val_hi[te] = keys_to_float(lo[exact] + b2[exact].astype(np.uint64))
                self.state[te] = _DONE
            split = ~exact & (b1 != b2)  # adjacent ranks in different bins: nothing lies between the bins
            if split.any():
                ts = h[split]
                mask = (np.uint64(1) << sh[split]) - np.uint64(1)
                self.hi[ts] = lo[split] + ((b1[split].astype(np.uint64) << sh[split]) | mask)
                self.lo2[ts] = lo[split] + (b2[split].astype(np.uint64) << sh[split])
                self.hi2[ts] = lo[split] + off_hi[split]
                self.top[ts] = 0
                self.bottom[ts] = np.iinfo(np.uint64).max
                self.state[ts] = _SPLIT
            self._settle(h[~exact & ~split])
        self._begin_pass()

    # -- results ------------------------------------------------------------------------------------------
    def order_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` order statistics, each ``(S, G, d)``."""
        if not self.done:
            raise RuntimeError("quantile selection is not finished")
        shape = (self.G, self.d, self.S)
        return (np.moveaxis(self.val_lo.reshape(shape), -1, 0), np.moveaxis(self.val_hi.reshape(shape), -1, 0))

    def values(self) -> np.ndarray:
        """``(S, G, d)`` quantiles, equal bit for bit to :func:`nan_quantiles` of each group's rows."""
        lo, hi = self.order_statistics()
        return np.stack([combine(lo[s], hi[s], q, self.gamma[s], self.n) for s, q in enumerate(self.qs)])
