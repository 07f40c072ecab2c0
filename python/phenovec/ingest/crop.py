"""Single-cell crops of every site of an image index into one chunked Zarr array, resumably.

Output directory (``OUT``):

- ``crops.zarr``: Zarr v3 array ``crops`` of shape cells x C x box x box, chunked by ``chunk_cells`` cells; its
  attributes record the configuration (channels, box size, edge, illumination source and each ``.npy``'s
  sha256, intensity, dtype, mask, phenovec version);
- ``cells.parquet``: one row per located nucleus: the site's metadata, ``ObjectNumber``, ``x``, ``y``,
  ``edge`` (inside / shifted / padded / dropped / invalid) and ``row`` (its index in ``crops``; -1 when it has no
  crop: dropped at the border or an invalid centre);
- ``manifest.json``: the configuration, the committed row count and the sites done.

Resumable: crops are written only in whole chunks aligned to ``chunk_cells`` (the last one at the end), and a site
is recorded as done (its table part ``cells/site-NNNNN.parquet`` written, then ``manifest.json`` replaced
atomically) only once all its crops lie in committed chunks. A crash loses at most the sites in the pending
partial chunk; a rerun with the same configuration skips the done sites and rewrites only uncommitted chunks, so
no chunk holding committed cells is ever rewritten. A rerun with another configuration is refused.
Images named by object-store URL (an index read with ``fetch=False``, ``phenovec.ingest.image_source``) are
copied into the image cache site by site, as each site is cropped. Decode and crop run in Rust (``phenovec._core.crop_site``: rayon, GIL released), per site in this order
(``rust/src/site.rs``): decode (page ``Frame_<ch>`` of each channel file) -> ``illumination`` (raw / the plate's
flat field: a folder of :func:`phenovec.ingest.illumination.compute_illumination` or a mapping
``{(plate, channel): .npy}``) -> ``intensity`` (``("percentile", lo, hi)`` per image and channel or
``("range", lo, hi)``, to [0, 1]) -> crop with the edge policy -> ``mask`` (with label images, the index's
label column: ``"neighbors"`` zeroes other cells' pixels, ``"object"`` everything but the cell; the cell's label
is its ``ObjectNumber`` when the locations have one, else DeepProfiler's median of the 10 x 10 patch at the
centre) -> ``rescale`` (per-crop per-channel min-max as DeepProfiler) -> ``dtype``: None gives uint16 for raw
pixels and float32 once a float step ran; ``uint8`` / ``uint16`` of [0, 1] values are ``rint(v * 255)`` /
``rint(v * 65535)``; ``uint8`` needs a rescale. Only cells with a crop get a row (``compact``).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from phenovec.ingest.fields import DTYPES, illumination_config, normalize_intensity
from phenovec.ingest.index import ImageIndex, locations_name, site_centres
from phenovec.io.atomic import output_folder, write_json_atomic

EDGE_POLICIES = ("drop", "shift", "pad")
MASK_MODES = ("neighbors", "object")
OUTCOMES = ("inside", "shifted", "padded", "dropped", "invalid")  # codes 0..4 from the Rust core


@dataclass
class CropResult:
    out: Path
    cells: int
    crops: int
    sites: int
    resumed_sites: int


def cell_label_ids(loc: pd.DataFrame, where: str) -> np.ndarray | None:
    """The label of each cell of a site's locations for masking (``crop_site(label_ids=)``): its ``ObjectNumber``
    as int64, or None when the locations have none (``crop_site`` then takes DeepProfiler's median rule); missing
    values are an error naming ``where``."""
    if "ObjectNumber" not in loc.columns:
        return None
    if loc["ObjectNumber"].isna().any():
        raise ValueError(f"{where}: ObjectNumber has missing values (needed as label ids for masking)")
    return np.ascontiguousarray(loc["ObjectNumber"].to_numpy(dtype=np.int64))


def refuse_centres_outside(codes: np.ndarray, loc: pd.DataFrame, site: str, image: str, source: str) -> None:
    """A finite centre that the crop core found outside the site's image (outcome ``invalid``; a NaN centre is
    refused when the locations are read) is an error naming the locations ``source``, the ``site``, the cell
    (``loc``: the site's ``x``, ``y`` and ``ObjectNumber`` if any, in the order of ``codes``) and the ``image``:
    such a table belongs to other images (another size or site). Used by ``crop`` and ``profile``."""
    xs, ys = loc["x"].to_numpy(np.float64), loc["y"].to_numpy(np.float64)
    bad = np.flatnonzero((np.asarray(codes) == OUTCOMES.index("invalid")) & np.isfinite(xs) & np.isfinite(ys))
    if len(bad):
        i = int(bad[0])
        cell = f"ObjectNumber {loc['ObjectNumber'].iloc[i]}" if "ObjectNumber" in loc.columns else f"cell {i}"
        raise ValueError(f"{source}: {cell} of site {site} has its centre (x={xs[i]:g}, y={ys[i]:g}) outside the "
                         f"image {image} ({len(bad)} such cells in the site): are these the locations of these "
                         "images?")


def site_label(sites: pd.DataFrame, s: int) -> str:
    """``plate well site`` of row ``s`` of an index's site table, for messages."""
    return " ".join(str(sites.iloc[s][k]) for k in ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
                    if k in sites.columns)


def crop_index(
    index: ImageIndex,
    locations,
    out: str | os.PathLike,
    box_size: int = 128,
    edge: str = "drop",
    rescale: bool = False,
    chunk_cells: int = 256,
    progress: bool | None = None,
    illumination=None,
    intensity=None,
    dtype: str | None = None,
    mask: str | None = None,
) -> CropResult:
    """Crop every located cell of every site (see the module docstring for the steps, layout and resumability)."""
    import zarr
    from tqdm.auto import tqdm

    import phenovec
    from phenovec import _core

    if edge not in EDGE_POLICIES:
        raise ValueError(f"edge must be one of {EDGE_POLICIES}, got {edge!r}")
    if box_size < 2:
        raise ValueError(f"box_size must be >= 2, got {box_size}")
    intensity = normalize_intensity(intensity)
    if mask is not None:
        if mask not in MASK_MODES:
            raise ValueError(f"mask must be None or one of {MASK_MODES}, got {mask!r}")
        if index.labels is None:
            raise ValueError(f"{index.source}: mask={mask!r} needs label images: give the index a label column "
                             "(FileName_Labels or the column named by labels=)")
    floats = illumination is not None or intensity is not None or rescale
    if dtype is None:
        dtype = "float32" if floats else "uint16"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be None or one of {DTYPES}, got {dtype!r}")
    if dtype == "uint8" and intensity is None and not rescale:
        raise ValueError("dtype uint8 needs a rescale (intensity or per-crop rescale) of the 16-bit pixels")
    if len(index) == 0:
        raise ValueError(f"{index.source}: the image index has no site")
    locs = site_centres(index, locations)  # read and checked before anything is written
    out = Path(out)
    with output_folder(out) as run:
        (out / "cells").mkdir(exist_ok=True)
        config = {"channels": index.channels, "box_size": int(box_size), "edge": edge, "rescale": bool(rescale),
                  "chunk_cells": int(chunk_cells), "sites": len(index),
                  "illumination": illumination_config(illumination), "intensity": list(intensity) if intensity else None,
                  "dtype": dtype, "mask": mask, "frames": index.frames is not None}
        mpath = out / "manifest.json"
        shape_tail = (len(index.channels), box_size, box_size)
        if mpath.exists():
            manifest = json.loads(mpath.read_text())
            if manifest["config"] != config:
                raise ValueError(f"{out}: holds crops made with another configuration {manifest['config']}; "
                                 f"use a new output folder (asked: {config})")
            arr = zarr.open_array(str(out / "crops.zarr"), mode="r+")
        else:
            manifest = {"config": config, "committed": 0, "done": [], "done_end": 0, "complete": False}
            if (out / "crops.zarr").exists():
                shutil.rmtree(out / "crops.zarr")
            attrs = {**config, "phenovec_version": phenovec.__version__}
            if illumination is not None:
                from phenovec.ingest.illumination import illumination_provenance

                attrs["illumination_files"] = {p: illumination_provenance(illumination, p, index.channels)
                                               for p in dict.fromkeys(index.sites["Metadata_Plate"].astype(str))}
            arr = zarr.create_array(str(out / "crops.zarr"), shape=(0, *shape_tail), chunks=(chunk_cells, *shape_tail),
                                    dtype=dtype, fill_value=0, attributes=attrs)
            write_json_atomic(mpath, manifest)
        committed = int(manifest["committed"])
        done = set(manifest["done"])
        resumed = len(done)
        run.resumable = bool(done)
        flat_cache: list = [None, None]  # (plate, C x H x W flat field) of the last plate
        if illumination is not None:
            from phenovec.ingest.illumination import load_illumination
        pending: list[np.ndarray] = []
        pending_sites: list[tuple[int, pd.DataFrame, int]] = []  # (site, table, last row + 1)
        n_pending = 0
        # sites are done in index order: crops restart after the last done site's rows; the rows of the next sites
        # that already lie in committed chunks are recomputed for the table but not written again
        next_row = int(manifest.get("done_end", 0))

        def flush(final: bool) -> None:
            nonlocal pending, n_pending, committed
            block = np.concatenate(pending) if pending else np.empty((0, *shape_tail), dtype=dtype)
            full = (len(block) // chunk_cells) * chunk_cells if not final else len(block)
            if full:
                arr.resize((committed + full, *shape_tail))
                arr[committed : committed + full] = block[:full]
                committed += full
            rest = block[full:]
            pending, n_pending = ([rest] if len(rest) else []), len(rest)
            still = []
            for site, table, end in pending_sites:
                if end <= committed and not still:
                    table.to_parquet(out / "cells" / f".site-{site:05d}.tmp", index=False)
                    os.replace(out / "cells" / f".site-{site:05d}.tmp", out / "cells" / f"site-{site:05d}.parquet")
                    done.add(site)
                    manifest["done_end"] = end
                    run.resumable = True
                else:
                    still.append((site, table, end))
            pending_sites[:] = still
            manifest.update(committed=committed, done=sorted(done))
            write_json_atomic(mpath, manifest)

        bar = tqdm(range(len(index)), desc="crop sites", unit="site", disable=None if progress is None else not progress)
        for s in bar:
            if s in done:
                continue
            loc = locs.table(s)
            xs = np.ascontiguousarray(loc["x"].to_numpy(dtype=np.float64))
            ys = np.ascontiguousarray(loc["y"].to_numpy(dtype=np.float64))
            opts: dict = {"compact": True}
            if index.site_frames(s) is not None:
                opts["frames"] = index.site_frames(s)
            if illumination is not None:
                plate = index.sites.iloc[s]["Metadata_Plate"]
                if flat_cache[0] != str(plate):
                    flat_cache[:] = [str(plate), load_illumination(illumination, plate, index.channels)[0]]
                opts["flat"] = flat_cache[1]
            if intensity is not None:
                opts["intensity"] = intensity
            if mask is not None:
                opts.update(labels=index.site_label_path(s), mask=mask)
                ids = cell_label_ids(loc, f"locations of site {s} ({index.paths[s][0]})")
                if ids is not None:
                    opts["label_ids"] = ids
            opts["dtype"] = dtype
            # an image named by object-store URL is copied now, when its site is cropped (image_source)
            crops, codes = _core.crop_site(index.site_paths(s), xs, ys, int(box_size), edge, bool(rescale), **opts)
            codes = np.asarray(codes, dtype=np.int64)
            refuse_centres_outside(codes, loc, site_label(index.sites, s), index.paths[s][0],
                               locations_name(locations))
            has_crop = codes <= 2  # inside, shifted, padded
            if len(crops) != int(has_crop.sum()):
                raise RuntimeError(f"site {s}: crop_site returned {len(crops)} crops for {int(has_crop.sum())} kept cells")
            kept = crops
            rows = np.full(len(codes), -1, dtype=np.int64)
            rows[has_crop] = next_row + np.arange(len(kept))
            start, next_row = next_row, next_row + len(kept)
            kept = kept[max(0, committed - start):]  # already in committed chunks (a resumed run)
            table = pd.DataFrame({k: np.repeat(index.sites.iloc[s][k], len(codes)) for k in index.sites.columns})
            if "ObjectNumber" in loc.columns:
                table["ObjectNumber"] = loc["ObjectNumber"].to_numpy()
            table["x"], table["y"] = xs, ys
            table["edge"] = pd.Categorical.from_codes(codes, OUTCOMES)
            table["row"] = rows
            if len(kept):
                pending.append(np.asarray(kept, dtype=dtype))
                n_pending += len(kept)
            pending_sites.append((s, table, next_row))
            if n_pending >= chunk_cells:
                flush(final=False)
        flush(final=True)
        parts = [pd.read_parquet(out / "cells" / f"site-{s:05d}.parquet") for s in sorted(done)]
        nonempty = [p for p in parts if len(p)]  # a site without cells (an empty well) adds no row and no dtype
        cells = pd.concat(nonempty or parts[:1], ignore_index=True) if parts else pd.DataFrame()
        if len(cells):
            cells["edge"] = pd.Categorical(cells["edge"].astype(str), categories=list(OUTCOMES))
        cells.to_parquet(out / ".cells.parquet.tmp", index=False)
        os.replace(out / ".cells.parquet.tmp", out / "cells.parquet")
        manifest["complete"] = True
        write_json_atomic(mpath, manifest)
        return CropResult(out, len(cells), committed, len(index), resumed)
