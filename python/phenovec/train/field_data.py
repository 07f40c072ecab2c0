"""Training data over a field-tile store (``phenovec tiles`` output): MOAProfiler's whole-field classifier input.

**Field store** (``phenovec.ingest.fields``): ``tiles.zarr`` (N x C x h x w, chunked by sites), ``tiles.parquet``
(one row per field: the site's ``Metadata_*`` columns, ``row`` = its index in the array) and ``manifest.json``
(the tiling configuration: channels, downsampling ``factor``, illumination, intensity, dtype; ``complete``). Whole
fields only (``views`` stores are GapNet's, not trained here), square (random 90-degree rotations), full resolution
(``factor`` 1) or block-mean downsampled.

The field table plays the cell table's part in the loop (``phenovec.train.loop``): splits group it by
``data.split_by`` (plate + well: every field of a well lands in one set), the classifier's classes are
``data.label`` (the MOA of the field's compound, DMSO's own label a class too), epoch plans and the chunk-cached
loader are the crops' (``phenovec.train.data``).

**Input** (MOAProfiler, digest B2: "each image is scaled to [0, 1], then standardised to mean 0, SD 1"): per field
and channel, min-max to [0, 1] (``(x - min) / (max - min)``, a constant plane -> 0: the crops' ``minmax`` rule,
``phenovec.train.data.scale_batch``), then ``(x - mean_c) / std_c`` with per-channel statistics of the training
fields after the min-max step (:func:`field_channel_moments`: every pixel of every training field, or a seeded
sample of ``data.stats_fields`` fields). During training the augmentation runs on the [0, 1] fields, before the
standardisation (MOAProfiler's ``ColorJitter`` precedes ``Normalize``). The contract is recorded in the checkpoint
(``data_config["intensity"]``, ``source: fields``) as :func:`phenovec.profile.fields.field_intensity` writes it, so
``phenovec export --fields`` and ``phenovec profile`` apply exactly this to whole fields.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from phenovec.train.data import DataError

SOURCE = "fields"  # data_config["source"] of a field-trained checkpoint


@dataclass
class FieldSet:
    """An opened field store: the field table (``row`` indexes ``tiles.zarr``), array shape and tiling config."""

    path: Path
    cells: pd.DataFrame  # one row per field (named as the crops' cell table for the loop)
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_cells: int  # fields per Zarr chunk
    manifest: dict
    array_name: str = "tiles.zarr"

    @property
    def config(self) -> dict:
        return dict(self.manifest.get("config", {}))

    @property
    def channels(self) -> list[str]:
        return [str(c) for c in self.config.get("channels", [])]

    @property
    def factor(self) -> int:
        return int(self.config.get("factor", 1))

    @property
    def side(self) -> int:
        """The side of a stored (downsampled) field: the model's input side."""
        return int(self.shape[-1])

    @property
    def field_size(self) -> int:
        """The side of the original field in pixels (``side x factor``)."""
        return self.side * self.factor


