"""Scale test of sharded profiling without a GPU: the orchestration itself (``phenovec.profile.shards``), measured
with cells made cheap.

Cheap cells: ``--distinct-sites`` (default 4) synthetic 5-channel 16-bit *uncompressed* sites of ``--size`` px
are written once, and every site of every plate is one of them again (repeated sites: decode is a page-cache
read); each site has ``--site-cells`` centres on a grid, cut at ``--box`` px; the model (``--model``) is the
crop-mean model (one ONNX ReduceMean with phenovec's model metadata: 5 features per cell) or phenovec's smallest
exported network (``resnet_tiny``, untrained, 128 features). A run of N
cells is N / ``--plate-cells`` plates, one index + one nuclei table (Parquet) per plate, profiled by the real
command in its own process::

    phenovec profile MODEL --index P0001/index.csv ... --locations P0001/nuclei.parquet ... -o OUT \\
        --batch-size B --scheduler processes --workers W --quiet

(``--workers`` one-thread worker processes of a ``LocalCluster``). Per size the JSON gives: cells/s over the
whole run (wall clock, cluster start and every shard's assembly included), tasks (site groups + a plan and an assembly
per shard), the driver's CPU seconds per task and its peak RSS, the workers' peak RSS (largest process),
disk per cell (parts, and the assembled outputs), all sampled by this process with psutil every 0.2 s, and the
shards' assembly task times (``OUT/manifest.json``). ``marginal``: between the smallest and the largest size, the
cells/s and driver CPU per task of the extra cells and tasks (the run's fixed costs cancel), and the change of
the driver's peak RSS.

Also measured: ``scheduler_overhead``: the round trip of no-op tasks through the same kind of window on a
fresh 2-process cluster (seconds per task: what a task costs the scheduler + driver beyond its work);
``kill``: at ``--kill-cells`` cells, (a) one worker process SIGKILLed when half the sites are committed (the run's
wall time against an uninterrupted run of the same size), (b) the whole run (driver and workers) SIGKILLed at
half, then rerun: the rerun's wall time, its time until its first new site is committed, and the output
compared with the uninterrupted run's (sha256 of every shard's embeddings and cell table).

The machine's load average is recorded before and after each measurement (other jobs share it).

    python bench/scale_bench.py --cells 1000000 10000000 --kill-cells 1000000 --work /tmp/scale --out scale.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def make_model(work: Path, box: int, kind: str) -> Path:
    """The stand-in model: ``crop_mean`` (an ONNX graph of one ReduceMean: each crop's channel means, 5 features,
    with phenovec's model metadata, ``phenovec.io.model_metadata``) or ``resnet_tiny`` (phenovec's smallest
    ProfileNet, untrained, 128 features, ``phenovec.export.export_onnx``)."""
    p = work / f"model_{kind}_{box}.onnx"
    if p.exists():
        return p
    if kind == "resnet_tiny":
        from phenovec.export import export_onnx
        from phenovec.train.models import build_model

        export_onnx(build_model("resnet_tiny", len(CHANNELS), 7, seed=0), p, channels=CHANNELS, crop_size=box,
                    intensity={"input_scaling": "minmax", "dtype_max": 65535.0}, parity=False)
        return p
    import onnx
    from onnx import TensorProto, helper

    import phenovec
    from phenovec.io.model_metadata import ModelMetadata

    x = helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["N", len(CHANNELS), box, box])
    y = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(CHANNELS)])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    graph = helper.make_graph([helper.make_node("ReduceMean", ["crops", "axes"], ["features"], keepdims=0)],
                              "crop_mean", [x], [y], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="phenovec")
    model.ir_version = 8
    meta = ModelMetadata(channels=tuple(CHANNELS), crop_size=box,
                         intensity={"input_scaling": "minmax", "dtype_max": 65535.0}, feature_dim=len(CHANNELS),
                         outputs=("features",), arch="crop_mean", model_config={},
                         weights_sha256=hashlib.sha256(b"crop_mean").hexdigest(),
                         phenovec_version=phenovec.__version__, torch_version="none", opset=18, exporter="onnx.helper")
    for k, v in meta.to_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(p))
    return p


def make_images(work: Path, distinct: int, size: int, seed: int = 0) -> list[dict]:
    """``distinct`` sites: per channel an uncompressed uint16 TIFF; returns their FileName_<ch> paths."""
    import tifffile

    rng = np.random.default_rng(seed)
    img_dir = work / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for d in range(distinct):
        row = {}
        for c in CHANNELS:
            p = img_dir / f"site{d}_{c}.tif"
            if not p.exists():
                tifffile.imwrite(p, rng.integers(0, 65535, (size, size), dtype=np.uint16))
            row[f"FileName_{c}"] = str(p.resolve())
        out.append(row)
    return out


def grid_centres(n: int, size: int, box: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` centres on a grid inside the image (every crop inside)."""
    lo, hi = box / 2 + 1, size - box / 2 - 1
    side = int(np.ceil(np.sqrt(n)))
    g = np.linspace(lo, hi, side)
    xs, ys = np.meshgrid(g, g)
    return xs.ravel()[:n], ys.ravel()[:n]


