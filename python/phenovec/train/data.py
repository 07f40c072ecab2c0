"""Training data over a crops folder (``phenovec crop`` output): splits without leakage, epoch plans, a loader.

**Crops folder**: ``crops.zarr`` (cells x C x H x W, chunked by cells), ``cells.parquet`` (one row per located
nucleus, ``row`` = its index in the array or -1) and ``manifest.json`` (the crop configuration).

**Splits** (``make_splits``): cells are grouped by ``split_by`` (default plate + well), and every group goes to
exactly one split, so no well contributes cells to both training and validation. Plates listed in
``holdout_plates`` form the ``test`` split. Of the remaining groups, each label's groups are shuffled with the seed
and ``round(val_fraction x n)`` of them (at least one when the label has two or more groups) become validation.
A group whose cells carry more than one label is an error naming the group: the label must be constant within a
well, or the split would leak.

**Epoch plans** (``epoch_batches``): the cells of an epoch are chosen from (seed, epoch) alone: all training
cells, or with ``subsample`` a fresh fraction each epoch, or with ``balance: sampler`` an equal number per class
(drawn with replacement where a class has fewer cells). Random access into a compressed Zarr array decodes a
whole chunk per cell, so the order is a *window shuffle*: the chunks are permuted, taken ``shuffle_chunks`` at a
time, and the chosen cells of a window are shuffled together and cut into batches. Every batch then reads at most
``shuffle_chunks`` chunks, which each loader worker decodes once and caches. The plan does not depend on the
number of workers, so a resumed run sees exactly the batches an uninterrupted one would.

**Input scaling** (``input_scaling``): how stored crops become model input. ``auto`` picks from the crops'
dtype and manifest: float crops are used as stored (already rescaled, e.g. DeepProfiler's per-crop min-max);
uint8 is divided by 255; uint16 that was intensity-rescaled at crop time is divided by 65,535, and raw uint16 is
min-max rescaled per crop and channel (DeepProfiler's rule, a constant plane -> 0). The chosen rule is saved in
the checkpoint so export and profiling apply the same one.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

EDGE_OUTCOMES = ("inside", "shifted", "padded", "dropped", "invalid")


class DataError(ValueError):
    """A problem with the training data; the message names the file, column or group."""


@dataclass
class CropSet:
    """An opened crops folder: the cell table of cells with crops, the array shape and the crop configuration."""

    path: Path
    cells: pd.DataFrame  # only cells with a crop; column "row" indexes the array
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_cells: int
    manifest: dict

    @property
    def channels(self) -> list[str]:
        return list(self.manifest.get("config", {}).get("channels", []))


def open_crops(path, exclude_edge=("dropped", "invalid")) -> CropSet:
    """Open a crops folder; cells whose edge outcome is in ``exclude_edge`` (or without a crop) are left out."""
    import zarr

    path = Path(path)
    for name in ("crops.zarr", "cells.parquet", "manifest.json"):
        if not (path / name).exists():
            raise DataError(f"{path}: not a crops folder ({name} is missing; make one with `phenovec crop`)")
    manifest = json.loads((path / "manifest.json").read_text())
    if not manifest.get("complete", False):
        raise DataError(f"{path}: the crop run is not complete (manifest.json says so); rerun `phenovec crop` "
                        "to finish it")
    arr = zarr.open_array(str(path / "crops.zarr"), mode="r")
    cells = pd.read_parquet(path / "cells.parquet")
    if "row" not in cells.columns:
        raise DataError(f"{path / 'cells.parquet'}: no 'row' column")
    edge = cells["edge"].astype(str) if "edge" in cells.columns else pd.Series("inside", index=cells.index)
    keep = (cells["row"].to_numpy() >= 0) & ~edge.isin(list(exclude_edge)).to_numpy()
    if not keep.any():
        raise DataError(f"{path}: the crop store is empty: no cell with a crop to train on ({len(cells)} cells in "
                        f"cells.parquet, none kept with exclude_edge={list(exclude_edge)})")
    cells = cells.loc[keep].reset_index(drop=True)
    rows = cells["row"].to_numpy()
    if len(rows) and (rows.max() >= arr.shape[0]):
        bad = int(np.argmax(rows >= arr.shape[0]))
        raise DataError(f"{path / 'cells.parquet'}: row {rows[bad]} of cell {bad} is beyond the {arr.shape[0]} "
                        "crops in crops.zarr")
    return CropSet(path, cells, tuple(arr.shape), np.dtype(arr.dtype), int(arr.chunks[0]), manifest)


def split_cells(cells: pd.DataFrame, data: dict, seed: int = 0) -> pd.Series:
    """The split name per cell for a checked ``data`` configuration section: ``split: plates`` is
    :func:`make_splits`; ``well_holdout`` / ``compound_holdout`` are MOAProfiler's (:mod:`phenovec.train.moa_splits`,
    ``data.label`` being the MOA, ``data.split_by`` the well); ``compound`` is GapNet's (``split_fractions`` of the
    distinct values of ``compound_column`` to train / val / test, every cell of a compound in one split,
    :func:`phenovec.train.compound_folds.compound_split_table`). Their input errors become :class:`DataError`."""
    kind = data.get("split", "plates")
    if kind == "plates":
        return make_splits(cells, data["label"], data["split_by"], data["val_fraction"], data["holdout_plates"], seed)
    from phenovec.train import moa_splits

    try:
        if kind == "well_holdout":
            return moa_splits.well_holdout_split(
                cells, moa_col=data["label"], well_cols=tuple(data["split_by"]), fractions=tuple(data["split_fractions"]),
                seed=seed, min_test_plates=data["min_test_plates"])
        if kind == "compound_holdout":
            return moa_splits.compound_holdout_split(
                cells, moa_col=data["label"], compound_col=data["compound_column"], well_cols=tuple(data["split_by"]),
                seed=seed, train_fraction=data["train_fraction"])
        if kind == "compound":
            from phenovec.train.compound_folds import compound_split_table

            return compound_split_table(cells, data["compound_column"], tuple(data["split_fractions"]), seed=seed)
    except ValueError as e:
        raise DataError(f"data.split {kind}: {e}") from None
    raise ValueError(f"data.split must be plates, well_holdout, compound_holdout or compound, got {kind!r}")


def make_splits(cells: pd.DataFrame, label: str, split_by, val_fraction: float, holdout_plates=(),
                seed: int = 0) -> pd.Series:
    """A split name (``train`` / ``val`` / ``test``) per cell (see the module docstring)."""
    split_by = [split_by] if isinstance(split_by, str) else list(split_by)
    for col in [label, *split_by]:
        if col not in cells.columns:
            raise DataError(f"cell table has no column {col!r} (columns: {', '.join(map(str, cells.columns))})")
    if cells[label].isna().any():
        i = int(np.flatnonzero(cells[label].isna().to_numpy())[0])
        raise DataError(f"cell table column {label!r} is missing (NaN) at row {i}")
    key = cells[split_by].astype(str).agg("/".join, axis=1)
    per_group = cells.groupby(key, sort=True)[label].nunique()
    mixed = per_group[per_group > 1]
    if len(mixed):
        raise DataError(f"group {mixed.index[0]!r} ({'/'.join(split_by)}) holds cells of {mixed.iloc[0]} labels; "
                        f"the label {label!r} must be constant within a split group")
    split = pd.Series("train", index=cells.index, dtype=object)
    holdout = set(map(str, holdout_plates))
    if holdout:
        if "Metadata_Plate" not in cells.columns:
            raise DataError("holdout_plates needs a Metadata_Plate column in the cell table")
        plates = cells["Metadata_Plate"].astype(str)
        unknown = holdout - set(plates)
        if unknown:
            raise DataError(f"holdout_plates {sorted(unknown)} are not in the cell table (plates: "
                            f"{sorted(set(plates))})")
        split[plates.isin(holdout).to_numpy()] = "test"
    rest = split == "train"
    groups = cells.loc[rest].groupby(key[rest], sort=True)[label].first()
    rng = np.random.default_rng([seed, 0x5B11])
    val_groups = []
    for lab in sorted(groups.unique(), key=str):
        g = groups.index[groups == lab].to_numpy()
        g = g[rng.permutation(len(g))]
        n_val = int(round(val_fraction * len(g)))
        if val_fraction > 0 and len(g) >= 2:
            n_val = min(max(n_val, 1), len(g) - 1)
        val_groups.extend(g[:n_val].tolist())
    split[(rest & key.isin(val_groups)).to_numpy()] = "val"
    return split


def class_index(labels: pd.Series) -> tuple[list, np.ndarray]:
    """(sorted class names, int64 class id per cell)."""
    classes = sorted(pd.unique(labels), key=str)
    lookup = {c: i for i, c in enumerate(classes)}
    return classes, labels.map(lookup).to_numpy(dtype=np.int64)


def epoch_batches(rows: np.ndarray, targets: np.ndarray, chunk_cells: int, batch_size: int, seed: int, epoch: int,
                  subsample: float = 1.0, balance: bool = False, shuffle_chunks: int = 8,
                  drop_last: bool = False) -> list[np.ndarray]:
    """One epoch's batches as arrays of positions into ``rows`` (see the module docstring); deterministic in
    (seed, epoch). Evaluation passes use ``seed=None``: every cell once, in storage order. ``balance``: False,
    True / ``"sampler"`` (equal draws per class) or ``"duplicate"`` (every cell plus repeats of the minority
    classes' cells up to the largest class's count)."""
    n = len(rows)
    if seed is None:
        order = np.argsort(rows, kind="stable")
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch, 0xE90C])
    if balance == "duplicate":  # MOAProfiler: every cell, and minority-class cells repeated up to the largest class
        classes, counts = np.unique(targets, return_counts=True)
        top = int(counts.max()) if len(counts) else 0
        extra = [rng.choice(np.flatnonzero(targets == c), size=top - n, replace=True)
                 for c, n in zip(classes, counts) if n < top]
        pick = np.concatenate([np.arange(n), *extra]) if extra else np.arange(n)
        if subsample < 1.0:
            pick = rng.choice(pick, size=max(1, int(round(subsample * len(pick)))), replace=False)
    elif balance:
        classes = np.unique(targets)
        per = int(round(subsample * n / max(len(classes), 1)))
        per = max(per, 1)
        chosen = []
        for c in classes:
            pool = np.flatnonzero(targets == c)
            chosen.append(rng.choice(pool, size=per, replace=per > len(pool)))
        pick = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
    elif subsample < 1.0:
        k = max(1, int(round(subsample * n)))
        pick = rng.choice(n, size=k, replace=False)
    else:
        pick = np.arange(n)
    chunk = rows[pick] // chunk_cells
    chunks = np.unique(chunk)
    chunks = chunks[rng.permutation(len(chunks))]
    window_of = np.empty(int(chunks.max()) + 1 if len(chunks) else 0, dtype=np.int64)
    window_of[chunks] = np.arange(len(chunks)) // shuffle_chunks
    win = window_of[chunk]
    batches: list[np.ndarray] = []
    order = np.argsort(win, kind="stable")
    bounds = np.flatnonzero(np.diff(win[order])) + 1
    carry = np.empty(0, dtype=np.int64)
    for part in np.split(order, bounds):
        cells = np.concatenate([carry, pick[part[rng.permutation(len(part))]]])
        full = (len(cells) // batch_size) * batch_size
        batches.extend(cells[i : i + batch_size] for i in range(0, full, batch_size))
        carry = cells[full:]
    if len(carry) and not drop_last:
        batches.append(carry)
    return batches


class ChunkReader:
    """Reads cells from the crops array through a small LRU cache of decoded chunks (one reader per process)."""

    def __init__(self, path: Path, chunk_cells: int, cache_chunks: int = 16, array: str = "crops.zarr"):
        self.path, self.chunk_cells, self.cache_chunks = Path(path), chunk_cells, cache_chunks
        self.array = array  # the array inside ``path``: crops.zarr, or tiles.zarr of a field store
        self._arr = None
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _chunk(self, c: int) -> np.ndarray:
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        if self._arr is None:
            import zarr

            self._arr = zarr.open_array(str(self.path / self.array), mode="r")
        block = np.asarray(self._arr[c * self.chunk_cells : (c + 1) * self.chunk_cells])
        self._cache[c] = block
        while len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return block

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        chunk, offset = rows // self.chunk_cells, rows % self.chunk_cells
        out = None
        for c in np.unique(chunk):
            block = self._chunk(int(c))
            sel = np.flatnonzero(chunk == c)
            if out is None:
                out = np.empty((len(rows), *block.shape[1:]), dtype=block.dtype)
            out[sel] = block[offset[sel]]
        if out is None:
            raise DataError("an empty batch was requested")
        return out


class BatchDataset:
    """A map-style dataset whose items are whole batches: item i = (crops, targets, positions) of ``plan[i]``.
    ``crops``: a :class:`CropSet` or a field store (``phenovec.train.field_data.FieldSet``: its ``array_name``)."""

    def __init__(self, crops: CropSet, rows: np.ndarray, targets: np.ndarray, plan: list[np.ndarray],
                 cache_chunks: int):
        self.reader = ChunkReader(crops.path, crops.chunk_cells, cache_chunks,
                                  getattr(crops, "array_name", "crops.zarr"))
        self.rows, self.targets, self.plan = rows, targets, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int):
        import torch

        pos = self.plan[i]
        x = self.reader.read(self.rows[pos])
        if x.dtype == np.uint16:  # torch has limited uint16 support: widen losslessly
            x = x.astype(np.int32)
        return torch.from_numpy(x), torch.from_numpy(self.targets[pos]), torch.from_numpy(pos)


def make_loader(crops: CropSet, rows: np.ndarray, targets: np.ndarray, plan: list[np.ndarray], workers: int,
                prefetch: int, cache_chunks: int):
    """A DataLoader over ``plan`` (batches in plan order whatever the worker count; workers decode chunks)."""
    from torch.utils.data import DataLoader

    ds = BatchDataset(crops, rows, targets, plan, cache_chunks)
    kw = dict(batch_size=None, shuffle=False, num_workers=workers, collate_fn=None)
    if workers > 0:
        kw.update(prefetch_factor=prefetch, persistent_workers=False, multiprocessing_context="spawn"
                  if _fork_unsafe() else None)
    return DataLoader(ds, **kw)


def _fork_unsafe() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def input_scaling(crops: CropSet, rule: str = "auto") -> str:
    """The rule that maps stored crops to model input: ``none``, ``scale`` or ``minmax`` (module docstring)."""
    if rule != "auto":
        return rule
    cfg = crops.manifest.get("config", {})
    if np.issubdtype(crops.dtype, np.floating):
        return "none"
    if crops.dtype == np.uint8:
        return "scale"
    if crops.dtype == np.uint16:
        rescaled = cfg.get("intensity") not in (None, "none", {}) or cfg.get("rescale", False)
        return "scale" if rescaled else "minmax"
    raise DataError(f"{crops.path}: crops of dtype {crops.dtype} are not supported for training")


def scale_batch(x, rule: str, dtype_max: float):
    """Apply the input-scaling rule to a batch tensor (N x C x H x W), returning float32 on x's device."""
    import torch

    x = x.to(torch.float32)
    if rule == "none":
        return x
    if rule == "scale":
        return x / dtype_max
    if rule == "minmax":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        span = hi - lo
        return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                           torch.zeros_like(x))
    raise DataError(f"unknown input scaling {rule!r}")
