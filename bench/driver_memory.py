"""Where the sharded-profiling driver's memory goes per submitted task: ``tracemalloc`` in the driver process over
a run of many small tasks (``bench/scale_bench.py``'s cheap synthetic plates and crop-mean model).

The run (``phenovec.profile.shards.profile_shards``) is made in this process with tracemalloc on; a thread
counts the tasks the driver has submitted (``Client.submit``) and takes snapshots at ``--at`` fractions of them.
The report: traced memory against submitted tasks (bytes per task between the first and the last snapshot) and
the allocation sites (file:line, ``--frames`` deep) that grew most between those snapshots, split into
phenovec's, dask/distributed's and the rest. ``--scheduler local``: a ``LocalCluster`` in the driver process (what
``phenovec profile --scheduler processes`` runs: the Dask scheduler shares the driver's memory); ``--scheduler
external``: the same cluster started in another process and passed by address (the driver is then phenovec's
loop and the Dask client alone).

    python bench/driver_memory.py --plates 20 --plate-cells 4000 --site-cells 100 --task-cells 100 \\
        --scheduler local --work /tmp/drvmem --out drvmem_local.json
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_bench  # noqa: E402  (the synthetic plates and stand-in model)


def _owner(tb) -> str:
    """Who made an allocation: ``phenovec`` when any frame of its traceback is phenovec's, else ``dask
    scheduler`` when one is the Dask scheduler's (``distributed/scheduler.py``, its extensions), else ``dask``
    (client, comms), else ``other``."""
    files = [f.filename.replace("\\", "/") for f in tb]
    if any("/phenovec/" in f for f in files):
        return "phenovec"
    if any(f.endswith(("distributed/scheduler.py", "distributed/spans.py", "distributed/stealing.py"))
           for f in files):
        return "dask scheduler"
    if any("/distributed/" in f or "/dask/" in f for f in files):
        return "dask"
    return "other"


def _scheduler_counts() -> dict | None:
    """Sizes of the in-process Dask scheduler's bookkeeping (``--scheduler local``), or None."""
    from distributed import Scheduler

    live = list(Scheduler._instances)
    if not live:
        return None
    s = live[0]
    spans = s.extensions.get("spans")
    broker = getattr(s, "_broker", None)
    topics = getattr(broker, "_topics", {}) if broker is not None else {}
    return {"tasks": len(s.tasks), "task_groups": len(s.task_groups), "task_prefixes": len(s.task_prefixes),
            "computations": len(s.computations),
            "events": sum(len(getattr(t, "events", ())) for t in topics.values()),
            "spans": len(spans.spans) if spans is not None else None,
            "transition_log": len(s.transition_log), "clients": len(s.clients)}


