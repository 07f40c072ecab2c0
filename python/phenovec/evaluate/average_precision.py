"""Average precision per query, with copairs' arguments, semantics and output columns.

``average_precision(meta, feats, pos_sameby, pos_diffby, neg_sameby, neg_diffby, ...)`` returns the
metadata with ``average_precision``, ``normalized_average_precision``, ``n_pos_pairs`` and
``n_total_pairs`` per row, as ``copairs.map.average_precision`` 0.5.5:

- a pair (i, j), i != j, is positive when equal in every ``pos_sameby`` column and different in every
  ``pos_diffby`` column (likewise negatives); each pair counts in the lists of both its rows; a pair
  meeting both rules enters twice, as copairs;
- each row's list is ordered by decreasing similarity; **tie rule: a positive and a negative with
  equal similarity rank the positive first** (copairs' stable lexsort puts positives first);
- AP = (1/M) sum_k precision@rank_k over the M positives (non-interpolated); NaN when the row has no
  positive pair (its n_pos_pairs is 0); rows in no pair at all have n_total_pairs 0;
- ``normalized_average_precision`` = clip((AP - mu0) / (1 - mu0), -1, 1) with copairs' exact
  random-ranking expectation mu0.

Resolution (``ties``): copairs stores similarities as float32 and sorts on the float32 key
``1 - s``, so similarities closer than float32 resolution tie (positive first). ``ties="copairs"``
(default) ranks on that same key and reproduces copairs' AP exactly (this matters for data whose
similarities crowd near 1, e.g. raw CellProfiler features under cosine); ``ties="exact"`` ranks at
the full precision of the input. Similarities come from a blocked GEMM in the input's float type;
for float32 input they can differ from copairs' float32 arithmetic by an ulp, so AP agrees to ~1e-6
there; ``euclidean`` ranks by negative distance (copairs
1/(1+d): same order). ``batch_size`` is accepted and ignored (blocks are sized by ``block_bytes``).
Query expressions inside the column lists are not supported: filter rows first.

With ``multilabel_col`` (a column of label lists in ``pos_sameby``), positives are ranked per label
as ``copairs.map.multilabel.average_precision``: one output row per (row, label) with at least one
positive, the label in ``multilabel_col``; negatives are deduplicated pairs (each once per query).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec import _core
from phenovec.evaluate.exact_null import exact_p_values
from phenovec.evaluate.null import NULL_METHODS, null_distributions, unique_configs
from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES, PairRules, Units, block_rows_for
from phenovec.evaluate.similarity import as_features, as_profiles, check_metric


class UnpairedError(ValueError):
    """No positive (or no negative) pair exists under the given rules (copairs' UnpairedException)."""


def expected_ap(n_pos, n_total) -> np.ndarray:
    """Exact mean AP of a random ranking with M positives among L (copairs ``expected_ap``)."""
    m = np.asarray(n_pos, dtype=np.float64)
    l = np.asarray(n_total, dtype=np.float64)
    out = np.zeros(np.broadcast(m, l).shape)
    m, l = np.broadcast_arrays(m, l)
    for lv in np.unique(l[l > 1]):
        h = np.sum(1.0 / np.arange(1, int(lv) + 1))
        sel = l == lv
        out[sel] = (1.0 / lv) * (((m[sel] - 1.0) / (lv - 1.0)) * (lv - h) + h)
    out[(l == 1) & (m == 1)] = 1.0
    out[m == 0] = 0.0
    out[(m == l) & (l >= 1)] = 1.0
    return out


def normalize_ap(ap, n_pos, n_total, eps: float = 1e-10) -> np.ndarray:
    """(AP - mu0) / (1 - mu0), clipped to [-1, 1] (copairs ``normalize_ap``)."""
    mu0 = expected_ap(n_pos, n_total)
    return np.clip((np.asarray(ap, dtype=np.float64) - mu0) / np.maximum(1 - mu0, eps), -1.0, 1.0)


TIES = ("copairs", "exact")


def _inputs(meta, feats):
    """copairs' (meta DataFrame, feats matrix), or a whole profile table (pandas or Arrow) with feats=None."""
    if feats is None:
        prof = as_profiles(meta)
        return prof.meta, prof.feats
    if not isinstance(meta, pd.DataFrame):
        meta = as_profiles(meta, feats).meta
    x = as_features(feats)
    if len(meta) != len(x):
        raise ValueError(f"meta has {len(meta)} rows but feats has {len(x)} rows")
    return meta, x


def _run(x, distance, units: Units, rules: PairRules, block_bytes: int, ties: str):
    metric = check_metric(distance)
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    return _core.average_precision(
        x, metric, **units.core_args(), **rules.core_args(),
        block_rows=block_rows_for(len(x), x.itemsize, block_bytes), f32_keys=ties == "copairs",
    )


def average_precision(
    meta,
    feats,
    pos_sameby: Sequence[str],
    pos_diffby: Sequence[str],
    neg_sameby: Sequence[str],
    neg_diffby: Sequence[str],
    batch_size: int = 20000,
    distance: str = "cosine",
    progress_bar: bool = True,
    multilabel_col: str | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    ties: str = "copairs",
    precision: str = "fp32",
    device: str = "cpu",
    emulate: bool = False,
    engine: str = "auto",
) -> pd.DataFrame:
    """Per-query AP (copairs 0.5.5 semantics; see the module docstring for the exact rules).

    ``precision`` other than "fp32", ``device`` other than "cpu", ``emulate`` or ``engine="torch"`` run through
    :func:`phenovec.evaluate.evaluate_many` (reduced-precision GEMM, PyTorch / CUDA; same columns).
    """
    if precision != "fp32" or device != "cpu" or emulate or engine not in ("auto", "rust"):
        if multilabel_col is not None:
            raise ValueError("multilabel_col: only precision='fp32' on device='cpu' is supported for multilabel rules")
        from phenovec.evaluate.evaluate_many import evaluate_many

        rules = dict(pos_sameby=pos_sameby, pos_diffby=pos_diffby, neg_sameby=neg_sameby, neg_diffby=neg_diffby)
        meta, x = _inputs(meta, feats)
        return evaluate_many(meta, x, {"ap": rules}, distance=distance, block_bytes=block_bytes, ties=ties,
                             precision=precision, device=device, emulate=emulate, engine=engine)["ap"]
    if multilabel_col is not None:
        return multilabel_average_precision(meta, feats, pos_sameby, pos_diffby, neg_sameby, neg_diffby,
                                            multilabel_col, distance=distance, block_bytes=block_bytes, ties=ties)
    meta, x = _inputs(meta, feats)
    meta = meta.reset_index(drop=True).copy()
    rules = PairRules.build(meta, pos_sameby, pos_diffby, neg_sameby, neg_diffby)
    ap, m, l = _run(x, distance, Units.per_row(len(x)), rules, block_bytes, ties)
    if m.sum() == 0:
        raise UnpairedError("Unable to find positive pairs: no two rows satisfy pos_sameby/pos_diffby")
    if (l - m).sum() == 0:
        raise UnpairedError("Unable to find negative pairs: no two rows satisfy neg_sameby/neg_diffby")
    meta["n_pos_pairs"] = m.astype(np.int64)
    meta["n_total_pairs"] = l.astype(np.int64)
    meta["average_precision"] = ap
    norm = normalize_ap(np.nan_to_num(ap), m, l)
    norm[np.isnan(ap)] = np.nan
    meta["normalized_average_precision"] = norm
    return meta


def multilabel_average_precision(
    meta,
    feats,
    pos_sameby: Sequence[str],
    pos_diffby: Sequence[str],
    neg_sameby: Sequence[str],
    neg_diffby: Sequence[str],
    multilabel_col: str,
    batch_size: int = 20000,
    distance: str = "cosine",
    progress_bar: bool = True,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    ties: str = "copairs",
) -> pd.DataFrame:
    """Per-(query, label) AP, as ``copairs.map.multilabel.average_precision``."""
    meta, x = _inputs(meta, feats)
    meta = meta.reset_index(drop=True)
    if multilabel_col not in meta.columns:
        raise KeyError(f"multilabel_col: unknown metadata column {multilabel_col!r}")
    rules = PairRules.build(meta, pos_sameby, pos_diffby, neg_sameby, neg_diffby, multilabel_col=multilabel_col)
    units = Units.per_row_label(rules.labels)
    ap, m, l = _run(x, distance, units, rules, block_bytes, ties)
    keep = m > 0
    if not keep.any():
        raise UnpairedError("Unable to find positive pairs: no two rows share a label under the positive rules")
    if (l - m)[keep].sum() == 0:
        raise UnpairedError("Unable to find any negative pairs")
    rows = units.rows[keep]
    out = meta.drop(columns=[multilabel_col]).iloc[rows].copy()
    out[multilabel_col] = [rules.labels.values[k] for k in units.labels[keep]]
    out["average_precision"] = ap[keep]
    out["normalized_average_precision"] = normalize_ap(ap[keep], m[keep], l[keep])
    out["n_pos_pairs"] = m[keep].astype(np.int64)
    out["n_total_pairs"] = l[keep].astype(np.int64)
    return out


def p_values(ap_scores: pd.DataFrame, null_size: int, seed: int, null_method: str = "copairs",
             progress_bar: bool = False) -> np.ndarray:
    """Per-query AP p-values: (#{null >= AP} + 1) / (null_size + 1) (copairs ``p_values``; NaN without positives).

    ``null_method="exact"``: P(AP' >= AP) by enumeration where C(L, M) is small
    (:mod:`phenovec.evaluate.exact_null`), the ``"fast"`` sampled estimate elsewhere.
    """
    for c in ("average_precision", "n_pos_pairs", "n_total_pairs"):
        if c not in ap_scores.columns:
            raise KeyError(f"ap_scores: missing column {c!r} (pass the output of average_precision)")
    if null_method not in NULL_METHODS + ("exact",):
        raise ValueError(f"null_method must be one of {NULL_METHODS + ('exact',)}, got {null_method!r}")
    mask = (ap_scores["n_pos_pairs"] > 0).to_numpy()
    pvals = np.full(len(ap_scores), np.nan, dtype=np.float32 if null_method == "copairs" else np.float64)
    if not mask.any():
        return pvals
    scores = ap_scores["average_precision"].to_numpy()[mask]
    m, l = ap_scores["n_pos_pairs"].to_numpy()[mask], ap_scores["n_total_pairs"].to_numpy()[mask]
    out = exact_p_values(scores, m, l) if null_method == "exact" else np.full(len(scores), np.nan)
    todo = np.isnan(out)
    if todo.any():
        confs, inv = unique_configs(m[todo], l[todo])
        nulls = null_distributions(confs, null_size, seed, "fast" if null_method == "exact" else null_method,
                                   progress_bar)
        nulls.sort(axis=1)
        num = null_size - np.array([np.searchsorted(nulls[i], s) for s, i in zip(scores[todo], inv)])
        out[todo] = (num + 1) / (null_size + 1)
    pvals[mask] = out
    return pvals
