"""The ingest subcommands: ``synth``, ``illum``, ``crop``, ``tiles``.

    phenovec synth --out DIR --plates 1 --wells 24 --sites 2 --size 256 --seed 0 [--assays 12]
    phenovec illum INDEX --channels DNA ER RNA AGP Mito --out ILLUM
    phenovec crop INDEX --locations NUCLEI --out CROPS [--illumination ILLUM] [--intensity percentile 0.1 99.9]
    phenovec tiles INDEX --out TILES [--factor 2 | --views 520 692 388]

Each prints a JSON summary on success.
"""
from __future__ import annotations

import argparse
import json

from phenovec.cli_options import add_out, add_quiet, show_progress


def _run_synth(a) -> dict:
    import pandas as pd

    from phenovec.ingest.synth import CHANNELS, synth_plate

    paths = synth_plate(a.out, plates=a.plates, wells=a.wells, sites_per_well=a.sites, size=a.size,
                        cells_per_site=(a.cells[0], a.cells[1]), channels=tuple(a.channels or CHANNELS),
                        seed=a.seed, compression=a.compression, cell_radius=a.cell_radius,
                        plates_per_batch=a.plates_per_batch, progress=show_progress(a))
    index = pd.read_csv(paths["index"])
    summary = {"index": str(paths["index"]), "nuclei": str(paths["nuclei"]), "images": str(paths["images"]),
               "plates": a.plates, "sites": len(index), "nuclei_count": len(pd.read_csv(paths["nuclei"])),
               "treatments": sorted(index["Metadata_Treatment"].unique().tolist()), "seed": a.seed}
    if a.assays:
        from phenovec.ingest.synth_assay_labels import write_synth_assay_labels

        labels = write_synth_assay_labels(a.out, a.assays, index=paths["index"], seed=a.seed)
        summary.update({k: str(v) for k, v in labels.items()}, assays=a.assays)
    print(json.dumps(summary, indent=2))
    return summary


def add_synth_parser(stages) -> argparse.ArgumentParser:
    """Add ``synth`` to the CLI's top-level subparsers; the handler is ``args.run``."""
    p = stages.add_parser("synth", help="write a deterministic synthetic Cell-Painting plate (TIFFs, index, nuclei)")
    add_out(p, "output directory (index.csv, nuclei.csv, images/)")
    p.add_argument("--plates", type=int, default=1, help="number of plates")
    p.add_argument("--wells", type=int, default=24, help="wells per plate: the first N of a 384-well plate")
    p.add_argument("--sites", type=int, default=2, help="sites (fields) per well")
    p.add_argument("--size", type=int, default=256, help="square field side in pixels (e.g. 1080)")
    p.add_argument("--cells", type=int, nargs=2, default=(20, 40), metavar=("LOW", "HIGH"),
                   help="cells per site, drawn uniformly in [LOW, HIGH]")
    p.add_argument("--cell-radius", type=float, default=12.0, help="DMSO cell radius in pixels")
    p.add_argument("--channels", nargs="+", help="channel subset and order (default DNA ER RNA AGP Mito)")
    p.add_argument("--plates-per-batch", type=int, default=2, help="plates per Metadata_Batch")
    p.add_argument("--compression", choices=["deflate", "none"], default="deflate", help="TIFF compression")
    p.add_argument("--seed", type=int, default=0, help="seed of everything generated (same seed, same files)")
    p.add_argument("--assays", type=int, default=0, metavar="N",
                   help="also write N synthetic assays driven by the MOAs (assay_labels.csv: one row per compound, "
                        "1 / 0 / empty; assays.csv: each assay's responding MOAs; phenovec.ingest.synth_assay_labels)")
    add_quiet(p)
    p.set_defaults(run=_run_synth)
    return p


def _intensity(a):
    if a.intensity is None:
        return None
    kind, lo, hi = a.intensity
    return (kind, float(lo), float(hi))


def flat_fields(a, index):
    """``--illumination``: a folder, or ``index`` for the flat fields the index names (LoadData ``Illum<Ch>``)."""
    if a.illumination != "index":
        return a.illumination
    if index.illumination is None:
        raise ValueError(f"--illumination index: {index.source} names no flat fields (LoadData FileName_Illum<Ch> "
                         "or URL_Illum<Ch> columns, as in the Gallery's load_data_with_illum.csv)")
    return index.illumination


def _index_args(p: argparse.ArgumentParser) -> None:
    """The image index and its channel list (crop, illum, tiles)."""
    p.add_argument("index", help="image index (.csv/.parquet, path or URL): Metadata_Plate/Well/Site + FileName_<channel>, "
                                 "or a Cell Painting Gallery LoadData CSV (URL_Orig<Ch> / FileName_Orig<Ch>)")
    p.add_argument("--channels", nargs="+", default=["DNA", "ER", "RNA", "AGP", "Mito"], help="channel names and order")
    p.add_argument("--image-cache", help="where images named by object-store URL (s3://, gs://, ...) are copied "
                                         "once (default $PHENOVEC_IMAGE_CACHE or ~/.cache/phenovec/images)")


def _correction_args(p: argparse.ArgumentParser) -> None:
    """Illumination correction, intensity rescaling and output type (crop, tiles)."""
    p.add_argument("--illumination", help="illumination folder from 'phenovec illum' ({plate}/{plate}_{channel}.npy), or "
                                         "'index': the CellProfiler Illum<Ch>.npy files a load_data_with_illum CSV names")
    p.add_argument("--intensity", nargs=3, metavar=("KIND", "LO", "HI"),
                   help="rescale each image's channels to [0, 1]: 'percentile LO HI' (e.g. percentile 0.1 99.9) "
                        "or 'range LO HI' (fixed pixel values)")
    p.add_argument("--dtype", choices=["uint16", "uint8", "float16", "float32"],
                   help="output type (default uint16 for raw pixels, float32 after any rescale or correction)")


