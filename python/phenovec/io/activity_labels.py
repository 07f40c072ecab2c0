"""Sparse compound x assay activity labels, read into one long table: ``compound``, ``assay``, ``label`` (1 = active,
0 = inactive), one row per measured pair, sorted by assay then compound. Unmeasured pairs have no row.

Layouts (``layout="auto"`` picks by the file):

- **long**: one row per measured pair, columns ``compound``, ``assay``, ``label`` (names configurable); a missing
  label (NaN / empty) is an unmeasured pair and is dropped; the same pair twice with different labels is an error.
- **wide**: one row per compound (the ``compound`` column, else ``INCHIKEY``), one column per assay; NaN / empty =
  unmeasured. Columns holding no number at all (another id, such as ``InChIKey14``) are skipped; a column that is
  numeric except for a stray word is an error naming the row. A repeated assay column name (the GapNet overlap files
  repeat a few ChEMBL ids) is kept by position: the second ``688422`` becomes ``688422#2``.
- **matrix_market** (``.mtx``): GapNet's ``label-matrix.mtx`` (rows = compounds, columns = assays) with its
  ``row-compound-index.csv`` (``INDEX,INCHIKEY``) and ``column-assay-index.csv`` (``ASSAY_ID``), by default the
  files of those names beside it.

Label coding (``coding="auto"``): ``binary`` = 1 active, 0 inactive (missing = unmeasured); ``signed`` = +1 active,
-1 inactive, 0 or missing = unmeasured (GapNet's matrices and overlap files). ``auto`` reads ``signed`` when any
label is -1, else ``binary``. ``True`` / ``False`` and the words ``active`` / ``inactive`` are read too.

:func:`one_vs_rest_labels` turns a class column of a profile table (cell-injury's ``injury_type``) into one task per
class. Every error is a ``ValueError`` naming the file and the row, column or key at fault.
"""
from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

COLUMNS = ("compound", "assay", "label")
LAYOUTS = ("auto", "long", "wide", "matrix_market")
CODINGS = ("auto", "binary", "signed")
#: compound id columns tried, in order, for a wide table given no ``compound_column``
WIDE_COMPOUND_COLUMNS = ("compound", "INCHIKEY", "InChIKey", "Metadata_compound")
_WORDS = {"active": 1.0, "inactive": 0.0, "true": 1.0, "false": 0.0}


