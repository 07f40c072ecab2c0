"""Aggregate single-cell (or site) profiles into group profiles: pycytominer 1.7.1 ``aggregate``, in memory
and streamed.

``aggregate`` matches ``pycytominer.aggregate`` 1.7.1 (``pycytominer/aggregate.py``) on the same input:

- output: the ``strata`` columns, then ``Metadata_Object_Count`` (with ``compute_object_count=True``), then the
  features as float64; one row per group of ``groupby(strata, dropna=False, sort=True)``: groups sorted by
  key, a missing key (NaN/None) is its own group and sorts last, categorical strata give every category
  combination (pandas ``observed=False``, empty groups are NaN); ``ImageNumber``/``ObjectNumber`` columns are
  dropped from the output as the peer does;
- ``median``/``mean`` skip NaN as pandas does (all-NaN group -> NaN); the median of an even count is the mean of
  the two middle values, of an odd count the middle value itself (pandas ``median_linear``), so medians are
  exactly equal to the peer's; means are float64 sums in row order (the peer uses Kahan summation): observed
  within 8e-14 relative (a near-zero mean of cancelling values), tests assert 1e-12;
- ``Metadata_Object_Count`` = non-missing ``object_feature`` values per group; groups with a missing key get NaN
  (the peer counts with ``dropna=True`` and merges back), so the column is int64 unless such a group exists;
- ``subset_data_df`` is the peer's inner merge.

Differences (documented policy): features are resolved with :func:`phenovec.process.columns.resolve_columns`
(CellProfiler prefixes as the peer; without any, every numeric non-``Metadata_`` column except CellProfiler's
``ImageNumber`` / ``ObjectNumber`` / ``TableNumber`` ids, so embeddings need no list); an input whose format names
its features (phenovec's ``embeddings.zarr``, AnnData, DeepProfiler ``.npz``: ``declared_features``) uses exactly
those, so per-cell metadata such as ``ObjectNumber``, ``x``, ``y`` is never averaged; with
``compute_object_count`` and the default ``object_feature="Metadata_ObjectNumber"`` absent, ``ObjectNumber``
(CellProfiler's and phenovec's per-cell column) is counted instead; numeric strings in a feature column are numbers
(as the peer's ``astype(float)`` reads them), other strings than missing-value tokens raise ``ValueError`` naming
column, row and value (the peer raises from ``astype(float)``); an unknown stratum raises ``KeyError`` naming it; a stratum that is
also a feature raises ``ValueError``.

``aggregate_stream`` computes the same table from a row source (:func:`phenovec.process.source.open_source`:
DataFrame, Parquet file/dataset, CSV, Zarr embedding store) one batch at a time. ``mean`` keeps per-group float64
running sums and non-NaN counts (memory = groups x features); sums are accumulated row by row in input order in
both paths, so the streamed result equals :func:`aggregate` exactly. ``median`` first tries one pass assuming
each group's rows are contiguous (one site or well after another): a group is finished, and its median taken,
when the next group starts; memory = the largest group. If a group reappears later (or one group outgrows the
memory budget) it restarts and partitions rows by group id (hash) into ``K`` spill files of float64 rows, ``K``
chosen so a bucket fits ``memory_budget_bytes``, then takes each bucket's exact group medians in memory (in
column slices when a bucket, or one group, is larger than the budget). Memory is bounded by the budget plus one
batch, independently of the number of rows.

Kernels: group ids from pandas' grouper; sums as a CSR (group x row) matrix product, which adds each group's rows
one after another in row order (the same order for one batch or many); medians per run of equal-size groups by a
batched ``np.sort`` (NaN sorts last) and picking the middle of the non-NaN values.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np
import pandas as pd

from phenovec.process.columns import check_columns, numeric_features, resolve_columns

OPERATIONS = ("mean", "median")
OBJECT_COUNT = "Metadata_Object_Count"
_DROPPED = ("ImageNumber", "ObjectNumber")
_SLICE_ELEMS = 1 << 23  # feature values per column slice of the in-memory median (64 MiB of float64)
_BLOCK_ELEMS = 1 << 22  # values per batched sort in the median kernel


# --------------------------------------------------------------------------------------------------- checks


def _features(table: pd.DataFrame, features, image_features: bool, declared: list[str] | None) -> list[str]:
    """``features`` resolved: the format's declared features for ``"infer"`` when it has them, else
    ``resolve_columns`` without CellProfiler's id columns (which are metadata)."""
    from phenovec.io.profiles import ID_COLUMNS

    if isinstance(features, str) and features == "infer" and declared:
        return list(declared)
    feats, _ = resolve_columns(table, features, image_features=image_features)
    if isinstance(features, str):
        feats = [f for f in feats if f not in ID_COLUMNS]
        if not feats:
            raise ValueError("no feature columns found besides CellProfiler ids; pass features=[...]")
    return feats


