"""hit@k: the ranks of all replicate hits (cytominer-eval ``hitk``) and their accumulated scores.

cytominer-eval (git 643d3e7, ``operations/hitk.py`` + ``utils/hitk_utils.py``) groups the full
off-diagonal melt (every ordered pair (i, j), i != j) by the ``groupby_columns`` of member *a*,
sorts each group's pooled list by decreasing similarity and numbers it 0, 1, ...; the *hits list*
is the rank of every replicate pair (equal in all ``replicate_groups``), concatenated group by
group in group order. With G groups and H hits, ``percent_scores`` is, for each p in
``percent_list``:

    #{hits with rank <= p * G / 100} - int(p * H / 100)

and for ``percent_list="all"`` the running sum over n = 0 .. G-1 of ``#{rank == n} - H / G``
(accumulated in that order as Python floats). Note that the rank is compared with the number of
*groups*, not with the list length, exactly as cytominer-eval does (its lists had about G entries
when one row per compound was used).

The same lists are ranked here by the Rust core (``_core.positive_ranks``; no N x N matrix).
**Ties**: a hit and a non-hit with equal similarity rank the hit first; cytominer-eval's unstable
sort leaves that order arbitrary, so with such ties the hits list can differ, but only inside a
group's run of equal similarities (as a multiset per group it is the same up to those runs). The
two symmetric entries (i, j), (j, i) of one group are equal and both hits or both not, so they
never matter.

Also returned: the *normalised accumulated score* of Bornholdt (2021, DeepProfiler-LINCS thesis,
sec. 3.4.3): hits binned by their relative position in the list, accumulated and the uniform
expectation subtracted. We define it, for p = 1 .. 100, as

    score(p) = (#{hits with rank < p / 100 * list length} - H * p / 100) / H

(each hit measured against its own group's list length), which is 0 for a random ranking, at most
1 - p/100, and 0 at p = 100.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES
from phenovec.evaluate.precision_recall import group_ranks


@dataclass
class HitAtK:
    """Result of :func:`hit_at_k`. Unpacks as cytominer-eval's ``(hits_list, percent_scores)``."""

    hits: pd.DataFrame  # groupby columns + ``rank``, in hits-list order
    hits_list: list
    percent_scores: dict
    accumulated: pd.DataFrame  # percent, hits, expected, normalised_score

    def __iter__(self):
        return iter((self.hits_list, self.percent_scores))


def _check_percent_list(percent_list):
    if isinstance(percent_list, str):
        if percent_list != "all":
            raise ValueError(f"percent_list must be a list of percentages or 'all', got {percent_list!r}")
        return "all"
    if isinstance(percent_list, (int, float, np.integer, np.floating)) and not isinstance(percent_list, bool):
        percent_list = [percent_list]
    if not isinstance(percent_list, (list, tuple, np.ndarray)) or len(percent_list) == 0:
        raise ValueError(f"percent_list must be a non-empty list of percentages or 'all', got {percent_list!r}")
    out = []
    for p in percent_list:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)) or not np.isfinite(p):
            raise ValueError(f"percent_list: {p!r} is not a number")
        if not 0 <= p <= 100:
            raise ValueError(f"percent_list: percentages must be between 0 and 100, got {p!r}")
        out.append(p.item() if isinstance(p, np.generic) else p)
    return out


def percentage_scores(hits_list: Sequence[int], percent_list, nr_of_groups: int) -> dict:
    """cytominer-eval's ``percentage_scores`` (see the module docstring), same arithmetic."""
    total_hits = len(hits_list)
    d = {}
    if percent_list == "all":
        counts = np.bincount(np.asarray(hits_list, dtype=np.int64), minlength=nr_of_groups)
        diff = 0
        average_bin = total_hits / nr_of_groups
        for n in range(nr_of_groups):
            diff += int(counts[n]) - average_bin
            d[n] = diff
        return d
    h = np.asarray(hits_list, dtype=np.int64)
    for p in percent_list:
        expected_hits = int(p * total_hits / 100)
        p_value = p * nr_of_groups / 100
        d[p] = int(np.count_nonzero(h <= p_value)) - expected_hits
    return d


def accumulated_scores(ranks: np.ndarray, list_lengths: np.ndarray) -> pd.DataFrame:
    """The normalised accumulated score for p = 1 .. 100 (definition in the module docstring)."""
    h = len(ranks)
    pct = np.arange(1, 101)
    # rank < p/100 * L  <=>  100 * rank < p * L (exact in integers)
    hits = np.array([int(np.count_nonzero(100 * ranks < p * list_lengths)) for p in pct])
    expected = h * pct / 100
    return pd.DataFrame({"percent": pct, "hits": hits, "expected": expected, "normalised_score": (hits - expected) / h})


def hit_at_k(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    replicate_groups=None,
    groupby_columns=None,
    percent_list=(2, 5, 10),
    similarity_metric: str = "pearson",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> HitAtK:
    """cytominer-eval's ``hitk``: hits list and percent scores, plus the normalised accumulated score.

    ``percent_list``: percentages (0-100) or ``"all"``. Groups without any hit are an error (they
    would add nothing to the hits list but count in G; cytominer-eval kept them silently).
    ``result.hits_list`` and ``result.percent_scores`` equal cytominer-eval's two return values
    (``hits_list, scores = hit_at_k(...)`` works as with cytominer-eval).
    """
    percent_list = _check_percent_list(percent_list)
    keys, offsets, ranks, n_total = group_ranks(profiles, feats, features, meta_features, replicate_groups,
                                                groupby_columns, similarity_metric, block_bytes)
    n_pos = np.diff(offsets)
    group_of = np.repeat(np.arange(len(keys)), n_pos)
    hits = keys.iloc[group_of].reset_index(drop=True)
    hits["rank"] = ranks
    hits_list = [int(r) for r in ranks]
    scores = percentage_scores(hits_list, percent_list, len(keys))
    return HitAtK(hits, hits_list, scores, accumulated_scores(ranks, n_total[group_of]))
