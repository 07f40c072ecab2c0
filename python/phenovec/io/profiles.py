"""Profile tables in the pycytominer convention.

A profile table has ``Metadata_*`` columns and numeric feature columns. Callers may instead pass
explicit ``features=`` / ``meta=`` lists, or a numpy matrix with a metadata frame. Everything that
goes wrong names the column or row.

Formats (:func:`read_table`, by name, else by the file's first bytes): CSV / TSV (optionally compressed),
Parquet (a file or a folder of files), AnnData ``.h5ad`` and ``.zarr`` (what :func:`write_profiles` writes, and
pycytominer's), phenovec's own embedding store (``embeddings.zarr``, :mod:`phenovec.io.embeddings`) and DeepProfiler
``.npz`` feature files (one, or a folder of them; :mod:`phenovec.io.deepprofiler`, never unpickled). Anything else,
or a file that is not what its name says, is a ``ValueError`` naming the file and the formats accepted.

Readers that know which columns are features (AnnData ``var``, an embedding store's feature list, DeepProfiler's
``features`` array) record them in ``DataFrame.attrs[FEATURES_ATTR]``; :func:`split_profiles` uses that list when
it is given no ``features=`` / ``meta=``, so per-cell columns such as ``ObjectNumber`` or ``x`` / ``y`` stay
metadata. Without it, CellProfiler's object ids (:data:`ID_COLUMNS`) are metadata too, never features.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.error_context import with_context
from phenovec.io.atomic import atomic_path

METADATA_PREFIX = "Metadata_"
# CellProfiler object / image ids: metadata whatever their dtype, never features
ID_COLUMNS = ("ImageNumber", "ObjectNumber", "TableNumber")
# DataFrame.attrs key where readers that know the feature columns list them
FEATURES_ATTR = "phenovec_features"
# the Parquet schema-metadata key of a table's declared features (write_profiles writes it, read_table reads it)
_FEATURES_KEY = "phenovec_features"
# DataFrame.attrs key of the non-metadata columns that were not features when the features were declared
_OTHERS_ATTR = "phenovec_other_columns"
# text tables: a .csv / .tsv name, optionally compressed (pandas' codec for the last suffix); .txt is read only
TEXT_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
TEXT_SUFFIXES = tuple(b + c for b in (".csv", ".tsv") for c in ("", *TEXT_COMPRESSIONS))
READ_FORMATS = (".csv / .tsv (plain, .gz, .bz2, .xz or .zst), .parquet (file or folder), AnnData .h5ad or .zarr, a phenovec embedding "
                "store (embeddings.zarr), DeepProfiler .npz (file or folder)")


class FeatureNames(tuple):
    """The declared feature names kept in ``DataFrame.attrs``: a tuple that copies as itself. pandas deep-copies
    ``attrs`` into every derived object (each ``df[column]``), so a plain list of 6,400 names made a loop over
    the columns quadratic (8 s to split one DeepProfiler site)."""

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def declare_features(df: pd.DataFrame, names, others=None) -> pd.DataFrame:
    """Record ``names`` as ``df``'s feature columns (``df.attrs[FEATURES_ATTR]``), and the table's other
    non-metadata columns of the moment (``others``: default those of ``df``), so that a column added later (a new
    feature) makes the declaration stale rather than silently left out; returns ``df``."""
    names = FeatureNames(str(n) for n in names)
    if others is None:
        declared = set(names)
        others = [c for c in df.columns if str(c) not in declared and not is_metadata_column(c)]
    df.attrs[FEATURES_ATTR] = names
    df.attrs[_OTHERS_ATTR] = FeatureNames(str(c) for c in others)
    return df


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

    - ``table`` alone: the features its reader declared (``table.attrs[FEATURES_ATTR]``, see the module
      docstring) when every one is a column; else ``Metadata_*`` and :data:`ID_COLUMNS` are metadata, every
      other column a feature.
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
        fcols = declared_features(df)
        if fcols is None:
            fcols = [c for c in df.columns if not is_metadata_column(c)]
        mcols = [c for c in df.columns if c not in set(fcols)]
    if not fcols:
        raise ValueError("no feature columns: pass features=[...] or name metadata columns Metadata_*")
    dtypes = df.dtypes  # one Series of dtypes: no per-column frame access
    bad = [c for c in fcols if not (pd.api.types.is_numeric_dtype(dtypes[c]) or pd.api.types.is_bool_dtype(dtypes[c]))]
    if bad:
        raise ValueError(
            f"feature column {bad[0]!r} is not numeric (dtype {dtypes[bad[0]]})"
            + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
            + "; pass meta=[...] or features=[...] to say which columns are which"
        )
    x = df[fcols].to_numpy()
    return Profiles(df[mcols].reset_index(drop=True), _to_float(x, dtype), [str(c) for c in fcols])


def is_metadata_column(name) -> bool:
    """``Metadata_*`` or a CellProfiler id column (:data:`ID_COLUMNS`)."""
    return str(name).startswith(METADATA_PREFIX) or str(name) in ID_COLUMNS


def declared_features(df: pd.DataFrame) -> list[str] | None:
    """The feature columns a reader recorded in ``df.attrs[FEATURES_ATTR]``, if every one is still a column."""
    names = df.attrs.get(FEATURES_ATTR) if hasattr(df, "attrs") else None
    if not names:
        return None
    cols = set(df.columns)
    if not all(n in cols for n in names):
        return None
    others = df.attrs.get(_OTHERS_ATTR)
    if others is not None:  # a non-metadata column added since the declaration: it no longer says which are features
        known = set(names) | set(others)
        if any(str(c) not in known and not is_metadata_column(c) for c in df.columns):
            return None
    return list(names)


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


def table_format(path: str | os.PathLike) -> str:
    """What :func:`read_table` will read ``path`` as: ``csv``, ``parquet``, ``anndata_h5ad``, ``anndata_zarr``,
    ``embeddings`` or ``deepprofiler`` (a ``.npz`` file or a folder of them). By name first; a file whose name says
    nothing is told by its first bytes. ``ValueError`` naming the file and :data:`READ_FORMATS` otherwise."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"profile table not found: {p}")
    name = p.name.lower()
    if p.is_dir():
        from phenovec.io.embeddings import is_embedding_store

        if is_embedding_store(p):
            return "embeddings"
        if _is_anndata_zarr(p):
            return "anndata_zarr"
        if any(p.rglob("*.parquet")) or any(p.rglob("*.pq")):
            return "parquet"
        if any(p.rglob("*.npz")):
            return "deepprofiler"
        raise ValueError(f"{p}: a folder that is none of the table formats phenovec reads ({READ_FORMATS})")
    magic = _magic(p)
    by_magic = {b"PAR1": "parquet", b"\x89HDF": "anndata_h5ad", b"PK\x03\x04": "deepprofiler"}.get(magic[:4])
    if name.endswith((".parquet", ".pq")):
        kind = "parquet"
    elif name.endswith(".h5ad"):
        kind = "anndata_h5ad"
    elif name.endswith(".npz"):
        kind = "deepprofiler"
    elif name.endswith((*TEXT_SUFFIXES, ".txt")):
        return "csv"
    elif by_magic is not None:
        return by_magic
    else:
        raise ValueError(f"{p}: unknown table format (phenovec reads {READ_FORMATS})")
    if not magic:
        raise ValueError(f"{p}: the file is empty (0 bytes), not a {kind} table")
    if by_magic != kind:
        raise ValueError(f"{p}: not a {kind} file (its first bytes are {magic[:8]!r}); phenovec reads {READ_FORMATS}")
    return kind


