"""``phenovec profile``: embeddings + per-well profiles with an exported model; prints a JSON summary.

    phenovec profile MODEL.onnx --index index.csv --locations nuclei.csv -o OUT [--batch-size 256]
        [--scheduler threads|processes|tcp://host:port] [--workers N] [--dtype float16|float32] [--edge drop]
        [--micro-batch auto|none|N] [--providers auto|NAME ...] [--precision fp32|fp16|bf16]
        [--trt-cache-dir DIR] [--sessions auto|per_thread|shared] [--illumination ILLUM] [--labels COLUMN] [--quiet]
    phenovec profile MODEL.onnx --crops CROPS_DIR -o OUT
    phenovec profile FIELD_MODEL.onnx --index index.csv -o OUT [--batch-size 8] [--dtype float32]
    phenovec profile MODEL.onnx --index index.csv --locations nuclei.csv -o OUT --shard-by [Metadata_Plate]
    phenovec profile MODEL.onnx --index P1/load_data.csv P2/load_data.csv ... -o OUT [--scheduler tcp://host:port]

The model's metadata ``input_kind`` decides the mode: ``crops`` (single-cell model) -> ``profile_sites`` (images +
locations, or a crop store; defaults batch 256, float16, edge drop); ``fields`` (whole-field model, MOAProfiler)
-> ``profile_fields`` (one embedding per field; defaults batch 8, float32; ``--locations`` / ``--crops`` /
``--edge`` / ``--illumination`` / ``--labels`` are errors). ``--illumination``: the ``phenovec illum`` folder of the profiled
plates, required exactly when the model was trained on illumination-corrected crops (its metadata
``intensity.crop_illumination``; images input only: a crop store was corrected when cut); a model trained on
masked crops (``intensity.crop_mask``) needs an index with a label column (``FileName_Labels`` / ``Labels``, or
the one named by ``--labels``). Resumable: rerunning the same
command into the same OUT skips finished sites (``phenovec.profile.parts``). The summary's ``cells`` counts
fields for a field model.

Several ``--index`` (one shard each) or ``--shard-by`` make a sharded run (``phenovec.profile.shards``: each
shard a resumable run under ``OUT/shards/<name>/``, ``OUT/manifest.json`` listing their states, the well tables
of all shards as the plate-partitioned datasets ``OUT/wells_mean/`` and ``OUT/wells_median/``); its summary lists
the failed shards, and the exit status is non-zero when there are any.
"""
from __future__ import annotations

import argparse
import json

from phenovec.cli_options import add_out, add_quiet, show_progress