def _start_cluster(workers: int) -> tuple[subprocess.Popen, str]:
    """A LocalCluster of ``workers`` one-thread processes in a child process; returns it and its address."""
    code = ("import sys, time\nfrom distributed import LocalCluster\n"
            f"c = LocalCluster(n_workers={workers}, threads_per_worker=1, processes=True, dashboard_address=None)\n"
            "print(c.scheduler_address, flush=True)\n"
            "sys.stdin.read()\nc.close()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


def _freed_by_clearing() -> dict:
    """Traced bytes freed by clearing ``dask.utils.key_split``'s LRU cache (100,000 entries: one per distinct task
    key) and its entries, measured at the end of the run (the cluster still up)."""
    import gc

    from dask.utils import key_split

    gc.collect()
    before, entries = tracemalloc.get_traced_memory()[0], key_split.cache_info().currsize
    key_split.cache_clear()
    gc.collect()
    return {"key_split_cache_entries": entries, "key_split_cache_bytes": before - tracemalloc.get_traced_memory()[0]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plates", type=int, default=20)
    ap.add_argument("--plate-cells", type=int, default=4000)
    ap.add_argument("--site-cells", type=int, default=100)
    ap.add_argument("--task-cells", type=int, default=100)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--box", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scheduler", choices=["local", "external"], default="local")
    ap.add_argument("--frames", type=int, default=1, help="traceback depth of the allocation sites")
    ap.add_argument("--at", type=float, nargs=2, default=[0.3, 0.95], help="snapshot fractions of the tasks")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--noop", type=int, default=0, help="instead of profiling: this many no-op tasks through "
                                                        "phenovec.profile.scheduler.bounded_map (Dask alone)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import distributed

    from phenovec.profile.shards import profile_shards

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.noop:
        tasks = args.noop
    else:
        model = scale_bench.make_model(work, args.box, "crop_mean")
        images = scale_bench.make_images(work, 4, args.size)
        n_cells = args.plates * args.plate_cells
        indexes, nuclei, sites = scale_bench.make_plates(work, n_cells, args.plate_cells, args.site_cells, images,
                                                         args.size, args.box)
        tasks = scale_bench.n_tasks(len(indexes), sites // len(indexes), args.site_cells, args.task_cells)
        out = work / f"out_{args.scheduler}"
        import shutil

        shutil.rmtree(out, ignore_errors=True)

    submitted = [0]
    real_submit = distributed.Client.submit

    def submit(self, *a, **k):
        submitted[0] += 1
        return real_submit(self, *a, **k)

    distributed.Client.submit = submit
    proc = None
    scheduler = "processes"
    if args.scheduler == "external":
        proc, scheduler = _start_cluster(args.workers)
    marks = [max(1, int(f * tasks)) for f in args.at]
    snaps: list = []
    series: list = []
    counts: list = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            n = submitted[0]
            series.append((n, tracemalloc.get_traced_memory()[0]))
            if len(snaps) < len(marks) and n >= marks[len(snaps)]:
                try:
                    counts.append((n, _scheduler_counts()))
                except Exception as e:  # noqa: BLE001 - another Dask version's attribute names: say so, go on
                    counts.append((n, f"{type(e).__name__}: {e}"))
                snaps.append((n, tracemalloc.take_snapshot()))
            time.sleep(0.05)

    tracemalloc.start(args.frames)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    t0 = time.perf_counter()
    freed = {}
    try:
        if args.noop:
            from phenovec.profile.scheduler import bounded_map, open_client

            with open_client(scheduler, args.workers) as (client, slots, _, _):
                k = sum(1 for _ in bounded_map(client, scale_bench._noop, range(args.noop), 2 * slots + 1))
                freed = _freed_by_clearing()
            res = None
        else:
            res = profile_shards(model, [str(i) for i in indexes], out, locations=[str(n) for n in nuclei],
                                 batch_size=args.task_cells, task_cells=args.task_cells, scheduler=scheduler,
                                 workers=args.workers, progress=False)
            freed = _freed_by_clearing()
    finally:
        done.set()
        t.join()
        if proc is not None:
            proc.stdin.close()
            proc.wait(timeout=60)
    wall = time.perf_counter() - t0
    tracemalloc.stop()
    rec = {"config": vars(args), "tasks_expected": tasks, "tasks_submitted": submitted[0],
           "failed": None if res is None else res.failed, "cells": None if res is None else res.cells,
           "wall_s": round(wall, 1), "load": [round(x, 2) for x in os.getloadavg()], "freed_at_end": freed}
    if len(snaps) == 2:
        (n0, s0), (n1, s1) = snaps
        skip = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
        s0, s1 = s0.filter_traces(skip), s1.filter_traces(skip)  # the measurement's own allocations
        diff = s1.compare_to(s0, "traceback" if args.frames > 1 else "lineno")
        per_kind: dict = {}
        for d in diff:
            k = _owner(d.traceback)
            per_kind[k] = per_kind.get(k, 0) + d.size_diff
        total = sum(d.size_diff for d in diff)
        rec["between"] = {"tasks": [n0, n1], "bytes": total, "bytes_per_task": round(total / (n1 - n0), 1),
                          "bytes_per_task_by_owner": {k: round(v / (n1 - n0), 1) for k, v in per_kind.items()}}
        rec["top"] = [{"site": [f"{'/'.join(Path(f.filename).parts[-2:])}:{f.lineno}" for f in d.traceback][::-1],
                       "owner": _owner(d.traceback), "bytes": d.size_diff, "count": d.count_diff,
                       "bytes_per_task": round(d.size_diff / (n1 - n0), 1)}
                      for d in sorted(diff, key=lambda d: -d.size_diff)[:args.top]]
    rec["scheduler_counts"] = counts
    rec["series"] = series[:: max(1, len(series) // 40)]
    return scale_bench.emit(rec, args.out)


if __name__ == "__main__":
    main()