def read_activity_labels(
    path: str | os.PathLike,
    *,
    layout: str = "auto",
    coding: str = "auto",
    compound_column: str | None = None,
    assay_column: str = "assay",
    label_column: str = "label",
    assays: Sequence[str] | None = None,
    row_index: str | os.PathLike | None = None,
    column_index: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The long label table (``compound``, ``assay``, ``label``) of the file at ``path`` (see the module docstring).

    ``assays`` (wide layout) limits the assay columns read; ``row_index`` / ``column_index`` (Matrix Market) name the
    compound and assay index files."""
    p = Path(path)
    if layout not in LAYOUTS:
        raise ValueError(f"{p}: layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if coding not in CODINGS:
        raise ValueError(f"{p}: coding {coding!r} is not one of {', '.join(CODINGS)}")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such activity label file")
    if layout == "matrix_market" or (layout == "auto" and p.name.lower().endswith((".mtx", ".mtx.gz"))):
        return _read_matrix_market(p, coding, row_index, column_index)
    df = _read_frame(p)
    if layout == "auto":
        layout = "long" if assay_column in df.columns and label_column in df.columns else "wide"
    if layout == "long":
        return labels_from_long(df, source=str(p), coding=coding, compound_column=compound_column or "compound",
                                assay_column=assay_column, label_column=label_column)
    return labels_from_wide(df, source=str(p), coding=coding, compound_column=compound_column, assays=assays)


def _read_frame(p: Path) -> pd.DataFrame:
    """CSV / TSV (optionally gzipped) or Parquet; CSV cells are read as text (ids keep leading zeros) and repeated
    header names are made unique by position (``name#2``)."""
    name = p.name.lower()
    try:
        if name.endswith((".parquet", ".pq")) or p.is_dir():
            return pd.read_parquet(p)
        sep = "\t" if ".tsv" in name else ","
        opener = gzip.open if name.endswith(".gz") else open
        with opener(p, "rt", newline="") as f:
            header = next(csv.reader(f, delimiter=sep), None)
        if not header:
            raise ValueError("the file is empty (no header line)")
        names = _unique_names(header)
        return pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False, header=0, names=names)
    except ValueError as e:
        raise ValueError(f"{p}: cannot read the activity labels: {e}") from None
    except Exception as e:  # parser / pyarrow errors: name the file
        raise ValueError(f"{p}: cannot read the activity labels ({type(e).__name__}: {e}); expected CSV, TSV or "
                         "Parquet, or a Matrix Market .mtx") from None


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _numbers(values: pd.Series, where: str) -> np.ndarray:
    """Labels as float64 (NaN = missing): numbers, booleans, ``active`` / ``inactive``; anything else is an error
    naming ``where`` and the first bad row (1-based, header excluded)."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    text = values.astype(object)
    missing = text.isna() | text.map(lambda v: isinstance(v, str) and v.strip().lower() in ("", "nan", "na", "none"))
    words = text.map(lambda v: _WORDS.get(v.strip().lower()) if isinstance(v, str) else None)
    nums = pd.to_numeric(text.where(~missing & words.isna()), errors="coerce")
    out = np.where(words.notna(), words.astype(float), nums.to_numpy(dtype=np.float64))
    bad = np.flatnonzero(~missing.to_numpy() & np.isnan(out))
    if len(bad):
        raise ValueError(f"{where}, data row {bad[0] + 1}: label {text.iloc[bad[0]]!r} is not a number, true / false "
                         "or active / inactive")
    out[missing.to_numpy()] = np.nan
    return out


def _binarise(values: np.ndarray, coding: str, where: str, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, label)``: which entries are measured and their 0 / 1 labels under ``coding``; an out-of-code value is
    an error naming ``where`` and its data row."""
    finite = ~np.isnan(values)
    if coding == "auto":
        coding = "signed" if np.any(values[finite] == -1) else "binary"
    allowed = (-1.0, 0.0, 1.0) if coding == "signed" else (0.0, 1.0)
    bad = np.flatnonzero(finite & ~np.isin(values, allowed))
    if len(bad):
        row = (rows[bad[0]] if rows is not None else bad[0]) + 1
        raise ValueError(f"{where}, data row {row}: label {values[bad[0]]:g} is not one of "
                         f"{', '.join(f'{a:g}' for a in allowed)} ({coding} coding)")
    if coding == "signed":
        keep = finite & (values != 0)
        return keep, (values[keep] > 0).astype(np.int8)
    return finite, values[finite].astype(np.int8)


def _ids(values: pd.Series, where: str) -> np.ndarray:
    text = values.astype(object)
    empty = text.isna() | text.map(lambda v: str(v).strip() == "")
    if empty.any():
        raise ValueError(f"{where}, data row {int(np.flatnonzero(empty.to_numpy())[0]) + 1}: empty id")
    return np.asarray([str(v).strip() for v in text], dtype=object)


def _finish(compound, assay, label) -> pd.DataFrame:
    out = pd.DataFrame({"compound": pd.Series(compound, dtype=object), "assay": pd.Series(assay, dtype=object),
                        "label": pd.Series(label, dtype=np.int8)})
    return out.sort_values(["assay", "compound"], kind="stable").reset_index(drop=True)


def labels_from_long(df: pd.DataFrame, *, source: str = "labels", coding: str = "auto",
                     compound_column: str = "compound", assay_column: str = "assay",
                     label_column: str = "label") -> pd.DataFrame:
    """The label table of a long frame (one row per measured pair); see the module docstring."""
    for key, col in (("compound_column", compound_column), ("assay_column", assay_column),
                     ("label_column", label_column)):
        if col not in df.columns:
            raise ValueError(f"{source}: no column {col!r} ({key}); columns: {', '.join(map(str, df.columns[:20]))}")
    compound = _ids(df[compound_column], f"{source}: column {compound_column!r}")
    assay = _ids(df[assay_column], f"{source}: column {assay_column!r}")
    values = _numbers(df[label_column], f"{source}: column {label_column!r}")
    keep, label = _binarise(values, coding, f"{source}: column {label_column!r}")
    rows = np.flatnonzero(keep)
    out = pd.DataFrame({"compound": compound[rows], "assay": assay[rows], "label": label, "row": rows})
    dup = out.duplicated(["compound", "assay"], keep=False)
    if dup.any():
        clash = out[dup].groupby(["compound", "assay"], sort=False)["label"].nunique()
        clash = clash[clash > 1]
        if len(clash):
            (c, a) = clash.index[0]
            bad = out[(out.compound == c) & (out.assay == a)]["row"].to_numpy() + 1
            raise ValueError(f"{source}: compound {c!r} has conflicting labels for assay {a!r} "
                             f"(data rows {', '.join(map(str, bad))})")
        out = out.drop_duplicates(["compound", "assay"])
    return _finish(out.compound.to_numpy(), out.assay.to_numpy(), out.label.to_numpy())


def labels_from_wide(df: pd.DataFrame, *, source: str = "labels", coding: str = "auto",
                     compound_column: str | None = None, assays: Sequence[str] | None = None) -> pd.DataFrame:
    """The label table of a wide frame (one row per compound, one column per assay); see the module docstring."""
    if compound_column is None:
        compound_column = next((c for c in WIDE_COMPOUND_COLUMNS if c in df.columns), None)
        if compound_column is None:
            raise ValueError(f"{source}: no compound column (looked for {', '.join(WIDE_COMPOUND_COLUMNS)}); "
                             "name it with compound_column")
    elif compound_column not in df.columns:
        raise ValueError(f"{source}: no column {compound_column!r} (compound_column)")
    compound = _ids(df[compound_column], f"{source}: column {compound_column!r}")
    dup = pd.Series(compound).duplicated(keep=False).to_numpy()
    if dup.any():
        c = compound[np.flatnonzero(dup)[0]]
        rows = np.flatnonzero(compound == c) + 1
        raise ValueError(f"{source}: compound {c!r} appears in more than one row (data rows "
                         f"{', '.join(map(str, rows))}); a wide table has one row per compound")
    if assays is not None:
        missing = [a for a in assays if a not in df.columns]
        if missing:
            raise ValueError(f"{source}: no assay column {missing[0]!r} (assays)")
        columns = list(assays)
    else:
        columns = [c for c in df.columns if c != compound_column and _holds_numbers(df[c])]
    if not columns:
        raise ValueError(f"{source}: no assay columns (numeric columns besides {compound_column!r})")
    values = np.column_stack([_numbers(df[c], f"{source}: column {c!r}") for c in columns])
    if coding == "auto":
        coding = "signed" if np.any(values == -1) else "binary"
    parts_c, parts_a, parts_l = [], [], []
    for j, c in enumerate(columns):
        keep, label = _binarise(values[:, j], coding, f"{source}: column {c!r}")
        parts_c.append(compound[keep])
        parts_a.append(np.full(int(keep.sum()), str(c), dtype=object))
        parts_l.append(label)
    return _finish(np.concatenate(parts_c), np.concatenate(parts_a), np.concatenate(parts_l))


def _holds_numbers(col: pd.Series) -> bool:
    """Whether a wide table's column is an assay: numeric, boolean, or text of which some cell is a number."""
    if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        return True
    text = col.astype(object).map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    return bool(pd.to_numeric(text, errors="coerce").notna().any() or text.isin(list(_WORDS)).any())


def _read_matrix_market(p: Path, coding: str, row_index, column_index) -> pd.DataFrame:
    from scipy.io import mmread

    rows_path = Path(row_index) if row_index is not None else p.with_name("row-compound-index.csv")
    cols_path = Path(column_index) if column_index is not None else p.with_name("column-assay-index.csv")
    for what, q in (("row_index", rows_path), ("column_index", cols_path)):
        if not q.exists():
            raise FileNotFoundError(f"{p}: the Matrix Market labels need {what}: {q} does not exist")
    try:
        m = mmread(p).tocoo()
    except Exception as e:
        raise ValueError(f"{p}: cannot read as Matrix Market ({type(e).__name__}: {e})") from None
    rows = pd.read_csv(rows_path, dtype=str, keep_default_na=False)
    cols = pd.read_csv(cols_path, dtype=str, keep_default_na=False)
    compound = _ids(rows[rows.columns[-1]], f"{rows_path}: column {rows.columns[-1]!r}")
    assay = np.asarray(_unique_names(list(_ids(cols[cols.columns[-1]], f"{cols_path}: column {cols.columns[-1]!r}"))),
                       dtype=object)
    if m.shape != (len(compound), len(assay)):
        raise ValueError(f"{p}: the matrix is {m.shape[0]} x {m.shape[1]} but {rows_path.name} lists {len(compound)} "
                         f"compounds and {cols_path.name} {len(assay)} assays")
    keep, label = _binarise(m.data.astype(np.float64), coding, f"{p}: matrix entries", rows=m.row.astype(np.int64))
    return _finish(compound[m.row[keep]], assay[m.col[keep]], label)


def one_vs_rest_labels(df: pd.DataFrame, *, compound_column: str, class_column: str, source: str = "profiles",
                       exclude: Sequence[str] = (), separator: str | None = None) -> pd.DataFrame:
    """One task per class of ``class_column`` (``injury_type``): a compound is active in its own class's task and
    inactive in every other. Each compound must have one class (replicate wells agreeing); ``exclude`` drops classes
    (such as ``Control``) from the tasks while their compounds stay inactives of the others.

    With a ``separator`` (``"|"``) a class value lists several classes (LINCS' ``"NFkB pathway inhibitor|proteasome
    inhibitor"``): the compound is active in each listed class's task; each compound must still have one value."""
    for key, col in (("compound_column", compound_column), ("class_column", class_column)):
        if col not in df.columns:
            raise ValueError(f"{source}: no column {col!r} ({key})")
    if separator is not None and not separator:
        raise ValueError(f"{source}: the class separator must be a non-empty string")
    compound = _ids(df[compound_column], f"{source}: column {compound_column!r}")
    cls = _ids(df[class_column], f"{source}: column {class_column!r}")
    pairs = pd.DataFrame({"compound": compound, "cls": cls}).drop_duplicates()
    multi = pairs.compound.duplicated(keep=False)
    if multi.any():
        c = pairs.compound[multi].iloc[0]
        raise ValueError(f"{source}: compound {c!r} has more than one {class_column!r} "
                         f"({', '.join(sorted(pairs.cls[pairs.compound == c]))})")
    members = [frozenset(_split_classes(v, separator, source, class_column)) for v in pairs.cls]
    every = set().union(*members)
    unknown = sorted(set(exclude) - every)
    if unknown:
        raise ValueError(f"{source}: excluded class {unknown[0]!r} is not a value of {class_column!r}")
    classes = sorted(every - set(exclude))
    comp = pairs.compound.to_numpy()
    return _finish(np.tile(comp, len(classes)), np.repeat(np.asarray(classes, dtype=object), len(comp)),
                   np.concatenate([np.fromiter((k in m for m in members), dtype=np.int8, count=len(members))
                                   for k in classes]))


def _split_classes(value: str, separator: str | None, source: str, column: str) -> list[str]:
    if separator is None:
        return [value]
    parts = [p.strip() for p in value.split(separator)]
    if any(not p for p in parts):
        raise ValueError(f"{source}: class {value!r} of column {column!r} has an empty part between "
                         f"{separator!r} separators")
    return parts
