"""Correlation threshold feature exclusion: pycytominer 1.7.1 ``correlation_threshold``, same list, faster.

Peer: ``pycytominer/operations/correlation_threshold.py`` + ``cyto_utils/util.py::get_pairwise_correlation``
(1.7.1). Its rule, for the ``samples`` rows and the ``d`` features:

1. ``R`` = correlation matrix. Pearson without NaN/inf: ``np.corrcoef(X.T)`` (BLAS). Otherwise pandas
   ``DataFrame.corr(method)``: pearson = pairwise-complete Welford (``libalgos.nancorr``), spearman =
   pairwise-complete average ranks (``libalgos.nancorr_spearman``, ranks recomputed on the complete rows of
   each pair), kendall = ``scipy.stats.kendalltau`` (tau-b) per pair on complete rows, diagonal 1.0.
   Non-finite values (NaN, +-inf) are missing in all three.
2. ``S_j = sum_i |R_ij|`` (NaN skipped); features sorted by ``S`` ascending (``Series.sort_values``,
   numpy quicksort).
3. Every pair ``i > j`` of the lower triangle with **signed** ``R_ij > threshold`` (all pairs judged at once,
   not greedily) excludes the member placed later in that order: ``i`` if ``pos(i) > pos(j)`` else ``j``
   (so on an exact tie of ``S`` the sort's placement decides, as in the peer).

phenovec computes the same decisions without the peer's ``d^2/2``-row long table and row-wise ``apply``:

- **pearson, all finite** (the common case): a float32 screen ``Z^T Z`` of the standardized columns (BLAS
  ``ssyrk``) with a rigorous error bound ``(n+3) 2^-24`` finds the candidate pairs (none: nothing is
  excluded, done); float64 rows ``Z[:, M]^T Z`` for the candidates' members ``M`` give their ``r`` and
  ``S`` with a float64 error bound (``n``, and each column's ``max|x| / sd`` for the centering error).
  Any decision the bounds cannot settle -- a pair within the bound of the threshold, or a pair whose two
  ``S`` are within their bounds of each other -- falls back to the peer's own computation: ``np.corrcoef``
  on the same F-ordered matrix (bit-identical to the peer's ``R``, tests check this), the peer's column
  sums and ``sort_values`` on it, and the vectorised pair rule. Inputs known to need that (bit-identical
  non-constant columns, whose sums tie; two or more constant columns that ``np.corrcoef`` centres to a
  non-zero offset and so correlates at +-1) go there directly. The result is therefore the peer's list in
  every case, not only up to rounding. CellProfiler single-cell tables (duplicated ``Location_Center_X`` /
  ``AreaShape_Center_X``) take this path; it still skips the peer's long table and row-wise ``apply``.
- **pearson with NaN/inf**: the peer's pairwise-complete Welford recurrence (``libalgos.nancorr``), re-run
  operation by operation (no fused multiply-add, same order) in a parallel Numba kernel, so ``R`` is
  bit-identical to pandas'; then the exact rule above. Without Numba, pandas' own ``nancorr`` is called.
- **spearman**: average ranks (``scipy.stats.rankdata``) centered by ``(m+1)/2`` are half-integers, so the
  BLAS products ``sum (rx-mean)(ry-mean)`` are exact integers/quarters (for ``n`` below ~300,000) and
  ``R = sxy / sqrt(sxx syy)`` is bit-identical to pandas'. NaN: columns are grouped by missing pattern and
  each pair of patterns is re-ranked on its common rows, as pandas does pair by pair (more than 64
  distinct patterns: pandas' own ``nancorr_spearman`` is called, same speed as the peer). One corner
  differs: pandas ranks a column holding ``-inf`` with the ``-inf`` included when both columns of a pair
  have the same missing pattern; phenovec treats every non-finite value as missing.
- **kendall**: tau-b = ``(s_x . s_y) / sqrt(sum s_x^2) / sqrt(sum s_y^2)`` over the sign vectors
  ``sign(x_k - x_l)`` of all row pairs ``k < l`` (zero where a row is missing, pairwise-complete
  denominators through the validity products), integer-exact in chunked BLAS (float32 chunks of at most
  2^24 row pairs); same float operations as ``scipy.stats.kendalltau``, diagonal 1.0 as pandas.
  Memory/time are O(n^2 d / chunk) and O(n^2 d^2): fine for well profiles, slow for tens of thousands of
  rows (the peer's pairwise scipy loop is far slower still).

Returned: the excluded feature names in column order (the peer returns ``list(set(...))``, in no
particular order). Threshold: ``0 <= threshold <= 1`` as in the peer (``ValueError`` otherwise).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

METHODS = ("pearson", "spearman", "kendall")
_U64 = 2.0 ** -53
_U32 = 2.0 ** -24
# float32 sums of {-1,0,1} products are exact up to 2**24 terms: kendall row-pair chunks stay below that.
_KENDALL_CHUNK = 1 << 16
# spearman with NaN: beyond this many distinct missing patterns, pandas' own pairwise routine is used
_MAX_SPEARMAN_PATTERNS = 64


def check_correlation_method(method: str) -> str:
    """The method lower-cased, ``ValueError`` naming it unless pearson/spearman/kendall (peer's check)."""
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"correlation method {method!r} not supported; use one of {list(METHODS)}")
    return method.lower()