def open_fields(path) -> FieldSet:
    """Open a ``phenovec tiles`` folder of whole fields; errors name the file and what is wrong."""
    import zarr

    path = Path(path)
    for name in ("tiles.zarr", "tiles.parquet", "manifest.json"):
        if not (path / name).exists():
            raise DataError(f"{path}: not a field store ({name} is missing; make one with `phenovec tiles`)")
    manifest = json.loads((path / "manifest.json").read_text())
    if not manifest.get("complete", False):
        raise DataError(f"{path}: the tiling run is not complete (manifest.json says so); rerun `phenovec tiles` to "
                        "finish it")
    cfg = manifest.get("config", {})
    if cfg.get("views"):
        raise DataError(f"{path}: the store holds views {cfg['views']} (GapNet's tiling); field training takes whole "
                        "fields (`phenovec tiles` without --views)")
    arr = zarr.open_array(str(path / "tiles.zarr"), mode="r")
    if arr.ndim != 4 or arr.shape[2] != arr.shape[3]:
        raise DataError(f"{path / 'tiles.zarr'}: fields of shape {tuple(arr.shape[1:])} (C x H x W); field training "
                        "needs square fields (random 90-degree rotations, square model input)")
    if len(cfg.get("channels", [])) != arr.shape[1]:
        raise DataError(f"{path / 'manifest.json'}: {len(cfg.get('channels', []))} channels named for "
                        f"{arr.shape[1]} in tiles.zarr")
    table = pd.read_parquet(path / "tiles.parquet")
    if "row" not in table.columns:
        raise DataError(f"{path / 'tiles.parquet'}: no 'row' column")
    rows = table["row"].to_numpy()
    if len(rows) == 0:
        raise DataError(f"{path / 'tiles.parquet'}: the field store is empty")
    if rows.min() < 0 or rows.max() >= arr.shape[0]:
        bad = int(np.flatnonzero((rows < 0) | (rows >= arr.shape[0]))[0])
        raise DataError(f"{path / 'tiles.parquet'}: row {rows[bad]} of field {bad} is outside the {arr.shape[0]} "
                        "fields of tiles.zarr")
    return FieldSet(path, table.reset_index(drop=True), tuple(arr.shape), np.dtype(arr.dtype), int(arr.chunks[0]),
                    manifest)


def minmax(x):
    """Per field and channel min-max to [0, 1] of an N x C x H x W tensor (float32; a constant plane -> 0)."""
    from phenovec.train.data import scale_batch

    return scale_batch(x, "minmax", 1.0)


def field_channel_moments(fields: FieldSet, rows: np.ndarray, *, max_fields: int | None = None, seed: int = 0,
                          batch: int = 8) -> tuple[list[float], list[float]]:
    """Per-channel mean and population SD (ddof 0) over every pixel of the fields ``rows`` (array rows) after the
    per-field min-max step (:func:`minmax`), float64 moments merged per batch (Chan et al.), or over a seeded
    sample of ``max_fields`` of them. A channel whose SD is 0 (every field constant) is an error naming it."""
    import torch

    from phenovec.profile.fields import ChannelMoments
    from phenovec.train.data import ChunkReader

    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if max_fields is not None and len(rows) > max_fields:
        rows = np.sort(np.random.default_rng([seed, 0x57A7]).choice(rows, size=int(max_fields), replace=False))
    if not len(rows):
        raise DataError(f"{fields.path}: no training fields to compute the channel statistics on")
    reader = ChunkReader(fields.path, fields.chunk_cells, 2, fields.array_name)
    c = fields.shape[1]
    moments = ChannelMoments(c)
    for i in range(0, len(rows), batch):
        x = reader.read(rows[i:i + batch])
        if x.dtype == np.uint16:
            x = x.astype(np.int32)
        v = minmax(torch.from_numpy(x)).numpy().astype(np.float64)
        moments.add(v.transpose(1, 0, 2, 3).reshape(c, -1))
    mean, std = moments.result()
    flat = [i for i, s in enumerate(std) if not s > 0]
    if flat:
        raise DataError(f"{fields.path}: channel {fields.channels[flat[0]]!r} is constant over the training fields "
                        "(SD 0): it cannot be standardised")
    return mean, std


class Standardise:
    """``(x - mean_c) / std_c`` on an N x C x H x W tensor, after an optional augmentation (``then``)."""

    def __init__(self, mean, std, augment=None):
        self.mean, self.std, self.augment = list(mean), list(std), augment

    def __call__(self, x):
        import torch

        if self.augment is not None:
            x = self.augment(x)
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s


def field_contract(fields: FieldSet, mean, std) -> dict:
    """The field input contract (``phenovec.profile.fields.field_intensity``) of a model trained on ``fields``."""
    from phenovec.profile.fields import field_intensity

    dtype_max = float(np.iinfo(fields.dtype).max) if np.issubdtype(fields.dtype, np.integer) else 65535.0
    return field_intensity(fields.field_size, fields.factor, dtype_max, mean, std, n_channels=fields.shape[1],
                           per_image="minmax", trained_on=SOURCE)
