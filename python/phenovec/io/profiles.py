"""Profile tables in the pycytominer convention.

A profile table has ``Metadata_*`` columns and numeric feature columns. Callers may instead pass
explicit ``features=`` / ``meta=`` lists, or a numpy matrix with a metadata frame. Everything that
goes wrong names the column or row.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.io.atomic import atomic_path

METADATA_PREFIX = "Metadata_"


@dataclass
class Profiles:
    """Metadata and a C-contiguous float feature matrix with the same rows."""

    meta: pd.DataFrame
    feats: np.ndarray
    features: list[str]

    def __len__(self) -> int:
        return len(self.meta)


def _as_pandas(table) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table
    try:
        import pyarrow as pa

        if isinstance(table, (pa.Table, pa.RecordBatch)):
            return table.to_pandas()
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pass
    raise TypeError(f"expected a pandas DataFrame or a pyarrow Table, got {type(table).__name__}")


def split_profiles(
    table,
    features: Sequence[str] | None = None,
    meta: Sequence[str] | None = None,
    feats: np.ndarray | None = None,
    dtype=None,
) -> Profiles:
    """Split a profile table into metadata and a feature matrix.

    - ``table`` alone: ``Metadata_*`` columns are metadata, every other column a feature.
    - ``features=`` / ``meta=``: explicit column lists (the other is inferred as the rest).
    - ``feats=`` (numpy, N x D) with ``table`` as the metadata frame.

    Feature columns must be numeric (bool counts as numeric); the dtype is kept if float32/float64,
    otherwise float64 (or ``dtype``).
    """
    df = _as_pandas(table)
    if feats is not None:
        x = np.asarray(feats)
        if x.ndim != 2:
            raise ValueError(f"feats must be a 2-D matrix, got shape {x.shape}")
        if len(df) != x.shape[0]:
            raise ValueError(f"metadata has {len(df)} rows but feats has {x.shape[0]} rows")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"feats must be numeric, got dtype {x.dtype}")
        names = list(features) if features is not None else [f"feature_{i}" for i in range(x.shape[1])]
        if len(names) != x.shape[1]:
            raise ValueError(f"{len(names)} feature names given for {x.shape[1]} feature columns")
        m = df if meta is None else df[_check_columns(df, meta, "meta")]
        return Profiles(m.reset_index(drop=True), _to_float(x, dtype), names)

    if features is not None:
        fcols = _check_columns(df, features, "features")
        mcols = _check_columns(df, meta, "meta") if meta is not None else [c for c in df.columns if c not in set(fcols)]
    elif meta is not None:
        mcols = _check_columns(df, meta, "meta")
        fcols = [c for c in df.columns if c not in set(mcols)]
    else:
        mcols = [c for c in df.columns if str(c).startswith(METADATA_PREFIX)]
        fcols = [c for c in df.columns if not str(c).startswith(METADATA_PREFIX)]
    if not fcols:
        raise ValueError("no feature columns: pass features=[...] or name metadata columns Metadata_*")
    bad = [c for c in fcols if not (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]
    if bad:
        raise ValueError(
            f"feature column {bad[0]!r} is not numeric (dtype {df[bad[0]].dtype})"
            + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
            + "; pass meta=[...] or features=[...] to say which columns are which"
        )
    x = df[fcols].to_numpy()
    return Profiles(df[mcols].reset_index(drop=True), _to_float(x, dtype), [str(c) for c in fcols])


def _check_columns(df: pd.DataFrame, cols: Sequence[str], what: str) -> list[str]:
    cols = [cols] if isinstance(cols, str) else list(cols)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: unknown column {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return cols


def _to_float(x: np.ndarray, dtype) -> np.ndarray:
    if dtype is not None:
        return np.ascontiguousarray(x, dtype=dtype)
    if x.dtype in (np.float32, np.float64):
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x, dtype=np.float64)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read CSV, CSV.gz (any compression pandas infers), TSV or Parquet by file name."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"profile table not found: {p}")
    name = p.name.lower()
    if name.endswith((".parquet", ".pq")) or p.is_dir():
        return pd.read_parquet(p)
    sep = "\t" if ".tsv" in name else ","
    if any(name.endswith(ext) for ext in (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst", ".tsv", ".tsv.gz")):
        return pd.read_csv(p, sep=sep, low_memory=False)
    raise ValueError(f"{p}: unknown table format (use .csv, .csv.gz, .tsv or .parquet)")


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write CSV (optionally .gz) or Parquet atomically: a temporary file renamed into place."""
    p = Path(path)
    name = p.name.lower()
    if not name.endswith((".parquet", ".pq")) and ".csv" not in name and ".tsv" not in name:
        raise ValueError(f"{p}: unknown table format (use .csv, .csv.gz or .parquet)")
    with atomic_path(p) as tmp:
        if name.endswith((".parquet", ".pq")):
            df.to_parquet(tmp, index=False)
        else:
            comp = "gzip" if name.endswith(".gz") else None
            df.to_csv(tmp, index=False, sep="\t" if ".tsv" in name else ",", compression=comp)
    return p