def _run_profile(a) -> dict:
    from phenovec.runtime import read_metadata

    meta = read_metadata(a.model)
    kind = meta.input_kind
    # options left out take the entry point's own defaults (batch 256 / 8, float16 / float32, edge drop)
    opts = {k: v for k, v in (("batch_size", a.batch_size), ("dtype", a.dtype), ("scheduler", a.scheduler),
                              ("workers", a.workers), ("max_in_flight", a.max_in_flight),
                              ("precision", a.precision), ("trt_cache_dir", a.trt_cache_dir),
                              ("sessions", a.sessions)) if v is not None}
    if a.providers is not None:
        opts["providers"] = a.providers[0] if a.providers == ["auto"] else a.providers
    if a.micro_batch is not None:
        opts["micro_batch"] = None if a.micro_batch == "none" else a.micro_batch
    indexes = a.index or []
    locations = a.locations or []
    if len(indexes) > 1 or a.shard_by is not None:
        return _run_shards(a, kind, opts)
    if a.task_cells is not None:
        raise SystemExit("phenovec profile: --task-cells is for sharded runs (several --index or --shard-by); one "
                         "run's tasks hold --batch-size cells")
    if len(locations) > 1:
        raise SystemExit(f"phenovec profile: {len(locations)} --locations for one --index (one table per index)")
    a.index = indexes[0] if indexes else None
    a.locations = locations[0] if locations else None
    if kind == "fields":
        from phenovec.profile.fields import profile_fields

        for flag, value in (("--locations", a.locations), ("--crops", a.crops), ("--edge", a.edge),
                            ("--illumination", a.illumination), ("--labels", a.labels)):
            if value is not None:
                raise SystemExit(f"phenovec profile: {flag} does not apply to a whole-field model ({a.model} has "
                                 "input_kind 'fields': one embedding per field, no cell locations, crops or "
                                 "illumination correction)")
        if a.index is None:
            raise SystemExit("phenovec profile: give --index for a whole-field model")
        res = profile_fields(a.model, a.index, a.out, progress=show_progress(a), **opts)
    else:
        from phenovec.profile.pipeline import profile_sites

        if (a.index is None) == (a.crops is None):
            raise SystemExit("phenovec profile: give --index (with --locations) or --crops")
        if a.edge is not None:
            opts["edge"] = a.edge
        index, illumination = a.index, a.illumination
        if a.labels is not None or a.image_cache is not None or a.illumination == "index":
            if a.index is None and a.labels is not None:
                raise SystemExit("phenovec profile: --labels names a label-image column of --index (a crop store's "
                                 "crops were masked, or not, when they were cut)")
            if a.index is None:
                raise SystemExit("phenovec profile: --image-cache and --illumination index read --index (a crop "
                                 "store's crops were corrected, or not, when they were cut)")
            from phenovec.ingest.command import flat_fields
            from phenovec.ingest.index import read_image_index

            # a LoadData index's object-store images are fetched site by site by the worker that cuts the site,
            # into --image-cache (or the default cache)
            index = read_image_index(a.index, meta.channels, labels=a.labels, image_cache=a.image_cache,
                                     fetch=False)
            illumination = flat_fields(a, index)
        res = profile_sites(a.model, index, a.locations, a.out, crops_dir=a.crops, illumination=illumination,
                            progress=show_progress(a), **opts)
    summary = {"out": str(res.out), "sites": res.sites, "cells": res.cells, "embedded": res.embedded,
               "resumed_sites": res.resumed_sites, "seconds": round(res.seconds, 3),
               "cells_per_s": round(res.cells / res.seconds, 1) if res.seconds > 0 else None,
               "outputs": {k: str(v) for k, v in res.paths.items()}}
    print(json.dumps(summary, indent=2))
    return summary


def _run_shards(a, kind: str, opts: dict) -> dict:
    """Many plates: the indexes given, or one index split by ``--shard-by`` (``phenovec.profile.shards``). Prints
    the summary, then exits non-zero naming the failed shards if any."""
    from phenovec.profile.shards import DEFAULT_SHARD_BY, profile_shards

    if kind == "fields":
        raise SystemExit(f"phenovec profile: sharded runs (several --index or --shard-by) take single-cell models; "
                         f"{a.model} has input_kind 'fields'")
    if a.crops is not None:
        raise SystemExit("phenovec profile: --crops profiles one crop store; sharded runs take --index")
    if not a.index:
        raise SystemExit("phenovec profile: --shard-by splits an --index; give one")
    if len(a.index) > 1 and a.shard_by is not None:
        raise SystemExit("phenovec profile: give several --index (one shard each) or one --index with --shard-by, "
                         "not both")
    if a.edge is not None:
        opts["edge"] = a.edge
    if a.task_cells is not None:
        opts["task_cells"] = a.task_cells
    opts.setdefault("scheduler", "processes")
    locations = a.locations if a.locations is None or len(a.locations) > 1 else a.locations[0]
    res = profile_shards(a.model, a.index if len(a.index) > 1 else a.index[0], a.out, locations=locations,
                         shard_by=a.shard_by or DEFAULT_SHARD_BY, labels=a.labels, illumination=a.illumination,
                         image_cache=a.image_cache, progress=show_progress(a), **opts)
    states = {}
    for e in res.shards.values():
        states[e["state"]] = states.get(e["state"], 0) + 1
    summary = {"out": str(res.out), "shards": len(res.shards), "states": states, "cells": res.cells,
               "embedded": res.embedded, "seconds": round(res.seconds, 3),
               "cells_per_s": round(res.cells / res.seconds, 1) if res.seconds > 0 else None,
               "manifest": str(res.out / "manifest.json"), "failed": res.failed}
    print(json.dumps(summary, indent=2))
    if res.failed:
        first = next(iter(res.failed.items()))
        raise SystemExit(f"{len(res.failed)} of {len(res.shards)} shards failed (see {res.out / 'manifest.json'}; "
                         f"a rerun resumes them); {first[0]}: {first[1]}")
    return summary