def _magic(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read(8)


def _is_anndata_zarr(p: Path) -> bool:
    import json

    for meta in ("zarr.json", ".zattrs"):
        f = p / meta
        if f.is_file():
            try:
                obj = json.loads(f.read_text())
            except (ValueError, OSError):
                return False
            attrs = obj.get("attributes", obj) if meta == "zarr.json" else obj
            return isinstance(attrs, dict) and attrs.get("encoding-type") == "anndata"
    return False


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a profile table in any format of :func:`table_format` (see the module docstring).

    AnnData and embedding stores give the metadata (``obs`` / ``meta.parquet``) then the features; AnnData written
    by :func:`write_profiles` gets its original column order and string dtypes back. Every failure is a
    ``ValueError`` / ``FileNotFoundError`` naming the file."""
    p = Path(path)
    kind = table_format(p)
    try:
        if kind == "csv":
            return pd.read_csv(p, sep=_separator(p), low_memory=False)
        if kind == "parquet":
            df = pd.read_parquet(p)
            if p.is_file():
                import pyarrow.parquet as pq

                record = json.loads((pq.read_schema(p).metadata or {}).get(_FEATURES_KEY.encode(), b"null"))
                if isinstance(record, dict) and isinstance(record.get("features"), list) and record["features"]:
                    declare_features(df, record["features"], record.get("others") or [])
                elif df.attrs.get(FEATURES_ATTR) and df.attrs.get(_OTHERS_ATTR) is None:
                    # pyarrow restores pandas' attrs itself; a declaration without the columns that were not
                    # features then (an older writer) cannot be checked for staleness, so it is not trusted
                    df.attrs.pop(FEATURES_ATTR, None)
            return df
        if kind == "embeddings":
            from phenovec.io.embeddings import EmbeddingStore

            return EmbeddingStore(p).read()
        if kind in ("anndata_h5ad", "anndata_zarr"):
            return _read_anndata(p, kind)
        from phenovec.io.deepprofiler import read_deepprofiler_dir, read_deepprofiler_npz

        return read_deepprofiler_dir(p) if p.is_dir() else read_deepprofiler_npz(p)
    except (FileNotFoundError, ValueError, KeyError) as e:
        msg = str(e.args[0]) if e.args else str(e)
        if str(p) in msg:
            raise
        raise with_context(e, f"{p}: cannot read as {kind}") from None
    except Exception as e:  # pyarrow / h5py / zarr / pandas parser errors: say which file and what was expected
        raise ValueError(f"{p}: cannot read as {kind} ({type(e).__name__}: {e}); phenovec reads {READ_FORMATS}") from None


def _separator(p: Path) -> str:
    """Tab for .tsv; for .txt (platemaps) a tab if the header line has one; else a comma."""
    name = p.name.lower()
    if ".tsv" in name:
        return "\t"
    if name.endswith(".txt"):
        with open(p, "rb") as f:
            return "\t" if b"\t" in f.readline() else ","
    return ","


_COLUMNS_UNS = "phenovec_columns"


def _read_anndata(p: Path, kind: str) -> pd.DataFrame:
    import json

    import anndata as ad

    adata = ad.read_h5ad(p) if kind == "anndata_h5ad" else ad.read_zarr(p)
    x = adata.X
    if hasattr(x, "toarray"):
        x = x.toarray()
    names = [str(v) for v in adata.var_names]
    obs = adata.obs.reset_index(drop=True)
    feats = pd.DataFrame(np.asarray(x), columns=names)
    dup = [c for c in names if c in set(obs.columns)]
    if dup:
        raise ValueError(f"{p}: column {dup[0]!r} is both in obs and in var")
    df = pd.concat([obs, feats], axis=1)
    info = adata.uns.get(_COLUMNS_UNS)
    if info is not None:
        info = json.loads(str(info))
        order = [c for c in info.get("order", []) if c in set(df.columns)]
        if len(order) == df.shape[1]:
            df = df[order]
        for c, dt in info.get("dtypes", {}).items():
            if c in df.columns and dt in ("object", "str", "string") and isinstance(df[c].dtype, pd.CategoricalDtype):
                df[c] = df[c].astype(object).where(df[c].notna(), None)
    return declare_features(df, [c for c in names if not is_metadata_column(c)])


def dictionary_columns(df: pd.DataFrame) -> list[str]:
    """The columns Parquet should dictionary-encode: all but the floating-point ones. pyarrow tries a dictionary
    for every column by default and gives up on each float feature only after filling one (300k x 500 float32:
    10.6 s to write, 1.5 s with features plain); labels, plates and wells repeat and keep their dictionaries."""
    return [str(c) for c, dt in df.dtypes.items() if not pd.api.types.is_float_dtype(dt)]


def text_compression(path: str | os.PathLike) -> str | None:
    """pandas' compression for a .csv / .tsv name (None when plain), read from the name's last suffix.

    The writers write to a temporary name, where pandas' own inference would see no suffix: a ``.csv.xz`` came out
    as plain text under that name, which nothing could read back."""
    name = Path(path).name.lower()
    if not name.endswith(TEXT_SUFFIXES):
        raise ValueError(f"{path}: not a text table name (use one of {', '.join(TEXT_SUFFIXES)})")
    return next((c for suffix, c in TEXT_COMPRESSIONS.items() if name.endswith(suffix)), None)


def _csv_compression(p: Path, options):
    """pandas' ``compression`` for writing ``p`` (through a temporary name, where pandas' "infer" sees no suffix):
    the name's codec, with ``options``' other keys; a method that contradicts a .csv / .tsv name is refused (the
    file could not be read back by its name)."""
    named = text_compression(p) if p.name.lower().endswith(TEXT_SUFFIXES) else None
    method = options if isinstance(options, str) or options is None else options.get("method")
    if options is None or method == "infer":
        if isinstance(options, dict):
            rest = {k: v for k, v in options.items() if k != "method"}
            return {"method": named, **rest} if named else None
        return named
    if p.name.lower().endswith(TEXT_SUFFIXES) and method != named:
        raise ValueError(f"{p}: compression {method!r} does not match the name, which says "
                         f"{named or 'no compression'}; name the file for its compression (e.g. .csv.gz for gzip)")
    return options


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write CSV / TSV (optionally compressed, by the name: .gz, .bz2, .xz, .zst) or Parquet atomically: a temporary
    file renamed into place."""
    p = Path(path)
    name = p.name.lower()
    if not name.endswith((".parquet", ".pq", *TEXT_SUFFIXES)):
        raise ValueError(f"{p}: unknown table format (use .parquet, or one of {', '.join(TEXT_SUFFIXES)})")
    with atomic_path(p) as tmp:
        if name.endswith((".parquet", ".pq")):
            df.to_parquet(tmp, index=False, use_dictionary=dictionary_columns(df))
        else:
            df.to_csv(tmp, index=False, sep="\t" if ".tsv" in name else ",", compression=text_compression(p))
    return p


