"""Image inputs for the activity learners (FSL-CP's ``img`` models): each compound (or well, or any unit named by
cell-table columns) is represented by ``crops_per_unit`` single-cell crops from a crop store (``phenovec crop``).

:func:`unit_crops` gives one row per unit: its crops, scaled as the trainer scales them
(:func:`phenovec.train.data.scale_batch`), flattened into ``crops_per_unit x C x H x W`` float32 values. That is a
frame :func:`phenovec.activity.tasks.build_tasks` takes like compound profiles, so tasks, episodes and the benchmark
are those of profiles; the image learners (:mod:`phenovec.activity.learners.images`) reshape each row back into
its crops. A unit's crops are drawn at random (seeded) without replacement, or with replacement when it has fewer
than ``crops_per_unit``.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd


def unit_crops(crops: str | os.PathLike, unit_columns: str | Sequence[str], *, crops_per_unit: int = 8,
               seed: int = 0, scaling: str = "auto") -> tuple[pd.DataFrame, pd.DataFrame, tuple[int, int, int]]:
    """``(x, cells, crop_shape)``: ``x`` indexed by unit id (the ``unit_columns`` values joined by ``|``), one
    float32 column per value of the unit's flattened crops; ``cells`` the crop store's cell table (kept cells) with
    the unit id in column ``unit``; ``crop_shape`` = (C, H, W)."""
    import torch

    from phenovec.activity.tasks import compound_ids
    from phenovec.train.data import ChunkReader, input_scaling, open_crops, scale_batch

    if isinstance(crops_per_unit, bool) or not isinstance(crops_per_unit, int) or crops_per_unit < 1:
        raise ValueError(f"crops_per_unit must be an integer >= 1, got {crops_per_unit!r}")
    store = open_crops(crops)
    cells = store.cells.assign(unit=compound_ids(store.cells, unit_columns, source=str(store.path / "cells.parquet")))
    rule = input_scaling(store, scaling)
    dtype_max = float(np.iinfo(store.dtype).max) if np.issubdtype(store.dtype, np.integer) else 1.0
    reader = ChunkReader(store.path, store.chunk_cells)
    rng = np.random.default_rng([seed, 0xC0])
    units = sorted(cells["unit"].unique())
    groups = cells.groupby("unit")["row"].apply(np.asarray)
    picks = []
    for u in units:
        rows = groups[u]
        picks.append(np.sort(rng.choice(rows, crops_per_unit, replace=len(rows) < crops_per_unit)))
    rows = np.concatenate(picks)
    order = np.argsort(rows, kind="stable")  # read chunk by chunk
    raw = np.empty((len(rows), *store.shape[1:]), dtype=store.dtype)
    for start in range(0, len(rows), 1024):
        sel = order[start:start + 1024]
        raw[sel] = reader.read(rows[sel])
    x = scale_batch(torch.from_numpy(raw.astype(np.float32)), rule, dtype_max).numpy()
    flat = x.reshape(len(units), -1).astype(np.float32, copy=False)
    frame = pd.DataFrame(flat, index=pd.Index(units, name="compound"))
    frame.columns = [f"crop_{j}" for j in range(flat.shape[1])]
    return frame, cells, tuple(int(s) for s in store.shape[1:])
