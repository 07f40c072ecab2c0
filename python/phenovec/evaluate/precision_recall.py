"""precision@k / recall@k per group (cytominer-eval ``precision_recall``) and precision@R.

cytominer-eval (git 643d3e7) melts the full off-diagonal similarity matrix (every ordered pair
(i, j), i != j), groups the rows by the ``groupby_columns`` of pair member *a*, and within each
group sorts all of the group's pairs by decreasing similarity: the group's ranked list pools, over
every member row i, the similarities of i to every other row j of the table. A pair is a
*replicate* (a hit) when i and j are equal in every ``replicate_groups`` column. Then

- precision@k = (hits among the first k entries) / k;
- recall@k = (hits among the first k entries) / (hits in the whole list).

Here the same pooled lists are ranked by the Rust core (``_core.positive_ranks``, block by block:
no N x N matrix or N^2 table), so the numbers are cytominer-eval's. Differences, all documented:

- **Ties**: cytominer-eval sorts with an unstable quicksort, so equal similarities come in an
  arbitrary order; here a hit and a non-hit with equal similarity rank the hit first (the
  package-wide tie rule). The two symmetric entries (i, j) and (j, i) of one group are equal and of
  the same kind, so they never matter.
- **k larger than the list**: as cytominer-eval, precision divides by k even then (the list's
  hits / k), recall by the hits in the list. This is tested.
- **Groups without any hit** (recall 0/0): cytominer-eval returns NaN; here a ``ValueError``
  naming the groups (drop them or choose other columns).
- Missing values in a ``replicate_groups`` or ``groupby_columns`` column are an error (cytominer-eval
  turned them into the string "nan", so all missing values formed one group).
- Groups are ordered as cytominer-eval orders them: by the string form of the key columns (its
  metadata are cast to ``str``); the output keeps the original values.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec import _core
from phenovec.evaluate.pair_quantile import replicate_codes
from phenovec.evaluate.pairs import (
    DEFAULT_BLOCK_BYTES, PairRules, Units, as_list, block_rows_for, check_columns, encode_column,
)
from phenovec.evaluate.similarity import as_profiles, check_metric

REPLICATE_COLUMN = "__replicate__"


def query_groups(meta: pd.DataFrame, groupby_columns) -> tuple[Units, pd.DataFrame]:
    """One query unit per group of ``groupby_columns`` pooling its rows, in cytominer-eval's order.

    Groups are sorted by the string form of their keys (cytominer-eval casts metadata to ``str``
    before ``groupby``); the returned key table holds the original values.
    """
    cols = as_list(groupby_columns)
    if not cols:
        raise ValueError("groupby_columns: name at least one metadata column")
    check_columns(meta, cols, "groupby_columns")
    for c in cols:
        encode_column(meta, c, "groupby_columns")  # missing values raise
    units, _ = Units.grouped(meta[cols].astype(str), cols)
    first = units.rows[units.offsets[:-1]]
    keys = meta[cols].iloc[first].reset_index(drop=True)
    return units, keys


def group_ranks(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    replicate_groups=None,
    groupby_columns=None,
    similarity_metric: str = "pearson",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of the hits in every group's pooled list.

    Returns ``(keys, offsets, ranks, n_total)``: group ``g``'s hits have the 0-based ranks
    ``ranks[offsets[g]:offsets[g + 1]]`` (ascending) in its list of ``n_total[g]`` entries.
    """
    p = as_profiles(profiles, feats, features, meta_features)
    metric = check_metric(similarity_metric)
    meta = p.meta
    codes = replicate_codes(meta, replicate_groups)
    units, keys = query_groups(meta, groupby_columns)
    rules = PairRules.build(pd.DataFrame({REPLICATE_COLUMN: codes}), [REPLICATE_COLUMN], [], [], [REPLICATE_COLUMN])
    x = p.feats
    offsets, ranks, n_total = _core.positive_ranks(
        x, metric, **units.core_args(), **rules.core_args(),
        block_rows=block_rows_for(len(x), x.itemsize, block_bytes),
    )
    offsets = offsets.astype(np.int64)
    n_pos = np.diff(offsets)
    if (n_pos == 0).any():
        bad = keys[n_pos == 0]
        raise ValueError(
            f"{len(bad)} group(s) of {list(keys.columns)} have no replicate pair (same {as_list(replicate_groups)}), "
            f"so recall is undefined; first: {bad.iloc[0].to_dict()}. Drop them or choose other columns"
        )
    return keys, offsets, ranks.astype(np.int64), n_total.astype(np.int64)


def _check_k(k) -> list[int]:
    ks = [k] if not isinstance(k, (list, tuple, np.ndarray)) else list(k)
    if not ks:
        raise ValueError("k: give at least one value")
    for v in ks:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"k must be positive integers, got {v!r}")
    return [int(v) for v in ks]


def precision_recall(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    replicate_groups=None,
    groupby_columns=None,
    k=10,
    similarity_metric: str = "pearson",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> pd.DataFrame:
    """precision@k and recall@k per group of ``groupby_columns`` (cytominer-eval semantics).

    ``profiles`` is a whole profile table (``features`` / ``meta_features`` name the columns, by
    default ``Metadata_*`` are metadata) or a metadata frame with ``feats`` (N x D matrix).
    Output: the ``groupby_columns``, ``k``, ``precision``, ``recall``; one block of rows per k (in
    the given order), groups in cytominer-eval's order. Matches cytominer-eval exactly (up to the
    last ulp of the similarities); see the module docstring for ties and edge cases.
    """
    ks = _check_k(k)
    keys, offsets, ranks, _ = group_ranks(profiles, feats, features, meta_features, replicate_groups,
                                          groupby_columns, similarity_metric, block_bytes)
    n_pos = np.diff(offsets)
    group_of = np.repeat(np.arange(len(keys)), n_pos)
    parts = []
    for kk in ks:
        hits = np.bincount(group_of[ranks < kk], minlength=len(keys))
        part = keys.copy()
        part["k"] = kk
        part["precision"] = hits / kk
        part["recall"] = hits / n_pos
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def precision_at_r(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    replicate_groups=None,
    groupby_columns=None,
    similarity_metric: str = "pearson",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[pd.DataFrame, float]:
    """precision@R per group and its macro average (Bornholdt 2021, the DeepProfiler-LINCS thesis).

    R is the number of hits (replicate pairs) in the group's pooled list, i.e. precision@k with
    k = R (which equals recall@R). Lists, ties and errors are those of :func:`precision_recall`.
    Returns ``(table, mean)``: the ``groupby_columns``, ``R`` and ``precision_at_r`` per group, and
    the unweighted mean over groups. cytominer-eval has no released precision@R.
    """
    keys, offsets, ranks, _ = group_ranks(profiles, feats, features, meta_features, replicate_groups,
                                          groupby_columns, similarity_metric, block_bytes)
    n_pos = np.diff(offsets)
    group_of = np.repeat(np.arange(len(keys)), n_pos)
    hits = np.bincount(group_of[ranks < n_pos[group_of]], minlength=len(keys))
    table = keys.copy()
    table["R"] = n_pos
    table["precision_at_r"] = hits / n_pos
    return table, float(table["precision_at_r"].mean())