def _micro_batch(text: str):
    """``--micro-batch``: auto, none or an integer >= 1 (checked by ``ProfileSession``'s rule)."""
    from phenovec.runtime.session import check_micro_batch

    if text == "none":
        return text
    try:
        return check_micro_batch(text if text == "auto" else int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or an integer >= 1, got {text!r}") from None


def add_profile_parser(stages) -> argparse.ArgumentParser:
    """Add ``profile`` (images + locations, a crop store, or whole fields -> embeddings Zarr + well profiles)."""
    p = stages.add_parser("profile", help="profile cells (or whole fields) with an exported ONNX model (Dask, "
                                          "resumable): embeddings Zarr + per-well mean/median Parquet")
    p.add_argument("model", help="ONNX model written by phenovec export (its input_kind picks cells or fields)")
    p.add_argument("--index", nargs="+", help="image index (CSV/Parquet; FileName_<channel> columns matched by "
                                              "name); several: a sharded run, one shard (plate) each")
    p.add_argument("--locations", nargs="+", help="nuclei table (CSV/Parquet/SQLite), or one per --index; default: "
                                                  "the index's Metadata_Locations column (single-cell models only)")
    p.add_argument("--shard-by", nargs="?", const="Metadata_Plate", default=None, metavar="COLUMN",
                   help="split --index into shards by COLUMN (default Metadata_Plate), each its own resumable run "
                        "under OUT/shards/ on one Dask cluster, with OUT/manifest.json (phenovec.profile.shards)")
    p.add_argument("--crops", help="crops folder written by phenovec crop (instead of --index; single-cell models)")
    p.add_argument("--labels", help="label-image column of --index (FileName_<name> or <name>; default Labels if "
                                     "present), for a model trained on masked crops")
    p.add_argument("--illumination", help="illumination folder from 'phenovec illum' ({plate}/{plate}_{channel}.npy) "
                                          "for a model trained on illumination-corrected crops (--index only), or "
                                          "'index' for the flat fields a LoadData index names (Illum<Ch>.npy)")
    p.add_argument("--image-cache", help="where images named by object-store URL (s3://, gs://, ...) are copied once "
                                         "(default $PHENOVEC_IMAGE_CACHE or ~/.cache/phenovec/images)")
    add_out(p, "output folder (resumable)")
    p.add_argument("--batch-size", type=int, default=None, help="crops (default 256) or fields (default 8) per "
                                                                "inference call")
    p.add_argument("--micro-batch", type=_micro_batch, default=None,
                   help="crops (fields) per onnxruntime call within a batch: auto (default: cache-sized calls on "
                        "the CPU provider, whole batches on a GPU), none (one call per batch) or a number; "
                        "changes no number, only the speed")
    p.add_argument("--providers", nargs="+", default=None, metavar="NAME",
                   help="onnxruntime execution providers in priority order, or auto (default: TensorRT, CUDA, "
                        "then CPU; OpenVINO on the CPU for --precision bf16)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                   help="inference precision (default fp32): fp16 on TensorRT, bf16 on CPUs with AMX / "
                        "AVX512-BF16 through OpenVINO (the openvino extra); a worker that cannot run it is an error")
    p.add_argument("--sessions", choices=["auto", "per_thread", "shared"], default=None,
                   help="onnxruntime sessions: auto (default: one per Dask thread on the CPU with the threads "
                        "scheduler, else one per process), per_thread or shared (one per process, all its cores)")
    p.add_argument("--trt-cache-dir", default=None, help="TensorRT engine + timing cache folder, reused by reruns "
                                                         "(default: none)")
    p.add_argument("--scheduler", default=None, help="threads (default; processes for a sharded run), processes or "
                                                     "tcp://host:port")
    p.add_argument("--workers", type=int, default=None, help="threads / processes of the local cluster (default: "
                                                             "the CPU count)")
    p.add_argument("--dtype", choices=["float16", "float32"], default=None,
                   help="embeddings dtype (default float16 for cells, float32 for fields)")
    p.add_argument("--edge", choices=["drop", "shift", "pad"], default=None,
                   help="crop edge policy (default drop; single-cell models)")
    p.add_argument("--task-cells", type=int, default=None,
                   help="sharded runs: cells per task (default: --batch-size); bigger tasks cost the driver and "
                        "scheduler less per cell, a worker more memory (a task's float32 crops)")
    p.add_argument("--max-in-flight", type=int, default=None, help="tasks submitted at once (default: 2 x worker "
                                                                    "slots + 1)")
    add_quiet(p, old=["--no-progress"])
    p.set_defaults(run=_run_profile)
    return p