def check_threshold(threshold: float) -> float:
    """``threshold`` as float; ``ValueError`` unless ``0 <= threshold <= 1`` (the peer's range check)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"correlation threshold must be a number in [0, 1], got {threshold!r}") from None
    if not (0.0 <= t <= 1.0):
        raise ValueError(
            f"correlation threshold must be in [0, 1] (pairs with r > threshold are pruned), got {threshold!r}"
        )
    return t


def correlation_threshold(
    population_df: pd.DataFrame,
    features: str | Sequence[str] = "infer",
    samples: str = "all",
    threshold: float = 0.9,
    method: str = "pearson",
) -> list[str]:
    """Features to exclude so that no two kept features correlate above ``threshold`` (pycytominer 1.7.1).

    Same arguments and the same excluded set as ``pycytominer.operations.correlation_threshold`` (see the
    module docstring for the rule and for why the set is identical, not just close). ``population_df``: a
    DataFrame or a table path; ``features``: ``"infer"`` or column names; ``samples``: ``"all"`` or a
    row filter (:mod:`phenovec.io.row_filter`; ``ValueError`` if it selects no row); ``method``: pearson,
    spearman or kendall. Returns the excluded names in column order.
    """
    from phenovec.process.columns import resolve_columns
    from phenovec.process.feature_select import feature_matrix, load_profiles, sample_rows

    method = check_correlation_method(method)
    threshold = check_threshold(threshold)
    df = load_profiles(population_df)
    feats, _ = resolve_columns(df, features)
    rows = sample_rows(df, samples)
    x = feature_matrix(df, feats, rows)
    return correlation_exclusions(x, feats, threshold, method)


def correlation_exclusions(x: np.ndarray, names: Sequence[str], threshold: float = 0.9,
                           method: str = "pearson") -> list[str]:
    """The peer's excluded set for the ``n x d`` matrix ``x`` whose columns are ``names`` (column order)."""
    method = check_correlation_method(method)
    threshold = check_threshold(threshold)
    names = list(names)
    x = np.asfortranarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"matrix has shape {x.shape}, expected (n, {len(names)})")
    n, d = x.shape
    if d < 2 or n == 0:
        return []
    if method == "pearson":
        if np.isfinite(x).all():
            drop = _pearson_finite(x, threshold)
        else:
            drop = _decide_exact(pandas_nancorr(x), threshold, "corr")
    elif method == "spearman":
        drop = _decide_exact(spearman_matrix(x), threshold, "corr")
    else:
        drop = _decide_exact(kendall_matrix(x), threshold, "corr")
    return [names[i] for i in np.flatnonzero(drop)]


# ------------------------------------------------------------------------------------------- decision rule