def _object_feature(columns, object_feature: str) -> str:
    """``object_feature``, or ``ObjectNumber`` when the default ``Metadata_ObjectNumber`` is absent and it is
    there; ``KeyError`` naming the column otherwise."""
    cols = set(columns)
    if object_feature in cols:
        return object_feature
    if object_feature == "Metadata_ObjectNumber" and "ObjectNumber" in cols:
        return "ObjectNumber"
    raise KeyError(f"object_feature: unknown column {object_feature!r}"
                   + (" (nor ObjectNumber)" if object_feature == "Metadata_ObjectNumber" else ""))


def check_operation(operation: str, allowed: Sequence[str] = OPERATIONS) -> str:
    """The operation lower-cased; ``ValueError`` naming it and the allowed ones otherwise (as the peer)."""
    if not isinstance(operation, str) or operation.lower() not in allowed:
        raise ValueError(f"operation {operation!r} not supported, select one of {list(allowed)}")
    return operation.lower()


def _strata_list(strata) -> list[str]:
    if isinstance(strata, str):
        return [strata]
    strata = list(strata)
    if not strata:
        raise ValueError("strata must name at least one column")
    return strata


def _check_disjoint(strata: Sequence[str], features: Sequence[str]) -> None:
    both = [c for c in strata if c in set(features)]
    if both:
        raise ValueError(f"column {both[0]!r} is both a stratum and a feature")


# ----------------------------------------------------------------------------------------------- group keys


