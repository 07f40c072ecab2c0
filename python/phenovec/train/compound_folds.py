"""Splits by compound for assay prediction (GapNet, Hofmarcher et al. 2019: 70 / 10 / 20 % of the compounds to
train / validation / test, "multiple images from the same sample are in the same fold").

Every row of a compound -- each view, replicate, well, crop -- lands in the same fold, because the split is drawn
over the distinct compounds and then mapped back to the rows. The compounds are sorted (as text) before the seeded
draw, so the answer does not depend on the row order of the table, only on the set of compounds and the seed.

- :func:`compound_split`: ``"train"`` / ``"val"`` / ``"test"`` per row (the names of
  :data:`phenovec.train.moa_splits.SPLITS`, which the trainer's ``data.split`` reads). It is
  :func:`phenovec.activity.scaffold.scaffold_split` run with a seed on one group per compound (or per ``group``,
  e.g. a Murcko scaffold, so compounds sharing a scaffold share a fold): groups in a seeded random order, each to
  train while train stays within ``fractions[0]`` of the compounds, else to validation while that stays within its
  share, else to test. With n compounds, train gets floor(0.7 n) (a few compounds for tiny sets, where validation
  may be empty; test gets the remainder).
- :func:`compound_kfold`: fold 0 .. k-1 per row, :func:`phenovec.activity.scaffold.scaffold_kfold` with a seed on
  one group per compound (folds differ in size by at most one compound when every group is one compound).
- :func:`compound_split_table` / :func:`compound_kfold_table`: the same from a table's compound column, as a
  ``pandas.Series`` on the table's index; :func:`fold_sizes`: compounds and rows per fold.

Errors (``ValueError``): an unknown column, an empty compound id (named by row), fractions that are not three
non-negative numbers summing to 1, k < 2 or more folds than compounds, a compound in two groups.
Pure numpy / pandas.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.train.moa_splits import SPLITS

__all__ = ["SPLITS", "compound_split", "compound_kfold", "compound_split_table", "compound_kfold_table",
           "fold_sizes"]


def _keys(compounds: Sequence, where: str) -> np.ndarray:
    vals = pd.Series(list(compounds), dtype=object)
    empty = vals.isna().to_numpy() | vals.map(lambda v: str(v).strip() == "").to_numpy()
    if empty.any():
        raise ValueError(f"{where}: row {int(np.flatnonzero(empty)[0])} has no compound (empty or NaN); every row "
                         f"needs one to be split by compound ({int(empty.sum())} such rows)")
    return np.asarray([str(v) for v in vals], dtype=object)


def _groups(keys: np.ndarray, groups, where: str) -> tuple[np.ndarray, np.ndarray, list]:
    """(sorted distinct compounds, row -> compound position, group label per distinct compound)."""
    uniq, inverse = np.unique(keys, return_inverse=True)
    if groups is None:
        return uniq, inverse, list(uniq)
    g = _keys(groups, f"{where} groups")
    if len(g) != len(keys):
        raise ValueError(f"{where}: {len(g)} groups for {len(keys)} rows")
    per = pd.DataFrame({"c": keys, "g": g}).drop_duplicates()
    multi = per["c"].duplicated(keep=False)
    if multi.any():
        c = per["c"][multi].iloc[0]
        raise ValueError(f"{where}: compound {c!r} is in more than one group "
                         f"({', '.join(sorted(per['g'][per['c'] == c]))})")
    label = dict(zip(per["c"], per["g"]))
    return uniq, inverse, [label[c] for c in uniq]


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def compound_split(compounds: Sequence, fractions: Sequence[float] = (0.7, 0.1, 0.2), *, seed: int = 0,
                   groups: Sequence | None = None, where: str = "compounds") -> np.ndarray:
    """``"train"`` / ``"val"`` / ``"test"`` per row of ``compounds`` (one compound id per row; see the module
    docstring). ``groups``: an optional group per row (constant within a compound) kept whole too."""
    from phenovec.activity.scaffold import scaffold_split

    seed = _check_seed(seed)
    try:
        f = [float(x) for x in fractions]
    except (TypeError, ValueError):
        raise ValueError(f"fractions must be three numbers (train, val, test), got {fractions!r}") from None
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, got "
                         f"{tuple(fractions)!r}")
    keys = _keys(compounds, where)
    if len(keys) == 0:
        raise ValueError(f"{where}: no rows to split")
    uniq, inverse, labels = _groups(keys, groups, where)
    split = scaffold_split(labels, tuple(f), seed=seed)
    per_compound = np.empty(len(uniq), dtype=object)
    per_compound[split.train], per_compound[split.valid], per_compound[split.test] = SPLITS
    return per_compound[inverse]


def compound_kfold(compounds: Sequence, k: int = 5, *, seed: int = 0, groups: Sequence | None = None,
                   where: str = "compounds") -> np.ndarray:
    """Fold index 0 .. k-1 per row of ``compounds``; every compound (and group) in one fold."""
    from phenovec.activity.scaffold import scaffold_kfold

    seed = _check_seed(seed)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    keys = _keys(compounds, where)
    uniq, inverse, labels = _groups(keys, groups, where)
    n_groups = len(set(labels))
    if n_groups < k:
        what = "groups" if groups is not None else "compounds"
        raise ValueError(f"{where}: {k} folds need at least {k} distinct {what}; there are {n_groups}")
    fold = scaffold_kfold(labels, int(k), seed=seed)
    return fold[inverse].astype(np.int64)


def _column(table: pd.DataFrame, column: str, key: str) -> pd.Series:
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame, got {type(table).__name__}")
    if column not in table.columns:
        raise ValueError(f"{key}: unknown column {column!r} (columns: {', '.join(map(str, list(table.columns)[:20]))}"
                         f"{' ...' if len(table.columns) > 20 else ''})")
    return table[column]


def compound_split_table(table: pd.DataFrame, compound_column: str, fractions: Sequence[float] = (0.7, 0.1, 0.2),
                         *, seed: int = 0, group_column: str | None = None) -> pd.Series:
    """:func:`compound_split` of ``table[compound_column]`` as a Series named ``split`` on the table's index."""
    comp = _column(table, compound_column, "compound_column")
    groups = _column(table, group_column, "group_column").tolist() if group_column else None
    out = compound_split(comp.tolist(), fractions, seed=seed, groups=groups, where=f"column {compound_column!r}")
    return pd.Series(out, index=table.index, name="split", dtype=object)


def compound_kfold_table(table: pd.DataFrame, compound_column: str, k: int = 5, *, seed: int = 0,
                         group_column: str | None = None) -> pd.Series:
    """:func:`compound_kfold` of ``table[compound_column]`` as a Series named ``fold`` on the table's index."""
    comp = _column(table, compound_column, "compound_column")
    groups = _column(table, group_column, "group_column").tolist() if group_column else None
    out = compound_kfold(comp.tolist(), k, seed=seed, groups=groups, where=f"column {compound_column!r}")
    return pd.Series(out, index=table.index, name="fold")


def fold_sizes(compounds: Sequence, folds: Sequence) -> pd.DataFrame:
    """Per fold: ``n_compounds`` and ``n_rows`` (and ``compound_fraction``), folds sorted."""
    df = pd.DataFrame({"compound": _keys(compounds, "compounds"), "fold": list(folds)})
    if len(df) == 0:
        raise ValueError("fold_sizes: no rows")
    out = df.groupby("fold", sort=True).agg(n_compounds=("compound", "nunique"), n_rows=("compound", "size"))
    out["compound_fraction"] = out["n_compounds"] / df["compound"].nunique()
    return out.reset_index()