def _decide_exact(r: np.ndarray, threshold: float, source: str) -> np.ndarray:
    """Boolean mask of excluded columns for the peer's own ``R`` (bit-identical input => identical output).

    ``source``: ``"corrcoef"`` (the peer's numpy path) or ``"corr"`` (its ``DataFrame.corr`` path); they
    reach pandas' column sums through differently laid-out frames (see :func:`abs_column_sums`).
    """
    d = r.shape[0]
    il, jl = np.nonzero(r > threshold)  # NaN > t is False, as the peer's query
    low = il > jl  # the peer's lower triangle (k=-1): pair_a = row i, pair_b = column j
    il, jl = il[low], jl[low]
    drop = np.zeros(d, dtype=bool)
    if len(il) == 0:
        return drop
    order = pd.Series(abs_column_sums(r, source)).sort_values().index.to_numpy()  # the peer's sort_values
    pos = np.empty(d, dtype=np.int64)
    pos[order] = np.arange(d)
    drop[np.where(pos[il] > pos[jl], il, jl)] = True
    return drop


def abs_column_sums(r: np.ndarray, source: str = "corrcoef") -> np.ndarray:
    """The peer's ``data_cor_df.abs().sum()`` bit for bit, without pandas' copies (tests compare with pandas).

    Importing pycytominer sets ``pd.options.mode.copy_on_write = True``, so its
    ``pd.DataFrame(np.corrcoef(...), index=..., columns=...)`` copies ``R`` into a C-ordered ``d x d`` block
    of columns and pandas sums each contiguous column with numpy's pairwise summation. ``DataFrame.corr``
    wraps its result with ``copy=False`` (an F-ordered block): pandas then sums sequentially over rows,
    unless ``R`` holds NaN, when its NaN-zeroed C-ordered copy is again summed pairwise. Both orders are
    reproduced, so ``S`` and hence the sort are the peer's.
    """
    if source not in ("corrcoef", "corr"):
        raise ValueError(f"source must be 'corrcoef' or 'corr', got {source!r}")
    r = np.ascontiguousarray(r)
    if source == "corr" and not np.isnan(r).any():
        return np.abs(r).sum(axis=0)
    d = r.shape[1]
    out = np.empty(d)
    step = 64  # column blocks: a cache-friendly transpose of the NaN-zeroed |r|
    for j0 in range(0, d, step):
        a = np.ascontiguousarray(np.abs(r[:, j0:j0 + step].T))
        np.putmask(a, np.isnan(a), 0.0)
        out[j0:j0 + step] = a.sum(axis=1)
    return out


def _has_duplicate_columns(x: np.ndarray, const: np.ndarray) -> bool:
    """True when two non-constant columns are bit-identical (their r is 1 and their sums tie).

    Columns are keyed by the bytes of 16 spread-out rows; only columns sharing a key are compared whole.
    """
    live = np.flatnonzero(~const)
    if len(live) < 2:
        return False
    n = x.shape[0]
    probe = np.unique(np.linspace(0, n - 1, min(n, 16)).astype(np.int64))
    keys = np.ascontiguousarray(x[np.ix_(probe, live)].T).view(np.dtype((np.void, 8 * len(probe)))).ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if counts.max() < 2:
        return False
    inverse = inverse.ravel()
    for g in np.flatnonzero(counts >= 2):
        cols = live[inverse == g]
        block = x[:, cols]
        first = block[:, :1].view(np.int64)
        if (block.view(np.int64) == first).all(axis=0)[1:].any():
            return True
    return False