def group_keys(strata_df: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Rows -> output groups as pandas ``groupby(strata, dropna=False, sort=True)`` forms them.

    Returns ``(pos, keys)``: ``keys`` is the key frame exactly as ``.median().reset_index()`` has it (dtypes,
    order, NaN keys last, unobserved category combinations included) and ``pos[i]`` the row of ``keys`` that
    input row ``i`` belongs to.
    """
    strata = list(strata_df.columns)
    gb = strata_df.groupby(strata, dropna=False, sort=True)
    size = gb.size()
    keys = size.index.to_frame(index=False)
    codes = gb.ngroup().to_numpy()  # numbers the observed groups in sorted order
    observed = np.flatnonzero(size.to_numpy() > 0)
    pos = observed[codes] if len(codes) else codes.astype(np.int64)
    return pos.astype(np.int64, copy=False), keys


def _key_has_na(keys: pd.DataFrame) -> np.ndarray:
    return keys.isna().any(axis=1).to_numpy()


# ---------------------------------------------------------------------------------------------- the kernels


def _segments(codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order of rows by group and the group sizes."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups).astype(np.int64)
    return order, sizes


def _accumulate_sums(
    sums: np.ndarray, rows: np.ndarray, nan_counts: np.ndarray | None, gids: np.ndarray, x: np.ndarray
) -> np.ndarray | None:
    """Add the rows of ``x`` (NaN set to 0 in place) to ``sums[gid]`` one after another in row order.

    ``sums[g] <- ((sums[g] + x_i1) + x_i2) + ...`` for the rows of group ``g`` in order: a CSR product whose row
    ``g`` lists the old sum first, then the rows. So the result does not depend on how rows are split into batches.
    ``rows`` counts rows per group, ``nan_counts`` (allocated on first NaN, returned) NaNs per group and feature.
    """
    from scipy import sparse

    nb = len(gids)
    if nb == 0:
        return nan_counts
    u, local = np.unique(gids, return_inverse=True)
    k = len(u)
    order, cnt = _segments(local, k)
    starts = np.concatenate([[0], np.cumsum(cnt)])
    by_group = sparse.csr_array((np.ones(nb), order, starts), shape=(k, nb))  # row g: its rows, in row order
    nan = np.isnan(x)
    nan_cols = np.flatnonzero(nan.any(axis=0))
    if len(nan_cols):
        x[nan] = 0.0
        if nan_counts is None:
            nan_counts = np.zeros_like(sums)
        nan_counts[np.ix_(u, nan_cols)] += by_group @ nan[:, nan_cols].astype(np.float64)
    if not rows[u].any():  # first rows of all these groups: 0 + x_i1 + x_i2 ..., no old sums to add
        sums[u] = by_group @ x
    else:  # row g: old sum first (column g), then its rows (columns k + i)
        indptr = starts + np.arange(k + 1)
        indices = np.empty(k + nb, dtype=np.int64)
        head = indptr[:-1]
        is_row = np.ones(k + nb, dtype=bool)
        is_row[head] = False
        indices[head] = np.arange(k)
        indices[is_row] = k + order
        ext = sparse.csr_array((np.ones(k + nb), indices, indptr), shape=(k, k + nb))
        sums[u] = ext @ np.concatenate([sums[u], x], axis=0)
    rows[u] += cnt
    return nan_counts


def _means(sums: np.ndarray, rows: np.ndarray, nan_counts: np.ndarray | None) -> np.ndarray:
    count = np.broadcast_to(rows[:, None].astype(np.float64), sums.shape)
    if nan_counts is not None:
        count = count - nan_counts
    out = np.full(sums.shape, np.nan)
    np.divide(sums, count, out=out, where=count > 0)
    return out


def _sorted_group_median(xs: np.ndarray, sizes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Median per group of rows stored group after group (group ``g`` = the next ``sizes[g]`` rows), NaN skipped.

    Groups of one size are sorted together (``np.sort``, NaN last); the median of ``k`` non-NaN values is the
    middle one (odd ``k``) or the mean of the two middle ones (even ``k``), as pandas; ``k = 0`` gives NaN.
    """
    n_groups, w = len(sizes), xs.shape[1]
    if out is None:
        out = np.full((n_groups, w), np.nan)
    starts = np.zeros(n_groups, dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    for m in np.unique(sizes):
        if m == 0:
            continue
        gs = np.flatnonzero(sizes == m)
        if m == 1:
            out[gs] = xs[starts[gs]]
            continue
        step = max(1, _BLOCK_ELEMS // (int(m) * max(w, 1)))
        offs = np.arange(m)
        for c in range(0, len(gs), step):
            g = gs[c : c + step]
            block = np.sort(xs[starts[g][:, None] + offs].transpose(0, 2, 1), axis=-1)  # (g, w, m), NaN last
            k = m - np.isnan(block).sum(axis=-1)
            lo = np.take_along_axis(block, np.maximum((k - 1) // 2, 0)[..., None], axis=-1)[..., 0]
            hi = np.take_along_axis(block, (k // 2)[..., None], axis=-1)[..., 0]
            med = np.where(k % 2 == 1, hi, (lo + hi) / 2)
            med[k == 0] = np.nan
            out[g] = med
    return out


def _group_median(x: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Median per group of the rows of ``x`` (``codes`` = group of each row), processed in column slices."""
    n, d = x.shape
    out = np.full((n_groups, d), np.nan)
    if n == 0 or d == 0:
        return out
    is_sorted = bool(np.all(codes[1:] >= codes[:-1]))
    order, sizes = _segments(codes, n_groups)
    w = max(1, min(d, _SLICE_ELEMS // n))
    for c0 in range(0, d, w):
        c1 = min(d, c0 + w)
        xs = x[:, c0:c1] if is_sorted else np.take(x[:, c0:c1], order, axis=0)
        _sorted_group_median(xs, sizes, out=out[:, c0:c1])
    return out


def _object_counts(obj: pd.Series, pos: np.ndarray, keys: pd.DataFrame) -> pd.Series:
    """The peer's ``Metadata_Object_Count``: non-missing values per group, NaN for groups with a missing key."""
    counts = np.bincount(pos[obj.notna().to_numpy()], minlength=len(keys)).astype(np.int64)
    return _count_column(counts, keys)


def _count_column(counts: np.ndarray, keys: pd.DataFrame) -> pd.Series:
    na = _key_has_na(keys)
    if na.any():
        return pd.Series(np.where(na, np.nan, counts.astype(np.float64)), name=OBJECT_COUNT)
    return pd.Series(counts.astype(np.int64), name=OBJECT_COUNT)


def _assemble(keys: pd.DataFrame, values: np.ndarray, features: Sequence[str], counts: pd.Series | None) -> pd.DataFrame:
    parts = [keys.reset_index(drop=True)]
    if counts is not None:
        parts.append(counts.reset_index(drop=True).to_frame())
    parts.append(pd.DataFrame(values, columns=list(features)))
    out = pd.concat(parts, axis=1)
    drop = [c for c in out.columns if c in _DROPPED]
    return out.drop(columns=drop) if drop else out


def _write(df: pd.DataFrame, output_file, output_type, compression_options, float_format):
    if output_file is None:
        return df
    from phenovec.io.profiles import write_profiles

    write_profiles(df, output_file, output_type=output_type, compression_options=compression_options,
                   float_format=float_format)
    return str(output_file)


# ------------------------------------------------------------------------------------------------ in memory


def _carried_columns(columns, strata: list, feats: list) -> list:
    """Per-row measurements in metadata columns that aggregation keeps, aggregated as the features are: the harmony
    step's mapping distance (``Metadata_mapping_distance``), so cells mapped onto a Harmony fit before they are
    aggregated still carry it per well for the report. pycytominer has no such column."""
    from phenovec.batch.mapping_confidence import MAPPING_DISTANCE

    return [MAPPING_DISTANCE] if MAPPING_DISTANCE in set(columns) and MAPPING_DISTANCE not in strata + feats else []


def _with_carried(out: pd.DataFrame, strata: list, carried: list) -> pd.DataFrame:
    """``out`` with the carried columns moved from the features to just after the strata."""
    if not carried:
        return out
    cols = [c for c in out.columns if c not in set(carried)]
    return out[cols[:len(strata)] + carried + cols[len(strata):]]


def aggregate(
    population_df,
    strata: Sequence[str] = ["Metadata_Plate", "Metadata_Well"],
    features: str | Sequence[str] = "infer",
    image_features: bool = False,
    operation: str = "median",
    output_file: str | os.PathLike | None = None,
    output_type: str | None = None,
    compute_object_count: bool = False,
    object_feature: str = "Metadata_ObjectNumber",
    subset_data_df: pd.DataFrame | None = None,
    compression_options: str | dict[str, Any] | None = None,
    float_format: str | None = None,
):
    """Group profiles by ``strata`` and take the per-group ``median`` or ``mean`` of every feature.

    Same signature, output and semantics as ``pycytominer.aggregate`` 1.7.1 (see the module docstring; one
    addition: a ``Metadata_mapping_distance`` column, the harmony step's per-cell mapping metric, is kept, aggregated
    as the features are, instead of dropped with the other metadata): medians
    equal the peer's exactly, means to 1e-12 relative (float64 sums in row order vs the peer's Kahan sums).
    ``population_df`` is a DataFrame or a table path (:func:`phenovec.io.profiles.read_table`). With
    ``output_file`` the table is written (csv/parquet/h5ad/zarr by ``output_type`` or the name) and the path is
    returned, as the peer.
    """
    operation = check_operation(operation)
    if not isinstance(population_df, pd.DataFrame):
        from phenovec.io.profiles import read_table

        population_df = read_table(population_df)
    if isinstance(subset_data_df, pd.DataFrame):
        population_df = subset_data_df.merge(
            population_df, how="inner", on=subset_data_df.columns.tolist()
        ).reindex(population_df.columns, axis="columns")
    strata = check_columns(population_df, _strata_list(strata), "strata")
    if compute_object_count:
        object_feature = _object_feature(population_df.columns, object_feature)
    from phenovec.io.profiles import declared_features

    feats = _features(population_df, features, image_features, declared_features(population_df))
    _check_disjoint(strata, feats)
    carried = _carried_columns(population_df.columns, strata, feats)
    feats = feats + carried  # aggregated with the features, then moved among the metadata

    x = numeric_features(population_df, feats)
    pos, keys = group_keys(population_df[strata])
    n_groups = len(keys)
    if operation == "median":
        values = _group_median(x, pos, n_groups)
    else:
        sums = np.zeros((n_groups, len(feats)))
        rows = np.zeros(n_groups, dtype=np.int64)
        nan_counts = _accumulate_sums(sums, rows, None, pos, x)
        values = _means(sums, rows, nan_counts)
    counts = _object_counts(population_df[object_feature], pos, keys) if compute_object_count else None
    out = _with_carried(_assemble(keys, values, feats, counts), strata, carried)
    return _write(out, output_file, output_type, compression_options, float_format)


# ------------------------------------------------------------------------------------------------- streamed


class _NA:
    """Stands for every missing key value (None, NaN, NaT), which pandas puts in one group."""

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "<NA>"


_NA_KEY = _NA()


class _GroupIds:
    """Global group ids (first appearance order) for key tuples seen batch after batch."""

    def __init__(self, strata: list[str]):
        self.strata = strata
        self.ids: dict[tuple, int] = {}
        self.first_rows: list[pd.DataFrame] = []

    def __len__(self) -> int:
        return len(self.ids)

    def assign(self, batch: pd.DataFrame) -> np.ndarray:
        sdf = batch[self.strata]
        local = sdf.groupby(self.strata, dropna=False, sort=False, observed=True).ngroup().to_numpy()
        if len(local) == 0:
            return local.astype(np.int64)
        _, first = np.unique(local, return_index=True)  # first row of each local group, by local code
        firsts = sdf.iloc[first]
        lut = np.empty(len(first), dtype=np.int64)
        new_rows = []
        for j, key in enumerate(firsts.itertuples(index=False, name=None)):
            key = tuple(_NA_KEY if _is_na(v) else v for v in key)
            gid = self.ids.get(key)
            if gid is None:
                gid = self.ids[key] = len(self.ids)
                new_rows.append(j)
            lut[j] = gid
        if new_rows:
            self.first_rows.append(firsts.iloc[new_rows])
        return lut[local]

    def output_order(self) -> tuple[np.ndarray, pd.DataFrame]:
        """``(pos, keys)``: the output row of every group id and the key frame, as :func:`group_keys`."""
        if not self.first_rows:
            raise ValueError("the input has no rows")
        ukeys = pd.concat(self.first_rows, ignore_index=True)
        pos, keys = group_keys(ukeys)
        if len(np.unique(pos)) != len(pos):
            raise ValueError("two distinct group keys compare equal in pandas (mixed key types?); cast the strata")
        return pos, keys


def _is_na(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


class _Grow:
    """A (groups x width) float64 array that grows with the number of groups."""

    def __init__(self, width: int, fill: float = 0.0, dtype=np.float64):
        self.a = np.full((16, width), fill, dtype=dtype)
        self.fill = fill

    def ensure(self, n: int) -> np.ndarray:
        if n > len(self.a):
            new = np.full((max(n, 2 * len(self.a)),) + self.a.shape[1:], self.fill, dtype=self.a.dtype)
            new[: len(self.a)] = self.a
            self.a = new
        return self.a


def _bar(total, desc: str, progress):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=None if progress is None else not progress,
                leave=False)


def _cheap_num_rows(src) -> int | None:
    from phenovec.process import source as srcmod

    return None if isinstance(src, srcmod.CsvSource) else src.num_rows


class _Restart(Exception):
    """The contiguous one-pass median cannot continue (a group reappeared or outgrew the budget)."""


def aggregate_stream(
    source,
    strata: Sequence[str] = ["Metadata_Plate", "Metadata_Well"],
    features: str | Sequence[str] = "infer",
    image_features: bool = False,
    operation: str = "median",
    output_file: str | os.PathLike | None = None,
    output_type: str | None = None,
    compute_object_count: bool = False,
    object_feature: str = "Metadata_ObjectNumber",
    batch_rows: int = 65536,
    memory_budget_bytes: int = 1 << 30,
    spill_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    compression_options: str | dict[str, Any] | None = None,
    float_format: str | None = None,
):
    """:func:`aggregate` over a row source one batch at a time; the result equals :func:`aggregate` exactly.

    ``source``: anything :func:`phenovec.process.source.open_source` accepts (DataFrame, Parquet file or dataset
    directory, CSV/TSV, Zarr embedding store). ``features="infer"`` is resolved on the first batch. ``mean``: one
    pass, memory = groups x features. ``median``: one pass if every group's rows are contiguous, else a pass that
    spills rows into hash buckets under ``spill_dir`` (a temporary directory, removed afterwards) sized by
    ``memory_budget_bytes``; see the module docstring. ``progress``: tqdm bars (default: only on a terminal).
    """
    from phenovec.process.source import open_source

    operation = check_operation(operation)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    src = open_source(source)
    strata = _strata_list(strata)
    missing = [c for c in strata if c not in set(src.columns)]
    if missing:
        raise KeyError(f"strata: unknown column {missing[0]!r}")
    if compute_object_count:
        object_feature = _object_feature(src.columns, object_feature)
    head = next(iter(src.iter_batches(batch_rows=min(batch_rows, 4096))), None)
    if head is None:
        raise ValueError(f"{src.name}: the input has no rows")
    feats = _features(head, features, image_features, getattr(src, "declared_features", None))
    _check_disjoint(strata, feats)
    carried = _carried_columns(src.columns, strata, feats)
    feats = feats + carried  # aggregated with the features, then moved among the metadata
    del head
    columns = list(dict.fromkeys(strata + ([object_feature] if compute_object_count else []) + feats))
    total = _cheap_num_rows(src)
    n_batches = None if total is None else max(1, math.ceil(total / batch_rows))
    ids = _GroupIds(strata)
    ctx = dict(src=src, columns=columns, feats=feats, ids=ids, batch_rows=batch_rows, n_batches=n_batches,
               compute_object_count=compute_object_count, object_feature=object_feature, progress=progress)

    if operation == "mean":
        values_by_gid, counts_by_gid = _stream_mean(**ctx)
        how = {"method": "running sums"}
    else:
        try:
            values_by_gid, counts_by_gid = _stream_median_contiguous(**ctx, budget=memory_budget_bytes)
            how = {"method": "contiguous groups, one pass"}
        except _Restart:
            values_by_gid, counts_by_gid, n_buckets = _stream_median_spill(
                **ctx, budget=memory_budget_bytes, spill_dir=spill_dir,
                total=total if total is not None else src.num_rows)
            how = {"method": "spilled to buckets", "buckets": n_buckets}

    pos, keys = ids.output_order()
    values = np.full((len(keys), len(feats)), np.nan)
    values[pos] = values_by_gid[: len(pos)]
    counts = None
    if compute_object_count:
        c = np.zeros(len(keys), dtype=np.int64)
        c[pos] = counts_by_gid[: len(pos)]
        counts = _count_column(c, keys)
    out = _with_carried(_assemble(keys, values, feats, counts), strata, carried)
    out.attrs["aggregate_stream"] = {"operation": operation, "groups": len(ids), **how}
    return _write(out, output_file, output_type, compression_options, float_format)


def _batches(src, columns, ids, batch_rows, n_batches, compute_object_count, object_feature, feats, progress,
             desc, counts: _Grow):
    """Yield ``(gids, x)`` per batch; counts non-missing ``object_feature`` values per group id on the way."""
    bar = _bar(n_batches, desc, progress)
    try:
        meta_cols = [c for c in columns if c not in set(feats)]
        for b, x in src.iter_arrays(meta_cols, feats, batch_rows=batch_rows):
            if len(b) == 0:
                continue
            gids = ids.assign(b)
            if compute_object_count:
                c = counts.ensure(len(ids))
                c[:, 0] += np.bincount(gids[b[object_feature].notna().to_numpy()], minlength=len(c))
            bar.update(1)
            yield gids, x
    finally:
        bar.close()


def _stream_mean(src, columns, feats, ids, batch_rows, n_batches, compute_object_count, object_feature, progress):
    d = len(feats)
    sums, rows = _Grow(d), _Grow(1, dtype=np.int64)
    counts = _Grow(1, dtype=np.int64)
    nan_counts: _Grow | None = None
    for gids, x in _batches(src, columns, ids, batch_rows, n_batches, compute_object_count, object_feature, feats,
                            progress, "aggregate mean", counts):
        g = len(ids)
        s, r = sums.ensure(g), rows.ensure(g)
        nc = nan_counts.ensure(g) if nan_counts is not None else None
        nc2 = _accumulate_sums(s, r[:, 0], nc, gids, x)
        if nc is None and nc2 is not None:
            nan_counts = _Grow(d)
            nan_counts.a = nc2
    g = len(ids)
    means = _means(sums.ensure(g)[:g], rows.ensure(g)[:g, 0], None if nan_counts is None else nan_counts.ensure(g)[:g])
    return means, counts.ensure(g)[:g, 0]


def _stream_median_contiguous(src, columns, feats, ids, batch_rows, n_batches, compute_object_count,
                              object_feature, progress, budget):
    """One pass: finish each group when the next starts. Raises :class:`_Restart` when rows are not grouped."""
    d = len(feats)
    meds = _Grow(d, fill=np.nan)
    counts = _Grow(1, dtype=np.int64)
    closed = np.zeros(0, dtype=bool)
    open_gid, open_blocks, open_rows = -1, [], 0

    def finish(gid, blocks):
        x = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)
        meds.ensure(gid + 1)[gid] = _sorted_group_median(x, np.array([len(x)]))[0]

    for gids, x in _batches(src, columns, ids, batch_rows, n_batches, compute_object_count, object_feature, feats,
                            progress, "aggregate median", counts):
        if len(closed) < len(ids):
            closed = np.concatenate([closed, np.zeros(len(ids) - len(closed), dtype=bool)])
        starts = np.flatnonzero(np.r_[True, gids[1:] != gids[:-1]])
        ends = np.r_[starts[1:], len(gids)]
        run_gids = gids[starts]
        cont = run_gids[0] == open_gid
        fresh = run_gids[1:] if cont else run_gids
        if closed[fresh].any() or (fresh == open_gid).any() or len(np.unique(fresh)) != len(fresh):
            raise _Restart
        if cont:
            open_blocks.append(x[: ends[0]])
            open_rows += ends[0]
            if len(run_gids) == 1:
                if open_rows * d * 8 * 3 > budget:
                    raise _Restart
                continue
        if open_gid >= 0:
            finish(open_gid, open_blocks)
            closed[open_gid] = True
        # complete runs of this batch (all but the last, after the continued one)
        first = 1 if cont else 0
        mid = slice(first, len(run_gids) - 1)
        if len(run_gids) - 1 > first:
            lo, hi = starts[first], starts[-1]
            res = _sorted_group_median(x[lo:hi], (ends - starts)[mid])
            g = run_gids[mid]
            meds.ensure(len(ids))[g] = res
            closed[g] = True
        open_gid = int(run_gids[-1])
        open_blocks = [x[starts[-1]:].copy()]
        open_rows = len(open_blocks[0])
        if open_rows * d * 8 * 3 > budget:
            raise _Restart
    if open_gid >= 0:
        finish(open_gid, open_blocks)
    g = len(ids)
    return meds.ensure(g)[:g], counts.ensure(g)[:g, 0]


def _stream_median_spill(src, columns, feats, ids, batch_rows, n_batches, compute_object_count, object_feature,
                         progress, budget, spill_dir, total):
    """Partition rows by group id into ``K`` bucket files, then exact medians bucket by bucket."""
    from tqdm.auto import tqdm

    d = len(feats)
    row_bytes = 8 * (d + 1)
    n_buckets = int(min(256, max(1, math.ceil(3 * total * row_bytes / max(budget, 1)))))
    meds = _Grow(d, fill=np.nan)
    counts = _Grow(1, dtype=np.int64)
    tmp = tempfile.mkdtemp(prefix="phenovec-aggregate-", dir=spill_dir)
    try:
        paths = [os.path.join(tmp, f"bucket{k:04d}.f64") for k in range(n_buckets)]
        n_rows = np.zeros(n_buckets, dtype=np.int64)
        handles = [open(p, "wb") for p in paths]
        try:
            for gids, x in _batches(src, columns, ids, batch_rows, n_batches, compute_object_count, object_feature,
                                    feats, progress, f"aggregate median: spill to {n_buckets} buckets", counts):
                bucket = gids % n_buckets
                order, per = _segments(bucket, n_buckets)
                rec = np.empty((len(gids), d + 1))
                rec[:, 0] = gids[order]
                rec[:, 1:] = x[order]
                lo = 0
                for k in np.flatnonzero(per):
                    rec[lo : lo + per[k]].tofile(handles[k])
                    lo += per[k]
                n_rows += per
        finally:
            for h in handles:
                h.close()
        meds.ensure(len(ids))
        for k in tqdm(range(n_buckets), desc="aggregate median: buckets", leave=False,
                      disable=None if progress is None else not progress):
            if n_rows[k] == 0:
                continue
            mm = np.memmap(paths[k], dtype=np.float64, mode="r", shape=(int(n_rows[k]), d + 1))
            g = mm[:, 0].astype(np.int64)
            u, local = np.unique(g, return_inverse=True)
            order, sizes = _segments(local, len(u))
            w = max(1, min(d, budget // (3 * 8 * int(n_rows[k]))))
            res = np.empty((len(u), d))
            for c0 in range(0, d, w):
                c1 = min(d, c0 + w)
                xs = np.take(mm[:, 1 + c0 : 1 + c1], order, axis=0)
                _sorted_group_median(xs, sizes, out=res[:, c0:c1])
            meds.a[u] = res
            del mm
            os.remove(paths[k])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    g = len(ids)
    return meds.ensure(g)[:g], counts.ensure(g)[:g, 0], n_buckets
