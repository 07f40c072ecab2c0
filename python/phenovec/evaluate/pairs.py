"""Pair and query-group selection: metadata columns -> integer codes for the Rust ranking core.

copairs' vocabulary: two rows form a positive pair when they are equal in every ``pos_sameby``
column and different in every ``pos_diffby`` column; likewise for negatives. A multilabel column
(cells holding lists of labels) in a ``sameby`` list means "share at least one label", in a
``diffby`` list "share none"; positives are then ranked per label, as copairs.map.multilabel.
Missing values in a column used for pairing are an error naming the column and the first row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

DEFAULT_BLOCK_BYTES = 256 * 2**20


def as_list(cols: str | Sequence[str] | None) -> list[str]:
    if cols is None:
        return []
    if isinstance(cols, str):
        return [cols]
    return list(cols)


def check_columns(meta: pd.DataFrame, cols: Sequence[str], arg: str) -> None:
    for c in cols:
        if c not in meta.columns:
            raise KeyError(
                f"{arg}: unknown metadata column {c!r}"
                + ("; query expressions are not supported, filter the rows first" if any(ch in c for ch in "=<>!") else "")
            )


def encode_column(meta: pd.DataFrame, col: str, arg: str = "column") -> np.ndarray:
    """Integer codes of one metadata column; missing values raise."""
    s = meta[col]
    na = s.isna().to_numpy()
    if na.any():
        row = int(np.flatnonzero(na)[0])
        raise ValueError(f"{arg}: metadata column {col!r} has a missing value at row {row} ({int(na.sum())} in all)")
    codes, _ = pd.factorize(s, sort=False)
    return codes.astype(np.int64)


def encode_columns(meta: pd.DataFrame, cols: Sequence[str], arg: str) -> np.ndarray:
    check_columns(meta, cols, arg)
    if not cols:
        return np.zeros((0, len(meta)), dtype=np.int64)
    return np.ascontiguousarray(np.stack([encode_column(meta, c, arg) for c in cols]))


@dataclass
class MultiLabels:
    """A multilabel column in CSR form, labels coded 0..K-1 (``values[k]`` is label k)."""

    offsets: np.ndarray
    items: np.ndarray
    values: list

    @classmethod
    def from_column(cls, meta: pd.DataFrame, col: str) -> "MultiLabels":
        offsets = [0]
        items: list[int] = []
        index: dict = {}
        values: list = []
        for row, cell in enumerate(meta[col].tolist()):
            if cell is None or (not isinstance(cell, (list, tuple, np.ndarray, set, str)) and pd.isna(cell)):
                raise ValueError(f"multilabel column {col!r} has a missing value at row {row}")
            labels = [cell] if isinstance(cell, str) else list(cell)
            for lab in labels:
                if lab not in index:
                    index[lab] = len(values)
                    values.append(lab)
                items.append(index[lab])
            offsets.append(len(items))
        return cls(np.asarray(offsets, np.int64), np.asarray(items, np.int64), values)

    def of(self, row: int) -> np.ndarray:
        return self.items[self.offsets[row] : self.offsets[row + 1]]


@dataclass
class PairRules:
    """Positive and negative rules as the Rust core takes them."""

    pos_same: np.ndarray
    pos_diff: np.ndarray
    pos_multi: str
    neg_same: np.ndarray
    neg_diff: np.ndarray
    neg_multi: str
    labels: MultiLabels | None

    @classmethod
    def build(
        cls,
        meta: pd.DataFrame,
        pos_sameby,
        pos_diffby,
        neg_sameby,
        neg_diffby,
        multilabel_col: str | None = None,
    ) -> "PairRules":
        lists = {n: as_list(v) for n, v in
                 [("pos_sameby", pos_sameby), ("pos_diffby", pos_diffby), ("neg_sameby", neg_sameby), ("neg_diffby", neg_diffby)]}
        for n, cols in lists.items():
            check_columns(meta, cols, n)
        for kind in ("pos", "neg"):
            same, diff = lists[f"{kind}_sameby"], lists[f"{kind}_diffby"]
            if set(same) & set(diff):
                raise ValueError(f"{kind}_sameby and {kind}_diffby must be disjoint, both name {sorted(set(same) & set(diff))}")
            if not same and not diff:
                raise ValueError(f"{kind}_sameby and {kind}_diffby are both empty: at least one column is needed")
        labels = None
        modes = {"pos": "none", "neg": "none"}
        if multilabel_col is not None:
            if multilabel_col not in lists["pos_sameby"] + lists["pos_diffby"]:
                raise ValueError(f"multilabel_col {multilabel_col!r} must be in pos_sameby or pos_diffby")
            labels = MultiLabels.from_column(meta, multilabel_col)
            for kind in ("pos", "neg"):
                if multilabel_col in lists[f"{kind}_sameby"]:
                    modes[kind] = "same"
                    lists[f"{kind}_sameby"] = [c for c in lists[f"{kind}_sameby"] if c != multilabel_col]
                elif multilabel_col in lists[f"{kind}_diffby"]:
                    modes[kind] = "diff"
                    lists[f"{kind}_diffby"] = [c for c in lists[f"{kind}_diffby"] if c != multilabel_col]
        enc = {n: encode_columns(meta, cols, n) for n, cols in lists.items()}
        return cls(enc["pos_sameby"], enc["pos_diffby"], modes["pos"], enc["neg_sameby"], enc["neg_diffby"], modes["neg"], labels)

    def core_args(self) -> dict:
        lab = self.labels
        return dict(
            pos_same=self.pos_same, pos_diff=self.pos_diff, pos_multi=self.pos_multi,
            neg_same=self.neg_same, neg_diff=self.neg_diff, neg_multi=self.neg_multi,
            label_offsets=None if lab is None else lab.offsets,
            label_items=None if lab is None else lab.items,
        )


@dataclass
class Units:
    """Query units: member rows (CSR) and an optional label per unit."""

    offsets: np.ndarray
    rows: np.ndarray
    labels: np.ndarray | None = None

    @classmethod
    def per_row(cls, n: int) -> "Units":
        return cls(np.arange(n + 1, dtype=np.int64), np.arange(n, dtype=np.int64))

    @classmethod
    def per_row_label(cls, labels: MultiLabels) -> "Units":
        """One unit per (row, label of that row): copairs' multilabel queries."""
        counts = np.diff(labels.offsets)
        rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        return cls(np.arange(len(rows) + 1, dtype=np.int64), rows, labels.items.copy())

    @classmethod
    def grouped(cls, meta: pd.DataFrame, groupby: Sequence[str], arg: str = "groupby_columns") -> tuple["Units", pd.DataFrame]:
        """One unit per distinct value of ``groupby`` (in sorted key order), pooling its rows."""
        groupby = as_list(groupby)
        check_columns(meta, groupby, arg)
        for c in groupby:
            encode_column(meta, c, arg)  # missing values raise
        g = meta.groupby(groupby, sort=True, observed=True).indices
        keys = list(g.keys())
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        rows = []
        for k, key in enumerate(keys):
            idx = np.asarray(g[key], dtype=np.int64)
            rows.append(idx)
            offsets[k + 1] = offsets[k] + len(idx)
        key_df = pd.DataFrame([k if isinstance(k, tuple) else (k,) for k in keys], columns=groupby)
        return cls(offsets, np.concatenate(rows) if rows else np.zeros(0, np.int64)), key_df

    def core_args(self) -> dict:
        return dict(unit_offsets=self.offsets, unit_rows=self.rows, unit_labels=self.labels)


def block_rows_for(n: int, itemsize: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per similarity block so one block stays within ``block_bytes``."""
    return int(max(1, min(n, block_bytes // max(1, n * itemsize))))
