"""MOAProfiler's profiles (Wong et al. 2023, digest part B4): control-standardised per plate, median to well,
compound or MOA, in either order, from one call built on :func:`~phenovec.process.normalize.normalize` and
:func:`~phenovec.process.aggregate.aggregate`.

- DMSO-standardisation, per plate ``p`` and feature ``f``: ``x' = (x - mean_DMSO(p, f)) / sd_DMSO(p, f)``, the
  mean and SD of the control rows of the same plate (``normalize(method="standardize", samples=<control>,
  by=plate_col)``: SD with ddof 0, a constant feature's SD taken as 1, NaN ignored, as sklearn's StandardScaler).
- Aggregation: rows (fields or cells) -> well by the median; well -> compound (CLE) and well -> MOA (MLE) by the
  median of the *well* profiles. Control wells are kept at the well level and left out of the compound and MOA
  levels (they are still used to standardise).
- ``order``: ``"standardize_then_median"`` standardises the input rows (each plate fitted on its control rows),
  then takes the medians; ``"median_then_standardize"`` takes the well medians first and standardises the wells
  (each plate fitted on its control wells; the DeepProfiler route of the paper), then the compound / MOA
  medians. Standardisation is per plate, so it is always applied at a per-plate level (rows or wells), never to
  compound or MOA profiles that span plates. The two orders differ because the fits differ (control rows vs
  control well medians); a median commutes with the per-feature affine map itself.

The features are the input's (1,280 for an EfficientNet-B0 field model; any number works). Output: the key
columns, the label columns that are constant within each output row (well: ``plate_col``, ``well_cols``, then
``control_col`` / ``compound_col`` / ``moa_col`` where present; compound: ``compound_col`` and ``moa_col``; MOA:
``moa_col``), then the features as float64, one row per group sorted by key.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.process.aggregate import aggregate
from phenovec.process.columns import check_columns, resolve_columns
from phenovec.process.normalize import normalize

LEVELS = ("well", "compound", "moa")
ORDERS = ("standardize_then_median", "median_then_standardize")
METHODS = ("standardize", "robustize", "mad_robustize")  # per-feature affine maps: normalize's names


def _choice(value, allowed: Sequence[str], name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {list(allowed)}")
    return value


def _unique(cols) -> list[str]:
    out = []
    for c in cols:
        if c is not None and c not in out:
            out.append(c)
    return out


def _control_filter(control_col: str, control) -> str:
    """The ``samples`` filter selecting the control rows (parsed by phenovec.io.row_filter, never run as code)."""
    if isinstance(control, (bool, np.bool_)) or not isinstance(control, (str, int, float, np.integer, np.floating)):
        raise TypeError(f"control: expected a string or a number, got {control!r}")
    if "`" in str(control_col):
        raise ValueError(f"control_col: column name {control_col!r} may not hold a backtick")
    value = control.item() if isinstance(control, np.generic) else control
    return f"`{control_col}` == {value!r}"


def _check_no_missing(df: pd.DataFrame, col: str, what: str, rows: np.ndarray | None = None) -> None:
    s = df[col] if rows is None else df.loc[rows, col]
    na = s.isna().to_numpy()
    if na.any():
        raise ValueError(f"{what}: column {col!r} is missing in {int(na.sum())} row(s) (first: row "
                         f"{s.index[np.flatnonzero(na)[0]]!r})")


def _check_controls(df: pd.DataFrame, is_control: np.ndarray, plate_col: str, control_col: str, control) -> None:
    """``ValueError`` naming the plate column and the first plate without a control row."""
    has = pd.Series(is_control, index=df.index).groupby(df[plate_col].to_numpy(), sort=False).any()
    lacking = has.index[~has.to_numpy()]
    if len(lacking):
        more = f" (and {len(lacking) - 1} more plates)" if len(lacking) > 1 else ""
        raise ValueError(f"no control rows ({control_col} == {control!r}) on plate {plate_col}={lacking[0]!r}{more}: "
                         "nothing to standardise that plate on")


def _median(df: pd.DataFrame, key: list[str], labels: list[str], feats: list[str], what: str) -> pd.DataFrame:
    """Median of ``feats`` per ``key`` (aggregate), carrying ``labels``; ``ValueError`` naming a label column that
    varies within one key."""
    work = df
    cat = [c for c in key + labels if isinstance(df[c].dtype, pd.CategoricalDtype)]
    if cat:  # categorical strata would give every category combination (pandas observed=False): keep observed only
        work = df.assign(**{c: df[c].astype(object) for c in cat})
    out = aggregate(work, strata=key + labels, features=feats, operation="median")
    dup = out.duplicated(subset=key, keep=False).to_numpy()
    if dup.any():
        rows = out.loc[dup]
        first = rows.iloc[0]
        same = rows[(rows[key] == first[key]).all(axis=1)]
        varying = [c for c in labels if same[c].nunique(dropna=False) > 1]
        name = ", ".join(f"{c}={first[c]!r}" for c in key)
        raise ValueError(f"column {varying[0]!r} varies within one {what} ({name}): "
                         f"{sorted(map(repr, same[varying[0]].unique()))}")
    return out.reset_index(drop=True)


def moa_profiles(
    profiles,
    *,
    level: str = "well",
    order: str = "standardize_then_median",
    control="DMSO",
    control_col: str | None = None,
    plate_col: str = "Metadata_Plate",
    well_cols: str | Sequence[str] = ("Metadata_Well",),
    compound_col: str | None = None,
    moa_col: str | None = None,
    features="infer",
    method: str = "standardize",
    output_file: str | os.PathLike | None = None,
    output_type: str | None = None,
):
    """Well, compound or MOA profiles, control-standardised per plate, in either order (see the module docstring).

    ``profiles``: a DataFrame or table path of field (or cell, or well) rows. ``level``: ``"well"``,
    ``"compound"`` or ``"moa"``. ``order``: ``"standardize_then_median"`` or ``"median_then_standardize"``.
    ``control`` / ``control_col``: the control rows are those with ``control_col == control`` (``control_col``
    defaults to ``compound_col``). ``plate_col``: the plate, the unit of standardisation. ``well_cols``: the
    column(s) that with the plate name a well. ``compound_col`` (needed for ``level="compound"``) and ``moa_col``
    (needed for ``level="moa"``). ``features``: ``"infer"`` (CellProfiler prefixes, else every numeric
    non-``Metadata_`` column) or a list. ``method``: ``"standardize"`` (the paper's), or ``"robustize"`` /
    ``"mad_robustize"`` fitted the same way. With ``output_file`` the table is written and its path returned.

    Errors name the column: unknown columns (``KeyError``), missing plate / well values, missing compound / MOA
    labels on non-control rows at the compound / MOA level, a plate without control rows, a compound with two
    MOAs, a label that varies within a well (``ValueError``).
    """
    level = _choice(level, LEVELS, "level")
    order = _choice(order, ORDERS, "order")
    method = _choice(method, METHODS, "method")
    if not isinstance(profiles, pd.DataFrame):
        from phenovec.io.profiles import read_table

        profiles = read_table(profiles)
    df = profiles
    if len(df) == 0:
        raise ValueError("moa_profiles: the input has no rows")
    wells = check_columns(df, [well_cols] if isinstance(well_cols, str) else list(well_cols), "well_cols")
    if not wells:
        raise ValueError("well_cols: name at least one column")
    check_columns(df, [plate_col], "plate_col")
    if compound_col is not None:
        check_columns(df, [compound_col], "compound_col")
    if moa_col is not None:
        check_columns(df, [moa_col], "moa_col")
    if level == "compound" and compound_col is None:
        raise ValueError("compound_col: level='compound' needs the column naming each row's compound")
    if level == "moa" and moa_col is None:
        raise ValueError("moa_col: level='moa' needs the column naming each row's MOA")
    control_col = compound_col if control_col is None else control_col
    if control_col is None:
        raise ValueError(f"control_col: name the column whose value {control!r} marks the control rows "
                         "(or give compound_col)")
    check_columns(df, [control_col], "control_col")
    key = _unique([plate_col, *wells])
    if len(key) != 1 + len(wells):
        raise ValueError(f"well_cols: {plate_col!r} is the plate_col; name the well column(s) only")
    labels = [c for c in _unique([control_col, compound_col, moa_col]) if c not in key]
    feats, _ = resolve_columns(df, features, meta_features=key + labels)

    samples = _control_filter(control_col, control)
    is_control = (df[control_col] == control).fillna(False).to_numpy(dtype=bool)
    _check_no_missing(df, plate_col, "plate_col")
    for c in wells:
        _check_no_missing(df, c, "well_cols")
    if level != "well":
        treated = ~is_control
        if level == "compound":
            _check_no_missing(df, compound_col, "compound_col", treated)
        if moa_col is not None:
            _check_no_missing(df, moa_col, "moa_col", treated)
    _check_controls(df, is_control, plate_col, control_col, control)

    cols = key + labels + feats
    if order == "standardize_then_median":
        rows = normalize(df[cols], features=feats, meta_features=key + labels, samples=samples, method=method,
                         by=plate_col)
        well_table = _median(rows, key, labels, feats, "well")
    else:
        well_table = _median(df[cols], key, labels, feats, "well")
        well_table = normalize(well_table, features=feats, meta_features=key + labels, samples=samples,
                               method=method, by=plate_col)
    if level == "well":
        out = well_table
    else:
        treated_wells = well_table[~(well_table[control_col] == control).fillna(False).to_numpy(dtype=bool)]
        if len(treated_wells) == 0:
            raise ValueError(f"{control_col}: every well is a control ({control!r}); no {level} profile to make")
        if level == "compound":
            out = _median(treated_wells, [compound_col], [c for c in [moa_col] if c not in (None, compound_col)],
                          feats, "compound")
        else:
            out = _median(treated_wells, [moa_col], [], feats, "MOA")
    if output_file is not None:
        from phenovec.io.profiles import write_profiles

        write_profiles(out, output_file, output_type=output_type, features=feats)
        return str(output_file)
    return out
