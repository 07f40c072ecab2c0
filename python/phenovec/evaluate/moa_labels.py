"""MOA and compound labels of the wells evaluated by the MOAProfiler metrics, checked once.

Wong et al. 2023 (MOAProfiler, digest B5) compare well-level embeddings by MOA and by compound.
The metrics compute exactly on the rows they are handed (dropping DMSO and single-compound MOAs is
:func:`phenovec.evaluate.moa_test_wells.moa_test_wells`'s job), so every input problem that would
make a number meaningless is refused here with a message naming the argument, the column and the
first offending value or row: a missing label, fewer than two MOAs, a MOA with a single well, a
compound annotated with two MOAs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from phenovec.evaluate.pairs import check_columns, encode_column


@dataclass
class MoaLabels:
    """Integer codes of the wells' MOAs (``moa``, values ``moas``) and compounds (``compound``, values
    ``compounds``; ``None`` without a compound column). Codes follow the sorted values."""

    moa: np.ndarray
    moas: np.ndarray
    compound: np.ndarray | None
    compounds: np.ndarray | None

    @property
    def n_moas(self) -> int:
        return len(self.moas)


def _codes(meta: pd.DataFrame, col: str, arg: str) -> tuple[np.ndarray, np.ndarray]:
    check_columns(meta, [col], arg)
    encode_column(meta, col, arg)  # missing values: error naming the column and row
    codes, values = pd.factorize(meta[col], sort=True)
    return codes.astype(np.int64), np.asarray(values, dtype=object)


def moa_labels(meta: pd.DataFrame, moa_col: str, compound_col: str | None = None, *, min_moas: int = 2,
               min_wells: int = 2, one_moa_per_compound: bool = True, what: str = "the metric") -> MoaLabels:
    """Code and check the MOA (and compound) column of the evaluated wells.

    Raises ``KeyError`` for an unknown column and ``ValueError`` for a missing label (row named), fewer than
    ``min_moas`` MOAs, a MOA with fewer than ``min_wells`` wells (named, with its first row), or, with
    ``one_moa_per_compound``, a compound whose wells carry two MOAs.
    """
    moa, moas = _codes(meta, moa_col, "moa_col")
    if len(moas) < min_moas:
        raise ValueError(
            f"moa_col: column {moa_col!r} has {len(moas)} MOA" + ("" if len(moas) == 1 else "s")
            + (f" ({moas[0]!r})" if len(moas) == 1 else "") + f" among {len(meta)} rows; {what} needs at least "
            f"{min_moas} MOAs")
    if min_wells > 1:
        counts = np.bincount(moa, minlength=len(moas))
        few = np.flatnonzero(counts < min_wells)
        if len(few):
            m = int(few[0])
            row = int(np.flatnonzero(moa == m)[0])
            raise ValueError(
                f"moa_col: MOA {moas[m]!r} of column {moa_col!r} has {int(counts[m])} well (row {row}); {what} needs "
                f"at least {min_wells} wells per MOA ({len(few)} such MOAs; drop them, e.g. with moa_test_wells)")
    compound = compounds = None
    if compound_col is not None:
        compound, compounds = _codes(meta, compound_col, "compound_col")
        if one_moa_per_compound:
            pairs = pd.DataFrame({"c": compound, "m": moa}).drop_duplicates()
            dup = pairs["c"].duplicated(keep=False).to_numpy()
            if dup.any():
                c = int(pairs["c"].to_numpy()[dup][0])
                ms = sorted(str(moas[v]) for v in pairs.loc[pairs["c"] == c, "m"])
                raise ValueError(
                    f"compound_col: compound {compounds[c]!r} of column {compound_col!r} has {len(ms)} MOAs in "
                    f"{moa_col!r} ({', '.join(map(repr, ms))}); each compound must have one MOA")
    return MoaLabels(moa, moas, compound, compounds)


def group_medians(x: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Median embedding of each group (``n_groups`` x features): an MOA-level (MLE) or compound-level (CLE)
    embedding. Every group must have at least one row."""
    out = np.empty((n_groups, x.shape[1]), dtype=np.float64)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
    for g in range(n_groups):
        rows = order[bounds[g]:bounds[g + 1]]
        if len(rows) == 0:
            raise ValueError(f"group {g} has no row")
        out[g] = np.median(x[rows], axis=0)
    return out


def leave_one_out_medians(x: np.ndarray) -> np.ndarray:
    """Row i: the per-feature median of every row of ``x`` except row i (needs at least 2 rows).

    One sort per feature: with the column sorted, removing the element of rank r shifts the ranks
    above r down by one, so the median of the n - 1 others is read off the sorted column directly.
    """
    n = len(x)
    if n < 2:
        raise ValueError("a leave-one-out median needs at least 2 rows")
    order = np.argsort(x, axis=0, kind="stable")
    srt = np.take_along_axis(x, order, axis=0).astype(np.float64)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n)[:, None], axis=0)
    m = n - 1  # size of the remaining sample

    def kth(k: int) -> np.ndarray:  # k-th smallest of the remaining values, per (row removed, feature)
        return np.where(rank > k, srt[k][None, :], srt[min(k + 1, n - 1)][None, :])

    if m % 2:
        return kth(m // 2)
    return 0.5 * (kth(m // 2 - 1) + kth(m // 2))
