"""``phenovec profile``: single-cell embeddings + per-well profiles with an exported model; prints a JSON summary.

    phenovec profile MODEL.onnx --index index.csv --locations nuclei.csv -o OUT [--batch-size 256]
        [--scheduler threads|processes|tcp://host:port] [--workers N] [--dtype float16|float32] [--edge drop]
    phenovec profile MODEL.onnx --crops CROPS_DIR -o OUT

Resumable: rerunning the same command into the same OUT skips finished sites (``phenovec.profile.parts``).
"""
from __future__ import annotations

import argparse
import json


def _run_profile(a) -> dict:
    from phenovec.profile.pipeline import profile_sites

    if (a.index is None) == (a.crops is None):
        raise SystemExit("phenovec profile: give --index (with --locations) or --crops")
    res = profile_sites(a.model, a.index, a.locations, a.out, crops_dir=a.crops, batch_size=a.batch_size,
                        scheduler=a.scheduler, workers=a.workers, dtype=a.dtype, edge=a.edge,
                        max_in_flight=a.max_in_flight, progress=not a.no_progress)
    summary = {"out": str(res.out), "sites": res.sites, "cells": res.cells, "embedded": res.embedded,
               "resumed_sites": res.resumed_sites, "seconds": round(res.seconds, 3),
               "cells_per_s": round(res.cells / res.seconds, 1) if res.seconds > 0 else None,
               "outputs": {k: str(v) for k, v in res.paths.items()}}
    print(json.dumps(summary, indent=2))
    return summary


def add_profile_parser(stages) -> argparse.ArgumentParser:
    """Add ``profile`` (images + locations or a crop store -> embeddings Zarr + well profiles) to the CLI."""
    p = stages.add_parser("profile", help="profile cells with an exported ONNX model (Dask, resumable): "
                                          "embeddings Zarr + per-well mean/median Parquet")
    p.add_argument("model", help="ONNX model written by phenovec export")
    p.add_argument("--index", help="image index (CSV/Parquet; FileName_<channel> columns matched by name)")
    p.add_argument("--locations", help="nuclei table (CSV/Parquet/SQLite); default: the index's "
                                       "Metadata_Locations column")
    p.add_argument("--crops", help="crops folder written by phenovec crop (instead of --index)")
    p.add_argument("-o", "--out", required=True, help="output folder (resumable)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--scheduler", default=None, help="threads (default), processes or tcp://host:port")
    p.add_argument("--workers", type=int, default=None, help="threads / processes of the local cluster")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--edge", choices=["drop", "shift", "pad"], default="drop")
    p.add_argument("--max-in-flight", type=int, default=None, help="tasks submitted at once")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_run_profile)
    return p