OUTPUT_TYPES = ("csv", "parquet", "anndata_h5ad", "anndata_zarr")


def infer_output_type(path: str | os.PathLike) -> str:
    """The pycytominer output type a file name implies (.csv[.gz]/.tsv, .parquet, .h5ad, .zarr)."""
    name = Path(path).name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".h5ad"):
        return "anndata_h5ad"
    if name.endswith(".zarr"):
        return "anndata_zarr"
    if ".csv" in name or ".tsv" in name:
        return "csv"
    raise ValueError(f"{path}: cannot tell the output type from the name (use .csv, .csv.gz, .parquet, .h5ad or .zarr)")


def write_profiles(
    df: pd.DataFrame,
    path: str | os.PathLike,
    output_type: str | None = None,
    features: Sequence[str] | None = None,
    metadata: dict | None = None,
    compression_options=None,
    float_format: str | None = None,
) -> Path:
    """Write a profile table as pycytominer's output types, atomically (temporary name, then rename).

    - ``csv``: ``DataFrame.to_csv(index=False)``; gzip when the name ends in ``.gz`` or
      ``compression_options`` says so; ``float_format`` as pandas.
    - ``parquet``: snappy; ``metadata`` (a JSON-serialisable dict) is stored in the Parquet schema's
      key-value metadata under the key ``phenovec`` (read it back with :func:`read_profile_metadata`).
    - ``anndata_h5ad`` / ``anndata_zarr``: ``X`` = the feature columns (``features``, default: every
      non-``Metadata_`` numeric column), ``obs`` = every other column, ``var`` index = feature names;
      ``metadata`` goes to ``uns["phenovec"]``. (pycytominer puts *every* numeric column, numeric metadata
      included, into ``X``; phenovec keeps metadata in ``obs`` so it is never mistaken for a feature.)
    """
    import json

    p = Path(path)
    kind = output_type or infer_output_type(p)
    if kind not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {kind!r}; use one of {OUTPUT_TYPES}")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        if kind == "csv":
            comp = compression_options
            if comp is None and p.name.lower().endswith(".gz"):
                comp = "gzip"
            df.to_csv(tmp, index=False, sep="\t" if ".tsv" in p.name.lower() else ",",
                      compression=comp, float_format=float_format)
        elif kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            if metadata is not None:
                kv = dict(table.schema.metadata or {})
                kv[b"phenovec"] = json.dumps(metadata, sort_keys=True, default=str).encode()
                table = table.replace_schema_metadata(kv)
            pq.write_table(table, tmp, compression="snappy")
        else:
            import anndata as ad

            feats = list(features) if features is not None else [
                c for c in df.columns if not str(c).startswith(METADATA_PREFIX) and pd.api.types.is_numeric_dtype(df[c])
            ]
            obs = df[[c for c in df.columns if c not in set(feats)]].copy()
            obs.index = obs.index.astype(str)
            adata = ad.AnnData(
                X=df[feats].to_numpy(dtype=np.float64 if any(df[f].dtype == np.float64 for f in feats) else np.float32),
                obs=obs,
                var=pd.DataFrame(index=[str(f) for f in feats]),
            )
            if metadata is not None:
                adata.uns["phenovec"] = json.dumps(metadata, sort_keys=True, default=str)
            if kind == "anndata_h5ad":
                adata.write_h5ad(tmp)
            else:
                with ad.settings.override(zarr_write_format=3):
                    adata.write_zarr(tmp)
        if p.is_dir():
            import shutil

            shutil.rmtree(p)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return p


def read_profile_metadata(path: str | os.PathLike) -> dict:
    """The ``phenovec`` metadata dict :func:`write_profiles` stored in a Parquet file ({} if none)."""
    import json

    import pyarrow.parquet as pq

    kv = pq.read_schema(path).metadata or {}
    raw = kv.get(b"phenovec")
    return json.loads(raw) if raw else {}