def _pearson_finite(x: np.ndarray, threshold: float) -> np.ndarray:
    """Exclusion mask for finite ``x`` (F-ordered), exact w.r.t. the peer's ``np.corrcoef`` path."""
    n, d = x.shape
    mean = x.mean(axis=0)
    const = np.ptp(x, axis=0) == 0
    z = x - mean
    norm = np.sqrt(np.einsum("ij,ij->j", z, z))
    scale = np.where(const | (norm == 0), np.inf, norm)
    z /= scale  # constant columns -> 0 (the peer gives NaN or |r| below the centering bound there)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = norm / math.sqrt(n)
        kappa = np.where(const | (sd == 0), 0.0, np.max(np.abs(x), axis=0) / sd)
    # np.corrcoef centres a constant column by its rounded mean: when that leaves a non-zero offset, two
    # such columns correlate at exactly +-1 in the peer. Those, and duplicate columns (r = 1, tied sums),
    # are pairs only the peer's own R and sort can decide.
    offset_const = const & (x[0] != mean)
    if (not np.isfinite(kappa).all() or offset_const.sum() >= 2
            or (threshold < 1.0 and _has_duplicate_columns(x, const))):
        return _decide_exact(peer_corrcoef(x), threshold, "corrcoef")
    # |r_ours - r_peer| <= e_ij: dot-product rounding (both sides) + centering error scaled by max|x|/sd
    base = 1e-12 + 4.0 * (n + 2) * _U64
    ck = 16.0 * (math.log2(n + 1) + 8.0) * _U64
    e32 = 1.01 * (n + 3) * _U32 * 2.0
    if e32 < 0.05:
        z32 = z.astype(np.float32)
        r32 = z32.T @ z32
        del z32
        emax = base + ck * 2.0 * float(kappa.max(initial=0.0))
        if emax < 1e-6:
            cand = r32 > threshold - e32 - emax
        else:  # badly centred columns (large max|x|/sd): per-pair bound keeps the screen selective
            cand = r32 > (threshold - e32 - base) - ck * (kappa[:, None] + kappa[None, :])
        ci, cj = np.nonzero(cand)
        del cand
        low = ci > cj
        ci, cj = ci[low], cj[low]
        del r32
    else:  # too many rows for a float32 screen to be selective: every pair is a candidate
        ci, cj = np.tril_indices(d, -1)
    drop = np.zeros(d, dtype=bool)
    if len(ci) == 0:
        return drop
    members = np.unique(np.concatenate([ci, cj]))
    if len(members) > d // 2:
        members = np.arange(d)
        rows = z.T @ z
        slot = members
    else:
        rows = z[:, members].T @ z
        slot = np.full(d, -1)
        slot[members] = np.arange(len(members))
    r = rows[slot[ci], cj]
    e = base + ck * (kappa[ci] + kappa[cj])
    if np.any(np.abs(r - threshold) <= e):  # a pair the bound cannot place: the peer's own R
        return _decide_exact(peer_corrcoef(x), threshold, "corrcoef")
    keep = r > threshold
    ci, cj = ci[keep], cj[keep]
    if len(ci) == 0:
        return drop
    s = np.abs(rows).sum(axis=1)  # S of each member (row = column up to the bound)
    # |S_ours - S_peer| per member: d entry bounds + both sides' summation rounding (<= (d+2) u S each)
    es = d * base + ck * (kappa.sum() + d * kappa[members]) + 2.0 * (d + 2) * _U64 * s
    sa, sb = s[slot[ci]], s[slot[cj]]
    if np.any(np.abs(sa - sb) <= es[slot[ci]] + es[slot[cj]]):  # near/exact tie: the peer's sort decides
        return _decide_exact(peer_corrcoef(x), threshold, "corrcoef")
    drop[np.where(sa > sb, ci, cj)] = True
    return drop


