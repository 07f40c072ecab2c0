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

Rows are in site order (index order), cells in location order within a site, whatever order sites finished in,
so the outputs do not depend on the scheduler or on interruptions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from phenovec.io.profiles import write_table

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
             attrs: dict, well_parts: Callable, chunk_rows: int = 16384) -> dict:
    """Write the final outputs (module docstring) from the parts; returns counts."""
    from phenovec.io.embeddings import EmbeddingWriter

    writer = EmbeddingWriter(out / "embeddings.zarr", names, dtype=np.dtype(dtype), chunk_rows=chunk_rows,
                             overwrite=True)
    tables, buf_meta, buf_x, held, n_emb = [], [], [], 0, 0
    try:
        for s in range(n_sites):
            codes, feats = read_part(s)
            t = site_table(s, codes)
            kept = np.asarray(codes) <= 2
            rows = np.full(len(t), -1, np.int64)
            rows[kept] = n_emb + np.arange(int(kept.sum()))
            n_emb += int(kept.sum())
            if len(feats) != int(kept.sum()):
                raise ValueError(f"part of site {s}: {len(feats)} embeddings for {int(kept.sum())} kept cells")
            buf_meta.append(t.loc[kept].reset_index(drop=True))
            buf_x.append(feats)
            held += len(feats)
            t["row"] = rows
            tables.append(t)
            if held >= chunk_rows:
                writer.append(pd.concat(buf_meta, ignore_index=True), np.concatenate(buf_x))
                buf_meta, buf_x, held = [], [], 0
        if held or n_emb == 0:
            meta = pd.concat(buf_meta, ignore_index=True) if buf_meta else pd.DataFrame()
            x = np.concatenate(buf_x) if buf_x else np.empty((0, len(names)), dtype)
            if len(x):
                writer.append(meta, x)
            else:
                writer._meta.append(meta)
        writer.group.attrs.update(attrs)
        writer.close()
    except BaseException:
        import shutil

        shutil.rmtree(writer.tmp, ignore_errors=True)
        raise
    cells = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    write_table(cells, out / "cells.parquet")
    for op in ("mean", "median"):
        w = well_parts(op)
        write_table(w, out / f"wells_{op}.parquet")
    return {"cells": len(cells), "embedded": n_emb}
