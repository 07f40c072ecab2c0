"""Which columns of a profile table are features and which are metadata, pycytominer's way.

``features="infer"`` follows pycytominer 1.7.1 ``infer_cp_features``: columns starting with a
CellProfiler compartment (``Cells``, ``Nuclei``, ``Cytoplasm``; ``Image`` too with
``image_features=True``, numeric ones only). phenovec addition: when no column has a CellProfiler
prefix (learned embeddings such as ``efficientnet_0``), the features a reader declared (a phenovec embedding
store's), else every numeric column that does not start with ``Metadata_`` and is no CellProfiler id
(``ImageNumber``, ``ObjectNumber``, ``TableNumber``) is a feature, so model output is usable without listing 1,280
names. ``meta_features="infer"`` is every ``Metadata_`` column, plus those ids off pycytominer's own inference. Nothing here guesses silently on bad input: a listed column that is missing,
a feature column that is not numeric, or a sample query that matches no row raises an error naming it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.io.row_filter import parse_filter

METADATA_PREFIX = "Metadata_"
CP_COMPARTMENTS = ("Cells", "Nuclei", "Cytoplasm")
# strings pycytominer 1.7.1 treats as missing in otherwise numeric feature columns
MISSING_TOKENS = frozenset({"", "nan", "none", "null", "na", "n/a"})


def infer_cp_features(
    df: pd.DataFrame,
    compartments: str | Sequence[str] = CP_COMPARTMENTS,
    metadata: bool = False,
    image_features: bool = False,
) -> list[str]:
    """pycytominer ``infer_cp_features``: CellProfiler feature columns (or ``Metadata_`` columns)."""
    comps = [compartments] if isinstance(compartments, str) else list(compartments)
    comps = [c.title() for c in comps]
    if image_features and "Image" not in comps:
        comps.append("Image")
    if metadata:
        cols = [c for c in df.columns if str(c).startswith(METADATA_PREFIX)]
    else:
        cols = []
        for c in df.columns:
            name = str(c)
            if not any(name.startswith(p) for p in comps):
                continue
            if name.startswith("Image_") and not pd.api.types.is_numeric_dtype(df[c]):
                continue
            if df[c].dtype == object and any(not pd.api.types.is_scalar(v) for v in df[c].dropna()):
                continue  # nested payloads (e.g. OME-Arrow images) are never features
            cols.append(name)
    if not cols:
        what = "metadata (Metadata_*)" if metadata else f"feature columns with prefixes {comps}"
        raise ValueError(f"no {what} found; pass the column names explicitly")
    return cols


def resolve_columns(
    df: pd.DataFrame,
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    image_features: bool = False,
) -> tuple[list[str], list[str]]:
    """Return ``(features, meta_features)`` as lists of existing columns (see module docstring)."""
    from phenovec.io.profiles import ID_COLUMNS, declared_features

    cp_inferred = False
    if isinstance(features, str):
        if features != "infer":
            raise ValueError(f"features must be 'infer' or a list of column names, got {features!r}")
        feats = declared_features(df)  # what the reader knew (a phenovec embedding store's features)
        if feats is None:
            try:
                feats, cp_inferred = infer_cp_features(df, image_features=image_features), True
            except ValueError:
                feats = [
                    str(c)
                    for c in df.columns
                    if not str(c).startswith(METADATA_PREFIX) and str(c) not in ID_COLUMNS
                    and pd.api.types.is_numeric_dtype(df[c])
                ]
                if not feats:
                    raise ValueError(
                        "no feature columns found: no CellProfiler-prefixed (Cells_/Nuclei_/Cytoplasm_) and no "
                        "numeric non-Metadata_ columns; pass features=[...]"
                    ) from None
    else:
        feats = check_columns(df, features, "features")
    if isinstance(meta_features, str):
        if meta_features != "infer":
            raise ValueError(f"meta_features must be 'infer' or a list of column names, got {meta_features!r}")
        ids = () if cp_inferred else ID_COLUMNS  # pycytominer's own inference keeps Metadata_* alone
        meta = [c for c in df.columns if (str(c).startswith(METADATA_PREFIX) or str(c) in ids) and c not in set(feats)]
    else:
        meta = check_columns(df, meta_features, "meta_features")
    overlap = sorted(set(feats) & set(meta))
    if overlap:
        raise ValueError(f"column {overlap[0]!r} is listed both as a feature and as metadata")
    return feats, meta


def check_columns(df: pd.DataFrame, cols: str | Sequence[str], what: str) -> list[str]:
    """The columns as a list; ``KeyError`` naming the first one ``df`` lacks."""
    cols = [cols] if isinstance(cols, str) else list(cols)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise KeyError(f"{what}: unknown column {missing[0]!r}{more}")
    return cols


_SLAB_ROWS = 4096  # at most this many rows of the feature block converted at a time by numeric_features


def numeric_features(df: pd.DataFrame, features: Sequence[str], dtype=np.float64, order: str = "C") -> np.ndarray:
    """The feature block as a float matrix (NaN kept), C-contiguous (``order="C"``) or Fortran (``"F"``: the
    cheapest when pandas holds the features in one block, and what column-wise statistics want).

    In object columns, missing-value tokens ("nan", "None", "NA", "") become NaN, as in pycytominer 1.7.1, and
    numeric strings ("1.5") numbers, as its ``astype(float)`` reads them; any other value raises ``ValueError``
    naming the column, the row label and the value.
    """
    features = list(features)
    dtypes = df.dtypes[features] if features else []
    if features and all(isinstance(dt, np.dtype) and dt.kind in "fiub" for dt in dtypes):
        # every column a plain numeric numpy dtype: no per-column parsing. pandas stores a block column-major,
        # so "F" is one memcpy; "C" stacks the columns (5x faster than transposing the block).
        # Filled in slabs of rows into one preallocated matrix: the one copy the caller gets, where a stack of
        # per-column copies (or df[features], a copy itself) held two or three (no second float64 copy of the
        # table at the peak; 300k x 500 float32 read from Parquet: 0.9 s against 7-14 s for the column stack).
        out = np.empty((len(df), len(features)), dtype=dtype, order=order)
        if df.columns.has_duplicates:
            twice = [f for f in features if int((df.columns == f).sum()) > 1]
            if twice:
                raise ValueError(f"feature column {twice[0]!r} occurs more than once in the table; rename or drop "
                                 "one of them")
            positions = np.array([df.columns.get_loc(f) for f in features])
        else:
            positions = df.columns.get_indexer(features)
        # a slab of ~2 MB of output: the conversion transposes pandas' column-major block, which runs at cache speed
        # only while a slab stays in the cache (300k x 500 from Parquet: 16,384 rows 5.2 s, 1,024 rows 0.9 s)
        slab_rows = int(np.clip(2**21 // (8 * max(len(features), 1)), 256, _SLAB_ROWS))
        for lo in range(0, len(df), slab_rows):
            hi = min(lo + slab_rows, len(df))
            rows = df.iloc[lo:hi]  # rows first: iloc[rows, column list] took the columns of every row first
            slab = rows.iloc[:, positions]
            out[lo:hi] = slab.to_numpy(dtype=dtype)
        return out
    cols = []
    for c in features:
        s = df[c]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            cols.append(s.to_numpy(dtype=dtype, na_value=np.nan) if s.hasnans else s.to_numpy(dtype=dtype))
            continue
        values = s.to_numpy(dtype=object).copy()
        text = np.flatnonzero([isinstance(v, str) for v in values])
        if text.size:
            # missing-value tokens become NaN; other strings as pycytominer's astype(float) reads them ("1.5" is a
            # number); the first that is no number is named by its row (it had named the first string of all)
            stripped = pd.Series(values[text], dtype=object).str.strip()
            token = stripped.str.lower().isin(MISSING_TOKENS).to_numpy()
            numbers = pd.to_numeric(stripped.where(~token), errors="coerce").to_numpy(dtype=np.float64)
            bad = text[~token & np.isnan(numbers)]
            if bad.size:
                raise ValueError(f"feature column {c!r} is not numeric: row {s.index[bad[0]]!r} holds "
                                 f"{values[bad[0]]!r}")
            values[text] = numbers
        try:
            cols.append(pd.to_numeric(pd.Series(values, dtype=object)).to_numpy(dtype=dtype, na_value=np.nan))
        except (TypeError, ValueError) as e:
            raise ValueError(f"feature column {c!r} is not numeric ({e})") from None
    if not cols:
        return np.empty((len(df), 0), dtype=dtype, order=order)
    x = np.column_stack(cols).astype(dtype, copy=False)
    return np.asfortranarray(x) if order == "F" else np.ascontiguousarray(x)


def select_samples(df: pd.DataFrame, samples: str = "all", *, key: str = "samples") -> np.ndarray:
    """Boolean mask of the rows ``samples`` selects: ``"all"`` (or None), or a filter of
    :mod:`phenovec.io.row_filter` (pycytominer's ``"Metadata_broad_sample == 'DMSO'"``), never run as code.

    ``key`` names where ``samples`` came from in errors. A filter outside the language or naming a missing
    column raises ``ValueError`` naming ``key``; one selecting no row raises ``ValueError`` naming the filter
    (fitting on nothing would give NaN output).
    """
    if samples is None or samples == "all":
        return np.ones(len(df), dtype=bool)
    mask = parse_filter(samples, key=key).mask(df)
    if not mask.any():
        msg = f"samples query {samples!r} matches no row"
        raise ValueError(msg if key == "samples" else f"{key}: {msg}")
    return mask