def peer_corrcoef(x: np.ndarray) -> np.ndarray:
    """``np.corrcoef`` exactly as the peer calls it: on the ``d x n`` C-ordered view of the F-ordered matrix.

    pycytominer passes ``population_df.transpose()``, whose array is C-ordered ``d x n``; ``x.T`` of the
    F-ordered ``n x d`` matrix is that same layout, so BLAS sums in the same order (tests compare bits).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.corrcoef(np.asfortranarray(x).T)


# ------------------------------------------------------------------------------------------- pearson + NaN


def pandas_nancorr(x: np.ndarray) -> np.ndarray:
    """pandas ``DataFrame.corr("pearson")`` of ``x`` bit for bit (pairwise-complete Welford, non-finite = missing).

    A parallel Numba re-run of ``pandas._libs.algos.nancorr`` (same operations in the same order, no
    fused multiply-add); pandas' own routine when Numba is not importable.
    """
    xc = np.ascontiguousarray(x, dtype=np.float64)
    valid = np.isfinite(xc)
    kernel = _nancorr_kernel()
    if kernel is None:
        from pandas._libs import algos as libalgos

        return libalgos.nancorr(xc, minp=1)
    allrow = valid.all(axis=1)
    return kernel(xc, valid.view(np.uint8), allrow)


_KERNEL: list = []
prange = range  # numba.prange once the kernel is compiled (see _nancorr_kernel)


def _nancorr_rows(x, valid, allrow):  # pragma: no cover - compiled by numba
    """``libalgos.nancorr`` (pandas 2.x) with the same float operations; outer loop split for balance."""
    n, d = x.shape
    out = np.empty((d, d))
    half = (d + 1) // 2
    for k in prange(half):
        for side in range(2):
            kk = np.int64(k)  # prange indices may be unsigned; keep the arithmetic in int64
            xi = kk if side == 0 else d - 1 - kk
            if side == 1 and xi == kk:
                continue
            m = xi + 1
            nobs = np.zeros(m, dtype=np.int64)
            meanx = np.zeros(m)
            meany = np.zeros(m)
            ssqx = np.zeros(m)
            ssqy = np.zeros(m)
            cov = np.zeros(m)
            for i in range(n):
                if not valid[i, xi]:
                    continue
                vx = x[i, xi]
                full = allrow[i]
                for yi in range(m):
                    if full or valid[i, yi]:
                        vy = x[i, yi]
                        nobs[yi] += 1
                        dx = vx - meanx[yi]
                        dy = vy - meany[yi]
                        inv = 1.0 / nobs[yi]
                        meanx[yi] += inv * dx
                        meany[yi] += inv * dy
                        ssqx[yi] += (vx - meanx[yi]) * dx
                        ssqy[yi] += (vy - meany[yi]) * dy
                        cov[yi] += (vx - meanx[yi]) * dy
            for yi in range(m):
                if nobs[yi] < 1:
                    v = np.nan
                else:
                    div = math.sqrt(ssqx[yi] * ssqy[yi])
                    v = cov[yi] / div if div != 0 else np.nan
                out[xi, yi] = v
                out[yi, xi] = v
    return out


def _nancorr_kernel():
    """The Numba-compiled :func:`_nancorr_rows` (None when Numba is not importable)."""
    if _KERNEL:
        return _KERNEL[0]
    try:
        import numba
    except ImportError:  # numba is optional: pandas' own routine (single-threaded) then
        _KERNEL.append(None)
        return None
    global prange
    prange = numba.prange
    # fastmath stays off: no FMA contraction or reassociation, so every value is pandas' bit for bit
    _KERNEL.append(numba.njit(parallel=True, cache=True, fastmath=False)(_nancorr_rows))
    return _KERNEL[0]


# ------------------------------------------------------------------------------------------- spearman


def spearman_matrix(x: np.ndarray) -> np.ndarray:
    """pandas ``DataFrame.corr("spearman")`` of ``x`` bit for bit (see module docstring; non-finite = missing)."""
    from scipy.stats import rankdata

    n, d = x.shape
    valid = np.isfinite(x)
    out = np.full((d, d), np.nan)
    # group columns by missing pattern; pandas re-ranks a pair on its common rows when the patterns differ
    pat, inverse = np.unique(np.packbits(valid, axis=0).T, axis=0, return_inverse=True)
    if len(pat) > _MAX_SPEARMAN_PATTERNS:  # pairs of patterns would be a Python loop of k^2 re-rankings
        from pandas._libs import algos as libalgos

        return libalgos.nancorr_spearman(np.ascontiguousarray(x, dtype=np.float64), minp=1)
    inverse = inverse.ravel()
    groups = [np.flatnonzero(inverse == g) for g in range(len(pat))]
    gvalid = [valid[:, g[0]] for g in groups]
    for a in range(len(groups)):
        for b in range(a + 1):
            rows = gvalid[a] & gvalid[b]
            m = int(rows.sum())
            ca, cb = groups[a], groups[b]
            if m == 0:
                continue  # nobs < minp=1 -> NaN
            ra = rankdata(x[np.ix_(rows, ca)], method="average", axis=0) - (m + 1) / 2.0
            ss_a = np.einsum("ij,ij->j", ra, ra)
            if a == b:
                g = ra.T @ ra
                ss_b = ss_a
            else:
                rb = rankdata(x[np.ix_(rows, cb)], method="average", axis=0) - (m + 1) / 2.0
                g = ra.T @ rb
                ss_b = np.einsum("ij,ij->j", rb, rb)
            with np.errstate(divide="ignore", invalid="ignore"):
                div = np.sqrt(ss_a[:, None] * ss_b[None, :])
                blk = np.where(div != 0, g / div, np.nan)
            out[np.ix_(ca, cb)] = blk
            out[np.ix_(cb, ca)] = blk.T
    return out


# ------------------------------------------------------------------------------------------- kendall


def kendall_matrix(x: np.ndarray) -> np.ndarray:
    """pandas ``DataFrame.corr("kendall")`` of ``x`` (tau-b per pair on complete rows; diag 1.0): bit for bit with
    pandas 2.x (pycytominer 1.7.1's), within 1e-15 of pandas 3, which sums in another order."""
    from scipy.linalg import blas

    n, d = x.shape
    valid = np.isfinite(x)
    complete = bool(valid.all())
    xs = np.where(valid, x, 0.0)
    num = np.zeros((d, d))
    den = np.zeros((d, d)) if not complete else np.zeros(d)
    num32 = np.zeros((d, d), dtype=np.float32, order="F")
    den32 = np.zeros((d, d), dtype=np.float32, order="F") if not complete else None
    target = max(256, min(_KENDALL_CHUNK, (64 << 20) // (8 * max(d, 1))))
    pending = 0  # row pairs summed in float32 since the last flush (exact below 2**24)

    def flush():
        nonlocal num32, den32, pending
        num[...] += num32
        num32[...] = 0
        if den32 is not None:
            den[...] += den32
            den32[...] = 0
        pending = 0

    k = 0
    while k < n - 1:
        parts, pvs, size = [], [], 0
        while k < n - 1 and size < target:
            parts.append(np.sign(xs[k] - xs[k + 1:]))
            if not complete:
                pvs.append(valid[k] & valid[k + 1:])  # row pair (k, l) usable for a column
                parts[-1][~pvs[-1]] = 0.0
            size += n - 1 - k
            k += 1
        s = np.asfortranarray(np.concatenate(parts).astype(np.float32))
        if pending + len(s) >= 1 << 24:
            flush()
        num32 = blas.ssyrk(1.0, s, beta=1.0, c=num32, trans=1, lower=0, overwrite_c=1)
        if complete:
            den += np.einsum("ij,ij->j", s, s, dtype=np.float64)
        else:
            v = np.asfortranarray(np.concatenate(pvs).astype(np.float32))
            den32 = blas.sgemm(1.0, s * s, v, beta=1.0, c=den32, trans_a=1, overwrite_c=1)
        pending += len(s)
    flush()
    if complete:
        tx = np.broadcast_to(den[:, None], (d, d))
        ty = tx.T
    else:
        tx, ty = den, den.T  # tx[i, j] = pairs with x_i differing, among rows valid in i and j
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = num / np.sqrt(tx) / np.sqrt(ty)  # scipy: con_minus_dis / sqrt(tot - xtie) / sqrt(tot - ytie)
        tau = np.minimum(1.0, np.maximum(-1.0, tau))
    tau[(tx == 0) | (ty == 0)] = np.nan  # scipy: xtie == tot or ytie == tot (incl. < 2 rows) -> NaN
    # pandas computes corrf(col_i, col_j) for i < j (x = the smaller index) and mirrors it
    iu = np.triu_indices(d, 1)
    out = np.empty((d, d))
    out[iu] = tau[iu]
    out.T[iu] = tau[iu]
    counts = valid.sum(axis=0)
    out[np.diag_indices(d)] = np.where(counts >= 1, 1.0, np.nan)
    return out