def make_plates(work: Path, n_cells: int, plate_cells: int, site_cells: int, images: list[dict], size: int,
                box: int) -> tuple[list[Path], list[Path], int]:
    """Per plate an index CSV and a nuclei Parquet under ``work/plates_<n>/P....``; returns them and the sites."""
    root = work / f"plates_{n_cells}"
    n_plates = max(1, n_cells // plate_cells)
    sites_per_plate = max(1, plate_cells // site_cells)
    xs, ys = grid_centres(site_cells, size, box)
    indexes, nuclei = [], []
    for p in range(n_plates):
        plate = f"P{p:04d}"
        d = root / plate
        idx, nuc = d / "index.csv", d / "nuclei.parquet"
        indexes.append(idx)
        nuclei.append(nuc)
        if idx.exists() and nuc.exists():
            continue
        d.mkdir(parents=True, exist_ok=True)
        rows = []
        for s in range(sites_per_plate):
            well = f"{chr(65 + (s // 4) // 24 % 16)}{(s // 4) % 24 + 1:02d}"
            rows.append({"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": s % 4 + 1 + 4 * (s // 384),
                         **images[s % len(images)]})
        index = pd.DataFrame(rows)
        k = len(index)
        nuc_df = pd.DataFrame({
            "Metadata_Plate": plate,
            "Metadata_Well": np.repeat(index["Metadata_Well"].to_numpy(), site_cells),
            "Metadata_Site": np.repeat(index["Metadata_Site"].to_numpy(), site_cells),
            "ObjectNumber": np.tile(np.arange(1, site_cells + 1), k),
            "Nuclei_Location_Center_X": np.tile(xs, k), "Nuclei_Location_Center_Y": np.tile(ys, k)})
        nuc_df.to_parquet(nuc, index=False)
        index.to_csv(idx, index=False)
    return indexes, nuclei, n_plates * sites_per_plate


def du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def count_parts(out: Path) -> int:
    n = 0
    shards = out / "shards"
    if not shards.exists():
        return 0
    for d in os.scandir(shards):
        parts = os.path.join(d.path, "parts")
        if os.path.isdir(parts):
            n += sum(1 for e in os.scandir(parts) if e.name.startswith("site-"))
    return n


class Watch:
    """A child run of the CLI, its process tree sampled every ``interval`` s (psutil)."""

    def __init__(self, argv: list[str], interval: float = 0.2):
        import psutil

        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "phenovec.cli", *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True, text=True)
        self.ps = psutil.Process(self.proc.pid)
        self.interval = interval
        self.driver_peak = 0
        self.worker_peak = 0
        self.driver_cpu = 0.0
        self.workers = set()

    def sample(self) -> None:
        import psutil

        try:
            self.driver_peak = max(self.driver_peak, self.ps.memory_info().rss)
            t = self.ps.cpu_times()
            self.driver_cpu = t.user + t.system
            for c in self.ps.children(recursive=True):
                try:
                    rss = c.memory_info().rss
                except psutil.Error:
                    continue
                self.workers.add(c.pid)
                self.worker_peak = max(self.worker_peak, rss)
        except psutil.Error:
            pass

    def wait(self, until=None) -> bool:
        """Sample until the run ends (True) or ``until()`` holds (False)."""
        while self.proc.poll() is None:
            self.sample()
            if until is not None and until():
                return False
            time.sleep(self.interval)
        return True

    def kill_all(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def result(self) -> dict:
        out, err = self.proc.communicate()
        wall = time.perf_counter() - self.t0
        if self.proc.returncode != 0:
            raise RuntimeError(f"phenovec profile failed ({self.proc.returncode}): {err[-3000:]}")
        return {**json.loads(out), "wall_s": round(wall, 3)}


def profile_argv(model: Path, indexes, nuclei, out: Path, args) -> list[str]:
    """The sharded ``phenovec profile`` of per-plate indexes (one plate: ``--shard-by``, still a sharded run)."""
    return ["profile", str(model), "--index", *map(str, indexes), "--locations", *map(str, nuclei), "-o", str(out),
            "--batch-size", str(args.batch_size), "--scheduler", "processes", "--workers", str(args.workers),
            "--quiet", *(["--shard-by"] if len(indexes) == 1 else []),
            *(["--task-cells", str(args.task_cells)] if args.task_cells else [])]


def n_tasks(n_plates: int, sites_per_plate: int, site_cells: int, task_cells: int) -> int:
    from phenovec.profile.pipeline import task_groups

    return n_plates * (len(task_groups([site_cells] * sites_per_plate, task_cells)) + 2)  # + plan, assembly


def run_size(args, model, images, n_cells: int) -> dict:
    work = Path(args.work)
    indexes, nuclei, sites = make_plates(work, n_cells, args.plate_cells, args.site_cells, images, args.size,
                                         args.box)
    out = work / f"out_{n_cells}"
    shutil.rmtree(out, ignore_errors=True)
    load0 = load()
    w = Watch(profile_argv(model, indexes, nuclei, out, args))
    w.wait()
    res = w.result()
    tasks = n_tasks(len(indexes), sites // len(indexes), args.site_cells, args.task_cells or args.batch_size)
    parts = sum(du(p) for p in (out / "shards").glob("*/parts"))
    total = du(out)
    rec = {"cells": res["cells"], "embedded": res["embedded"], "plates": len(indexes), "sites": sites,
           "tasks": tasks, "wall_s": res["wall_s"], "cells_per_s": round(res["cells"] / res["wall_s"], 1),
           "driver_peak_rss_mb": round(w.driver_peak / 2**20, 1),
           "worker_peak_rss_mb": round(w.worker_peak / 2**20, 1),
           "driver_cpu_s": round(w.driver_cpu, 2),
           "driver_cpu_ms_per_task": round(1e3 * w.driver_cpu / tasks, 3),
           "disk_bytes_per_cell": round(total / res["cells"], 2),
           "disk_parts_bytes_per_cell": round(parts / res["cells"], 2),
           "disk_outputs_bytes_per_cell": round((total - parts) / res["cells"], 2),
           "load_before": load0, "load_after": load()}
    asm = [e.get("assembly_seconds") for e in json.loads((out / "manifest.json").read_text())["shards"].values()]
    asm = [a for a in asm if a is not None]
    if asm:  # the shards' assembly tasks (on the workers)
        rec["assembly_s_per_shard_median"] = round(float(np.median(asm)), 3)
        rec["assembly_us_per_cell"] = round(1e6 * sum(asm) / res["cells"], 3)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return rec


def _noop(x):
    return x


def scheduler_overhead(n: int, workers: int) -> dict:
    """Seconds per no-op task through a window of 2 x workers + 1 futures on a fresh process cluster."""
    from phenovec.profile.scheduler import bounded_map, open_client

    load0 = load()
    with open_client("processes", workers) as (client, slots, _, _):
        list(bounded_map(client, _noop, range(50), 2 * slots + 1))  # warm
        t = time.perf_counter()
        k = sum(1 for _ in bounded_map(client, _noop, range(n), 2 * slots + 1))
        dt = time.perf_counter() - t
    return {"tasks": k, "seconds": round(dt, 3), "ms_per_task": round(1e3 * dt / k, 3), "load_before": load0,
            "load_after": load()}


def digest(out: Path) -> str:
    """sha256 over every shard's embeddings (features, meta) and cell table, in shard order."""
    from phenovec.io.embeddings import EmbeddingStore

    h = hashlib.sha256()
    for d in sorted((out / "shards").iterdir()):
        st = EmbeddingStore(d / "embeddings.zarr")
        h.update(np.ascontiguousarray(st.array[:]).tobytes())
        h.update(pd.util.hash_pandas_object(st.meta, index=False).to_numpy().tobytes())
        h.update(pd.util.hash_pandas_object(pd.read_parquet(d / "cells.parquet"), index=False).to_numpy().tobytes())
    return h.hexdigest()


def kill_runs(args, model, images, n_cells: int) -> dict:
    work = Path(args.work)
    indexes, nuclei, sites = make_plates(work, n_cells, args.plate_cells, args.site_cells, images, args.size,
                                         args.box)
    rec = {"cells": n_cells, "load_before": load()}
    ref = work / f"kill_ref_{n_cells}"
    shutil.rmtree(ref, ignore_errors=True)
    w = Watch(profile_argv(model, indexes, nuclei, ref, args))
    w.wait()
    rec["uninterrupted_wall_s"] = w.result()["wall_s"]
    want = digest(ref)

    # (a) one worker process killed at half the sites
    out = work / f"kill_worker_{n_cells}"
    shutil.rmtree(out, ignore_errors=True)
    w = Watch(profile_argv(model, indexes, nuclei, out, args))
    w.wait(until=lambda: count_parts(out) >= sites // 2)
    victims = [c for c in w.ps.children(recursive=True) if c.memory_info().rss > 100 * 2**20]
    if victims:
        victims[0].send_signal(signal.SIGKILL)
    w.wait()
    r = w.result()
    rec["worker_killed"] = {"killed_pid": victims[0].pid if victims else None, "wall_s": r["wall_s"],
                            "extra_s_vs_uninterrupted": round(r["wall_s"] - rec["uninterrupted_wall_s"], 3),
                            "identical": digest(out) == want}
    shutil.rmtree(out, ignore_errors=True)

    # (b) the whole run killed at half, then rerun
    out = work / f"kill_run_{n_cells}"
    shutil.rmtree(out, ignore_errors=True)
    w = Watch(profile_argv(model, indexes, nuclei, out, args))
    w.wait(until=lambda: count_parts(out) >= sites // 2)
    w.kill_all()  # the driver and its worker processes (one process group)
    done = count_parts(out)
    t = time.perf_counter()
    w = Watch(profile_argv(model, indexes, nuclei, out, args))
    first = {}

    def first_commit():
        if "s" not in first and count_parts(out) > done:
            first["s"] = time.perf_counter() - t
        return False

    w.wait(until=first_commit)
    r = w.result()
    rec["run_killed"] = {"sites_committed_at_kill": done, "sites": sites, "rerun_wall_s": r["wall_s"],
                         "rerun_first_new_site_s": round(first.get("s", float("nan")), 3),
                         "identical": digest(out) == want}
    rec["load_after"] = load()
    for p in (ref, out):
        shutil.rmtree(p, ignore_errors=True)
    return rec


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=float, nargs="+", default=[1e5], help="run sizes in cells")
    ap.add_argument("--plate-cells", type=int, default=100_000, help="cells per plate (shard)")
    ap.add_argument("--site-cells", type=int, default=500, help="cells per site")
    ap.add_argument("--size", type=int, default=256, help="site side in px")
    ap.add_argument("--box", type=int, default=16, help="crop side in px (resnet_tiny takes >= 32)")
    ap.add_argument("--distinct-sites", type=int, default=4, help="distinct image sets repeated by all sites")
    ap.add_argument("--model", choices=["crop_mean", "resnet_tiny"], default="crop_mean", help="stand-in model")
    ap.add_argument("--batch-size", type=int, default=8192, help="crops per inference call and per task")
    ap.add_argument("--task-cells", type=int, default=None, help="cells per task (default: --batch-size)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--noop-tasks", type=int, default=2000, help="no-op tasks of the scheduler-overhead probe")
    ap.add_argument("--kill-cells", type=float, default=None, help="size of the kill / resume runs (none: skip)")
    ap.add_argument("--work", required=True, help="working folder (synthetic data, outputs)")
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work, args.box, args.model)
    images = make_images(work, args.distinct_sites, args.size)
    rec = {"bench": "scale_bench", "cpus": os.cpu_count(), "argv": sys.argv[1:],
           "setup": {k: getattr(args, k) for k in ("model", "plate_cells", "site_cells", "size", "box", "distinct_sites",
                                                   "batch_size", "task_cells", "workers")},
           "scheduler_overhead": scheduler_overhead(args.noop_tasks, args.workers), "runs": []}
    for n in args.cells:
        r = run_size(args, model, images, int(n))
        print(json.dumps(r), file=sys.stderr, flush=True)
        rec["runs"].append(r)
    if len(rec["runs"]) > 1:  # what one more task / cell costs, free of the run's fixed costs
        a, b = rec["runs"][0], rec["runs"][-1]
        rec["marginal"] = {
            "between_cells": [a["cells"], b["cells"]],
            "cells_per_s": round((b["cells"] - a["cells"]) / (b["wall_s"] - a["wall_s"]), 1),
            "driver_cpu_ms_per_task": round(1e3 * (b["driver_cpu_s"] - a["driver_cpu_s"]) / (b["tasks"] - a["tasks"]),
                                            3),
            "driver_peak_rss_mb_change": round(b["driver_peak_rss_mb"] - a["driver_peak_rss_mb"], 1)}
    if args.kill_cells:
        rec["kill"] = kill_runs(args, model, images, int(args.kill_cells))
    return emit(rec, args.out)


def emit(rec: dict, out: str | None) -> dict:
    """Print the record as JSON, and write it to ``out`` when given."""
    text = json.dumps(rec, indent=2)
    print(text)
    if out:
        Path(out).write_text(text)
    return rec


if __name__ == "__main__":
    main()