def _run_crop(a) -> dict:
    from phenovec.ingest.crop import crop_index
    from phenovec.ingest.index import read_image_index

    # object-store images are fetched site by site as crop_index cuts each site (illum and tiles read every image)
    index = read_image_index(a.index, a.channels, labels=a.labels, image_cache=a.image_cache, fetch=False)
    res = crop_index(index, a.locations, a.out, box_size=a.box_size, edge=a.edge, rescale=a.rescale,
                     chunk_cells=a.chunk_cells, progress=show_progress(a), illumination=flat_fields(a, index),
                     intensity=_intensity(a), dtype=a.dtype, mask=a.mask)
    summary = {"out": str(res.out), "sites": res.sites, "cells": res.cells, "crops": res.crops,
               "resumed_sites": res.resumed_sites, "box_size": a.box_size, "edge": a.edge, "channels": a.channels}
    print(json.dumps(summary, indent=2))
    return summary


def add_crop_parser(stages) -> argparse.ArgumentParser:
    """Add ``crop`` (single-cell crops of every site of an image index into Zarr; resumable)."""
    p = stages.add_parser("crop", help="single-cell crops around nuclei into crops.zarr + cells.parquet (resumable)")
    _index_args(p)
    p.add_argument("--locations", required=True, help="nuclei table with Metadata_Plate/Well/Site and centre columns")
    add_out(p, "output folder (rerun the same command to resume)")
    p.add_argument("--box-size", type=int, default=128, help="crop side in pixels, centred on the nucleus")
    p.add_argument("--edge", choices=["drop", "shift", "pad"], default="drop",
                   help="a box crossing the image edge: drop the cell, shift the box inside, or zero-pad")
    p.add_argument("--rescale", action="store_true", help="per-crop per-channel min-max to [0, 1] (float32), as DeepProfiler")
    p.add_argument("--chunk-cells", type=int, default=256, help="cells per Zarr chunk (the resume unit)")
    _correction_args(p)
    p.add_argument("--labels", help="label-image column of the index (FileName_<name> or <name>; default Labels if present)")
    p.add_argument("--mask", choices=["neighbors", "object"], help="with label images: zero other cells / all but the cell")
    add_quiet(p)
    p.set_defaults(run=_run_crop)
    return p


def _run_illum(a) -> dict:
    from phenovec.ingest.illumination import compute_illumination
    from phenovec.ingest.index import read_image_index

    index = read_image_index(a.index, a.channels, image_cache=a.image_cache)
    res = compute_illumination(index, a.out, down_scale_factor=a.down_scale_factor,
                               median_filter_size=a.median_filter_size, plates=a.plates, progress=show_progress(a))
    summary = {"out": str(a.out), "plates": sorted({k[0] for k in res}), "channels": a.channels,
               "files": len(res), "down_scale_factor": a.down_scale_factor, "median_filter_size": a.median_filter_size}
    print(json.dumps(summary, indent=2))
    return summary


def add_illum_parser(stages) -> argparse.ArgumentParser:
    """Add ``illum`` (DeepProfiler illumination functions per plate x channel; skips plates already done)."""
    p = stages.add_parser("illum", help="illumination functions per plate x channel as DeepProfiler computes them")
    _index_args(p)
    add_out(p, "output folder: {plate}/{plate}_{channel}.npy + illumination.json")
    p.add_argument("--down-scale-factor", type=float, default=4, help="flat fields are computed on thumbnails 1/FACTOR of the image side (DeepProfiler's down_scale_factor)")
    p.add_argument("--median-filter-size", type=float, default=24, help="median filter disk diameter (thumbnail pixels)")
    p.add_argument("--plates", nargs="+", help="only these plates (default: all in the index)")
    add_quiet(p)
    p.set_defaults(run=_run_illum)
    return p


def _run_tiles(a) -> dict:
    from phenovec.ingest.fields import tile_index
    from phenovec.ingest.index import read_image_index

    index = read_image_index(a.index, a.channels, image_cache=a.image_cache)
    res = tile_index(index, a.out, factor=a.factor, views=tuple(a.views) if a.views else None,
                     illumination=flat_fields(a, index), intensity=_intensity(a), dtype=a.dtype,
                     chunk_sites=a.chunk_sites, progress=show_progress(a))
    summary = {"out": str(res.out), "sites": res.sites, "tiles": res.tiles, "resumed_sites": res.resumed_sites,
               "factor": a.factor, "views": a.views, "channels": a.channels}
    print(json.dumps(summary, indent=2))
    return summary


def add_tiles_parser(stages) -> argparse.ArgumentParser:
    """Add ``tiles`` (whole fields or views of every site into tiles.zarr + tiles.parquet; resumable)."""
    p = stages.add_parser("tiles", help="field tiles (whole fields, downsampled, or fixed-size views) into Zarr (resumable)")
    _index_args(p)
    add_out(p, "output folder (rerun the same command to resume)")
    p.add_argument("--factor", type=int, default=1, help="block-mean downsampling factor for whole fields (MOAProfiler)")
    p.add_argument("--views", type=int, nargs=3, metavar=("TILE_H", "TILE_W", "STRIDE"),
                   help="cut fixed-size views every STRIDE pixels instead of whole fields (GapNet)")
    _correction_args(p)
    p.add_argument("--chunk-sites", type=int, default=1, help="sites per Zarr chunk (the resume unit)")
    add_quiet(p)
    p.set_defaults(run=_run_tiles)
    return p
