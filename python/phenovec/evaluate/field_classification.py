"""Image-field classification (MOAProfiler, Wong et al. 2023, Fig. 3a / 5a; digest B5.1): field-level AUPRC and
accuracy of a field classifier's class probabilities, and accuracy on edge vs non-edge wells.

Input: one row per scored field with its true class (``label_col``) and the model's probability of every class
(``prob_<class>`` columns, as ``phenovec profile`` writes them to ``field_probabilities.parquet`` for a field model
exported with ``--logits``; or an explicit N x K matrix with the class names). The rows given are the fields
scored (the paper excludes DMSO fields: filter them first; the DMSO *class* stays a column, so the binarised
problem keeps all K model classes and the precision-recall baseline is the prevalence 1/K).

- The true classes are binarised with sklearn's ``label_binarize`` over the K classes (N x K); the **micro**
  precision-recall curve is ``precision_recall_curve`` of the flattened indicator matrix against the flattened
  probabilities; ``auprc_micro`` is the area under it (trapezoidal, ``sklearn.metrics.auc(recall, precision)``,
  the paper's "AUPRC"), ``average_precision_micro`` sklearn's step-wise average precision of the same; the
  baseline is the positive prevalence (1/K). Per class: the same on its column (classes without a positive
  field get NaN and stay out of the macro means).
- ``accuracy``: the arg-max class equals the true class (ties go to the first class in column order; baseline
  1/K).
- **Edge wells**: a well in the first or last row or column of the plate layout (``plate_shape`` = rows x columns,
  384 wells = 16 x 24: rows A / P, columns 1 / 24); ``accuracy_edge`` / ``accuracy_non_edge`` over their fields.
  Well names are a row of letters (A..Z, then AA, AB, ... for 1536-well plates) and a 1-based column number
  (``A01``, ``p24``, ``AF48``).

Returns ``(summary, table)``: ``summary`` one row (``n_fields``, ``n_classes``, ``accuracy``,
``accuracy_baseline``, ``auprc_micro``, ``average_precision_micro``, ``auprc_baseline``, ``auprc_macro``,
``average_precision_macro``, ``n_edge_fields``, ``accuracy_edge``, ``n_non_edge_fields``, ``accuracy_non_edge``,
``plate_rows``, ``plate_columns``); ``table`` one row per class (``label_col``, ``n_fields`` with that true class,
``n_predicted``, ``prevalence``, ``auprc``, ``average_precision``, ``accuracy`` = the fraction of its fields
predicted as it, i.e. its recall). Errors name the column (or argument) and row.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd

PREFIX = "prob_"
_WELL = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")


def well_position(well: str, plate_shape: tuple[int, int] = (16, 24)) -> tuple[int, int]:
    """(0-based row, 0-based column) of a well name (``A01`` -> (0, 0)); a name that does not parse, or lies
    outside the plate, is a ValueError naming it."""
    m = _WELL.match(str(well))
    if m is None:
        raise ValueError(f"well {well!r} is not a well name (a row letter and a column number, e.g. A01)")
    letters, col = m.group(1).upper(), int(m.group(2))
    row = ord(letters[-1]) - ord("A") + (26 * (ord(letters[0]) - ord("A") + 1) if len(letters) == 2 else 0)
    rows, cols = plate_shape
    if not (0 <= row < rows and 1 <= col <= cols):
        raise ValueError(f"well {well!r} is outside a plate of {rows} rows x {cols} columns")
    return row, col - 1


def edge_wells(wells, plate_shape: tuple[int, int] = (16, 24)) -> np.ndarray:
    """True for each well in the first / last row or column of a ``plate_shape`` (rows, columns) plate."""
    rows, cols = _check_shape(plate_shape)
    out = np.empty(len(wells), dtype=bool)
    cache: dict = {}
    for i, w in enumerate(wells):
        if w not in cache:
            r, c = well_position(w, (rows, cols))
            cache[w] = r in (0, rows - 1) or c in (0, cols - 1)
        out[i] = cache[w]
    return out


def _check_shape(plate_shape) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in plate_shape)
    except (TypeError, ValueError):
        raise ValueError(f"plate_shape must be (rows, columns), got {plate_shape!r}") from None
    if rows < 1 or cols < 1 or rows > 26 * 27:
        raise ValueError(f"plate_shape must be positive (rows, columns), got {plate_shape!r}")
    return rows, cols


def _probabilities(fields: pd.DataFrame, probabilities, classes, prefix: str) -> tuple[np.ndarray, list]:
    if probabilities is None:
        cols = [c for c in fields.columns if str(c).startswith(prefix)]
        if not cols:
            raise ValueError(f"fields: no probability columns (named {prefix}<class>); pass probabilities= and "
                             "classes=, or profile with a field model exported with --logits")
        classes = [str(c)[len(prefix):] for c in cols]
        p = fields[cols].to_numpy(dtype=np.float64)
        names = cols
    else:
        if classes is None:
            raise ValueError("classes: give the class name of every probability column")
        p = np.asarray(probabilities, dtype=np.float64)
        classes = [str(c) for c in classes]
        names = [f"probabilities[:, {i}] ({c})" for i, c in enumerate(classes)]
        if p.ndim != 2 or p.shape != (len(fields), len(classes)):
            raise ValueError(f"probabilities: shape {p.shape}, expected {len(fields)} fields x {len(classes)} classes")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes: duplicate class names {sorted(c for c in set(classes) if classes.count(c) > 1)}")
    if len(classes) < 2:
        raise ValueError(f"{names[0] if names else 'probabilities'}: a classifier needs at least two classes")
    bad = ~np.isfinite(p)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{names[c]}: probability is {p[r, c]} at row {r}")
    return p, classes


def _pr_area(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(trapezoidal area under the precision-recall curve, average precision) of indicator ``y`` and scores
    ``s``; NaN without a positive."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve

    if not y.any():
        return float("nan"), float("nan")
    precision, recall, _ = precision_recall_curve(y, s)
    return float(auc(recall, precision)), float(average_precision_score(y, s))


def field_classification(
    fields: pd.DataFrame,
    probabilities=None,
    classes: Sequence[str] | None = None,
    *,
    label_col: str,
    well_col: str = "Metadata_Well",
    plate_shape: tuple[int, int] = (16, 24),
    prefix: str = PREFIX,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Field-level AUPRC (micro and per class), accuracy and edge / non-edge accuracy (module docstring).

    ``fields``: one row per scored field with ``label_col`` (its true class) and ``well_col`` (its well), and,
    unless ``probabilities`` (N x K) and ``classes`` (K names) are given, ``<prefix><class>`` columns. Every true
    class must be one of the classes. Errors (ValueError, naming the column / argument and row): a missing
    column, a missing or unknown label, a non-finite probability, fewer than two classes, a well name that does
    not parse or lies outside ``plate_shape``, no field.
    """
    from sklearn.preprocessing import label_binarize

    if not isinstance(fields, pd.DataFrame):
        raise ValueError(f"fields must be a DataFrame, got {type(fields).__name__}")
    for arg, col in (("label_col", label_col), ("well_col", well_col)):
        if col not in fields.columns:
            raise ValueError(f"{arg}: no column {col!r} in the field table")
    if len(fields) == 0:
        raise ValueError("fields: no field to score")
    rows, cols = _check_shape(plate_shape)
    p, classes = _probabilities(fields, probabilities, classes, prefix)
    labels = fields[label_col]
    missing = labels.isna().to_numpy()
    if missing.any():
        raise ValueError(f"label_col: column {label_col!r} is missing (NaN) at row {int(np.flatnonzero(missing)[0])}")
    y = labels.astype(str).to_numpy()
    unknown = ~np.isin(y, classes)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ValueError(f"label_col: {y[i]!r} of column {label_col!r} (row {i}) is not one of the model's classes "
                         f"{classes}")
    wells = fields[well_col]
    if wells.isna().any():
        raise ValueError(f"well_col: column {well_col!r} is missing (NaN) at row "
                         f"{int(np.flatnonzero(wells.isna().to_numpy())[0])}")
    try:
        edge = edge_wells(wells.astype(str).to_numpy(), (rows, cols))
    except ValueError as e:
        raise ValueError(f"well_col: column {well_col!r}: {e}") from None
    k = len(classes)
    onehot = label_binarize(y, classes=classes)
    if k == 2:  # label_binarize gives one column for two classes
        onehot = np.hstack([1 - onehot, onehot])
    onehot = onehot.astype(bool)
    pred = p.argmax(axis=1)
    truth = onehot.argmax(axis=1)
    correct = pred == truth
    auprc, ap = _pr_area(onehot.ravel(), p.ravel())
    per = [_pr_area(onehot[:, j], p[:, j]) for j in range(k)]
    table = pd.DataFrame({
        label_col: classes,
        "n_fields": onehot.sum(axis=0).astype(np.int64),
        "n_predicted": np.bincount(pred, minlength=k).astype(np.int64),
        "prevalence": onehot.mean(axis=0),
        "auprc": [a for a, _ in per],
        "average_precision": [b for _, b in per],
        "accuracy": [float(correct[truth == j].mean()) if (truth == j).any() else np.nan for j in range(k)],
    })

    def acc(mask):
        return float(correct[mask].mean()) if mask.any() else float("nan")

    summary = pd.DataFrame([{
        "n_fields": len(y), "n_classes": k, "accuracy": acc(np.ones(len(y), bool)), "accuracy_baseline": 1.0 / k,
        "auprc_micro": auprc, "average_precision_micro": ap, "auprc_baseline": float(onehot.mean()),
        "auprc_macro": float(table["auprc"].mean()), "average_precision_macro": float(table["average_precision"].mean()),
        "n_edge_fields": int(edge.sum()), "accuracy_edge": acc(edge),
        "n_non_edge_fields": int((~edge).sum()), "accuracy_non_edge": acc(~edge),
        "plate_rows": rows, "plate_columns": cols,
    }])
    return summary, table


