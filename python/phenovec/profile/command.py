"""``phenovec profile``: embeddings + per-well profiles with an exported model; prints a JSON summary.

    phenovec profile MODEL.onnx --index index.csv --locations nuclei.csv -o OUT [--batch-size 256]
        [--scheduler threads|processes|tcp://host:port] [--workers N] [--dtype float16|float32] [--edge drop]
        [--micro-batch auto|none|N] [--providers auto|NAME ...] [--precision fp32|fp16|bf16]
        [--trt-cache-dir DIR] [--sessions auto|per_thread|shared] [--illumination ILLUM] [--labels COLUMN] [--quiet]
    phenovec profile MODEL.onnx --crops CROPS_DIR -o OUT
    phenovec profile FIELD_MODEL.onnx --index index.csv -o OUT [--batch-size 8] [--dtype float32]

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
        index = a.index
        if a.labels is not None:
            if a.index is None:
                raise SystemExit("phenovec profile: --labels names a label-image column of --index (a crop store's "
                                 "crops were masked, or not, when they were cut)")
            from phenovec.ingest.index import read_image_index

            index = read_image_index(a.index, meta.channels, labels=a.labels)
        res = profile_sites(a.model, index, a.locations, a.out, crops_dir=a.crops, illumination=a.illumination,
                            progress=show_progress(a), **opts)
    summary = {"out": str(res.out), "sites": res.sites, "cells": res.cells, "embedded": res.embedded,
               "resumed_sites": res.resumed_sites, "seconds": round(res.seconds, 3),
               "cells_per_s": round(res.cells / res.seconds, 1) if res.seconds > 0 else None,
               "outputs": {k: str(v) for k, v in res.paths.items()}}
    print(json.dumps(summary, indent=2))
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
    p.add_argument("--index", help="image index (CSV/Parquet; FileName_<channel> columns matched by name)")
    p.add_argument("--locations", help="nuclei table (CSV/Parquet/SQLite); default: the index's "
                                       "Metadata_Locations column (single-cell models only)")
    p.add_argument("--crops", help="crops folder written by phenovec crop (instead of --index; single-cell models)")
    p.add_argument("--labels", help="label-image column of --index (FileName_<name> or <name>; default Labels if "
                                     "present), for a model trained on masked crops")
    p.add_argument("--illumination", help="illumination folder from 'phenovec illum' ({plate}/{plate}_{channel}.npy) "
                                          "for a model trained on illumination-corrected crops (--index only)")
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
    p.add_argument("--scheduler", default=None, help="threads (default), processes or tcp://host:port")
    p.add_argument("--workers", type=int, default=None, help="threads / processes of the local cluster (default: "
                                                             "the CPU count)")
    p.add_argument("--dtype", choices=["float16", "float32"], default=None,
                   help="embeddings dtype (default float16 for cells, float32 for fields)")
    p.add_argument("--edge", choices=["drop", "shift", "pad"], default=None,
                   help="crop edge policy (default drop; single-cell models)")
    p.add_argument("--max-in-flight", type=int, default=None, help="tasks submitted at once (default: 2 x worker "
                                                                    "slots + 1)")
    add_quiet(p, old=["--no-progress"])
    p.set_defaults(run=_run_profile)
    return p
