"""Benchmark whole-plate profiling: phenovec's pipeline vs the raw model bound vs a DeepProfiler-style loop.

Input: ``--sites`` synthetic Cell-Painting sites (``phenovec.ingest.synth.synth_plate``: 5 channels, 16-bit,
deflate, ``--size`` x ``--size`` px, ``--cells`` +- 5 % nuclei each) and an untrained ``--arch`` ProfileNet
exported with ``phenovec.export.export_onnx`` at ``--box`` px crops, input scaling ``minmax`` (DeepProfiler's
per-crop per-channel min-max). Untrained weights are fine for throughput. In the same run, each ``--repeats``
times (medians reported):

(a) ``raw_onnxruntime``: ``ProfileSession.run`` on pre-cut float32 crops, batches of ``--batch-size`` (each run
    as the session's default CPU micro-batches, ``phenovec.runtime.session``, as the pipeline runs them): the
    model-only bound (crops/s), no decode, no crop, no writing; ``raw_onnxruntime_unsplit``: the same with one
    onnxruntime call per batch (``micro_batch=None``), ``raw_onnxruntime_micro_batch_M`` with M crops per call
    (``--micro-batch-sweep``); ``raw_onnxruntime_N_thread_sessions``: the same
    crops over N threads with a session each of cpu_count // N onnxruntime threads (the threaded pipeline's layout
    with N > 1 workers). The ratios use the faster of the raw rates. ``--raw-crops N``: the raw rates on the first
    sites' N kept crops (a plate-scale run's float32 crops would take GBs);
(b) ``pipeline_threads_wN``: ``phenovec.profile.profile_sites`` (images + locations -> embeddings Zarr + well
    profiles, float16) with the threaded Dask scheduler and N threads (``--workers``, e.g. 1 2), fresh output;
    ``pipeline_processes_wN`` the same with N worker processes (``--processes``);
(c) ``sequential_deepprofiler``: one site after another in one process, as DeepProfiler's ``profile``:
    ``tifffile.imread`` of each channel, numpy crops (same geometry and drop rule), numpy min-max, the same
    onnxruntime session in batches of ``--batch-size``, ``np.savez`` of the site's features: DeepProfiler's loop
    with phenovec's runtime, which isolates what running sites concurrently gains;
(d) ``deepprofiler`` (``--deepprofiler``): DeepProfiler 0.5.1 itself (``deepprofiler profile``: skimage reads,
    TF1 ``crop_and_resize`` graph, Keras ``predict`` of EfficientNet-B0 at the same crop size and batch size,
    ``np.savez_compressed``) on the first ``--deepprofiler-sites`` sites, in its own venv (``deepprofiler_peer.py``);
    rate = embedded cells / seconds of its scan loop (TensorFlow import and model build excluded, reported apart),
    medians of ``--repeats`` scans in one process. Around its runs the bench probes (c) on the same sites, and
    ``vs_deepprofiler_near`` = pipeline / (c)-probe near the pipeline x (c)-probe near DeepProfiler / DeepProfiler:
    the ratio with both sides brought to the machine state of one time.

Rates are embedded cells (crops) per second over the whole run (wall clock, including cluster start-up, opening
the session and its first calls, and the final assembly for (b); each run opens its own session). ``*_steady`` (b): the marginal rate between a run on the
first half of the sites and a run on all of them, (cells_all - cells_half) / (median time_all - median
time_half): the throughput once the fixed costs of a run are paid, which is what a plate-scale run sees;
``paired_cells_per_s`` the same per repeat (its adjacent half and whole runs), ``paired_vs_raw_probe_median`` the
median of each of those over the raw probe taken just before it.
Noise control: before each repeat of each pipeline variant the bench probes the raw rate (``raw_probe``: 8
batches, both session layouts, the faster) and the sequential loop (first 8 sites); ``ratios`` also give each
pipeline rate against the medians of the probes taken around its own runs (``vs_raw_near``,
``vs_sequential_near``), which a slow spell of a shared machine affects on both sides. ``--shared-session`` adds ``pipeline_threads_wN_shared``: the same runs with the Dask threads sharing one
session (``profile_sites(sessions="shared")``: onnxruntime's default threads, one call at a time) instead of a
session per thread. Ratios: ``pipeline_vs_raw`` = pipeline rate / raw rate (target >= 0.8), ``pipeline_vs_sequential`` =
pipeline rate / sequential rate (all against the fastest raw variant), ``pipeline_vs_deepprofiler`` = pipeline rate / DeepProfiler's. Stage rates for ``bench/SCALE.md``: ``decode_crop_cells_per_s`` =
``_core.crop_site`` alone (minmax crops) over all sites, each site's crops dropped at once as in the pipeline.

Runtime: every session of the run (raw, sequential, pipeline) uses ``--providers`` (default auto: TensorRT, CUDA,
then CPU) and ``--precision`` (default fp32; bf16 runs OpenVINO's CPU plugin on CPUs with AMX / AVX512-BF16, fp16
TensorRT; a precision that does not run here stops the bench). DeepProfiler always runs its own float32 Keras.

Output: one JSON document on stdout (and ``--out``), progress on stderr. Example::

    python bench/profile_bench.py --sites 8 --size 1080 --cells 200 --arch efficientnet_b0 --box 128 \
        --batch-size 256 --workers 1 2 --repeats 3 --out bench/out/profile.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from measure import emit_document, log, machine_info

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def make_inputs(tmp: Path, a) -> dict:
    import torch

    from phenovec.export import export_onnx
    from phenovec.ingest.synth import synth_plate
    from phenovec.train.models import build_model

    spw = 2 if a.sites % 2 == 0 else 1
    lo, hi = int(a.cells * 0.95), int(a.cells * 1.05)
    t = time.perf_counter()
    plate = synth_plate(tmp / "plate", plates=1, wells=a.sites // spw, sites_per_well=spw, size=a.size,
                        cells_per_site=(lo, hi), progress=False, seed=a.seed)
    log(f"synth plate: {a.sites} sites in {time.perf_counter() - t:.1f} s")
    torch.manual_seed(a.seed)
    model = build_model(a.arch, len(CHANNELS), 7).eval()
    onnx_path = tmp / "model.onnx"
    export_onnx(model, onnx_path, channels=CHANNELS, crop_size=a.box,
                intensity={"input_scaling": "minmax", "dtype_max": 65535.0}, n_random_crops=2, atol=1e-2)
    return {"plate": plate, "onnx": onnx_path}


def site_inputs(plate: dict):
    import pandas as pd

    index = pd.read_csv(plate["index"])
    nuclei = pd.read_csv(plate["nuclei"])
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    groups = {k: g for k, g in nuclei.groupby(keys, sort=False)}
    root = Path(plate["index"]).parent
    out = []
    for _, row in index.iterrows():
        g = groups[tuple(row[keys])]
        out.append(([str(root / row[f"FileName_{c}"]) for c in CHANNELS],
                    g["Nuclei_Location_Center_X"].to_numpy(), g["Nuclei_Location_Center_Y"].to_numpy()))
    return out


def sequential(sites, sess, box: int, batch: int, out: Path) -> int:
    """DeepProfiler-style loop (module docstring (c)); returns embedded cells."""
    import tifffile

    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for i, (paths, xs, ys) in enumerate(sites):
        img = np.stack([tifffile.imread(p) for p in paths])
        h, w = img.shape[1:]
        crops = []
        for x, y in zip(xs, ys):
            r0, c0 = int(np.floor(y + 0.5)) - box // 2, int(np.floor(x + 0.5)) - box // 2
            if 0 <= r0 and 0 <= c0 and r0 + box <= h and c0 + box <= w:
                crops.append(img[:, r0:r0 + box, c0:c0 + box])
        x = np.asarray(crops, np.float32).reshape(-1, len(paths), box, box)
        lo, hi = x.min(axis=(2, 3), keepdims=True), x.max(axis=(2, 3), keepdims=True)
        x = np.where(hi > lo, (x - lo) / np.where(hi > lo, hi - lo, 1), 0).astype(np.float32)
        feats = [sess.run(x[j:j + batch]) for j in range(0, len(x), batch)]
        np.savez(out / f"site{i}.npz", features=np.concatenate(feats) if feats else np.empty((0, 1)))
        n += len(x)
    return n


def sequential_probe(sites, sess, box: int, batch: int, out: Path) -> float:
    """The rate (cells/s) of the sequential loop on ``sites`` now (noise control)."""
    t = time.perf_counter()
    n = sequential(sites, sess, box, batch, out)
    return n / (time.perf_counter() - t)


def median_rate(times, n):
    t = statistics.median(times)
    return {"seconds_median": t, "seconds_all": times, "cells": n, "cells_per_s": n / t}


def raw_times(sess, crops, batch: int, repeats: int) -> list[float]:
    """Seconds to run ``crops`` through ``sess`` in batches of ``batch`` (``repeats`` times, after a warm-up call)."""
    sess.run(crops[:batch])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for j in range(0, len(crops), batch):
            sess.run(crops[j:j + batch])
        times.append(time.perf_counter() - t)
    return times


#: ``ProfileSession`` options shared by every session of the run (raw, sequential, pipeline): --providers, --precision
RUNTIME: dict = {"providers": "auto", "precision": "fp32"}


def raw_thread_sessions(onnx, crops, batch: int, threads: int, repeats: int) -> list[float]:
    """Seconds to run ``crops`` split over ``threads`` threads, each with its own session of cpu_count // threads
    onnxruntime threads, in batches of ``batch`` (``repeats`` times, after a warm-up call per session)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from phenovec.runtime import ProfileSession

    n = max(1, len(os.sched_getaffinity(0)) // threads)
    sessions = [ProfileSession(onnx, intra_op_threads=n, exclusive=False, **RUNTIME) for _ in range(threads)]
    for s in sessions:
        s.run(crops[:batch])
    starts = list(range(0, len(crops), batch))

    def work(i):
        for j in starts[i::threads]:
            sessions[i].run(crops[j:j + batch])

    times = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t = time.perf_counter()
            list(pool.map(work, range(threads)))
            times.append(time.perf_counter() - t)
    return times


def raw_probe(sess, onnx, probe, batch: int, threads: int) -> float:
    """The raw rate on ``probe`` crops now: the faster of one session (``sess``) and ``threads`` per-thread
    sessions (1 repeat each, after a warm-up call)."""
    sess.run(probe[:batch])
    t = time.perf_counter()
    for j in range(0, len(probe), batch):
        sess.run(probe[j:j + batch])
    rates = [len(probe) / (time.perf_counter() - t)]
    if threads > 1:
        rates.append(len(probe) / raw_thread_sessions(onnx, probe, batch, threads, 1)[0])
    return max(rates)


def half_index(plate: dict) -> Path:
    """An index of the first half of the plate's sites, beside the full one (same relative image paths)."""
    import pandas as pd

    index = pd.read_csv(plate["index"])
    path = Path(plate["index"]).with_name("index_half.csv")
    index.iloc[:max(1, len(index) // 2)].to_csv(path, index=False)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=8)
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--arch", default="efficientnet_b0")
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--processes", type=int, nargs="*", default=[])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shared-session", action="store_true",
                    help="also run the threaded pipeline with one session shared by the Dask threads")
    ap.add_argument("--deepprofiler", action="store_true",
                    help="also run DeepProfiler 0.5.1 itself (its own venv, built from PyPI on first use)")
    ap.add_argument("--deepprofiler-sites", type=int, default=8,
                    help="sites DeepProfiler profiles (the plate's first; it embeds ~50 cells/s on 2 cores)")
    ap.add_argument("--micro-batch-sweep", type=int, nargs="*", default=[],
                    help="also measure the raw rate with these crops per onnxruntime call (e.g. 8 32 64)")
    ap.add_argument("--raw-crops", type=int, default=None,
                    help="measure the raw rates on the kept crops of the first sites up to this many (default: "
                         "all; a plate-scale run's float32 crops would take GBs: 96 sites ~5 GB)")
    ap.add_argument("--providers", nargs="+", default=["auto"],
                    help="onnxruntime providers of every session (raw, sequential, pipeline); default auto")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                    help="inference precision of every session (bf16: OpenVINO on CPUs with AMX / AVX512-BF16); "
                         "DeepProfiler (--deepprofiler) always runs its own float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.raw_crops is not None and a.raw_crops < a.batch_size:
        ap.error(f"--raw-crops {a.raw_crops}: give at least one batch (--batch-size {a.batch_size})")
    if a.deepprofiler and a.arch != "efficientnet_b0":
        ap.error("--deepprofiler profiles with DeepProfiler's EfficientNet-B0: give --arch efficientnet_b0 "
                 "so both sides run the same network")

    RUNTIME.update(providers=a.providers[0] if a.providers == ["auto"] else a.providers, precision=a.precision)
    from phenovec import _core
    from phenovec.profile import profile_sites
    from phenovec.profile import sites as worker_sites
    from phenovec.runtime import ProfileSession

    tmp = Path(tempfile.mkdtemp(prefix="profile_bench_"))
    doc = {"started": _dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:],
           "machine": machine_info(), "config": {k: v for k, v in vars(a).items() if k != "out"}, "results": {}}
    try:
        inp = make_inputs(tmp, a)
        sites = site_inputs(inp["plate"])
        sess = ProfileSession(inp["onnx"], **RUNTIME)
        if sess.precision != a.precision:
            raise SystemExit(f"--precision {a.precision} does not run here (the session fell back to {sess.precision})")
        doc["providers"], doc["precision"] = sess.providers, sess.precision
        # stage: decode + crop (Rust) alone, and the kept crops for the raw bound. The kept crops come from an
        # untimed pass: timed passes drop each site's crops at once, as the pipeline does (holding every pass's
        # crops grows the process by GBs, and first-touched memory on a VM made those passes 3x slower)
        def cut(p, xs, ys):
            return _core.crop_site(p, np.ascontiguousarray(xs, np.float64), np.ascontiguousarray(ys, np.float64),
                                   a.box, "drop", True, compact=True)[0]

        kept, held = [], 0
        for job in sites:  # the crops for the raw rates (the first sites' up to --raw-crops)
            if a.raw_crops is not None and held >= a.raw_crops:
                break
            kept.append(cut(*job))
            held += len(kept[-1])
        times = []
        for r in range(a.repeats):
            t = time.perf_counter()
            kept_per_site = [len(cut(*job)) for job in sites]  # each site's crops dropped at once
            times.append(time.perf_counter() - t)
        n_emb = sum(kept_per_site)
        n_loc = sum(len(xs) for _, xs, _ in sites)
        doc["results"]["decode_crop"] = median_rate(times, n_emb)
        log(f"decode+crop: {doc['results']['decode_crop']['cells_per_s']:.0f} cells/s ({n_emb} of {n_loc} kept)")
        crops = np.concatenate(kept)[:a.raw_crops].astype(np.float32, copy=False)  # one copy of the raw crops
        doc["raw_crops"] = len(crops)
        doc["results"]["raw_onnxruntime"] = median_rate(raw_times(sess, crops, a.batch_size, a.repeats), len(crops))
        log(f"raw onnxruntime: {doc['results']['raw_onnxruntime']['cells_per_s']:.1f} crops/s "
            f"(micro-batches of {sess.micro_batch})")
        for mb in [None, *a.micro_batch_sweep]:  # one onnxruntime call per batch, and other call sizes
            key = "raw_onnxruntime_unsplit" if mb is None else f"raw_onnxruntime_micro_batch_{mb}"
            other = ProfileSession(inp["onnx"], micro_batch=mb, **RUNTIME)
            doc["results"][key] = median_rate(raw_times(other, crops, a.batch_size, a.repeats), len(crops))
            log(f"{key}: {doc['results'][key]['cells_per_s']:.1f} crops/s")
            del other
        for w in sorted({w for w in a.workers if w > 1}):  # the threaded pipeline's layout: a session per thread
            key = f"raw_onnxruntime_{w}_thread_sessions"
            doc["results"][key] = median_rate(raw_thread_sessions(inp["onnx"], crops, a.batch_size, w, a.repeats),
                                              len(crops))
            log(f"{key}: {doc['results'][key]['cells_per_s']:.1f} crops/s")
        probe = crops[:8 * a.batch_size].copy()  # the raw rate near each pipeline run (noise control)
        del crops, kept
        times = []
        for r in range(a.repeats):
            shutil.rmtree(tmp / "seq", ignore_errors=True)
            t = time.perf_counter()
            n_seq = sequential(sites, sess, a.box, a.batch_size, tmp / "seq")
            times.append(time.perf_counter() - t)
        doc["results"]["sequential_deepprofiler"] = median_rate(times, n_seq)
        log(f"sequential: {doc['results']['sequential_deepprofiler']['cells_per_s']:.1f} cells/s")
        doc["near"] = {}
        if a.deepprofiler:
            from deepprofiler_peer import run_deepprofiler, write_project

            n_dp = min(a.deepprofiler_sites, len(sites))
            config, located = write_project(inp["plate"]["index"], inp["plate"]["nuclei"], tmp / "deepprofiler",
                                            CHANNELS, n_dp, a.box, a.batch_size)
            probes = [sequential_probe(sites[:n_dp], sess, a.box, a.batch_size, tmp / "seq_probe")]
            dp = run_deepprofiler(config, a.repeats)
            probes.append(sequential_probe(sites[:n_dp], sess, a.box, a.batch_size, tmp / "seq_probe"))
            if dp["cells"] != located or dp["sites"] != n_dp:
                raise RuntimeError(f"DeepProfiler embedded {dp['cells']} cells of {dp['sites']} sites, expected "
                                   f"{located} of {n_dp}")
            doc["results"]["deepprofiler"] = median_rate(dp["scan_s"], dp["cells"]) | {
                "sites": n_dp, "feature_dim": dp["feature_dim"], "import_s": dp["import_s"],
                "setup_s": dp["setup_s"], "stages_last_scan_s": dp["stages_last_scan_s"],
                "first_command_s": dp["import_s"] + dp["setup_s"] + dp["scan_s"][0]}
            doc["near"]["deepprofiler"] = {"sequential": statistics.median(probes), "all": {"sequential": probes}}
            log(f"DeepProfiler 0.5.1: {doc['results']['deepprofiler']['cells_per_s']:.1f} cells/s "
                f"({dp['cells']} cells, {n_dp} sites; stages {dp['stages_last_scan_s']}); sequential probe "
                f"{statistics.median(probes):.1f}")
        runs = [("threads", w, False) for w in a.workers] + [("processes", w, False) for w in a.processes]
        if a.shared_session:
            runs += [("threads", w, True) for w in a.workers if w > 1]
        half = half_index(inp["plate"])
        for sched, w, shared in runs:
            key = f"pipeline_{sched}_w{w}" + ("_shared" if shared else "")
            timed = {}
            near = {"raw": [], "sequential": []}
            for r in range(a.repeats):
                near["raw"].append(raw_probe(sess, inp["onnx"], probe, a.batch_size, max(a.workers)))
                near["sequential"].append(sequential_probe(sites[:8], sess, a.box, a.batch_size,
                                                           tmp / "seq_probe"))
                for part, index in (("all", inp["plate"]["index"]), ("half", half)):
                    out = tmp / f"pipe_{sched}_{w}_{part}"
                    shutil.rmtree(out, ignore_errors=True)
                    worker_sites._SESSIONS.clear()  # each run opens its session, as a fresh process would
                    t = time.perf_counter()
                    res = profile_sites(inp["onnx"], index, inp["plate"]["nuclei"], out,
                                        batch_size=a.batch_size, scheduler=sched, workers=w, progress=False,
                                        sessions="shared" if shared else "auto", **RUNTIME)
                    timed.setdefault(part, ([], res.embedded))[0].append(time.perf_counter() - t)
            doc["results"][key] = median_rate(*timed["all"])
            (t_all, n_all), (t_half, n_half) = [(statistics.median(timed[p][0]), timed[p][1]) for p in ("all", "half")]
            # paired: the marginal rate of each repeat's adjacent half and whole runs, and its ratio to the raw
            # probe taken just before them (a slow spell then slows both sides of each pair)
            # (a pair whose whole run was not slower than its half, possible in tiny runs, gives no rate: None)
            paired = [(n_all - n_half) / (ta - th) if ta > th else None
                      for ta, th in zip(timed["all"][0], timed["half"][0])]
            ok = [(v, p) for v, p in zip(paired, near["raw"]) if v is not None]
            steady = {"cells": n_all - n_half, "seconds_median": t_all - t_half,
                      "cells_per_s": (n_all - n_half) / (t_all - t_half), "half_run": median_rate(*timed["half"]),
                      "paired_cells_per_s": paired,
                      "paired_cells_per_s_median": statistics.median(v for v, _ in ok) if ok else float("nan"),
                      "paired_vs_raw_probe_median": statistics.median(v / p for v, p in ok) if ok else float("nan")}
            doc["results"][key + "_steady"] = steady
            near = {k: statistics.median(v) for k, v in near.items()} | {"all": near}
            doc["near"][key] = near
            log(f"{key}: {doc['results'][key]['cells_per_s']:.1f} cells/s whole run, {steady['cells_per_s']:.1f} "
                f"steady ({steady['paired_cells_per_s_median']:.1f} paired, "
                f"{steady['paired_vs_raw_probe_median']:.2f}x its raw probes); probes near it: raw "
                f"{near['raw']:.1f}, sequential {near['sequential']:.1f}")
        raw = max(v["cells_per_s"] for k, v in doc["results"].items() if k.startswith("raw_onnxruntime"))
        seq = doc["results"]["sequential_deepprofiler"]["cells_per_s"]
        dp = doc["results"].get("deepprofiler", {}).get("cells_per_s")
        doc["ratios"] = {k: {"pipeline_vs_raw": v["cells_per_s"] / raw, "pipeline_vs_sequential": v["cells_per_s"] / seq}
                         for k, v in doc["results"].items() if k.startswith("pipeline_")}
        for k, r in doc["ratios"].items():  # against the probes taken around the same runs
            near = doc["near"][k.removesuffix("_steady")]
            v = doc["results"][k]["cells_per_s"]
            r.update(vs_raw_near=v / near["raw"], vs_sequential_near=v / near["sequential"])
            if dp:
                r.update(pipeline_vs_deepprofiler=v / dp,
                         vs_deepprofiler_near=r["vs_sequential_near"] * doc["near"]["deepprofiler"]["sequential"] / dp)
        doc["cells_located"], doc["cells_embedded"] = n_loc, n_emb
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit_document(doc, a.out)


if __name__ == "__main__":
    main()
