"""The final outputs of a profiling run, assembled from its finished parts (``phenovec.profile.parts``).

Under ``OUT`` (each written to a temporary sibling and renamed into place, so none looks complete but is not):

- ``embeddings.zarr``: a ``phenovec.io.embeddings`` store: ``features`` (embedded cells x D, float16 or float32)
  and ``meta.parquet`` = the cell table of those cells; group attributes add the model's channels, crop size,
  intensity, weights hash, edge policy and the phenovec version;
- ``cells.parquet``: every located cell: the site's metadata, ``ObjectNumber`` (1-based per site when the
  locations have none), ``x``, ``y``, ``edge`` (inside / shifted / padded / dropped / invalid) and ``row`` (its
  row in ``embeddings.zarr``, -1 without a crop);
- ``wells_mean.parquet``, ``wells_median.parquet``: the per-well profiles (``phenovec.profile.wells``), sorted
  by plate and well.

A model exported with assay ``probabilities`` (``train.task: assays``, ``phenovec.export``) adds its task outputs
beside the features, never among them, so nothing downstream (``phenovec process``: every non-``Metadata_``
column of a well table is a feature; the report; ``embeddings.zarr``'s ``features``) takes a probability for a
morphology feature:

- per cell: ``prob_<task>`` columns of ``embeddings.zarr/meta.parquet`` (the row's cell; in the run's dtype);
- per well: ``wells_probabilities.parquet``: the well metadata, ``Metadata_Object_Count`` and the mean of each
  ``prob_<task>`` over the well's cells (GapNet's average over views, SC-CNN's over crops); the mean and median
  tables hold the features only.

Rows are in site order (index order), cells in location order within a site, whatever order sites finished in,
so the outputs do not depend on the scheduler or on interruptions.

Memory does not grow with the run: parts are read one site at a time and every output is streamed (Zarr chunks,
Parquet row groups of ``row_group_rows`` rows); the tables equal what ``pandas.concat`` of all per-site (per-well)
tables written with ``DataFrame.to_parquet`` gives (``phenovec.io.embeddings.ParquetAppender``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from phenovec.profile.wells import WELL_ROW_GROUP

EDGE_OUTCOMES = ("inside", "shifted", "padded", "dropped", "invalid")  # codes 0..4 of _core.crop_site


def site_cell_table(site_meta: pd.Series, cells: pd.DataFrame, codes: np.ndarray) -> pd.DataFrame:
    """The cell table of one site: site metadata, ObjectNumber, x, y, edge."""
    n = len(cells)
    if len(codes) != n:
        raise ValueError(f"site {dict(site_meta)}: {len(codes)} edge codes for {n} located cells")
    t = pd.DataFrame({k: np.repeat(v, n) for k, v in site_meta.items()})
    t["ObjectNumber"] = (cells["ObjectNumber"].to_numpy() if "ObjectNumber" in cells.columns
                         else np.arange(1, n + 1))
    t["x"] = cells["x"].to_numpy(dtype=np.float64)
    t["y"] = cells["y"].to_numpy(dtype=np.float64)
    t["edge"] = np.asarray(EDGE_OUTCOMES, dtype=object)[np.asarray(codes, dtype=np.int64)]
    return t


def assemble(out: Path, n_sites: int, read_part: Callable, site_table: Callable, names: Sequence[str], dtype: str,
             attrs: dict, well_parts: Callable, chunk_rows: int = 16384, row_group_rows: int = 16384,
             expected_rows: int | None = None, probabilities: Sequence[str] = ()) -> dict:
    """Write the final outputs (module docstring) from the parts; returns counts.

    ``read_part(s)`` -> (codes, features) of site ``s``; ``site_table(s, codes)`` -> its cell table
    (:func:`site_cell_table`); ``well_parts(op)`` -> the well rows of ``op`` ("mean" / "median") as an iterable of
    DataFrames in output order (a single DataFrame is accepted too); a zero-row frame gives the columns of an empty
    output.

    Memory is bounded whatever the number of sites and cells: sites are read one at a time, embeddings and their
    metadata go out a whole chunk of ``chunk_rows`` at a time (``phenovec.io.embeddings.EmbeddingWriter``), the cell
    table and the well tables are streamed to Parquet row groups of ``row_group_rows`` rows
    (``phenovec.io.embeddings.ParquetAppender``; at most ``WELL_ROW_GROUP`` rows for the wide well tables).
    Nothing is held across sites but those buffers. ``expected_rows``: an upper bound of the embedded cells (the
    located ones), which sizes the chunks of a store smaller than one chunk (``EmbeddingWriter``).

    ``probabilities``: the ``prob_<task>`` names of the columns that follow the ``names`` features in every part
    and well row (module docstring: written to the cells' metadata and ``wells_probabilities.parquet``).
    """
    from phenovec.io.embeddings import EmbeddingWriter, ParquetAppender

    writer = EmbeddingWriter(out / "embeddings.zarr", names, dtype=np.dtype(dtype), chunk_rows=chunk_rows,
                             overwrite=True, expected_rows=expected_rows)
    tables = [ParquetAppender(out / "cells.parquet", row_group_rows)]
    probs, d = [str(p) for p in probabilities], len(names)
    n_emb, n_cells = 0, 0
    try:
        for s in range(n_sites):
            codes, feats = read_part(s)
            t = site_table(s, codes)
            kept = np.asarray(codes) <= 2
            k = int(kept.sum())
            if len(feats) != k:
                raise ValueError(f"part of site {s}: {len(feats)} embeddings for {k} kept cells")
            if feats.ndim != 2 or feats.shape[1] != d + len(probs):
                raise ValueError(f"part of site {s}: {feats.shape[1] if feats.ndim == 2 else feats.shape} columns, "
                                 f"expected {d} features + {len(probs)} probabilities")
            rows = np.full(len(t), -1, np.int64)
            rows[kept] = n_emb + np.arange(k)
            n_emb += k
            n_cells += len(t)
            meta = t.loc[kept].reset_index(drop=True)
            if probs:
                meta = pd.concat([meta, pd.DataFrame(feats[:, d:], columns=probs)], axis=1)
            writer.append(meta, feats[:, :d])  # the writer fills whole chunks
            t["row"] = rows
            tables[0].append(t)
        for op in ("mean", "median"):
            w = ParquetAppender(out / f"wells_{op}.parquet", min(row_group_rows, WELL_ROW_GROUP))
            tables.append(w)
            wp = None
            if probs and op == "mean":
                wp = ParquetAppender(out / "wells_probabilities.parquet", min(row_group_rows, WELL_ROW_GROUP))
                tables.append(wp)
            parts = well_parts(op)
            for df in ([parts] if isinstance(parts, pd.DataFrame) else parts):
                if wp is not None:
                    wp.append(df.drop(columns=list(names)))
                w.append(df.drop(columns=probs) if probs else df)
        writer.group.attrs.update(attrs)
        writer.close()
        for t in tables:
            t.close()
    except BaseException:
        writer.abort()
        for t in tables:
            t.abort()
        raise
    return {"cells": n_cells, "embedded": n_emb}
