"""Row sources for streaming: one interface over a DataFrame, Parquet, CSV and a Zarr embedding store.

``open_source(x)`` returns an object with ``columns`` (list of names), ``num_rows``,
``iter_batches(columns=None, batch_rows=65536)`` yielding pandas DataFrames in row order, each indexed by
its global row positions, and ``iter_arrays(meta_columns, features, batch_rows)`` yielding
``(metadata frame, float feature matrix)`` (from a Zarr store without building a DataFrame of features), so
streaming passes hold one batch at a time whatever the input size. Formats that cannot be streamed (AnnData
``.h5ad`` / ``.zarr``, DeepProfiler ``.npz``) are read whole (:func:`phenovec.io.profiles.read_table`) and served
from memory. ``declared_features`` is the list of feature columns when the format says which they are (an
embedding store's features, AnnData ``var``, DeepProfiler ``features``), else ``None``.

A list of inputs (e.g. the ``embeddings.zarr`` of every shard of a sharded profiling run,
``phenovec.profile.shards``) is one :class:`ConcatSource`: the rows of each input in turn, never concatenated in
memory. A Parquet folder (such as a sharded run's plate-partitioned ``wells_mean/``) is one ``ParquetSource``
already: its files in path order, streamed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from phenovec.io.embeddings import EmbeddingStore


class _ArrayBatches:
    """``iter_arrays``: batches as (metadata frame, float feature matrix), the shape streaming reducers want."""

    def iter_arrays(self, meta_columns: Sequence[str], features: Sequence[str], batch_rows: int = 65536,
                    dtype=np.float64) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        from phenovec.process.columns import numeric_features

        meta_columns, features = list(meta_columns), list(features)
        for b in self.iter_batches(columns=meta_columns + [f for f in features if f not in set(meta_columns)],
                                   batch_rows=batch_rows):
            yield b[meta_columns], numeric_features(b, features, dtype)


class DataFrameSource(_ArrayBatches):
    def __init__(self, df: pd.DataFrame, name: str = "DataFrame"):
        from phenovec.io.profiles import declared_features

        self.df = df
        self.columns = [str(c) for c in df.columns]
        self.num_rows = len(df)
        self.name = name
        self.declared_features = declared_features(df)

    def iter_batches(self, columns: Sequence[str] | None = None, batch_rows: int = 65536) -> Iterator[pd.DataFrame]:
        cols = _check(self, columns)
        df = self.df if cols is None else self.df[cols]  # select once, not per batch (wide frames)
        for i in range(0, self.num_rows, batch_rows):
            b = df.iloc[i : i + batch_rows]
            yield b.set_axis(pd.RangeIndex(i, i + len(b)), axis=0)


class ParquetSource(_ArrayBatches):
    def __init__(self, path: Path):
        import pyarrow.dataset as ds

        self.path = path
        self.name = str(path)
        self.declared_features = None
        try:
            self.dataset = ds.dataset(str(path), format="parquet")
        except Exception as e:  # pyarrow's "magic bytes" and friends: name the input and say what was expected
            raise ValueError(f"{path}: cannot read as Parquet ({type(e).__name__}: {e})") from None
        self.columns = list(self.dataset.schema.names)
        self.num_rows = int(self.dataset.count_rows())

    def iter_batches(self, columns: Sequence[str] | None = None, batch_rows: int = 65536) -> Iterator[pd.DataFrame]:
        cols = _check(self, columns)
        offset = 0
        # little read-ahead: pyarrow's default (16 batches, 4 files) holds ~1 GB extra on wide tables
        for rb in self.dataset.to_batches(columns=cols, batch_size=batch_rows, batch_readahead=1,
                                          fragment_readahead=1):
            if rb.num_rows == 0:
                continue
            b = rb.to_pandas()
            b.index = pd.RangeIndex(offset, offset + len(b))
            offset += len(b)
            yield b


class CsvSource(_ArrayBatches):
    def __init__(self, path: Path):
        self.path = path
        self.name = str(path)
        from phenovec.io.profiles import _separator

        self.sep = _separator(path)
        self.declared_features = None
        try:
            self.columns = list(pd.read_csv(path, sep=self.sep, nrows=0).columns)
        except Exception as e:
            raise ValueError(f"{path}: cannot read as CSV ({type(e).__name__}: {e})") from None
        self._n = None
        self._dtypes = {}

    @property
    def num_rows(self) -> int:
        if self._n is None:
            # the rows alone: no metadata dtypes needed (iter_batches would read the column twice to get them)
            self._n = sum(len(b) for b in pd.read_csv(self.path, sep=self.sep, usecols=[0], chunksize=65536,
                                                       dtype=str))
        return self._n

    def _metadata_dtypes(self, cols) -> dict:
        """The dtypes a whole-file read gives the metadata columns among ``cols``, read once: pandas infers a
        chunk's types from that chunk alone, so plate '1001' came back as the number 1001 in a chunk of digit-only
        names and as text beside '1001a': two groups of one plate in a streamed aggregate."""
        from phenovec.io.profiles import is_metadata_column

        wanted = [c for c in (self.columns if cols is None else cols) if is_metadata_column(c)]
        missing = [c for c in wanted if c not in self._dtypes]
        if missing:
            whole = pd.read_csv(self.path, sep=self.sep, usecols=missing, low_memory=False)
            self._dtypes.update({c: (str if whole[c].dtype == object else whole[c].dtype) for c in missing})
        return {c: self._dtypes[c] for c in wanted}

    def iter_batches(self, columns: Sequence[str] | None = None, batch_rows: int = 65536) -> Iterator[pd.DataFrame]:
        cols = _check(self, columns)
        offset = 0
        dtypes = self._metadata_dtypes(cols)
        for b in pd.read_csv(self.path, sep=self.sep, usecols=cols, chunksize=batch_rows, low_memory=False,
                             dtype=dtypes):
            if cols is not None:
                b = b[cols]
            b.index = pd.RangeIndex(offset, offset + len(b))
            offset += len(b)
            yield b


class EmbeddingStoreSource:
    def __init__(self, path: Path):
        self.store = EmbeddingStore(path)
        self.name = str(path)
        self.columns = self.store.meta_columns + self.store.features
        self.declared_features = list(self.store.features)
        self.num_rows = self.store.num_rows

    def iter_arrays(self, meta_columns: Sequence[str], features: Sequence[str], batch_rows: int = 65536,
                    dtype=np.float64) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        """Metadata from ``meta.parquet`` and the feature block straight from the Zarr array (no DataFrame of
        features is built); feature columns that are metadata columns are not supported here."""
        import pyarrow.parquet as pq

        meta_columns, features = list(meta_columns), list(features)
        _check(self, meta_columns + features)
        pos = {f: i for i, f in enumerate(self.store.features)}
        bad = [f for f in features if f not in pos]
        if bad:
            raise KeyError(f"{self.name}: {bad[0]!r} is a metadata column of the embedding store, not one of its "
                           f"{len(pos)} features ({self.store.features[0]} .. {self.store.features[-1]}); leave "
                           "features out to use them all")
        idx = [pos[f] for f in features]
        contiguous = idx == list(range(idx[0], idx[0] + len(idx))) if idx else True
        metas = (pq.ParquetFile(self.store.meta_path).iter_batches(batch_size=batch_rows, columns=meta_columns)
                 if meta_columns else None)
        pending = pd.DataFrame(columns=meta_columns)
        for start in range(0, self.num_rows, batch_rows):
            stop = min(start + batch_rows, self.num_rows)
            if metas is None:
                meta = pd.DataFrame(index=pd.RangeIndex(start, stop))
            else:
                while len(pending) < stop - start:
                    nxt = next(metas).to_pandas()
                    pending = pd.concat([pending, nxt], ignore_index=True) if len(pending) else nxt
                meta, pending = pending.iloc[: stop - start], pending.iloc[stop - start :].reset_index(drop=True)
                meta = meta.set_axis(pd.RangeIndex(start, stop), axis=0)
            if contiguous:
                x = self.store.array[start:stop, idx[0] : idx[0] + len(idx)] if idx else np.empty((stop - start, 0))
            else:
                x = self.store.array[start:stop][:, idx]
            yield meta, np.ascontiguousarray(x, dtype=dtype)

    def iter_batches(self, columns: Sequence[str] | None = None, batch_rows: int = 65536) -> Iterator[pd.DataFrame]:
        cols = _check(self, columns) or self.columns
        meta_set = set(self.store.meta_columns)
        meta_cols = [c for c in cols if c in meta_set]
        feat_cols = [c for c in cols if c not in meta_set]
        dtype = self.store.array.dtype
        for meta, x in self.iter_arrays(meta_cols, feat_cols, batch_rows=batch_rows, dtype=dtype):
            b = pd.concat([meta, pd.DataFrame(x, columns=feat_cols, index=meta.index)], axis=1)
            yield b[cols]


class ConcatSource(_ArrayBatches):
    """The rows of several sources one after another, as one source (row positions run on across them; a batch
    never spans two sources). Every source must have the same columns (the first's order is kept) and, when they
    declare their features, the same features."""

    def __init__(self, sources: Sequence):
        self.sources = [open_source(s) for s in sources]
        if not self.sources:
            raise ValueError("no input given (an empty list of sources)")
        first = self.sources[0]
        for src in self.sources[1:]:
            if set(src.columns) != set(first.columns):
                extra = sorted(set(src.columns) - set(first.columns))
                missing = sorted(set(first.columns) - set(src.columns))
                raise KeyError(f"{src.name}: its columns differ from {first.name}'s (" +
                               (f"missing {missing[0]!r}" if missing else f"extra {extra[0]!r}") +
                               f"; {len(missing)} missing, {len(extra)} extra): a list of inputs must be one table")
            if src.declared_features != first.declared_features:
                raise ValueError(f"{src.name}: declares other features than {first.name} (a list of embedding "
                                 "stores must come from one model)")
        self.columns = list(first.columns)
        self.declared_features = first.declared_features
        self.name = first.name if len(self.sources) == 1 else f"{first.name} (+{len(self.sources) - 1} more)"
        self._n = None

    @property
    def num_rows(self) -> int:
        if self._n is None:
            self._n = sum(src.num_rows for src in self.sources)
        return self._n

    def iter_batches(self, columns: Sequence[str] | None = None, batch_rows: int = 65536) -> Iterator[pd.DataFrame]:
        cols = _check(self, columns) or self.columns
        offset = 0
        for src in self.sources:
            for b in src.iter_batches(columns=cols, batch_rows=batch_rows):
                b = b.set_axis(pd.RangeIndex(offset, offset + len(b)), axis=0)
                offset += len(b)
                yield b

    def iter_arrays(self, meta_columns: Sequence[str], features: Sequence[str], batch_rows: int = 65536,
                    dtype=np.float64) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        """Each source's own ``iter_arrays`` in turn (an embedding store's features straight from Zarr)."""
        offset = 0
        for src in self.sources:
            for meta, x in src.iter_arrays(meta_columns, features, batch_rows=batch_rows, dtype=dtype):
                meta = meta.set_axis(pd.RangeIndex(offset, offset + len(meta)), axis=0)
                offset += len(meta)
                yield meta, x


def _check(src, columns):
    if columns is None:
        return None
    cols = list(columns)
    have = set(src.columns)
    missing = [c for c in cols if c not in have]
    if missing:
        raise KeyError(f"{src.name}: unknown column {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return cols


def open_source(source) -> DataFrameSource | ParquetSource | CsvSource | EmbeddingStoreSource | ConcatSource:
    """A row source for a DataFrame, a Parquet file or dataset directory, a CSV/TSV file, a Zarr embedding store,
    or a list / tuple of those (:class:`ConcatSource`, read one after another)."""
    if isinstance(source, (DataFrameSource, ParquetSource, CsvSource, EmbeddingStoreSource, ConcatSource)):
        return source
    if isinstance(source, (list, tuple)):
        return open_source(source[0]) if len(source) == 1 else ConcatSource(source)
    if isinstance(source, pd.DataFrame):
        return DataFrameSource(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"cannot stream rows from a {type(source).__name__}")
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"input not found: {p}")
    from phenovec.io.profiles import read_table, table_format

    kind = table_format(p)  # ValueError naming the file and the formats for anything else
    if kind == "embeddings":
        return EmbeddingStoreSource(p)
    if kind == "parquet":
        return ParquetSource(p)
    if kind == "csv":
        return CsvSource(p)
    return DataFrameSource(read_table(p), name=str(p))
