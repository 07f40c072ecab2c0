"""Consensus (level-5) profiles: pycytominer 1.7.1 ``consensus`` (``pycytominer/consensus.py``) and MODZ
(``pycytominer/cyto_utils/modz.py``).

``consensus(operation="median"|"mean")`` is :func:`phenovec.process.aggregate.aggregate` with
``strata=replicate_columns`` (the peer calls its ``aggregate``), so it matches the peer as ``aggregate`` does.

``consensus(operation="modz")`` / :func:`modz` follow ``modz``/``modz_base`` 1.7.1 for every group of
``groupby(replicate_columns, dropna=False, sort=True)`` (groups sorted, missing keys kept as their own group and
sorted last, as since pycytominer #687):

1. replicate-by-replicate correlation across features (``spearman`` default, ``pearson``, ``kendall``);
2. diagonal set to NaN, negative correlations clipped to 0, raw weight = mean of a replicate's correlations to
   the others (NaN skipped; all-NaN -> NaN), then raised to at least ``min_weight`` (NaN stays NaN);
3. weights = raw / sum(raw) (NaN skipped in the sum; when the sum is 0 every replicate gets 1/n), rounded to
   ``precision`` decimals (``np.round``, as pandas);
4. consensus = sum over replicates of weight x value with NaN skipped (pandas ``sum``): a feature that is NaN
   in every replicate, or whose non-NaN values all have NaN weight, gives 0.0, not NaN; a group of one
   replicate gives its values with NaN -> 0.0 (the peer's ``sum(axis=1)``).

Correlations as the peer gets them: ``pearson`` on a group without NaN/inf = ``np.corrcoef``; ``spearman``
on such a group = Pearson of average ranks (pandas ``nancorr_spearman`` fast path); both are computed for all
rows at once (ranks, centring, scaling) and per group as one BLAS Gram product of its rows. A group with NaN or
+-inf takes pandas' pairwise path for each pair of replicates: only features finite in both (pandas masks with
``isfinite``); pearson over those; spearman re-ranks the masked values unless both replicates have the same
missing features, in which case the ranks of the whole replicate are kept, exactly as pandas does. ``kendall``
calls pandas ``DataFrame.corr`` per group. Observed: within 1e-15 relative of the peer (2e-12 absolute on
BBBC021 values in the thousands); tests assert 1e-9.

Output: the replicate columns (as ``groupby(...).apply(...).reset_index()`` gives them), then the features in
the given order, float64. Differences (documented policy): features are resolved with
:func:`phenovec.process.columns.resolve_columns` (embeddings need no list) and converted to float64 (integer
features of single-replicate groups stay int in the peer); an unknown replicate column raises ``KeyError``
naming it (the peer's ``modz`` raises ``ValueError``); a replicate column that is also a feature raises
``ValueError``.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import pandas as pd

from phenovec.process.aggregate import _check_disjoint, _strata_list, _write, aggregate, group_keys
from phenovec.process.columns import numeric_features
from phenovec.process.columns import check_columns, resolve_columns

CONSENSUS_OPERATIONS = ("mean", "median", "modz")
CORRELATION_METHODS = ("pearson", "spearman", "kendall")
_BLOCK_ELEMS = 1 << 22


def consensus(
    profiles,
    replicate_columns: Sequence[str] = ["Metadata_Plate", "Metadata_Well"],
    operation: str = "median",
    features: str | Sequence[str] = "infer",
    output_file: str | os.PathLike | None = None,
    output_type: str | None = None,
    compression_options: str | dict[str, Any] | None = None,
    float_format: str | None = None,
    modz_args: dict[str, int | float | str] | None = {"method": "spearman"},
):
    """Collapse replicates into consensus profiles by ``median``, ``mean`` or ``modz``, per group of
    ``replicate_columns``.

    Same signature, output and semantics as ``pycytominer.consensus`` 1.7.1 (module docstring): ``modz_args``
    may hold ``method``, ``min_weight`` (0.01) and ``precision`` (4). ``profiles`` is a DataFrame or a table
    path. With ``output_file`` the table is written and the path returned, as the peer. Matches the peer to
    1e-9 (median exactly, mean 1e-12 relative, modz ~1e-15).
    """
    if not isinstance(operation, str) or operation.lower() not in CONSENSUS_OPERATIONS:
        raise ValueError(f"operation {operation!r} not supported, select one of {list(CONSENSUS_OPERATIONS)}")
    operation = operation.lower()
    if not isinstance(profiles, pd.DataFrame):
        from phenovec.io.profiles import read_table

        profiles = read_table(profiles)
    if operation == "modz":
        args = modz_args or {}
        out = modz(
            profiles,
            replicate_columns=replicate_columns,
            features=features,
            method=str(args.get("method", "spearman")),
            min_weight=float(args.get("min_weight", 0.01)),
            precision=int(args.get("precision", 4)),
        )
    else:
        check_columns(profiles, _strata_list(replicate_columns), "replicate_columns")  # aggregate says "strata"
        out = aggregate(profiles, strata=replicate_columns, features=_feature_list(features), operation=operation)
    return _write(out, output_file, output_type, compression_options, float_format)


def _feature_list(features):
    """One feature name as a list of one, as pycytominer takes it (``"infer"`` stays the inference)."""
    return [features] if isinstance(features, str) and features != "infer" else features


def modz(
    population_df: pd.DataFrame,
    replicate_columns: str | Sequence[str],
    features: str | Sequence[str] = "infer",
    method: str = "spearman",
    min_weight: float = 0.01,
    precision: int = 4,
) -> pd.DataFrame:
    """MODZ consensus per replicate group: ``pycytominer.cyto_utils.modz`` 1.7.1 (module docstring).

    Returns the replicate columns then the features (float64), one row per group, sorted as the peer.
    """
    if not isinstance(method, str) or method.lower() not in CORRELATION_METHODS:
        raise ValueError(f"method {method!r} not supported, select one of {list(CORRELATION_METHODS)}")
    method = method.lower()
    reps = check_columns(population_df, _strata_list(replicate_columns), "replicate_columns")
    feats, _ = resolve_columns(population_df, _feature_list(features))
    _check_disjoint(reps, feats)
    x = numeric_features(population_df, feats)
    pos, keys = group_keys(population_df[reps])
    values = modz_matrix(x, pos, len(keys), method=method, min_weight=min_weight, precision=precision)
    return pd.concat([keys, pd.DataFrame(values, columns=list(feats))], axis=1)


def modz_weights(
    x: np.ndarray, codes: np.ndarray, n_groups: int, method: str = "spearman", min_weight: float = 0.01,
    precision: int = 4,
) -> np.ndarray:
    """The rounded MODZ weight of every row within its group (``codes``); NaN where the peer's is NaN."""
    return _modz(x, codes, n_groups, method, min_weight, precision)[1]


