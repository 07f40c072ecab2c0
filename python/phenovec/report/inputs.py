"""The report's input: well-level profiles, checked and split into metadata, features and the control mask.

Profiles follow pycytominer: ``Metadata_*`` columns plus feature columns (a DataFrame, or a CSV /
CSV.gz / Parquet path read by :func:`phenovec.io.profiles.read_table`). ``features="infer"`` takes every
non-``Metadata_`` column; a list names them explicitly (any names).

The control wells are chosen by ``control_query``: either a filter over the metadata
(:mod:`phenovec.io.row_filter`, never run as code: ``"Metadata_Control == True"``, ``"Metadata_moa == 'DMSO'"``)
or, when it is a bare value (e.g. ``DMSO``, or a value of ``treatment_column`` that is not a valid filter), the
wells whose ``treatment_column`` equals it. Every problem (missing
column, a query selecting no well, all wells controls, non-finite features) raises ``ValueError`` /
``KeyError`` naming the column, query, row or file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from phenovec.io.profiles import read_table, split_profiles
from phenovec.io.row_filter import parse_filter


@dataclass
class ReportInput:
    """Validated profiles: ``meta`` (reset index), ``x`` (N x D float), ``control`` (bool mask), column names."""

    meta: pd.DataFrame
    x: np.ndarray
    features: list[str]
    control: np.ndarray
    moa_column: str
    treatment_column: str
    plate_column: str
    control_query: str
    control_rule: str  # "query" or "treatment"
    source: str  # path or "<DataFrame>"


def _control_mask(meta: pd.DataFrame, control_query: str, treatment_column: str,
                  key: str = "control_query") -> tuple[np.ndarray, str]:
    if not isinstance(control_query, str) or not control_query.strip():
        raise ValueError(f"{key} must be a non-empty string, got {control_query!r}")
    q = control_query.strip()
    looks_like_query = any(op in q for op in ("==", "!=", "<", ">", " in ", "~", "&", "|", "(")) or q in meta.columns
    if not looks_like_query:
        return (meta[treatment_column].astype(str) == q).to_numpy(), "treatment"
    try:
        flt = parse_filter(q, key=key)
    except ValueError:
        if (meta[treatment_column].astype(str) == q).any():  # a treatment named like an expression: "DMSO (0.1%)"
            return (meta[treatment_column].astype(str) == q).to_numpy(), "treatment"
        raise
    try:
        mask = flt.mask(meta)
    except ValueError as e:  # a missing column (FilterColumnError), values that cannot be compared
        detail = str(e).removeprefix(f"{key}: ")
        raise ValueError(f"{key} {q!r} cannot be evaluated on the metadata columns: {detail}") from None
    return mask, "query"


def load_input(profiles, *, moa_column: str, treatment_column: str, control_query: str, plate_column: str,
               features="infer", control_key: str = "control_query") -> ReportInput:
    """Read and check the profiles (see the module docstring). ``control_key`` names where ``control_query``
    came from in errors about it (e.g. ``"report.control in run.yaml"``)."""
    if isinstance(profiles, (str, Path)):
        source = str(profiles)
        df = read_table(profiles)
    elif isinstance(profiles, pd.DataFrame):
        source = "<DataFrame>"
        df = profiles
    else:
        raise TypeError(f"profiles must be a DataFrame or a path to a CSV/Parquet table, got {type(profiles).__name__}")
    if len(df) == 0:
        raise ValueError(f"{source}: the profile table has no rows")
    for what, col in (("moa_column", moa_column), ("treatment_column", treatment_column), ("plate_column", plate_column)):
        if col not in df.columns:
            meta_cols = [c for c in df.columns if str(c).startswith("Metadata_")]
            raise KeyError(f"{source}: {what} {col!r} is not a column of the profiles (metadata columns: {meta_cols})")
    if isinstance(features, str):
        if features != "infer":
            raise ValueError(f"features must be 'infer' or a list of column names, got {features!r}")
        prof = split_profiles(df.reset_index(drop=True))
    else:
        prof = split_profiles(df.reset_index(drop=True), features=list(features))
    meta = prof.meta
    for col in (moa_column, treatment_column, plate_column):
        if col not in meta.columns:
            raise ValueError(f"{source}: {col!r} is listed as a feature; it must be a metadata column")
    x = np.ascontiguousarray(prof.feats, dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{source}: feature {prof.features[c]!r} is not finite at row {r} ({int(bad.any(axis=1).sum())} "
                         "row(s) affected); the report needs processed profiles without NaN / inf")
    control, rule = _control_mask(meta, control_query, treatment_column, control_key)
    if not control.any():
        detail = (f"query over {[c for c in meta.columns]}" if rule == "query"
                  else f"value of {treatment_column!r} (values: {sorted(map(str, meta[treatment_column].unique()))[:10]})")
        raise ValueError(f"{source}: {control_key} {control_query!r} selects no control well (read as a {detail})")
    if control.all():
        raise ValueError(f"{source}: {control_key} {control_query!r} selects every well; no treatment is left to evaluate")
    na = meta.loc[~control, treatment_column].isna().to_numpy()
    if na.any():
        raise ValueError(f"{source}: treatment_column {treatment_column!r} is missing at row "
                         f"{int(np.flatnonzero(~control)[np.flatnonzero(na)[0]])}")
    return ReportInput(meta=meta, x=x, features=list(prof.features), control=control, moa_column=moa_column,
                       treatment_column=treatment_column, plate_column=plate_column, control_query=control_query,
                       control_rule=rule, source=source)


def subset_input(inp: ReportInput, mask: np.ndarray) -> ReportInput:
    """The same input restricted to the rows of ``mask`` (e.g. the held-out wells)."""
    mask = np.asarray(mask, dtype=bool)
    return ReportInput(meta=inp.meta[mask].reset_index(drop=True), x=inp.x[mask], features=inp.features,
                       control=inp.control[mask], moa_column=inp.moa_column, treatment_column=inp.treatment_column,
                       plate_column=inp.plate_column, control_query=inp.control_query, control_rule=inp.control_rule,
                       source=inp.source)