# ---- phenovec evaluate field-classification ----------------------------------------------------------------


def run(args) -> dict:
    """``phenovec evaluate field-classification``: read the field table, filter, score, write table + summary."""
    from phenovec.cli import _finish
    from phenovec.io.profiles import read_table
    from phenovec.io.row_filter import filter_mask

    fields = read_table(args.fields)
    if args.query:
        fields = fields[filter_mask(fields, args.query, key="--query")]
        if fields.empty:
            raise ValueError(f"--query {args.query!r} selects no row of {args.fields}")
    summary, table = field_classification(fields.reset_index(drop=True), label_col=args.label_column,
                                          well_col=args.well_column, plate_shape=(args.plate_rows, args.plate_columns),
                                          prefix=args.prefix)
    return _finish(args, table, {"metric": "field-classification", "fields": str(args.fields),
                                 **summary.iloc[0].to_dict()})


def add_parser(metrics):
    """Add ``field-classification`` to ``phenovec evaluate``'s subparsers (imports nothing heavy)."""
    from phenovec.cli_options import add_out, add_quiet, option

    p = metrics.add_parser("field-classification",
                           help="field-level AUPRC / accuracy of a field classifier's class probabilities, edge vs "
                                "non-edge wells (MOAProfiler)")
    p.add_argument("fields", help="field table with prob_<class> columns (phenovec profile's "
                                  "field_probabilities.parquet), .csv / .csv.gz / .parquet")
    option(p, "--label-column", required=True, help="the true class of each field (e.g. Metadata_MOA)")
    option(p, "--well-column", default="Metadata_Well", help="well name of each field (A01 ...)")
    p.add_argument("--plate-rows", type=int, default=16, help="rows of the plate layout (384 wells: 16)")
    p.add_argument("--plate-columns", type=int, default=24, help="columns of the plate layout (384 wells: 24)")
    p.add_argument("--prefix", default=PREFIX, help="probability column of class C is PREFIX + C")
    p.add_argument("--query", help="filter selecting the fields to score, e.g. \"Metadata_MOA != 'control'\" (drop "
                                   "DMSO; phenovec.io.row_filter)")
    add_out(p, "per-class table (.csv, .csv.gz or .parquet)")
    p.add_argument("--summary", help="JSON summary path (default: OUT with .json)")
    add_quiet(p)
    p.set_defaults(run=run)
    return p