def modz_matrix(
    x: np.ndarray, codes: np.ndarray, n_groups: int, method: str = "spearman", min_weight: float = 0.01,
    precision: int = 4,
) -> np.ndarray:
    """MODZ consensus (``n_groups`` x features) of the rows of ``x`` grouped by ``codes``; empty groups -> NaN."""
    return _modz(x, codes, n_groups, method, min_weight, precision)[0]


def _modz(x, codes, n_groups, method, min_weight, precision):
    n, d = x.shape
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups).astype(np.int64)
    starts = np.zeros(n_groups, dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    xs = x[order]
    finite_row = np.isfinite(xs).all(axis=1)
    z = _normalized_rows(xs, method) if method != "kendall" else None
    out = np.full((n_groups, d), np.nan)
    weights = np.full(n, np.nan)
    group_finite = np.logical_and.reduceat(finite_row, starts[sizes > 0]) if n else np.zeros(0, bool)
    all_finite = np.zeros(n_groups, dtype=bool)
    all_finite[sizes > 0] = group_finite
    for m in np.unique(sizes):
        if m == 0:
            continue
        gs = np.flatnonzero(sizes == m)
        if m == 1:
            out[gs] = np.nan_to_num(xs[starts[gs]], nan=0.0, posinf=np.inf, neginf=-np.inf)
            weights[starts[gs]] = np.round(1.0, precision)
            continue
        offs = np.arange(m)
        fast = gs[all_finite[gs]] if method != "kendall" else gs[:0]
        step = max(1, _BLOCK_ELEMS // (int(m) * max(d, 1)))
        for c in range(0, len(fast), step):
            g = fast[c : c + step]
            rows = starts[g][:, None] + offs  # (g, m)
            zz = z[rows]  # (g, m, d)
            corr = np.clip(zz @ zz.transpose(0, 2, 1), -1.0, 1.0)  # (g, m, m); NaN rows stay NaN
            w = _weights(corr, min_weight, precision)
            weights[rows] = w
            out[g] = _weighted_sum(xs[rows], w)
        for gi in np.setdiff1d(gs, fast, assume_unique=True):
            sl = slice(starts[gi], starts[gi] + m)
            corr = _group_corr_with_missing(xs[sl], z[sl] if z is not None else None, method)[None]
            w = _weights(corr, min_weight, precision)
            weights[sl] = w[0]
            out[gi] = _weighted_sum(xs[sl][None], w)[0]
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n)
    return out, weights[inv]


def _weights(corr: np.ndarray, min_weight: float, precision: int) -> np.ndarray:
    """modz_base step 2 for stacked (g, m, m) correlation matrices -> (g, m) rounded weights."""
    g, m, _ = corr.shape
    c = corr.copy()
    c[:, np.arange(m), np.arange(m)] = np.nan
    c = np.where(c < 0, 0.0, c)  # clip(lower=0), NaN kept
    ok = ~np.isnan(c)
    cnt = ok.sum(axis=2)
    tot = np.where(ok, c, 0.0).sum(axis=2)
    raw = np.full((g, m), np.nan)
    np.divide(tot, cnt, out=raw, where=cnt > 0)
    raw = np.where(raw < min_weight, min_weight, raw)  # clip(lower=min_weight), NaN kept
    wsum = np.where(np.isnan(raw), 0.0, raw).sum(axis=1, keepdims=True)
    zero = wsum == 0
    w = np.where(zero, 1.0 / m, raw / np.where(zero, 1.0, wsum))
    return np.round(w, precision)


def _weighted_sum(block: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Sum over replicates (axis 1) of weight x value with NaN products skipped (pandas ``sum``)."""
    p = block * w[:, :, None]
    return np.where(np.isnan(p), 0.0, p).sum(axis=1)


def _normalized_rows(xs: np.ndarray, method: str) -> np.ndarray:
    """Rows centred and scaled to unit norm (after average ranking for spearman): Gram = correlation.

    Rows with non-finite values are returned as NaN (their groups take the pairwise path); constant rows give NaN
    (zero norm), as ``np.corrcoef``/pandas give NaN correlations.
    """
    finite = np.isfinite(xs).all(axis=1)
    v = np.full(xs.shape, np.nan)
    if method == "spearman":
        from scipy.stats import rankdata

        v[finite] = rankdata(xs[finite], method="average", axis=1)
    else:
        v[finite] = xs[finite]
    v -= v.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("ij,ij->i", v, v))
    with np.errstate(invalid="ignore", divide="ignore"):
        v /= np.where(norm > 0, norm, np.nan)[:, None]
    return v


def _group_corr_with_missing(g: np.ndarray, zg: np.ndarray | None, method: str) -> np.ndarray:
    """pandas ``DataFrame.corr`` of one group's replicates (rows of ``g``) when some values are NaN or +-inf.

    Pairs of fully finite replicates come from the Gram product of ``zg``; every row with a non-finite value is
    redone against all rows at once by :func:`_corr_row` (pairwise-complete, pandas' rules).
    """
    if method == "kendall":
        return pd.DataFrame(g.T).corr(method="kendall").to_numpy()
    fin = np.isfinite(g)
    corr = np.clip(zg @ zg.T, -1.0, 1.0)
    bad = np.flatnonzero(~fin.all(axis=1))
    prep = _rank_prep(g) if method == "spearman" else None
    for i in bad:
        r = _corr_row(g, fin, i, prep)
        corr[i, :] = r
        corr[:, i] = r
    return corr


def _rank_prep(g: np.ndarray) -> dict:
    """Per row of one group: sort order and tie runs, ranks among its finite values (``finite``), ranks as
    pandas' ``rank_1d`` gives them (``pandas``: NaN left out, +-inf ranked as values), and the non-finite
    entries ``(rows, cols)`` in row-major order."""
    m, d = g.shape
    perm = np.argsort(g, axis=1, kind="stable")  # NaN last
    srt = np.take_along_axis(g, perm, axis=1)
    pos = np.broadcast_to(np.arange(d), (m, d))
    new = np.ones((m, d), dtype=bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]  # NaN != NaN: every NaN its own run (they are never used)
    run_start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    end = np.ones((m, d), dtype=bool)
    end[:, :-1] = new[:, 1:]
    run_end = np.minimum.accumulate(np.where(end, pos, d - 1)[:, ::-1], axis=1)[:, ::-1]
    nan = np.isnan(g)
    full = _subset_ranks(perm, run_start, run_end, ~nan)
    full[nan] = np.nan
    fin = np.isfinite(g)
    miss_rows, miss_cols = np.nonzero(~fin)
    return {"perm": perm, "run_start": run_start, "run_end": run_end, "pandas": full,
            "finite": _subset_ranks(perm, run_start, run_end, fin), "miss_rows": miss_rows, "miss_cols": miss_cols}


def _below(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """How much removing value ``u`` lowers the average rank of value ``v``: [u < v] + 0.5 [u == v]."""
    return (u < v) + 0.5 * (u == v)


def _ranks_within_common(g: np.ndarray, fin: np.ndarray, i: int, c: np.ndarray, prep: dict):
    """``a[j]`` = average ranks of row ``i`` and ``b[j]`` = of row ``j`` among the features finite in both.

    Few missing values (the usual case): each row's ranks among its own finite values, minus one ``_below`` per
    value the pair drops. Otherwise: counting kept values along each row's sort order (:func:`_subset_ranks`).
    """
    m, d = g.shape
    drop_i = np.flatnonzero(~fin[i])  # dropped from every other row's ranks
    sel = fin[i, prep["miss_cols"]]  # other rows' missing entries that drop a value of row i
    n_sel = int(sel.sum())
    if len(drop_i) <= 4 and n_sel <= 8 * m:
        b = prep["finite"].copy()
        for e in drop_i:
            hit = np.flatnonzero(fin[:, e])
            if len(hit):
                b[hit] -= _below(g[hit, e : e + 1], g[hit])
        a = np.repeat(prep["finite"][i][None], m, axis=0)
        if n_sel:
            rows, cols = prep["miss_rows"][sel], prep["miss_cols"][sel]  # sorted by row
            h = _below(g[i, cols][:, None], g[i][None, :])
            urows, first = np.unique(rows, return_index=True)
            a[urows] -= np.add.reduceat(h, first, axis=0)
        return a, b
    perm, rs, re_ = prep["perm"], prep["run_start"], prep["run_end"]
    a = _subset_ranks(np.broadcast_to(perm[i], (m, d)), np.broadcast_to(rs[i], (m, d)),
                      np.broadcast_to(re_[i], (m, d)), c)
    b = _subset_ranks(perm, rs, re_, c)
    return a, b


def _subset_ranks(perm, run_start, run_end, keep) -> np.ndarray:
    """Average ranks of each row's values among its ``keep`` positions (rows of ``perm`` etc. broadcast)."""
    k = np.take_along_axis(keep, perm, axis=1).astype(np.float64)
    cum = np.cumsum(k, axis=1)
    before = np.take_along_axis(cum - k, run_start, axis=1)
    count = np.take_along_axis(cum, run_end, axis=1) - before
    ranks_sorted = before + (count + 1.0) / 2.0
    out = np.empty_like(ranks_sorted)
    np.put_along_axis(out, perm, ranks_sorted, axis=1)
    return out


def _corr_row(g: np.ndarray, fin: np.ndarray, i: int, prep) -> np.ndarray:
    """Correlation of row ``i`` with every row over the features finite in both (pandas ``nancorr`` /
    ``nancorr_spearman``): spearman re-ranks both rows within the common features unless their finite masks are
    equal, in which case pandas keeps each row's full ranks."""
    m, d = g.shape
    c = fin & fin[i]
    nobs = c.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if prep is None:  # pearson
            a = np.broadcast_to(g[i], (m, d))
            mean_a = np.where(c, a, 0.0).sum(axis=1) / nobs
            mean_b = np.where(c, g, 0.0).sum(axis=1) / nobs
            va = np.where(c, a - mean_a[:, None], 0.0)
            vb = np.where(c, g - mean_b[:, None], 0.0)
        else:
            a, b = _ranks_within_common(g, fin, i, c, prep)
            full = prep["pandas"]
            same = (fin == fin[i]).all(axis=1)
            a[same] = full[i]
            b[same] = full[same]
            mu = (nobs + 1.0) / 2.0
            va = np.where(c, a - mu[:, None], 0.0)
            vb = np.where(c, b - mu[:, None], 0.0)
        num = (va * vb).sum(axis=1)
        divisor = np.sqrt((va * va).sum(axis=1) * (vb * vb).sum(axis=1))
        r = np.where((divisor != 0) & (nobs >= 1), num / divisor, np.nan)
    return r
