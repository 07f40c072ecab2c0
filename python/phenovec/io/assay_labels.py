"""Assay label tables for multi-task assay prediction (GapNet, Hofmarcher et al. 2019): one row per compound (or
sample), one column per assay, each entry active / inactive / not measured.

:class:`AssayLabels` is the tidy object every later step takes: ``compounds`` (a ``pandas.Index``, unique),
``tasks`` (a list of column names, unique, in file order) and ``values``, a float32 matrix with **1 = active,
0 = inactive, NaN = not measured** (the targets of :func:`phenovec.train.masked_bce.masked_bce`).

Reading (:func:`read_assay_labels`), by file:

- **wide** CSV / TSV (optionally gzipped) / Parquet: one row per compound, one column per assay. The compound
  column is ``compound_column`` (default: the first of ``compound``, ``INCHIKEY``, ``InChIKey``,
  ``Metadata_compound``, ``Metadata_Treatment`` present). Task columns are every other column except
  ``Metadata_*`` columns and text id columns (a column whose non-empty cells are all non-numeric words, such as the
  overlap files' ``InChIKey14``); ``tasks=[...]`` picks them explicitly. A repeated column name (GapNet repeats a few
  ChEMBL ids) is kept by position: the second ``688422`` becomes ``688422#2``.
- **long** (a table with ``assay`` and ``label`` columns): one row per measured pair, read by
  :func:`phenovec.io.activity_labels.labels_from_long`; tasks are then in sorted order.
- **Matrix Market** (``.mtx`` / ``.mtx.gz``), GapNet's own shipped format: ``label-matrix.mtx`` read with
  ``scipy.io.mmread`` (rows = compounds, columns = assays, an absent entry = not measured), with
  ``row-compound-index.csv`` (``INDEX,INCHIKEY``) and ``column-assay-index.csv`` (``ASSAY_ID``) beside it (or
  ``row_index`` / ``column_index``). The compounds are keyed by InChIKey.

Label conventions (``convention``):

- ``"binary"``: 1 active, 0 inactive, empty / NaN not measured;
- ``"signed"``: +1 active, -1 inactive, 0 (or empty) not measured -- GapNet's matrix and overlap files;
- ``"auto"`` (default): ``signed`` when any entry of the file is -1, else ``binary``. A file that uses the signed
  convention but holds no -1 at all (only actives) would be read as binary, with its 0s as inactives: name the
  convention when that can happen.

Also read: ``True`` / ``False`` and the words ``active`` / ``inactive``. Any other value (2, 0.5, -1 in a binary
file, a stray word) is an :class:`AssayLabelError` naming the file, the column, the data row and the compound.

Task filtering: a task with fewer than ``min_actives`` measured actives or ``min_inactives`` measured inactives is
dropped with one :class:`AssayTaskWarning` naming every such task and its counts. After filtering, a task with only
one class (or none) among its measured labels is an :class:`AssayLabelError` naming it -- no loss or metric can use
it. The defaults (0, 0) filter nothing, so a one-class task is an error unless the caller opts into dropping it
(GapNet kept assays with at least 10 actives and 10 inactives: ``min_actives=10, min_inactives=10``).

Joining (:meth:`AssayLabels.join`): labels are aligned to the rows of a cell / image / profile table through its
compound column, exactly or by the first 14 characters of an InChIKey (the LINCS plates' ``Metadata_InChIKey14``).
A table row whose compound has no label row gets a NaN row; label compounds absent from the table are counted in the
:class:`JoinReport`, not an error. Every error is an :class:`AssayLabelError` (a ``ValueError``).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.io.activity_labels import WIDE_COMPOUND_COLUMNS

__all__ = [
    "AssayLabelError",
    "AssayTaskWarning",
    "AssayLabels",
    "JoinReport",
    "AssayJoin",
    "CONVENTIONS",
    "COMPOUND_COLUMNS",
    "read_assay_labels",
    "labels_from_frame",
]

CONVENTIONS = ("auto", "binary", "signed")
#: compound columns tried, in order, when a wide table is read without ``compound_column``
COMPOUND_COLUMNS = (*WIDE_COMPOUND_COLUMNS, "Metadata_Treatment")
MATCHES = ("exact", "inchikey14")


class AssayLabelError(ValueError):
    """Bad assay labels: the message names the file and the row, column or task at fault."""


class AssayTaskWarning(UserWarning):
    """Tasks dropped for having too few measured actives or inactives (the message names them)."""


@dataclass(frozen=True)
class JoinReport:
    """How a label table met a cell / image / profile table (see :meth:`AssayLabels.join`)."""

    n_rows: int  #: rows of the table
    n_rows_labelled: int  #: rows whose compound has a label row
    n_rows_without_compound: int  #: rows whose compound column is empty (controls, say): NaN labels
    table_compounds: int  #: distinct compounds of the table
    matched_compounds: int  #: of them, those with a label row
    unlabelled_compounds: list  #: table compounds with no label row (NaN rows)
    labels_not_in_table: int  #: label compounds no table row has
    labels_not_in_table_examples: list = field(default_factory=list)  #: the first few of them

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class AssayJoin:
    """Labels aligned to a table's rows: ``values[i]`` are the labels of table row ``i`` (NaN rows where the
    compound has none); ``compound[i]`` is the label compound it matched (``None`` where none)."""

    values: np.ndarray
    tasks: list
    compound: np.ndarray
    report: JoinReport
    labels: "AssayLabels"  #: the label rows of the matched compounds (the overlap), in label order


@dataclass(frozen=True, eq=False)
class AssayLabels:
    """A compound x task label matrix (1 active, 0 inactive, NaN not measured); see the module docstring."""

    compounds: pd.Index
    tasks: list
    values: np.ndarray
    source: str = "labels"

    def __post_init__(self):
        comp = pd.Index(self.compounds)
        vals = np.asarray(self.values, dtype=np.float32)
        tasks = [str(t) for t in self.tasks]
        if vals.ndim != 2 or vals.shape != (len(comp), len(tasks)):
            raise AssayLabelError(f"{self.source}: the label matrix is {vals.shape} but there are {len(comp)} "
                                  f"compounds and {len(tasks)} tasks")
        if comp.has_duplicates:
            c = comp[comp.duplicated()][0]
            rows = np.flatnonzero(comp == c)
            raise AssayLabelError(f"{self.source}: compound {c!r} appears in rows {rows[0] + 1} and {rows[1] + 1}")
        dup = pd.Index(tasks).duplicated()
        if dup.any():
            raise AssayLabelError(f"{self.source}: task {tasks[int(np.flatnonzero(dup)[0])]!r} appears twice")
        bad = ~np.isnan(vals) & (vals != 0) & (vals != 1)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise AssayLabelError(f"{self.source}: compound {comp[i]!r}, task {tasks[j]!r}: value {vals[i, j]:g} is not "
                                  "1 (active), 0 (inactive) or NaN (not measured)")
        object.__setattr__(self, "compounds", comp)
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "values", vals)

    # ---- shape and counts ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def __len__(self) -> int:
        return len(self.compounds)

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(actives, inactives) measured per task."""
        return (np.sum(self.values == 1, axis=0).astype(np.int64),
                np.sum(self.values == 0, axis=0).astype(np.int64))

    def summary(self) -> pd.DataFrame:
        """One row per task: ``task``, ``n_measured``, ``n_active``, ``n_inactive``, ``active_fraction`` (of the
        measured labels), ``measured_fraction`` (of the compounds)."""
        act, inact = self.counts()
        meas = act + inact
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(meas > 0, act / np.maximum(meas, 1), np.nan)
        return pd.DataFrame({"task": self.tasks, "n_measured": meas, "n_active": act, "n_inactive": inact,
                             "active_fraction": frac,
                             "measured_fraction": meas / max(len(self.compounds), 1)})

    # ---- task selection -----------------------------------------------------------------------------------
    def select_tasks(self, min_actives: int = 0, min_inactives: int = 0) -> "AssayLabels":
        """Drop tasks with fewer than ``min_actives`` actives or ``min_inactives`` inactives measured, with one
        :class:`AssayTaskWarning` naming them; then :meth:`require_two_classes`."""
        for key, v in (("min_actives", min_actives), ("min_inactives", min_inactives)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise AssayLabelError(f"{self.source}: {key} must be a non-negative integer, got {v!r}")
        act, inact = self.counts()
        drop = (act < min_actives) | (inact < min_inactives)
        out = self
        if drop.any():
            named = [f"{self.tasks[j]!r} ({act[j]} active, {inact[j]} inactive)" for j in np.flatnonzero(drop)]
            shown = ", ".join(named[:20]) + (f" and {len(named) - 20} more" if len(named) > 20 else "")
            warnings.warn(f"{self.source}: dropped {len(named)} of {len(self.tasks)} tasks with fewer than "
                          f"{min_actives} actives or {min_inactives} inactives: {shown}", AssayTaskWarning,
                          stacklevel=2)
            keep = np.flatnonzero(~drop)
            out = AssayLabels(self.compounds, [self.tasks[j] for j in keep], self.values[:, keep], self.source)
        out.require_two_classes()
        return out

    def require_two_classes(self) -> None:
        """An :class:`AssayLabelError` naming the first task (and how many) whose measured labels hold fewer than
        two classes."""
        act, inact = self.counts()
        bad = np.flatnonzero((act == 0) | (inact == 0))
        if len(bad):
            j = bad[0]
            what = "no measured label" if act[j] + inact[j] == 0 else \
                f"only one class among its measured labels ({act[j]} active, {inact[j]} inactive)"
            more = f" ({len(bad)} such tasks, e.g. {', '.join(repr(self.tasks[k]) for k in bad[1:6])})" \
                if len(bad) > 1 else ""
            raise AssayLabelError(f"{self.source}: task {self.tasks[j]!r} (task {j + 1} of {len(self.tasks)}) has {what}{more}; "
                                  "drop such tasks with min_actives / min_inactives >= 1")

    def subset(self, compounds: Sequence | None = None, tasks: Sequence | None = None) -> "AssayLabels":
        """The rows of ``compounds`` (every one must be a label compound) and columns of ``tasks``, in the
        order given. No class check: a subset may leave a task with one class."""
        rows = np.arange(len(self.compounds))
        cols = np.arange(len(self.tasks))
        if compounds is not None:
            rows = self.compounds.get_indexer(pd.Index(compounds))
            if (rows < 0).any():
                c = list(compounds)[int(np.flatnonzero(rows < 0)[0])]
                raise AssayLabelError(f"{self.source}: unknown compound {c!r}")
        if tasks is not None:
            cols = pd.Index(self.tasks).get_indexer(pd.Index([str(t) for t in tasks]))
            if (cols < 0).any():
                t = list(tasks)[int(np.flatnonzero(cols < 0)[0])]
                raise AssayLabelError(f"{self.source}: unknown task {t!r}")
        return AssayLabels(self.compounds[rows], [self.tasks[j] for j in cols], self.values[np.ix_(rows, cols)],
                           self.source)

    def measured_tasks(self) -> "AssayLabels":
        """Only the tasks with at least one measured label (no warning): the overlap view of a subset."""
        act, inact = self.counts()
        keep = np.flatnonzero(act + inact > 0)
        return AssayLabels(self.compounds, [self.tasks[j] for j in keep], self.values[:, keep], self.source)

    # ---- joining to a table -------------------------------------------------------------------------------
    def join(self, table: pd.DataFrame, compound_column: str, *, match: str = "exact",
             table_name: str = "table") -> AssayJoin:
        """Align the labels to ``table``'s rows by ``compound_column`` (see the module docstring).

        ``match="inchikey14"`` compares the first 14 characters (the InChIKey's connectivity block) of both
        sides; two label compounds sharing the 14 characters of a table compound are an error naming both
        label rows."""
        if match not in MATCHES:
            raise AssayLabelError(f"{self.source}: match {match!r} is not one of {', '.join(MATCHES)}")
        if not isinstance(table, pd.DataFrame):
            raise AssayLabelError(f"{table_name}: expected a pandas DataFrame, got {type(table).__name__}")
        if compound_column not in table.columns:
            raise AssayLabelError(f"{table_name}: unknown compound column {compound_column!r} (columns: "
                                  f"{', '.join(map(str, list(table.columns)[:20]))}"
                                  f"{' ...' if len(table.columns) > 20 else ''})")
        raw = table[compound_column].astype(object)
        empty = raw.isna().to_numpy() | raw.map(lambda v: str(v).strip() == "").to_numpy()
        keys = np.asarray([str(v).strip() for v in raw], dtype=object)
        label_keys = np.asarray([str(c) for c in self.compounds], dtype=object)
        if match == "inchikey14":
            keys = np.asarray([k[:14] for k in keys], dtype=object)
            label_keys = np.asarray([k[:14] for k in label_keys], dtype=object)
        table_compounds = pd.unique(keys[~empty])
        lk = pd.Index(label_keys)
        if lk.has_duplicates:
            dup = lk[lk.duplicated()]
            clash = pd.Index(table_compounds).intersection(dup)
            if len(clash):
                c = clash[0]
                rows = np.flatnonzero(label_keys == c)
                raise AssayLabelError(
                    f"{self.source}: table compound {c!r} ({table_name}, column {compound_column!r}) matches label "
                    f"rows {rows[0] + 1} ({self.compounds[rows[0]]!r}) and {rows[1] + 1} ({self.compounds[rows[1]]!r})"
                    f" by {match}; use match='exact' or remove one")
            first = ~lk.duplicated()
            lk, pos_of = lk[first], np.flatnonzero(first)
        else:
            pos_of = np.arange(len(lk))
        where = lk.get_indexer(pd.Index(keys))
        where[empty] = -1
        label_row = np.where(where >= 0, pos_of[np.maximum(where, 0)], -1)
        values = np.full((len(table), len(self.tasks)), np.nan, dtype=np.float32)
        hit = label_row >= 0
        values[hit] = self.values[label_row[hit]]
        compound = np.full(len(table), None, dtype=object)
        compound[hit] = np.asarray(self.compounds, dtype=object)[label_row[hit]]
        matched_rows = np.unique(label_row[hit])
        matched_keys = set(keys[hit])
        unlabelled = [c for c in table_compounds if c not in matched_keys]
        not_in_table = np.setdiff1d(np.arange(len(self.compounds)), matched_rows)
        report = JoinReport(
            n_rows=len(table), n_rows_labelled=int(hit.sum()), n_rows_without_compound=int(empty.sum()),
            table_compounds=len(table_compounds), matched_compounds=len(matched_keys),
            unlabelled_compounds=[str(c) for c in unlabelled], labels_not_in_table=len(not_in_table),
            labels_not_in_table_examples=[str(self.compounds[i]) for i in not_in_table[:5]])
        overlap = AssayLabels(self.compounds[matched_rows], self.tasks, self.values[matched_rows], self.source)
        return AssayJoin(values, list(self.tasks), compound, report, overlap)

    # ---- output -------------------------------------------------------------------------------------------
    def to_frame(self, convention: str = "binary", compound_column: str | None = None) -> pd.DataFrame:
        """The wide table: the compound column (``compounds.name`` or ``compound``) then one column per task;
        ``binary``: 1 / 0 / NaN, ``signed``: +1 / -1 / 0."""
        if convention not in ("binary", "signed"):
            raise AssayLabelError(f"{self.source}: convention {convention!r} must be 'binary' or 'signed' to write")
        name = compound_column or self.compounds.name or "compound"
        vals = self.values.astype(np.float64)
        if convention == "signed":
            df = pd.DataFrame(np.where(np.isnan(vals), 0, 2 * np.nan_to_num(vals) - 1).astype(np.int8),
                              columns=list(self.tasks))
        else:  # nullable integers: CSV cells 1 / 0 / empty
            df = pd.DataFrame({t: pd.array(np.where(np.isnan(vals[:, j]), pd.NA, vals[:, j]), dtype="Int8")
                               for j, t in enumerate(self.tasks)})
        df.insert(0, name, np.asarray(self.compounds, dtype=object))
        return df

    def write(self, path: str | os.PathLike, convention: str = "binary", compound_column: str | None = None) -> Path:
        """Write :meth:`to_frame` as CSV (empty = not measured) or Parquet, atomically."""
        from phenovec.io.profiles import write_table

        return write_table(self.to_frame(convention, compound_column), path)


# ---- reading ----------------------------------------------------------------------------------------------
def read_assay_labels(
    path: str | os.PathLike,
    *,
    convention: str = "auto",
    compound_column: str | None = None,
    tasks: Sequence[str] | None = None,
    min_actives: int = 0,
    min_inactives: int = 0,
    row_index: str | os.PathLike | None = None,
    column_index: str | os.PathLike | None = None,
) -> AssayLabels:
    """The :class:`AssayLabels` of the file at ``path`` (wide CSV / Parquet, long, or Matrix Market), tasks
    filtered by ``min_actives`` / ``min_inactives``; see the module docstring."""
    p = Path(path)
    if convention not in CONVENTIONS:
        raise AssayLabelError(f"{p}: convention {convention!r} is not one of {', '.join(CONVENTIONS)}")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such assay label file")
    if p.name.lower().endswith((".mtx", ".mtx.gz")):
        labels = _read_matrix_market(p, convention, row_index, column_index)
        if tasks is not None:
            labels = labels.subset(tasks=tasks)
    else:
        from phenovec.io.activity_labels import _read_frame

        try:
            df = _read_frame(p)
        except ValueError as e:
            raise AssayLabelError(str(e)) from None
        labels = labels_from_frame(df, source=str(p), convention=convention, compound_column=compound_column,
                                   tasks=tasks)
    return labels.select_tasks(min_actives, min_inactives)


def labels_from_frame(df: pd.DataFrame, *, source: str = "labels", convention: str = "auto",
                      compound_column: str | None = None, tasks: Sequence[str] | None = None) -> AssayLabels:
    """The :class:`AssayLabels` of an in-memory wide (or long: ``assay`` and ``label`` columns) table, without task
    filtering."""
    if convention not in CONVENTIONS:
        raise AssayLabelError(f"{source}: convention {convention!r} is not one of {', '.join(CONVENTIONS)}")
    if "assay" in df.columns and "label" in df.columns and tasks is None:
        return _from_long(df, source, convention, compound_column or "compound")
    if compound_column is None:
        compound_column = next((c for c in COMPOUND_COLUMNS if c in df.columns), None)
        if compound_column is None:
            raise AssayLabelError(f"{source}: no compound column (looked for {', '.join(COMPOUND_COLUMNS)}); name "
                                  "it with compound_column")
    elif compound_column not in df.columns:
        raise AssayLabelError(f"{source}: unknown compound column {compound_column!r} (columns: "
                              f"{', '.join(map(str, list(df.columns)[:20]))})")
    compounds = _compound_ids(df[compound_column], source, compound_column)
    if tasks is not None:
        names = [str(t) for t in tasks]
        missing = [t for t in names if t not in df.columns]
        if missing:
            raise AssayLabelError(f"{source}: unknown task column {missing[0]!r} (tasks)")
    else:
        names = [c for c in df.columns if c != compound_column and not str(c).startswith("Metadata_")
                 and not _is_text_column(df[c])]
    if not names:
        raise AssayLabelError(f"{source}: no task columns (columns besides {compound_column!r} holding labels)")
    from phenovec.io.activity_labels import _numbers

    cols = []
    for c in names:
        try:
            cols.append(_numbers(df[c], f"{source}: column {c!r}"))
        except ValueError as e:
            raise AssayLabelError(str(e)) from None
    raw = np.column_stack(cols)
    values = _apply_convention(raw, convention, source, [str(c) for c in names], compounds, row_numbers=None)
    index = pd.Index(compounds, name=compound_column)
    return AssayLabels(index, [str(c) for c in names], values, source)


def _is_text_column(col: pd.Series) -> bool:
    """A text id column: some non-empty cell, and no cell a number, boolean or active / inactive word."""
    if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        return False
    text = col.astype(object).map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    filled = text.notna() & ~text.isin(["", "nan", "na", "none"])
    if not filled.any():
        return False
    words = text[filled].isin(["active", "inactive", "true", "false"])
    nums = pd.to_numeric(text[filled], errors="coerce").notna()
    return not bool((words | nums).any())


def _compound_ids(values: pd.Series, source: str, column: str) -> np.ndarray:
    text = values.astype(object)
    empty = text.isna().to_numpy() | text.map(lambda v: str(v).strip() == "").to_numpy()
    if empty.any():
        raise AssayLabelError(f"{source}: column {column!r}, data row {int(np.flatnonzero(empty)[0]) + 1}: empty "
                              "compound id")
    ids = np.asarray([str(v).strip() for v in text], dtype=object)
    dup = pd.Index(ids).duplicated(keep=False)
    if dup.any():
        c = ids[np.flatnonzero(dup)[0]]
        rows = np.flatnonzero(ids == c) + 1
        raise AssayLabelError(f"{source}: compound {c!r} (column {column!r}) appears in data rows {rows[0]} and "
                              f"{rows[1]}{f' (and {len(rows) - 2} more)' if len(rows) > 2 else ''}; a label table "
                              "has one row per compound")
    return ids


def _apply_convention(raw: np.ndarray, convention: str, source: str, tasks: list, compounds: np.ndarray,
                      row_numbers) -> np.ndarray:
    """float32 1 / 0 / NaN from raw numbers under ``convention`` (auto: signed iff any -1); an out-of-convention
    value is an error naming the task column, the data row and the compound."""
    finite = ~np.isnan(raw)
    if convention == "auto":
        convention = "signed" if np.any(raw[finite] == -1) else "binary"
    allowed = (-1.0, 0.0, 1.0) if convention == "signed" else (0.0, 1.0)
    bad = finite & ~np.isin(raw, allowed)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        row = int(row_numbers[i]) if row_numbers is not None else int(i) + 1
        hint = " (a -1 needs the signed convention)" if raw[i, j] == -1 else ""
        raise AssayLabelError(f"{source}: column {tasks[j]!r}, data row {row} (compound {compounds[i]!r}): value "
                              f"{raw[i, j]:g} is not one of {', '.join(f'{a:g}' for a in allowed)} "
                              f"({convention} convention){hint}")
    out = np.full(raw.shape, np.nan, dtype=np.float32)
    if convention == "signed":
        out[raw == 1] = 1.0
        out[raw == -1] = 0.0
    else:
        out[finite] = raw[finite]
    return out


def _from_long(df: pd.DataFrame, source: str, convention: str, compound_column: str) -> AssayLabels:
    from phenovec.io.activity_labels import labels_from_long

    try:
        long = labels_from_long(df, source=source, coding=convention, compound_column=compound_column)
    except ValueError as e:
        raise AssayLabelError(str(e)) from None
    compounds = pd.Index(pd.unique(long["compound"]), name=compound_column)
    tasks = sorted(pd.unique(long["assay"]).tolist(), key=str)
    values = np.full((len(compounds), len(tasks)), np.nan, dtype=np.float32)
    values[compounds.get_indexer(long["compound"]), pd.Index(tasks).get_indexer(long["assay"])] = long["label"]
    return AssayLabels(compounds, tasks, values, source)


def _read_matrix_market(p: Path, convention: str, row_index, column_index) -> AssayLabels:
    from scipy.io import mmread

    from phenovec.io.activity_labels import _unique_names

    rows_path = Path(row_index) if row_index is not None else p.with_name("row-compound-index.csv")
    cols_path = Path(column_index) if column_index is not None else p.with_name("column-assay-index.csv")
    for what, q in (("row_index", rows_path), ("column_index", cols_path)):
        if not q.exists():
            raise FileNotFoundError(f"{p}: the Matrix Market labels need {what}: {q} does not exist")
    try:
        m = mmread(str(p))
    except Exception as e:  # scipy raises ValueError / OSError / its own errors for a bad header
        raise AssayLabelError(f"{p}: cannot read as Matrix Market ({type(e).__name__}: {e})") from None
    m = m.tocoo() if hasattr(m, "tocoo") else None
    if m is None:
        raise AssayLabelError(f"{p}: expected a sparse (coordinate) Matrix Market matrix, got a dense array")
    rows = pd.read_csv(rows_path, dtype=str, keep_default_na=False)
    cols = pd.read_csv(cols_path, dtype=str, keep_default_na=False)
    key = "INCHIKEY" if "INCHIKEY" in rows.columns else rows.columns[-1]
    compounds = _compound_ids(rows[key], str(rows_path), key)
    if "INDEX" in rows.columns:
        idx = pd.to_numeric(rows["INDEX"], errors="coerce").to_numpy()
        off = np.flatnonzero(idx != np.arange(len(rows)))
        if len(off):
            raise AssayLabelError(f"{rows_path}: column 'INDEX', data row {off[0] + 1}: {rows['INDEX'].iloc[off[0]]!r}"
                                  f" where {off[0]} (the row's position) was expected")
    ckey = "ASSAY_ID" if "ASSAY_ID" in cols.columns else cols.columns[-1]
    empty = cols[ckey].str.strip() == ""
    if empty.any():
        raise AssayLabelError(f"{cols_path}: column {ckey!r}, data row {int(np.flatnonzero(empty)[0]) + 1}: empty "
                              "assay id")
    tasks = _unique_names([s.strip() for s in cols[ckey]])
    if m.shape != (len(compounds), len(tasks)):
        raise AssayLabelError(f"{p}: the matrix is {m.shape[0]} x {m.shape[1]} but {rows_path.name} lists "
                              f"{len(compounds)} compounds and {cols_path.name} {len(tasks)} assays")
    r, c = m.row.astype(np.int64), m.col.astype(np.int64)
    flat = r * m.shape[1] + c
    uniq, first, counts = np.unique(flat, return_index=True, return_counts=True)
    if (counts > 1).any():
        k = first[np.flatnonzero(counts > 1)[0]]
        raise AssayLabelError(f"{p}: entry ({r[k] + 1}, {c[k] + 1}) (compound {compounds[r[k]]!r}, assay "
                              f"{tasks[c[k]]!r}) is given more than once")
    raw = np.full(m.shape, np.nan, dtype=np.float64)
    raw[r, c] = m.data.astype(np.float64)
    if convention == "auto":
        convention = "signed" if np.any(m.data == -1) else "binary"
    # entries are 1-based (row, column) in the file; name the file's coordinates in an error
    allowed = (-1.0, 0.0, 1.0) if convention == "signed" else (0.0, 1.0)
    bad = ~np.isin(m.data.astype(np.float64), allowed)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise AssayLabelError(f"{p}: entry ({r[k] + 1}, {c[k] + 1}) (compound {compounds[r[k]]!r}, assay "
                              f"{tasks[c[k]]!r}): value {m.data[k]:g} is not one of "
                              f"{', '.join(f'{a:g}' for a in allowed)} ({convention} convention)")
    values = _apply_convention(raw, convention, str(p), tasks, compounds, row_numbers=None)
    return AssayLabels(pd.Index(compounds, name="INCHIKEY"), tasks, values, str(p))
