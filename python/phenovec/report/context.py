"""What a report says beside the metrics: the dataset, the training run, quality control and example cells.

``build_report`` evaluates profiles; a pipeline run knows more, and a scientist needs it to trust the numbers:

* ``dataset``: a name for the title (``"synthetic plate (seed 0)"``, the index file's name, ``"BBBC021"``);
* ``training``: the training run's per-epoch table (``metrics.csv`` of ``phenovec train``: losses and accuracies on
  train and validation), drawn as the training curve;
* ``cells`` / ``layout``: one row per profiled cell and one row per well of the plate layout, for the QC section
  (cells per well and plate, wells with no or too few cells and why they are excluded);
* ``edge``: how the crops met the image border (``inside`` / ``shifted`` / ``padded`` / ``dropped`` / ``invalid``
  counts of the crop stage);
* ``gallery``: example single-cell crops per MOA (:func:`gallery_from_crops`), shown per channel and as a
  composite;
* ``assay_per_task`` / ``assay_summary``: the held-out compounds' per-assay scores of an assay-prediction run
  (``phenovec.evaluate.assay_prediction``), shown as a table and AUC against measured compounds;
* ``gradcam``: Grad-CAM panels of the trained model for the first gallery cell of each MOA (a heat map per
  channel; ``phenovec.train.gradcam``);
* ``run_dir``: paths in the provenance are written relative to it (no machine paths in a shared report).

Everything is optional; a section without its input is left out and the report says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

WELL_KEYS = ["Metadata_Plate", "Metadata_Well"]


@dataclass
class GalleryCell:
    moa: str
    treatment: str
    plate: str
    well: str
    row: int  # the crop's row in crops.zarr (for Grad-CAM of the same cell)
    crop: np.ndarray  # C x H x W, float32 in [0, 1] (per-channel 0.5-99.5 percentile scaling over the gallery)


@dataclass
class ReportContext:
    dataset: str | None = None
    run_dir: Path | None = None
    training: pd.DataFrame | None = None
    cells: pd.DataFrame | None = None
    layout: pd.DataFrame | None = None
    edge: dict | None = None
    gallery: list[GalleryCell] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    min_cells: int = 5  # wells with fewer profiled cells are flagged in QC
    assay_per_task: pd.DataFrame | None = None  # assay prediction (GapNet preset): per-assay AUC / AUPRC / F1
    assay_summary: dict | None = None
    gradcam: list = field(default_factory=list)  # (MOA, treatment, PNG bytes) of phenovec.train.gradcam per crop


def read_training(train_dir) -> pd.DataFrame | None:
    """The per-epoch table of a ``phenovec train`` run folder (``metrics.csv``), or None when there is none."""
    p = Path(train_dir) / "metrics.csv"
    return pd.read_csv(p) if p.is_file() else None


def qc_tables(cells: pd.DataFrame, layout: pd.DataFrame | None, min_cells: int,
              treatment_column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells per well of the layout, with ``cells`` 0 where none was profiled; the wells flagged and why)."""
    for col in WELL_KEYS:
        if col not in cells.columns:
            raise KeyError(f"QC: the cell table has no {col!r} column")
    per_well = cells.groupby(WELL_KEYS).size().rename("cells").reset_index()
    if layout is not None:
        wells = layout.drop_duplicates(WELL_KEYS)
        keep = WELL_KEYS + [c for c in (treatment_column,) if c in wells.columns]
        per_well = wells[keep].merge(per_well, on=WELL_KEYS, how="left")
        per_well["cells"] = per_well["cells"].fillna(0).astype(int)
    per_well = per_well.sort_values(WELL_KEYS).reset_index(drop=True)
    reasons = np.where(per_well["cells"] == 0, "no cells located: no profile (excluded)",
                       np.where(per_well["cells"] < min_cells,
                                f"fewer than {min_cells} cells: kept, but its profile is noisy", ""))
    flagged = per_well.assign(reason=reasons)
    return per_well, flagged[flagged["reason"] != ""].reset_index(drop=True)


def gallery_from_crops(crops_dir, moa_column: str, treatment_column: str, per_moa: int = 3, seed: int = 0,
                       wells: pd.DataFrame | None = None) -> tuple[list[GalleryCell], list[str]]:
    """``per_moa`` crops per MOA (seeded; whole crops only, i.e. edge ``inside``) from a ``phenovec crop`` folder,
    scaled per channel to [0, 1] by the 0.5 / 99.5 percentiles of the gallery. ``wells`` (Plate / Well rows)
    restricts the choice, e.g. to the held-out wells. Returns (cells, channel names)."""
    import json

    import zarr

    root = Path(crops_dir)
    cells = pd.read_parquet(root / "cells.parquet")
    for col in (moa_column, treatment_column, "row"):
        if col not in cells.columns:
            return [], []
    if "edge" in cells.columns:
        cells = cells[cells["edge"] == "inside"]
    if wells is not None and len(wells):
        cells = cells.merge(wells[WELL_KEYS].drop_duplicates(), on=WELL_KEYS)
    if cells.empty:
        return [], []
    rng = np.random.default_rng(seed)
    picks = []
    for moa, g in sorted(cells.groupby(moa_column), key=lambda kv: str(kv[0])):
        take = g.iloc[np.sort(rng.choice(len(g), size=min(per_moa, len(g)), replace=False))]
        picks.append(take)
    chosen = pd.concat(picks)
    arr = zarr.open_array(str(root / "crops.zarr"), mode="r")
    rows = chosen["row"].to_numpy(np.int64)
    order = np.argsort(rows)
    data = np.empty((len(rows), *arr.shape[1:]), dtype=np.float32)
    data[order] = np.stack([np.asarray(arr[int(r)], dtype=np.float32) for r in rows[order]])
    lo = np.percentile(data, 0.5, axis=(0, 2, 3))[None, :, None, None]
    hi = np.percentile(data, 99.5, axis=(0, 2, 3))[None, :, None, None]
    data = np.clip((data - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    manifest = root / "manifest.json"
    channels = []
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        channels = list(m.get("channels") or (m.get("config") or {}).get("channels") or [])
    if len(channels) != data.shape[1]:
        channels = [f"ch{i}" for i in range(data.shape[1])]
    out = [GalleryCell(str(r[moa_column]), str(r[treatment_column]), str(r["Metadata_Plate"]), str(r["Metadata_Well"]),
                       int(r["row"]), data[i]) for i, (_, r) in enumerate(chosen.iterrows())]
    return out, channels


def relative_paths(obj, run_dir: Path | None):
    """``obj`` with every string that is a path under ``run_dir`` rewritten relative to it (recursively), and
    other absolute paths reduced to their file name."""
    if isinstance(obj, dict):
        return {k: relative_paths(v, run_dir) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [relative_paths(v, run_dir) for v in obj]
    if isinstance(obj, str) and obj.startswith("/"):
        p = Path(obj)
        if run_dir is not None:
            try:
                return p.resolve().relative_to(Path(run_dir).resolve()).as_posix() or "."
            except ValueError:
                pass
        return f".../{p.name}"
    return obj
