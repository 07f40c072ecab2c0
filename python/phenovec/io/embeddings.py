"""Zarr embedding store: one row per cell (or site / well), features as a chunked Zarr array.

Layout of a store directory ``NAME.zarr`` (a Zarr v3 group):

- ``features``: array rows x D (float32 by default), chunked by rows (``chunk_rows`` x D, default 16,384: a
  65,536-row batch then spans 4 chunks that decode in parallel, 2.4x faster than one 65,536-row chunk), zstd;
- ``meta.parquet``: the metadata table, one row per array row, in the same order, streamed to Parquet row groups
  as rows are appended (:class:`ParquetAppender`, row groups of about ``chunk_rows`` rows: the writer holds at
  most one row group of metadata, whatever the number of rows);
- group attributes ``{"phenovec": "embeddings", "version": 1, "features": [D names]}``.

Writers build the store under a temporary sibling directory and rename it into place on ``close()``,
so a crash never leaves a store that looks complete but is not.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

STORE_KIND = "embeddings"


def cast_features(x: np.ndarray, dtype) -> np.ndarray:
    """Features in a store dtype (a view when already in it). float32 -> float16 through ``_core.to_float16``:
    numpy's rounding bit for bit, at a cost that does not depend on the values (numpy's own cast raises the
    underflow flag with a libm call per value below float16's normal range: 27x slower on the features of an
    untrained EfficientNet-B0, all around 1e-15, which cost ~1.6 % of a profiling run's CPU)."""
    x = np.asarray(x)
    dt = np.dtype(dtype)
    if dt == np.float16 and x.dtype == np.float32:
        from phenovec import _core

        return _core.to_float16(np.ascontiguousarray(x))
    return x.astype(dt, copy=False)


def is_embedding_store(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "zarr.json").exists() and (p / "meta.parquet").exists()


class ParquetAppender:
    """Write one Parquet file from DataFrame blocks appended in order, holding at most about ``row_group_rows`` rows.

    Blocks are buffered until they hold ``row_group_rows`` rows, then concatenated (``pandas.concat``) and written
    as one row group with ``pyarrow.parquet.ParquetWriter`` (the same conversion as ``DataFrame.to_parquet(index=
    False)``, so reading the file back with ``pandas.read_parquet`` gives what ``to_parquet`` of the concatenation
    of all blocks gives, for blocks whose columns have consistent types). The file's schema is that of the first
    row group; later row groups are cast to it (int64 -> float64, null -> string, ...) and a column that cannot be
    cast, or different column names, is an error naming the column and the file. Zero-row blocks hold no rows
    but the first one fixes the columns (and dtypes) of a file that gets no rows at all; with no block at all the
    file is an empty table without columns (``pandas.DataFrame().to_parquet``).

    The file is written to a temporary sibling (``.NAME.tmpPID``) and renamed into place by :meth:`close`;
    :meth:`abort` removes it.
    """

    def __init__(self, path: str | os.PathLike, row_group_rows: int = 16384):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.row_group_rows = int(row_group_rows)
        if self.row_group_rows < 1:
            raise ValueError(f"row_group_rows must be >= 1, got {row_group_rows}")
        self.rows = 0
        self._written = 0
        self._writer = None
        self._schema = None
        self._buf: list[pd.DataFrame] = []
        self._held = 0
        self._empty: pd.DataFrame | None = None

    def append(self, df: pd.DataFrame) -> None:
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"{self.path}: expected a pandas DataFrame block, got {type(df).__name__}")
        if len(df) == 0:
            if self._empty is None:
                self._empty = df.iloc[:0].reset_index(drop=True)
            return
        self._buf.append(df)
        self._held += len(df)
        self.rows += len(df)
        if self._held >= self.row_group_rows:
            self._flush()

    def _cast(self, table):
        import pyarrow as pa

        names, want = table.schema.names, self._schema.names
        if names != want:
            missing = [c for c in want if c not in names]
            extra = [c for c in names if c not in want]
            raise ValueError(f"{self.path}: a block has columns {names}, the first row group had {want} "
                             f"(missing {missing}, extra {extra}; same names in the same order are needed)")
        if table.schema.equals(self._schema, check_metadata=False):
            return table.replace_schema_metadata(self._schema.metadata)
        cols = []
        for i, f in enumerate(self._schema):
            col = table.column(i)
            if not col.type.equals(f.type):
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                    raise ValueError(f"{self.path}: column {f.name!r} is {col.type} in rows {self._written}.. but "
                                     f"{f.type} in the first row group (which fixed the file's schema) and cannot "
                                     f"be cast: {e}") from None
            cols.append(col)
        return pa.Table.from_arrays(cols, schema=self._schema)

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buf:
            return
        df = pd.concat(self._buf, ignore_index=True) if len(self._buf) > 1 else self._buf[0]
        self._buf, self._held = [], 0
        table = pa.Table.from_pandas(df, preserve_index=False)
        del df
        if self._writer is None:
            self._schema = table.schema
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, self._schema)
        else:
            table = self._cast(table)
        self._writer.write_table(table)
        self._written += table.num_rows

    def close(self) -> Path:
        """Write what is buffered, close the file and rename it into place."""
        try:
            self._flush()
            if self._writer is None:
                (self._empty if self._empty is not None else pd.DataFrame()).to_parquet(self.tmp, index=False)
            else:
                self._writer.close()
                self._writer = None
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the file being written (nothing is published)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
            self._writer = None
        self._buf, self._held = [], 0
        if self.tmp.exists():
            self.tmp.unlink()


