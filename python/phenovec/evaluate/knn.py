"""k-nearest-neighbour MOA prediction with the query's compound held out (MOAProfiler protocol).

Peer: the k-NN evaluation of Wong et al., Digital Discovery 2023 (MOAProfiler; its code in
pfizer-opensource/moa-profiler): every well is a query, its MOA is predicted as the majority MOA of
its k most similar wells, and for each k sklearn's support-weighted F1 / precision / recall are
reported. As in the classic BBBC021 benchmark (Ljosa et al. 2013, "not same compound"), the
neighbours exclude every well of the query's own compound, and optionally wells sharing a plate or
batch. The paper states no vote tie rule; ours is documented and tested below.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES, as_list, check_columns, encode_column
from phenovec.evaluate.similarity import as_profiles, check_metric, iter_similarity_blocks


def _check_ks(k, max_candidates: int) -> list[int]:
    if isinstance(k, str):
        if k != "all":
            raise ValueError(f"k must be a positive integer, a list of them or 'all', got {k!r}")
        return list(range(1, max_candidates + 1))
    ks = [k] if np.isscalar(k) else list(k)
    if not ks:
        raise ValueError("k is empty")
    for v in ks:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"k must hold positive integers, got {v!r}")
    ks = sorted({int(v) for v in ks})
    if ks[-1] > max_candidates:
        raise ValueError(f"k = {ks[-1]} exceeds the largest number of candidate neighbours of any query ({max_candidates})")
    return ks


def _top_neighbours(s: np.ndarray, kk: int) -> np.ndarray:
    """Columns of the ``kk`` largest entries per row, by decreasing value then increasing column."""
    n = s.shape[1]
    if kk < n:
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(n), s.shape).copy()
    vals = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -vals), axis=-1)
    part = np.take_along_axis(part, order, axis=1)
    # entries equal to the k-th value but left outside the partition: redo those rows exactly
    thr = np.take_along_axis(s, part[:, -1:], axis=1)[:, 0]
    redo = np.flatnonzero(np.isfinite(thr) & ((s >= thr[:, None]).sum(axis=1) > (np.take_along_axis(s, part, axis=1) >= thr[:, None]).sum(axis=1)))
    for r in redo:
        part[r] = np.lexsort((np.arange(n), -s[r]))[:kk]
    return part


def knn_accuracy(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    *,
    moa_col: str,
    compound_col: str,
    k: int | Sequence[int] | str = (1, 3, 5),
    exclude_same: str | Sequence[str] | None = None,
    similarity_metric: str = "pearson",
    leave_out: str = "compound",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leave-one-compound-out k-NN MOA prediction; returns ``(summary, predictions)``.

    ``profiles`` is a whole profile table (``feats=None``) or a metadata frame with ``feats``.
    Every row is a query. Its candidate neighbours are the rows of *other* compounds
    (``compound_col`` differs) that also differ from it in every ``exclude_same`` column (e.g.
    ``["Metadata_Plate"]`` for "not same compound or plate"). They are ranked by decreasing
    ``similarity_metric``; equal similarities by increasing row number.

    Vote: the predicted MOA is the most frequent ``moa_col`` value among the first ``k`` ranked
    candidates (all of them if the query has fewer than ``k``). Tie rule: among the MOAs with the
    top count, the one whose best-ranked neighbour ranks first (i.e. the MOA of the nearest
    neighbour among the tied classes).

    ``k``: an int, a list of ints, or ``"all"`` (every k from 1 to the largest candidate count, the
    paper's "all k from 1 to N-1"; its cost is O(N^2 x #MOAs)).

    ``leave_out``: ``"compound"`` (default, as above) or ``"well"``: the paper's own protocol, where only
    the query itself is left out and wells of its compound are candidates (``compound_col`` is then only
    reported). ``similarity_metric`` defaults to the paper's PCC (``"pearson"``).

    Returns:
      - ``summary``: one row per k with ``k``, ``n_queries``, ``accuracy`` and sklearn's
        support-weighted ``f1_weighted``, ``precision_weighted``, ``recall_weighted``
        (``average="weighted"``, ``zero_division=0``; the paper's scores).
      - ``predictions``: one row per (query, k): ``row`` (position in the input), the compound and
        MOA columns, ``k``, ``predicted``, ``correct``, ``n_candidates``.

    Similarities are computed in row blocks by the Rust core (the N x N matrix never exists);
    the k best per row are found with ``np.argpartition``. Errors: unknown or missing-valued
    metadata, NaN/inf features, zero-norm rows (cosine) or zero-variance rows (pearson), a query
    with no candidate neighbour (named), ``k`` larger than every query's candidate count.
    """
    metric = check_metric(similarity_metric)
    if leave_out not in ("compound", "well"):
        raise ValueError(f"leave_out must be 'compound' or 'well', got {leave_out!r}")
    prof = as_profiles(profiles, feats, features=features, meta_features=meta_features)
    meta = prof.meta
    excl = as_list(exclude_same)
    check_columns(meta, [moa_col], "moa_col")
    check_columns(meta, [compound_col], "compound_col")
    check_columns(meta, excl, "exclude_same")
    encode_column(meta, moa_col, "moa_col")
    moa, moa_values = pd.factorize(meta[moa_col], sort=True)
    moa = moa.astype(np.int64)
    cpd_codes = encode_column(meta, compound_col, "compound_col")
    n, n_moa = len(meta), len(moa_values)
    own = cpd_codes if leave_out == "compound" else np.arange(n, dtype=np.int64)
    excl_codes = [own] + [encode_column(meta, c, "exclude_same") for c in excl]
    if n < 2:
        raise ValueError(f"knn_accuracy needs at least 2 profiles, got {n}")

    def candidates(rows: np.ndarray) -> np.ndarray:
        ok = np.ones((len(rows), n), dtype=bool)
        for c in excl_codes:
            ok &= c[None, :] != c[rows][:, None]
        return ok

    # candidate counts first (cheap, metadata only), so that k="all" and errors are known up front
    n_cand = np.empty(n, dtype=np.int64)
    step = max(1, (64 << 20) // max(1, n))
    for s in range(0, n, step):
        r = np.arange(s, min(n, s + step))
        n_cand[r] = candidates(r).sum(axis=1)
    if (n_cand == 0).any():
        r = int(np.flatnonzero(n_cand == 0)[0])
        raise ValueError(
            f"row {r} ({compound_col} = {meta[compound_col].iloc[r]!r}) has no candidate neighbour: every other "
            f"row shares its {compound_col}" + (f" or one of {excl}" if excl else "") + f" ({int((n_cand == 0).sum())} such rows)"
        )
    ks = _check_ks(k, int(n_cand.max()))
    kmax = ks[-1]
    pred = np.empty((len(ks), n), dtype=np.int64)

    for rows, block in iter_similarity_blocks(prof.feats, metric, block_bytes=block_bytes):
        b = len(rows)
        s = np.where(candidates(rows), block, -np.inf)
        kk = min(kmax, n)
        nbr = _top_neighbours(s, kk)
        lab = np.where(np.arange(kk)[None, :] < n_cand[rows][:, None], moa[nbr], -1)
        counts = np.zeros((b, n_moa), dtype=np.int64)
        first = np.full((b, n_moa), kk + 1, dtype=np.int64)
        ar = np.arange(b)
        ki = 0
        for j in range(kk):
            lj = lab[:, j]
            v = lj >= 0
            counts[ar[v], lj[v]] += 1
            first[ar[v], lj[v]] = np.minimum(first[ar[v], lj[v]], j)
            if ki < len(ks) and ks[ki] == j + 1:
                pred[ki, rows] = np.argmax(counts * (kk + 2) - first, axis=1)
                ki += 1

    summary, tables = [], []
    meta_cols = meta[[compound_col, moa_col]].reset_index(drop=True)
    for i, kv in enumerate(ks):
        p = pred[i]
        summary.append({
            "k": kv,
            "n_queries": n,
            "accuracy": accuracy_score(moa, p),
            "f1_weighted": f1_score(moa, p, average="weighted", zero_division=0),
            "precision_weighted": precision_score(moa, p, average="weighted", zero_division=0),
            "recall_weighted": recall_score(moa, p, average="weighted", zero_division=0),
        })
        t = meta_cols.copy()
        t.insert(0, "row", np.arange(n))
        t["k"] = kv
        t["predicted"] = np.asarray(moa_values)[p]
        t["correct"] = p == moa
        t["n_candidates"] = n_cand
        tables.append(t)
    return pd.DataFrame(summary), pd.concat(tables, ignore_index=True)
