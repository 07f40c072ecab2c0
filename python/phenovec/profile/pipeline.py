"""``profile_sites``: single-cell embeddings and per-well profiles of every site, from images + locations (Rust
decode + crop inside the worker, no crop files) or from a ``phenovec crop`` store, with an exported phenovec ONNX
model, on Dask, resumably.

Steps: the model's metadata gives the input contract (``phenovec.profile.contract``: channels matched by name,
crop size, the crop steps of training (illumination correction, masking), input scaling); sites are grouped into
tasks of about ``batch_size`` cells (consecutive sites, fixed by the input alone, so a task's batches are the same
in every run); tasks go to Dask through a bounded window
(``phenovec.profile.scheduler``); each finished site is committed as one part file (``phenovec.profile.parts``),
each finished well's mean and median row as soon as its last site is committed (``phenovec.profile.wells``);
at the end the outputs are assembled from the parts (``phenovec.profile.assemble``). A rerun with the same
configuration skips committed sites (a task with any uncommitted site is rerun whole and only its uncommitted
sites are written) and gives output identical to an uninterrupted run; another model or configuration is refused.
Many plates at once, each its own such run on one cluster with planning, commits and assembly in the workers:
``phenovec.profile.shards``.

DeepProfiler (``deepprofiler profile``) follows the same per-site semantics (crop around each nucleus, per-crop
min-max, one feature vector per cell, one file per site) but runs one site after another in one process.
"""
from __future__ import annotations

import functools
import gc
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from phenovec.io.atomic import output_folder
from phenovec.profile.assemble import assemble
from phenovec.profile.contract import (check_index_steps, check_store_steps, contract_from_metadata, index_by_name,
                                      match_channels)
from phenovec.profile.parts import PartStore
from phenovec.profile.scheduler import bounded_map, open_client
from phenovec.profile.sites import (CropJob, FlatFieldRef, SiteJob, check_sessions, embed_crop_group,
                                    embed_site_group, run_model_ref)
from phenovec.profile.wells import WellWriter

DTYPES = ("float16", "float32")
GC_SECONDS = 5.0  # shortest full garbage collection period of the main loop (see profile_sites)
GC_SHARE = 0.01  # longest share of the main loop's time in full collections (each holds the GIL: workers stall)
EDGE_POLICIES = ("drop", "shift", "pad")
MAX_SITES_PER_TASK = 64


@dataclass
class ProfileResult:
    out: Path
    sites: int
    cells: int
    embedded: int
    resumed_sites: int
    seconds: float
    paths: dict = field(default_factory=dict)