class EmbeddingWriter:
    """Append rows (metadata frame + feature matrix) to a new store; ``close()`` publishes it atomically.

    Blocks of any size may be appended (one site's cells, say): features are buffered and written to the Zarr
    array a whole chunk (``chunk_rows`` rows) at a time, the rest on ``close()``, so no chunk is rewritten; the
    metadata is streamed to ``meta.parquet`` (:class:`ParquetAppender`, row groups of about ``chunk_rows`` rows).
    The writer holds at most about one chunk of features and one row group of metadata. A zero-row ``append``
    adds no row; the first one fixes the metadata columns of a store that gets no rows at all.

    ``expected_rows`` (when the caller knows an upper bound of the rows it will append): a store expected to hold
    fewer rows than ``chunk_rows`` gets chunks of that many rows instead. Zarr encodes whole chunks, so the one
    partial chunk of a small store was encoded at full size, padding included (3,863 float16 rows x 1,280: 0.13-0.5 s
    with 16,384-row chunks, 0.06 s with 4,800-row ones). More rows than expected are still written, in more chunks.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        features: Sequence[str],
        dtype=np.float32,
        chunk_rows: int = 16384,
        overwrite: bool = False,
        expected_rows: int | None = None,
    ):
        import zarr
        from zarr.codecs import ZstdCodec

        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"embedding store already exists: {self.path}")
        self.features = [str(f) for f in features]
        if int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        if expected_rows is not None:
            chunk_rows = min(int(chunk_rows), max(1, int(expected_rows)))
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.group = zarr.open_group(str(self.tmp), mode="w")
        self.array = self.group.create_array(
            "features",
            shape=(0, len(self.features)),
            chunks=(int(chunk_rows), len(self.features)),
            dtype=np.dtype(dtype),
            compressors=[ZstdCodec(level=1)],
        )
        self.group.attrs.update({"phenovec": STORE_KIND, "version": 1, "features": self.features})
        self._meta = ParquetAppender(self.tmp / "meta.parquet", row_group_rows=int(chunk_rows))
        self.chunk_rows = int(chunk_rows)
        self._pending: list[np.ndarray] = []  # features appended but not yet written (less than a chunk)
        self._held = 0
        self.written = 0  # rows in the Zarr array
        self.n = 0

    def append(self, meta: pd.DataFrame, feats: np.ndarray) -> None:
        feats = np.asarray(feats)
        if feats.ndim != 2 or feats.shape[1] != len(self.features):
            raise ValueError(f"expected a matrix with {len(self.features)} columns, got shape {feats.shape}")
        if len(meta) != feats.shape[0]:
            raise ValueError(f"metadata has {len(meta)} rows but the feature block has {feats.shape[0]}")
        if len(feats):
            self._pending.append(cast_features(feats, self.array.dtype))
            self._held += len(feats)
            if self._held >= self.chunk_rows:
                self._write(final=False)
        self._meta.append(meta.reset_index(drop=True))
        self.n += feats.shape[0]

    def _write(self, final: bool) -> None:
        """Write the whole chunks of the pending features (all of them when ``final``)."""
        if not self._pending:
            return
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        k = len(block) if final else (len(block) // self.chunk_rows) * self.chunk_rows
        n0, n1 = self.written, self.written + k
        self.array.resize((n1, len(self.features)))
        self.array[n0:n1] = block[:k]
        self.written = n1
        rest = block[k:]
        self._pending, self._held = ([rest] if len(rest) else []), len(rest)

    def abort(self) -> None:
        """Drop the store being written (nothing is published)."""
        self._meta.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def close(self) -> Path:
        try:
            self._write(final=True)
            self._meta.close()
        except BaseException:
            self.abort()
            raise
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return self.path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_embeddings(
    path: str | os.PathLike,
    meta: pd.DataFrame,
    feats: np.ndarray,
    features: Sequence[str] | None = None,
    dtype=np.float32,
    chunk_rows: int = 16384,
    overwrite: bool = False,
) -> Path:
    """Write a whole store at once (see the module docstring for the layout)."""
    feats = np.asarray(feats)
    names = list(features) if features is not None else [f"feature_{i}" for i in range(feats.shape[1])]
    w = EmbeddingWriter(path, names, dtype=dtype, chunk_rows=chunk_rows, overwrite=overwrite,
                        expected_rows=feats.shape[0])
    with w:
        for i in range(0, feats.shape[0], chunk_rows):
            w.append(meta.iloc[i : i + chunk_rows], feats[i : i + chunk_rows])
        if feats.shape[0] == 0:
            w.append(meta, np.empty((0, len(names))))  # no rows: fixes the metadata columns
    return Path(path)


class EmbeddingStore:
    """Read access to a store: ``.features`` (names), ``.array`` (the Zarr array), ``.meta`` (DataFrame)."""

    def __init__(self, path: str | os.PathLike):
        import zarr

        self.path = Path(path)
        if not is_embedding_store(self.path):
            raise FileNotFoundError(f"{self.path} is not a phenovec embedding store (zarr.json + meta.parquet)")
        self.group = zarr.open_group(str(self.path), mode="r")
        attrs = dict(self.group.attrs)
        if attrs.get("phenovec") != STORE_KIND:
            raise ValueError(f"{self.path}: group attribute phenovec={attrs.get('phenovec')!r}, expected 'embeddings'")
        self.features = list(attrs["features"])
        self.array = self.group["features"]
        self.meta_path = self.path / "meta.parquet"
        import pyarrow.parquet as pq

        self.meta_columns = list(pq.read_schema(self.meta_path).names)
        self.num_rows = int(self.array.shape[0])
        n_meta = pq.ParquetFile(self.meta_path).metadata.num_rows
        if n_meta != self.num_rows:
            raise ValueError(f"{self.path}: meta.parquet has {n_meta} rows but features has {self.num_rows}")

    @property
    def meta(self) -> pd.DataFrame:
        return pd.read_parquet(self.meta_path)

    def read(self) -> pd.DataFrame:
        """The whole store as one table (metadata columns, then features); the feature names are recorded in
        ``attrs[phenovec.io.profiles.FEATURES_ATTR]``, so per-cell metadata without the ``Metadata_`` prefix
        (``ObjectNumber``, ``x``, ``y``, ``edge``) is never taken for a feature."""
        from phenovec.io.profiles import declare_features

        x = self.array[:]
        meta = self.meta
        clash = [f for f in self.features if f in set(meta.columns)]
        if clash:
            raise ValueError(f"{self.path}: {clash[0]!r} is both a metadata column and a feature name")
        return declare_features(pd.concat([meta, pd.DataFrame(x, columns=self.features)], axis=1), self.features)