OUTPUT_TYPES = ("csv", "parquet", "anndata_h5ad", "anndata_zarr")


def infer_output_type(path: str | os.PathLike) -> str:
    """The pycytominer output type a file name implies (.csv / .tsv, plain or compressed; .parquet, .h5ad, .zarr)."""
    name = Path(path).name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".h5ad"):
        return "anndata_h5ad"
    if name.endswith(".zarr"):
        return "anndata_zarr"
    if name.endswith(TEXT_SUFFIXES):
        return "csv"
    raise ValueError(f"{path}: cannot tell the output type from the name (use .parquet, .h5ad, .zarr or "
                     f"{', '.join(TEXT_SUFFIXES)})")


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

    - ``csv``: ``DataFrame.to_csv(index=False)``; compressed as the name says (.gz, .bz2, .xz, .zst) unless
      ``compression_options`` says otherwise; ``float_format`` as pandas.
    - ``parquet``: snappy; ``metadata`` (a JSON-serialisable dict) is stored in the Parquet schema's
      key-value metadata under the key ``phenovec`` (read it back with :func:`read_profile_metadata`); the features
      ``df.attrs`` declares (a step's ``PC1..`` outputs) under ``phenovec_features``, which :func:`read_table`
      declares again, so a later step does not take the table's other numeric columns for features.
    - ``anndata_h5ad`` / ``anndata_zarr``: ``X`` = the feature columns (``features``, else the features ``df.attrs``
      declares, else those phenovec's steps infer: CellProfiler-prefixed columns, or without any every
      non-``Metadata_`` numeric column except :data:`ID_COLUMNS`), ``obs`` = every other column, ``var`` index =
      feature names; ``metadata`` goes to ``uns["phenovec"]``, the column order and dtypes to
      ``uns["phenovec_columns"]`` (so :func:`read_table` gives the same table back). (pycytominer puts *every* numeric
      column, numeric metadata included, into ``X``; phenovec keeps metadata in ``obs`` so it is never mistaken for
      a feature.)
    """
    p = Path(path)
    kind = output_type or infer_output_type(p)
    if kind not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {kind!r}; use one of {OUTPUT_TYPES}")
    if p.is_dir() and not (kind == "anndata_zarr" and _is_anndata_zarr(p)):
        raise IsADirectoryError(f"{p} is a folder{' (not an AnnData Zarr store)' if kind == 'anndata_zarr' else ''}: "
                                "phenovec replaces only an output of its own kind there; give another name")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        if kind == "csv":
            comp = _csv_compression(p, compression_options)
            df.to_csv(tmp, index=False, sep="\t" if ".tsv" in p.name.lower() else ",",
                      compression=comp, float_format=float_format)
        elif kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            declared = declared_features(df)
            if declared:  # written by phenovec's own key (read_table ignores the attrs pyarrow also stores)
                declared = {"features": list(declared), "others": [str(c) for c in df.attrs.get(_OTHERS_ATTR, [])]}
            if metadata is not None or declared:
                kv = dict(table.schema.metadata or {})
                if metadata is not None:
                    kv[b"phenovec"] = json.dumps(metadata, sort_keys=True, default=str).encode()
                if declared:  # the feature list travels with the file (read_table declares it again)
                    kv[_FEATURES_KEY.encode()] = json.dumps(declared).encode()
                table = table.replace_schema_metadata(kv)
            pq.write_table(table, tmp, compression="snappy", use_dictionary=dictionary_columns(df))
        else:
            import anndata as ad

            feats = list(features) if features is not None else declared_features(df)
            if feats is None:  # the features every phenovec step would infer (CellProfiler's prefixes first), so
                # that an annotation such as a numeric class code stays in obs
                from phenovec.process.columns import resolve_columns

                try:
                    feats = resolve_columns(df)[0]
                except ValueError:
                    feats = []
            obs = df[[c for c in df.columns if c not in set(feats)]].copy()
            obs.index = obs.index.astype(str)
            all32 = bool(feats) and all(df[f].dtype == np.float32 for f in feats)
            adata = ad.AnnData(
                X=df[feats].to_numpy(dtype=np.float32 if all32 else np.float64),
                obs=obs,
                var=pd.DataFrame(index=[str(f) for f in feats]),
            )
            # what the reader needs to give the same table back: column order, and which categorical obs columns
            # were strings (AnnData stores string columns as categoricals)
            adata.uns[_COLUMNS_UNS] = json.dumps({"order": [str(c) for c in df.columns],
                                                  "dtypes": {str(c): str(df[c].dtype) for c in obs.columns}})
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
    """The ``phenovec`` metadata dict :func:`write_profiles` stored in a Parquet file or AnnData ``uns`` ({} if
    none)."""
    import json

    import pyarrow.parquet as pq

    kind = table_format(path)
    if kind in ("anndata_h5ad", "anndata_zarr"):
        import anndata as ad

        p = Path(path)
        adata = ad.read_h5ad(p, backed="r") if kind == "anndata_h5ad" else ad.read_zarr(p)
        raw = adata.uns.get("phenovec")
        if kind == "anndata_h5ad":
            adata.file.close()
        return json.loads(str(raw)) if raw is not None else {}

    kv = pq.read_schema(path).metadata or {}
    raw = kv.get(b"phenovec")
    return json.loads(raw) if raw else {}
