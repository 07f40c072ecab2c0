"""``profile_shards``: many plates in one run, each plate (shard) its own resumable profiling run, on one
``dask.distributed`` cluster.

Shards: a list of image indexes (each index one shard, named by its path below the indexes' common folder; a
LoadData CSV may be given by URL, e.g. the Cell Painting Gallery's, read by the worker that plans it), or
one index split by the values of a column (``shard_by``, ``Metadata_Plate`` by default; the nuclei table, when it
has that column, is split the same way). Each shard's outputs are a :func:`~phenovec.profile.pipeline.profile_sites`
run's, under ``OUT/shards/<name>/`` (``embeddings.zarr``, ``cells.parquet``, ``wells_mean.parquet``,
``wells_median.parquet``, its ``manifest.json`` and parts), equal to a ``profile_sites`` run of that shard's
sites alone; ``OUT/manifest.json`` lists the shards and their state (``phenovec.profile.manifest``); the well
tables of all shards form one Parquet dataset per operation, partitioned by plate:
``OUT/wells_mean/<plate>/<shard name>.parquet`` (likewise ``wells_median``, and ``wells_probabilities`` for a
model with probabilities). The plate column stays inside every file with its type; the folders are named by the
plate value alone (URI-escaped), not Hive's ``Metadata_Plate=<plate>``, because pandas and pyarrow read Hive
folder names as a partition column of their own (a dictionary) that clashes with the file's column.
``pandas.read_parquet(OUT / "wells_mean")`` and ``phenovec process`` read a folder as one table
(``phenovec.process.source``: streamed, file by file).

Where the work runs (the driver is this process; every step but the bookkeeping is a task on the cluster):

- a shard is planned by a task (:func:`plan_shard`: its index and locations read, the site table and the packed
  centres, ``phenovec.ingest.index.SiteCentres``, its folder opened and its configuration checked); the plan
  stays in the cluster's memory (Dask moves it to the workers that run the shard's tasks, once each, and drops it
  when the shard is done) and the driver receives only the cells per site and the committed sites, from which it
  groups the sites into tasks. So the driver holds no cell and no site table; per task it submits one small
  message and receives one (the counts);
- a task (consecutive sites of one shard, about ``batch_size`` cells, as ``profile_sites`` groups them) runs on a
  worker: its sites' images fetched when they are object-store URLs (into ``image_cache``; the plan reads the
  index without fetching anything), decode + crop + inference (``phenovec.profile.sites``), the checks
  ``profile_sites`` makes, then the worker commits each site's part itself (``phenovec.profile.parts.write_part``):
  features never travel;
- when a shard's last task is done, its assembly (well profiles, ``embeddings.zarr``, the Parquet tables and its
  plates' files of the well datasets) is one more task.

Tasks go to the cluster through one window of ``max_in_flight`` futures (default 2 x worker slots + 1) across
shards, filled in shard order as tasks finish; the next shard is planned while the planned ones still have
tasks to submit. With one index split by ``shard_by`` the driver reads that index (and one nuclei table) whole to
split it: for runs of billions of cells give one index (and nuclei table) per plate, as the Cell Painting Gallery
ships its LoadData CSVs, or per-site ``Metadata_Locations``. A worker process killed mid-task (``processes`` workers run under
Dask nannies, which restart them) loses that task only: the scheduler reruns it elsewhere, its sites are
written once (a part that exists is the commit), and the output equals an uninterrupted run's. A shard whose
task raises (a corrupt image: the error names the site and its file) is marked ``failed`` with that error and
its other tasks are cancelled; the other shards go on, and :class:`ShardsResult` lists the failures (``phenovec
profile`` exits non-zero). A rerun into the same ``OUT`` skips the complete shards and resumes the others from
their committed sites.

``scheduler``: ``"processes"`` (default: a ``LocalCluster`` of ``workers`` one-thread worker processes, Dask's
default memory limit per worker: the machine's memory / workers), ``"threads"`` or the address of a running
scheduler (``phenovec.profile.scheduler``); workers must read the model, images and ``OUT`` at the same paths.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from phenovec.ingest import image_source
from phenovec.io.atomic import output_folder
from phenovec.profile.manifest import ShardManifest

DEFAULT_SHARD_BY = "Metadata_Plate"
PLATE = "Metadata_Plate"
WELL_DATASETS = {"mean": "wells_mean", "median": "wells_median", "probabilities": "wells_probabilities"}


@dataclass(frozen=True)
class ShardSpec:
    """One shard: its ``key`` (the ``shard_by`` value, or the index path), folder ``name`` under ``OUT/shards``,
    its ``index`` (a path, or the shard's rows of one index with ``root`` the folder its relative paths start
    from) and ``locations`` (a path, a DataFrame, or None: the index's ``Metadata_Locations`` column)."""

    key: str
    name: str
    index: object
    root: str | None = None
    locations: object = None
    where: str = ""


@dataclass
class ShardsResult:
    out: Path
    shards: dict
    cells: int
    embedded: int
    seconds: float
    failed: dict = field(default_factory=dict)  # key -> error


def shard_name(key: str) -> str:
    """A folder name for shard ``key``: the key when it is made of letters, digits, ``._-`` only, else the key
    with other characters replaced and 8 hex digits of its sha256 (two keys never share a folder)."""
    s = re.sub(r"[^A-Za-z0-9._-]", "_", key)
    if s != key or s.strip(".") == "":
        s = f"{s}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    return s


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def shard_specs(index, locations=None, shard_by: str | None = DEFAULT_SHARD_BY) -> list[ShardSpec]:
    """The shards of a run (module docstring). ``index``: one index (path or DataFrame), split by ``shard_by``, or
    a list of index paths (one shard each; ``shard_by`` unused). ``locations``: None (the indexes'
    ``Metadata_Locations``), one nuclei table for all, or (a list of indexes) one per index."""
    from phenovec.io.profiles import read_table

    indexes = _as_list(index)
    if not indexes:
        raise ValueError("index: give at least one image index")
    locs = _as_list(locations) if isinstance(locations, (list, tuple)) else [locations]
    if len(indexes) > 1:
        if len(locs) not in (1, len(indexes)):
            raise ValueError(f"locations: give one nuclei table for all {len(indexes)} indexes or one per index, "
                             f"got {len(locs)}")
        for i in indexes:
            if isinstance(i, pd.DataFrame):
                raise TypeError("a list of indexes must be paths (one shard each); split one DataFrame with "
                                "shard_by instead")
        loc_of = (lambda i: locs[0]) if len(locs) == 1 else (lambda i: locs[i])
        if any(image_source.protocol(str(i)) for i in indexes):  # LoadData CSVs by URL (the Gallery's)
            names = [str(i) if image_source.protocol(str(i)) else str(Path(i).resolve()) for i in indexes]
            dup = [n for n in names if names.count(n) > 1]
            if dup:
                raise ValueError(f"index {dup[0]} is given twice")
            prefix = os.path.commonprefix([n.rsplit("/", 1)[0] + "/" for n in names])
            keys = [n[prefix.rfind("/") + 1:] for n in names]
            return [ShardSpec(k, shard_name(k), n, None, loc_of(i), n) for i, (k, n) in enumerate(zip(keys, names))]
        paths = [Path(i).resolve() for i in indexes]
        dup = [str(p) for p in paths if paths.count(p) > 1]
        if dup:
            raise ValueError(f"index {dup[0]} is given twice")
        common = Path(os.path.commonpath([str(p.parent) for p in paths]))
        keys = [str(p.relative_to(common)) for p in paths]
        return [ShardSpec(k, shard_name(k), str(p), None, loc_of(i), str(p)) for i, (k, p) in enumerate(zip(keys, paths))]
    if len(locs) != 1:
        raise ValueError(f"locations: one index takes one nuclei table (or none), got {len(locs)}")
    one, loc = indexes[0], locs[0]
    if shard_by is None:
        raise ValueError("shard_by: name the column that splits the index into shards (e.g. Metadata_Plate)")
    if isinstance(one, pd.DataFrame):
        df, where, root = one.reset_index(drop=True), "image index", None
    else:
        where = str(one)
        df, root = read_table(Path(one)).reset_index(drop=True), str(Path(one).resolve().parent)
    if shard_by not in df.columns:
        raise KeyError(f"{where}: no column {shard_by!r} to shard by (its columns: {list(df.columns)[:12]})")
    keys = df[shard_by].astype(str)
    parts_of_loc = None
    if loc is not None:
        from phenovec.ingest.index import read_locations

        table = loc if isinstance(loc, pd.DataFrame) else read_locations(loc)
        if shard_by in table.columns:  # split once here: each shard matches only its own cells
            parts_of_loc = {k: t.reset_index(drop=True)
                            for k, t in table.groupby(table[shard_by].astype(str), sort=False)}
            loc = None
        else:
            loc = table
    specs = []
    for k, rows in df.groupby(keys, sort=False):
        sub_loc = parts_of_loc.get(k, pd.DataFrame(columns=["x", "y"])) if parts_of_loc is not None else loc
        specs.append(ShardSpec(k, shard_name(k), rows.reset_index(drop=True), root, sub_loc,
                               f"{where} ({shard_by} == {k!r})"))
    return specs


@dataclass
class ShardPlan:
    """A shard's plan, made on a worker by :func:`plan_shard` and kept in the cluster's memory while the shard
    runs (its tasks take it as an argument: Dask moves it to the workers that run them, once each): the site table,
    the located cells (``jobs_of(s)``: the site's job; ``cells_of(s)``: its cell table), the run configuration
    (checked against the shard's folder when planned), the worker function and the assembly's inputs."""

    folder: str
    top: str
    name: str
    sites: pd.DataFrame
    jobs_of: object
    cells_of: object
    ncells: list
    paths: list
    config: dict
    attrs: dict
    names: list
    probs: list
    dtype: str
    fn: object
    locations: str
    complete: bool
    done: list
    image_cache: str | None = None


def plan_shard(spec: ShardSpec, out: str, ref, opts: dict) -> ShardPlan:
    """Worker task: read a shard's index and locations (``phenovec.profile.pipeline``'s input, run
    configuration), open its folder (``phenovec.profile.parts.PartStore``: another configuration is refused) and
    note its committed sites."""
    from phenovec.ingest.index import locations_name, read_image_index
    from phenovec.profile.parts import PartStore
    from phenovec.profile.pipeline import _index_input, run_config
    from phenovec.profile.sites import embed_site_group

    contract, meta = opts["contract"], opts["meta"]
    # images named by object-store URL stay URLs: each site's are fetched by the task that embeds it
    idx = read_image_index(spec.index, contract.channels, root=spec.root, labels=opts["labels"],
                           image_cache=opts.get("image_cache"), fetch=False)
    idx.source = spec.where
    sites, jobs_of, cells_of, ncells, source, extra, flats = _index_input(
        idx, spec.locations, contract, shard_illumination(opts["illumination"], idx, spec), str(opts["model_path"]))
    config, attrs = run_config("images", source, sites, extra, ncells, meta, contract, opts["edge"], opts["dtype"],
                               opts["batch_size"], opts["precision"], flats)
    if opts["task_cells"] != opts["batch_size"]:  # the sites a task's batches are cut from
        config["task_cells"] = opts["task_cells"]
    folder = Path(out) / "shards" / spec.name
    store = PartStore(folder, config)
    fn = functools.partial(embed_site_group, ref, contract, flats=flats[0] if flats else None, edge=opts["edge"],
                           batch_size=opts["batch_size"], dtype=opts["dtype"])
    loc_name = spec.where if isinstance(spec.locations, pd.DataFrame) else locations_name(spec.locations)
    return ShardPlan(str(folder), str(out), spec.name, sites, jobs_of, cells_of, ncells,
                     [p[0] for p in extra["paths"]], store.manifest["config"], attrs, meta.feature_names(),
                     meta.probability_names(), opts["dtype"], fn, loc_name, store.complete,
                     sorted(store.done_sites()), opts.get("image_cache"))


def shard_illumination(illumination, idx, spec: ShardSpec):
    """A shard's flat fields: ``illumination`` (a ``phenovec illum`` folder or a mapping) as given, or for
    ``"index"`` the ``Illum<Ch>.npy`` files the shard's LoadData index names (``idx.illumination``)."""
    if not (isinstance(illumination, str) and illumination == "index"):
        return illumination
    if idx.illumination is None:
        raise ValueError(f"--illumination index: {spec.where} names no flat fields (LoadData FileName_Illum<Ch> or "
                         "URL_Illum<Ch> columns, as in the Gallery's load_data_with_illum.csv)")
    return idx.illumination


def plan_summary(plan: ShardPlan) -> dict:
    """Worker task: what the driver needs of a plan: cells per site, committed sites, completeness."""
    return {"ncells": plan.ncells, "done": plan.done, "complete": plan.complete}


def embed_group(plan: ShardPlan, group: list) -> list[tuple[int, int, int]]:
    """Worker task: embed sites ``group`` of a shard (``phenovec.profile.sites.embed_site_group``), check each as
    ``profile_sites`` does (edge codes per located cell; a finite centre outside the image is an error naming the
    locations, site, cell and image) and commit it as its part unless it is there already (a task rerun after a
    lost worker). Returns ``[(site, located cells, embedded cells)]``: the features stay on the worker."""
    from phenovec.ingest.crop import OUTCOMES, refuse_centres_outside, site_label
    from phenovec.profile.parts import part_path, write_part

    parts = Path(plan.folder) / "parts"
    jobs = [plan.jobs_of(s) for s in group]
    if plan.image_cache is not None:  # where this worker copies the sites' object-store images
        jobs = [dataclasses.replace(j, cache=plan.image_cache) for j in jobs]
    invalid = OUTCOMES.index("invalid")
    out = []
    for (s, codes, feats), job in zip(plan.fn(jobs), jobs):
        if len(codes) != plan.ncells[s]:
            raise RuntimeError(f"site {s}: {len(codes)} edge codes for {plan.ncells[s]} located cells")
        if (codes == invalid).any():  # the cell table only then (the check needs ObjectNumber for its message)
            refuse_centres_outside(codes, plan.cells_of(s), site_label(plan.sites, s), plan.paths[s],
                                   plan.locations)
        if not part_path(parts, s).exists():
            write_part(parts, s, codes, feats)
        out.append((s, len(codes), len(feats)))
    return out


def assemble_shard(plan: ShardPlan) -> dict:
    """Worker task: the outputs of a shard whose sites are all committed (``phenovec.profile.pipeline``'s
    assembly), its plates' files of the run's well datasets, then the shard marked complete. Returns counts."""
    from phenovec.profile.parts import PartStore
    from phenovec.profile.pipeline import assemble_run
    from phenovec.profile.wells import WellWriter

    t0 = time.perf_counter()
    out = Path(plan.folder)
    store = PartStore(out, plan.config)
    n = len(plan.sites)
    done = store.done_sites()
    missing = sorted(set(range(n)) - done)
    if missing:
        raise RuntimeError(f"{out}: sites {missing[:10]} were not profiled")
    wells = WellWriter(out, plan.sites, plan.names + plan.probs, lambda s: store.read(s)[1])
    wells.resume(done)
    counts = assemble_run(out, store, wells, plan.sites, plan.cells_of, plan.names, plan.probs, plan.dtype,
                          plan.attrs, plan.config["cells"])
    write_well_datasets(out, Path(plan.top), plan.name, bool(plan.probs))
    store.mark_complete({**counts, "sites": n})
    return {**counts, "sites": n, "assembly_seconds": round(time.perf_counter() - t0, 3)}


def plate_folder(plate: str) -> str:
    """The folder name of ``plate`` in the well datasets: the value URI-escaped (``/``, ``=``, ``%`` ...); ``.``
    and ``..`` as ``%2E`` and ``%2E%2E``."""
    name = quote(plate, safe="")
    return name.replace(".", "%2E") if name.strip(".") == "" else name


def write_well_datasets(shard: Path, top: Path, name: str, probabilities: bool) -> None:
    """Split the shard's well tables by plate into ``top/<wells_op>/<plate>/<name>.parquet`` (module docstring;
    each file atomic; the plate value URI-escaped, ``.`` and ``..`` too)."""
    from phenovec.io.atomic import write_bytes_atomic

    ops = ["mean", "median"] + (["probabilities"] if probabilities else [])
    for op in ops:
        table = pd.read_parquet(shard / f"{WELL_DATASETS[op]}.parquet")
        for plate, rows in table.groupby(table[PLATE].astype(str), sort=True):
            folder = top / WELL_DATASETS[op] / plate_folder(plate)
            folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(folder / f"{name}.parquet", rows.reset_index(drop=True).to_parquet(index=False))


@dataclass
class _Shard:
    """A shard in flight in the driver: its plan's future (the plan stays on the cluster), its groups left."""

    spec: ShardSpec
    plan: object
    groups: deque = field(default_factory=deque)
    outstanding: int = 0
    cells: int = 0
    futures: set = field(default_factory=set)


def profile_shards(model_onnx, index, out, *, locations=None, shard_by: str | None = DEFAULT_SHARD_BY,
                   labels: str | None = None, illumination=None, batch_size: int = 256,
                   scheduler: str | None = "processes", workers: int | None = None, dtype: str = "float16",
                   edge: str = "drop", providers="auto", precision: str = "fp32", trt_cache_dir=None,
                   sessions: str = "auto", max_in_flight: int | None = None, micro_batch="auto",
                   task_cells: int | None = None, image_cache=None, progress: bool = True) -> ShardsResult:
    """Profile the shards of ``index`` (:func:`shard_specs`) with ``model_onnx`` into ``out`` (module docstring);
    the options are :func:`~phenovec.profile.pipeline.profile_sites`'s (``labels``: the label-image column of
    the indexes, for a model trained on masked crops; ``illumination="index"``: each shard's LoadData
    ``Illum<Ch>.npy`` flat fields). ``task_cells``: cells per task (consecutive sites grouped
    until they hold that many; default ``batch_size``), inferred in batches of ``batch_size``: bigger tasks cost
    the driver and scheduler less per cell (``bench/scale_bench.py``) and a worker more memory (its crop buffer
    holds a task's crops, float32). ``image_cache``: where images named by object-store URL are copied
    (``phenovec.ingest.image_source``), each site's by the worker that embeds it, when it does; None: the
    default cache of each worker. Returns a :class:`ShardsResult`; failed shards are listed in it and in
    ``OUT/manifest.json``, not raised."""
    from tqdm.auto import tqdm

    from phenovec.profile.contract import contract_from_metadata
    from phenovec.profile.pipeline import EDGE_POLICIES, open_run_model
    from phenovec.profile.scheduler import open_client
    from phenovec.profile.sites import run_model_ref

    t0 = time.perf_counter()
    if edge not in EDGE_POLICIES:
        raise ValueError(f"edge must be one of {EDGE_POLICIES}, got {edge!r}")
    model_path, meta, batch_size = open_run_model(model_onnx, "crops", dtype, batch_size, micro_batch, precision,
                                                  sessions, scheduler, providers)
    contract = contract_from_metadata(meta, source=str(model_path))
    task_cells = batch_size if task_cells is None else int(task_cells)
    if task_cells < 1:
        raise ValueError(f"task_cells must be >= 1, got {task_cells}")
    specs = shard_specs(index, locations, shard_by)
    names = [shard_name(s.key) for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("two shards map to one folder name; rename their keys")
    out = Path(out).resolve()
    top_config = {"model_weights_sha256": meta.weights_sha256, "dtype": dtype, "batch_size": batch_size,
                  "edge": edge, "precision": precision, "channels": list(contract.channels),
                  "shard_by": shard_by if len(_as_list(index)) == 1 else None}
    if task_cells != batch_size:  # only then: runs made before task_cells keep their configuration
        top_config["task_cells"] = task_cells
    opts = dict(model_path=model_path, meta=meta, contract=contract, illumination=illumination, labels=labels,
                edge=edge, dtype=dtype, batch_size=batch_size, precision=precision, task_cells=task_cells,
                image_cache=None if image_cache is None else str(Path(image_cache).resolve()))
    with output_folder(out) as run:
        manifest = ShardManifest(out, top_config, {s.key: {"dir": f"shards/{s.name}", "input": s.where}
                                                   for s in specs})
        run.resumable = True  # the manifest is the run's: kept whatever happens next
        todo = deque()
        for s in specs:
            summary = _complete_summary(out / "shards" / s.name)
            if summary is not None:
                manifest.set(s.key, "done", **summary)
            else:
                todo.append(s)
        manifest.flush(force=True)
        if todo:
            with open_client(scheduler or "processes", workers) as (client, slots, thr, per_thread):
                ref = run_model_ref(str(model_path), meta.weights_sha256, providers, thr, per_thread, micro_batch,
                                    precision, trt_cache_dir, sessions)
                window = int(max_in_flight) if max_in_flight is not None else 2 * slots + 1
                if window < 1:
                    raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
                with tqdm(unit="cell", desc="profile shards", disable=not progress, smoothing=0.1) as bar:
                    _drive(client, todo, manifest, out, ref, opts, window, bar)
        manifest.flush(force=True)
    done = {k: e for k, e in manifest.shards.items()}
    failed = {k: e.get("error", "") for k, e in done.items() if e["state"] != "done"}
    cells = sum(int(e.get("cells", 0)) for e in done.values() if e["state"] == "done")
    embedded = sum(int(e.get("embedded", 0)) for e in done.values() if e["state"] == "done")
    return ShardsResult(out, done, cells, embedded, time.perf_counter() - t0, failed)


def _complete_summary(folder: Path) -> dict | None:
    """The summary of a shard folder whose run is complete, else None."""
    import json

    m = folder / "manifest.json"
    if not m.exists():
        return None
    try:
        d = json.loads(m.read_text())
    except ValueError:
        return None
    if not d.get("complete"):
        return None
    return {k: int(v) for k, v in d.get("summary", {}).items() if k in ("sites", "cells", "embedded")}


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _drive(client, todo: deque, manifest: ShardManifest, out: Path, ref, opts: dict, window: int, bar) -> None:
    """The driver's loop (module docstring): the shards' plan, embed and assembly tasks through one window of
    futures; the next shard is planned when the groups of the planned ones would not fill the window."""
    from distributed import as_completed

    from phenovec.profile.pipeline import task_groups

    active: dict[str, _Shard] = {}  # shards in flight, in opening order
    kind: dict = {}  # future -> (shard key, "plan" | "embed" | "assemble")
    ac = as_completed()
    planning = []  # keys of shards whose plan is not back yet

    def track(sh: _Shard, f, what: str) -> None:
        sh.futures.add(f)
        sh.outstanding += 1
        kind[f] = (sh.spec.key, what)
        ac.add(f)

    def drop(key: str) -> None:
        sh = active.pop(key, None)
        if sh is not None:
            for f in sh.futures:
                kind.pop(f, None)
                f.cancel()
            sh.plan.release()
        if key in planning:
            planning.remove(key)

    def open_next() -> None:
        spec = todo.popleft()
        pf = client.submit(plan_shard, spec, str(out), ref, opts, pure=False)
        sh = active[spec.key] = _Shard(spec, pf)
        planning.append(spec.key)
        track(sh, client.submit(plan_summary, pf, pure=False), "plan")
        manifest.set(spec.key, "running")

    def fill() -> None:
        while len(kind) < window:
            sh = next((a for a in active.values() if a.groups), None)
            if sh is None:
                if todo and not planning:
                    open_next()
                    continue
                return
            track(sh, client.submit(embed_group, sh.plan, sh.groups.popleft(), pure=False), "embed")
        if todo and not planning and sum(len(a.groups) for a in active.values()) < window:
            open_next()  # plan ahead: the next shard's groups are ready when these run out

    fill()
    for fut in ac:
        what = kind.pop(fut, None)
        if what is None:  # cancelled with its failed shard
            fut.release()
            continue
        key, k = what
        sh = active[key]
        sh.futures.discard(fut)
        sh.outstanding -= 1
        try:
            result = fut.result()
        except Exception as e:
            fut.release()
            drop(key)
            manifest.set(key, "failed", error=_error(e))
            fill()
            continue
        fut.release()
        if k == "plan":
            planning.remove(key)
            ncells = result["ncells"]
            info = {"sites": len(ncells), "cells": int(sum(ncells))}
            done = set(result["done"])
            if result["complete"]:
                drop(key)
                manifest.set(key, "done", **info)
                fill()
                continue
            manifest.set(key, "running", **info)
            sh.groups = deque(g for g in task_groups(ncells, opts["task_cells"]) if any(s not in done for s in g))
            sh.cells = int(sum(ncells[s] for s in done))
            bar.total = (bar.total or 0) + info["cells"]
            bar.update(sh.cells)
        elif k == "embed":
            n = sum(c for _, c, _ in result)
            sh.cells += n
            bar.update(n)
        else:
            drop(key)
            manifest.set(key, "done", **result)
            fill()
            continue
        if not sh.groups and sh.outstanding == 0:  # every site committed: assemble on the cluster
            track(sh, client.submit(assemble_shard, sh.plan, pure=False), "assemble")
        fill()
    for key in list(active):  # nothing left in flight: a shard still active lost its futures
        drop(key)
        manifest.set(key, "failed", error="its tasks ended without a result")