def task_groups(cells_per_site: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive sites grouped until a group holds >= ``batch_size`` cells (at most 64 sites per group)."""
    groups, cur, n = [], [], 0
    for s, c in enumerate(cells_per_site):
        cur.append(s)
        n += int(c)
        if n >= batch_size or len(cur) >= MAX_SITES_PER_TASK:
            groups.append(cur)
            cur, n = [], 0
    if cur:
        groups.append(cur)
    return groups


def input_fingerprint(sites: pd.DataFrame, extra) -> str:
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(sites.astype(str), index=False).to_numpy().tobytes())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def run_config(mode: str, source, sites: pd.DataFrame, extra: dict, ncells: list[int], meta, contract, edge: str,
               dtype: str, batch_size: int, precision: str, flats) -> tuple[dict, dict]:
    """(configuration, embeddings attributes) of a run: the configuration is what decides its output (the parts'
    manifest, ``phenovec.profile.parts``: a resume with another one is refused), the attributes go to
    ``embeddings.zarr`` (``phenovec.profile.assemble``). ``flats``: the illumination record of
    :func:`_index_input` or None."""
    import phenovec

    probs = meta.probability_names()
    config = {"mode": mode, "source": str(source), "input_sha256": input_fingerprint(sites, extra),
              "sites": len(sites), "cells": int(sum(ncells)), "model_weights_sha256": meta.weights_sha256,
              "channels": list(contract.channels), "crop_size": contract.box_size, "intensity": meta.intensity,
              "feature_dim": meta.feature_dim, "edge": edge if mode == "images" else None, "dtype": dtype,
              "batch_size": batch_size, "precision": precision}
    if probs:  # only then, so that runs of models without probabilities keep their configuration (resume)
        config["probabilities"] = probs
    attrs = {}
    if flats is not None:  # the content of the flat fields decides the output, not where they lie
        config["illumination"] = {p: {f["channel"]: f["sha256"] for f in prov} for p, prov in flats[1].items()}
        attrs["illumination_files"] = flats[1]
    attrs.update({"channels": list(contract.channels), "crop_size": contract.box_size, "intensity": meta.intensity,
                  "edge": config["edge"], "model_weights_sha256": meta.weights_sha256, "model_arch": meta.arch,
                  "phenovec_version": phenovec.__version__, "source": str(source), "mode": mode})
    return config, attrs


def open_run_model(model_onnx, input_kind: str, dtype: str, batch_size, micro_batch="auto",
                   precision: str = "fp32", sessions: str = "auto",
                   scheduler: str | None = None, providers="auto") -> tuple[Path, object, int]:
    """(resolved model path, its ``ModelMetadata``, batch size) of a profiling run, after checking the run's
    ``dtype``, ``batch_size``, ``micro_batch``, ``precision`` and ``sessions`` for ``scheduler`` (before any output
    or cluster exists) and that the model takes
    ``input_kind`` ("crops": ``profile_sites``, "fields": ``phenovec.profile.profile_fields``; ``phenovec profile``
    dispatches on the model)."""
    from phenovec.runtime import read_metadata
    from phenovec.runtime.providers import check_precision, precision_unrunnable
    from phenovec.runtime.session import check_micro_batch

    check_micro_batch(micro_batch)
    check_precision(precision)
    check_sessions(sessions, scheduler)
    if "://" not in str(scheduler or "threads"):  # local workers (this machine): refuse here, before any output
        why = precision_unrunnable(precision, providers)
        if why is not None:
            raise ValueError(f"precision {precision!r} cannot run on this machine: {why}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model_path = Path(model_onnx).resolve()
    meta = read_metadata(model_path)
    if meta.input_kind != input_kind:
        other = "profile_fields" if meta.input_kind == "fields" else "profile_sites"
        raise ValueError(f"{model_path}: metadata input_kind {meta.input_kind!r}, but this run profiles {input_kind}; "
                         f"profile it with phenovec.profile.{other} (`phenovec profile` dispatches on the model)")
    return model_path, meta, batch_size


def _index_input(index, locations, contract, illumination, model: str):
    """(site table, SiteJob factory, cells factory, cells per site, source, fingerprint extra, illumination record)
    of an image index matched by channel name, after :func:`~phenovec.profile.contract.check_index_steps`. The
    cells are held compactly (``phenovec.ingest.index.SiteCentres``: packed arrays of one nuclei table, or only
    the counts of per-site location files, read again when a site's task is submitted and when its cell table is
    assembled). The illumination record is None without ``illumination``, else ``(FlatFieldRef, per plate the
    provenance of each channel's flat field)``: every plate's files are hashed here, before any task runs."""
    from phenovec.ingest.crop import cell_label_ids
    from phenovec.ingest.index import site_centres

    idx, paths, frames = index_by_name(index, contract.channels)
    check_index_steps(contract, model, illumination, idx)
    centres = site_centres(idx, locations)  # finite centres outside the image are refused as the sites finish
    sites = idx.sites.reset_index(drop=True)
    plates = sites["Metadata_Plate"].astype(str).to_numpy()
    labels = idx.labels if contract.crop_mask is not None else None

    def jobs_of(s: int) -> SiteJob:  # made when the task is submitted, dropped when it is done
        if labels is None:
            x, y = centres.xy(s)
            return SiteJob(s, paths[s], x, y, frames[s], plates[s], cache=idx.image_cache)
        loc = centres.table(s)
        ids = cell_label_ids(loc, f"locations of site {s} ({paths[s][0]})")
        return SiteJob(s, paths[s], loc["x"].to_numpy(np.float64), loc["y"].to_numpy(np.float64), frames[s],
                       plates[s], labels[s], ids, cache=idx.image_cache)

    ncells = [int(c) for c in centres.counts]
    extra = {"paths": [list(p) for p in paths], "cells": ncells}
    if labels is not None:
        extra["labels"] = list(labels)
    flats = None
    if illumination is not None:
        from phenovec.ingest.illumination import illumination_provenance

        files = {p: illumination_provenance(illumination, p, contract.channels) for p in dict.fromkeys(plates)}
        ref = FlatFieldRef(illumination, tuple(contract.channels),
                           {p: tuple(f["sha256"] for f in prov) for p, prov in files.items()})
        flats = (ref, files)
    return sites, jobs_of, centres.table, ncells, idx.source, extra, flats


def profile_sites(model_onnx, index=None, locations=None, out=None, *, crops_dir=None, illumination=None,
                  batch_size: int = 256, scheduler: str | None = None, workers: int | None = None,
                  dtype: str = "float16", edge: str = "drop", providers="auto", precision: str = "fp32",
                  trt_cache_dir=None, sessions: str = "auto", max_in_flight: int | None = None,
                  micro_batch: int | str | None = "auto",
                  progress: bool = True) -> ProfileResult:
    """Profile every site of ``index`` (an image index path / DataFrame / ``ImageIndex``, with ``locations``: a
    nuclei table, see ``phenovec.ingest.index``) or of a crop store ``crops_dir`` (a ``phenovec crop`` output
    folder) with ``model_onnx`` (a ``phenovec export`` model) into ``out`` (module docstring and
    ``phenovec.profile.assemble`` for the outputs).

    ``batch_size``: crops per inference call (and the task size in cells); ``micro_batch``: crops per onnxruntime
    call within it (``phenovec.runtime.ProfileSession``: ``"auto"`` splits CPU calls into cache-sized ones, which is
    faster and changes no number); ``scheduler`` / ``workers``: see
    ``phenovec.profile.scheduler``; ``dtype``: embeddings dtype; ``edge``: the crop edge policy (images input);
    ``providers`` / ``precision`` / ``trt_cache_dir``: the runtime's (``phenovec.runtime.ProfileSession``: "bf16"
    runs OpenVINO on CPUs with AMX / AVX512-BF16, "fp16" TensorRT; a worker that cannot run the precision is an
    error, and the precision is part of the run's configuration, so a resume cannot mix precisions);
    ``sessions``: "auto", "per_thread" or "shared" (``phenovec.profile.sites``: one onnxruntime session per Dask
    thread or per process);
    ``max_in_flight``: tasks submitted at once (default 2 x worker slots + 1).

    A model exported with assay ``probabilities`` (``train.task: assays``, ``phenovec export``) is run for its
    features and probabilities together; the probabilities are written beside the features, never among them:
    ``prob_<task>`` columns of the embeddings' cell metadata and ``wells_probabilities.parquet`` (per-well means),
    in the run's ``dtype`` (``phenovec.profile.assemble``).

    ``illumination`` (images input; required exactly when the model was trained on illumination-corrected crops,
    metadata ``intensity.crop_illumination``): the flat fields of the index's plates, a ``phenovec illum`` folder
    or a ``{(plate, channel): path to .npy}`` mapping (``phenovec.ingest.illumination.load_illumination``); each
    site is corrected with its plate's, as ``phenovec crop --illumination`` did. Their sha256 per plate and
    channel are part of the run's configuration (a resumed run with other flat fields is refused) and the files
    are recorded in the embeddings' attributes (``illumination_files``). A model trained on masked crops
    (``intensity.crop_mask``) needs an index with label images; its crops are masked with the model's mode, as
    ``phenovec crop --mask`` did.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if out is None:
        raise ValueError("out: give the output folder")
    if (index is None) == (crops_dir is None):
        raise ValueError("give either index (+ locations) or crops_dir, not both / neither")
    if crops_dir is not None and illumination is not None:
        raise ValueError(f"illumination applies to images (index=); the crops of {crops_dir} were corrected or not "
                         "when they were cut (their manifest says which)")
    if edge not in EDGE_POLICIES:
        raise ValueError(f"edge must be one of {EDGE_POLICIES}, got {edge!r}")
    model_path, meta, batch_size = open_run_model(model_onnx, "crops", dtype, batch_size, micro_batch, precision,
                                                  sessions, scheduler, providers)
    contract = contract_from_metadata(meta, source=str(model_path))
    out = Path(out)

    flats = None
    if crops_dir is not None:
        sites, jobs_of, cells_of, ncells, source, extra = _crop_input(Path(crops_dir), contract, str(model_path))
        mode = "crops"
    else:
        sites, jobs_of, cells_of, ncells, source, extra, flats = _index_input(index, locations, contract,
                                                                              illumination, str(model_path))
        mode = "images"
    n_sites = len(sites)
    names = meta.feature_names()
    probs = meta.probability_names()  # prob_<task> of an assays model, after the features in parts and wells
    config, attrs = run_config(mode, source, sites, extra, ncells, meta, contract, edge, dtype, batch_size,
                               precision, flats)
    with output_folder(out) as run:  # locked; a run that fails before its first site leaves nothing
        store = PartStore(out, config)

        wells = WellWriter(out, sites, names + probs, lambda s: store.read(s)[1])

        done = store.done_sites()
        resumed = len(done)
        run.resumable = bool(done)
        if not store.complete:
            wells.resume(done)
            groups = [g for g in task_groups(ncells, batch_size) if any(s not in done for s in g)]
            total = int(sum(ncells))
            with tqdm(total=total, initial=int(sum(ncells[s] for s in done)), unit="cell", desc="profile",
                      disable=not progress, smoothing=0.1) as bar, \
                    open_client(scheduler, workers) as (client, slots, thr, per_thread):
                ref = run_model_ref(str(model_path), meta.weights_sha256, providers, thr, per_thread, micro_batch,
                                    precision, trt_cache_dir, sessions)
                window = int(max_in_flight) if max_in_flight is not None else 2 * slots + 1
                if mode == "images":
                    from phenovec.ingest.crop import refuse_centres_outside, site_label
                    from phenovec.ingest.index import locations_name

                    fn = functools.partial(embed_site_group, ref, contract, flats=flats[0] if flats else None)
                    kw = {"edge": edge, "batch_size": batch_size, "dtype": dtype}
                else:
                    fn = functools.partial(embed_crop_group, ref, contract, extra["store"], extra["channel_idx"])
                    kw = {"batch_size": batch_size, "dtype": dtype}
                tasks = ([jobs_of(s) for s in g] for g in groups)
                # a finished task's spec (its SiteJobs: the centres) stays in reference cycles of Dask's bookkeeping
                # until a full collection, which Python runs rarely: collect every GC_SECONDS (or, when a collection
                # takes longer than GC_SHARE of that, every last-collection-time / GC_SHARE: 60-120 ms in a profiling
                # process, during which the workers wait for the GIL) so that this garbage is what seconds of tasks
                # leave, not the whole run's
                last_gc, gc_cost = time.monotonic(), 0.0
                for results in bounded_map(client, fn, tasks, window, **kw):
                    if time.monotonic() - last_gc > max(GC_SECONDS, gc_cost / GC_SHARE):
                        t_gc = time.perf_counter()
                        gc.collect()
                        gc_cost = time.perf_counter() - t_gc
                        last_gc = time.monotonic()
                    for s, codes, feats in results:
                        if s in done:
                            continue
                        if len(codes) != ncells[s]:
                            raise RuntimeError(f"site {s}: {len(codes)} edge codes for {ncells[s]} located cells")
                        if mode == "images":  # a finite centre outside the image: locations of other images
                            refuse_centres_outside(codes, cells_of(s), site_label(sites, s), extra["paths"][s][0],
                                                   locations_name(locations))
                        store.write(s, codes, feats)
                        done.add(s)
                        run.resumable = True
                        wells.site_committed(s)
                        bar.update(ncells[s])
            missing = sorted(set(range(n_sites)) - done)
            if missing:
                raise RuntimeError(f"{out}: sites {missing[:10]} were not profiled")

        counts = assemble_run(out, store, wells, sites, cells_of, names, probs, dtype, attrs, config["cells"])
        seconds = time.perf_counter() - t0
        store.mark_complete({**counts, "sites": n_sites})
    paths = {k: out / v for k, v in (("embeddings", "embeddings.zarr"), ("cells", "cells.parquet"),
                                     ("wells_mean", "wells_mean.parquet"), ("wells_median", "wells_median.parquet"))}
    if probs:
        paths["wells_probabilities"] = out / "wells_probabilities.parquet"
    return ProfileResult(out, n_sites, counts["cells"], counts["embedded"], resumed, seconds, paths)


def assemble_run(out: Path, store: PartStore, wells: WellWriter, sites: pd.DataFrame, cells_of, names: list,
                 probs: list, dtype: str, attrs: dict, cells: int) -> dict:
    """Assemble the outputs of a run whose sites are all committed in ``store`` (``phenovec.profile.assemble``);
    ``cells_of(s)``: the located cells of site ``s``; ``cells``: the run's located cells. Returns the counts."""
    from phenovec.profile.assemble import site_cell_table

    def site_table(s: int, codes: np.ndarray) -> pd.DataFrame:
        return site_cell_table(sites.iloc[s], cells_of(s), codes)

    return assemble(out, len(sites), store.read, site_table, names, dtype, attrs, wells.rows, expected_rows=cells,
                    probabilities=probs)


def _crop_input(path: Path, contract, model: str):
    """(site table, job factory, cells factory, cells per site, source, extra) of a ``phenovec crop`` folder whose
    configuration is the model's (``model``: its file, for the errors)."""
    import zarr

    from phenovec.ingest.index import SiteCentres
    from phenovec.profile.assemble import EDGE_OUTCOMES

    for name in ("crops.zarr", "cells.parquet", "manifest.json"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path}: not a crops folder ({name} is missing; make one with `phenovec crop`)")
    manifest = json.loads((path / "manifest.json").read_text())
    if not manifest.get("complete", False):
        raise ValueError(f"{path}: the crop run is not complete (manifest.json); rerun `phenovec crop` to finish it")
    cfg = manifest.get("config", {})
    channel_idx = match_channels(contract.channels, cfg.get("channels", []), f"crop store {path}")
    if int(cfg.get("box_size", -1)) != contract.box_size:
        raise ValueError(f"crop store {path}: box_size {cfg.get('box_size')} != the model's crop_size "
                         f"{contract.box_size}")
    if bool(cfg.get("rescale", False)) != contract.crop_rescale:
        raise ValueError(f"crop store {path}: crops made with rescale={cfg.get('rescale')} but the model was "
                         f"trained on crop_rescale={contract.crop_rescale}")
    ci = cfg.get("intensity")
    if (tuple(ci) if ci else None) != (tuple(contract.crop_intensity) if contract.crop_intensity else None):
        raise ValueError(f"crop store {path}: crops made with intensity={ci} but the model was trained on "
                         f"crop_intensity={contract.crop_intensity}")
    check_store_steps(contract, model, path, cfg)
    arr = zarr.open_array(str(path / "crops.zarr"), mode="r")
    if contract.rule == "none" and not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"crop store {path}: {arr.dtype} crops but the model takes them as stored "
                         "(input_scaling 'none', float crops)")
    cells = pd.read_parquet(path / "cells.parquet")
    rows = len(cells)
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for k in [*keys, "row", "x", "y", "edge"]:
        if k not in cells.columns:
            raise KeyError(f"{path / 'cells.parquet'}: no column {k!r}")
    site_cols = [c for c in cells.columns if str(c).startswith("Metadata_")]
    # sites in order of first appearance; cells grouped by site in table order (one stable sort, no pass per site)
    site_id = pd.factorize(cells[keys].astype(str).agg("\x1f".join, axis=1))[0]
    order = np.argsort(site_id, kind="stable")
    counts = np.bincount(site_id, minlength=int(site_id.max()) + 1 if len(site_id) else 0)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    sites = cells.iloc[order[starts[:-1]]][site_cols].reset_index(drop=True)
    codes_all = pd.Categorical(cells["edge"].astype(str), categories=list(EDGE_OUTCOMES)).codes.astype(np.int8)
    rows_all = cells["row"].to_numpy(np.int64)
    codes_all = np.where(rows_all < 0, np.maximum(codes_all, 3), codes_all).astype(np.int8)  # no crop = not kept
    # per-cell columns packed by site (no DataFrame per site): codes 1 + rows 8 + x, y 16 (+ ObjectNumber) bytes
    codes_p, rows_p = codes_all[order], rows_all[order]
    centres = SiteCentres.packed(cells["x"].to_numpy(np.float64)[order], cells["y"].to_numpy(np.float64)[order],
                                 cells["ObjectNumber"].to_numpy()[order] if "ObjectNumber" in cells.columns else None,
                                 counts)
    del cells, codes_all, rows_all, order, site_id

    def jobs_of(s: int) -> CropJob:
        c = codes_p[starts[s]:starts[s + 1]]
        return CropJob(s, c, np.where(c <= 2, rows_p[starts[s]:starts[s + 1]], -1))

    extra = {"store": str((path / "crops.zarr").resolve()), "channel_idx": channel_idx,
             "crop_config": cfg, "rows": int(rows)}
    return sites, jobs_of, centres.table, [int(c) for c in counts], path, extra
