"""Where profiling tasks run (Dask), and how many are in flight.

``scheduler``:

- ``"threads"`` (default): an in-process ``dask.distributed.LocalCluster(processes=False)`` with one worker of
  ``workers`` threads; decode/crop (Rust) and onnxruntime release the GIL. On the CPU provider each thread has
  its own session of ``cpu_count // workers`` onnxruntime threads, on a GPU provider they share one
  (``phenovec.profile.sites``);
- ``"processes"``: a ``LocalCluster`` of ``workers`` worker processes, one thread each; each process opens its
  own session with ``cpu_count // workers`` onnxruntime threads;
- ``"tcp://host:port"``: a ``Client`` connected to an existing dask.distributed scheduler (the cluster is not
  closed afterwards). Workers must be able to read the model, images (or crop store) at the given paths.

:func:`bounded_map` submits tasks through a window of at most ``max_in_flight`` futures (``as_completed``), so
memory holds at most that many tasks' results however many plates are profiled; results are yielded as they
finish (any order).

The clusters made here run with :data:`LOCAL_CLUSTER_CONFIG`: dask.distributed's background chores sized for a
profiling run that no dashboard watches. Its defaults poll under the GIL many times a second (the worker's
statistical profiler every 10 ms, the event-loop health tick every 20 ms, the memory monitor every 100 ms, the
system monitor every 500 ms, work stealing every second); with ``threads`` those polls share one process and its
GIL with the Dask threads. On a 2-core machine profiling 24 sites, dask.distributed's code (its event loop,
mostly) held the GIL in 424-664 of py-spy's samples (200 Hz, whole run) by default and 94 with these settings. A
cluster given by address keeps its own configuration.
"""
from __future__ import annotations

import contextlib
import os
from itertools import islice
from typing import Callable, Iterable, Iterator

SCHEDULERS = ("threads", "processes")
LOG_EVENTS = 64  # events a Dask worker keeps for debugging (default 1,000: each with its task's arguments, the
#                  centres of a task's sites, i.e. megabytes)
LOCAL_CLUSTER_CONFIG = {
    "distributed.admin.low-level-log-length": LOG_EVENTS,
    "distributed.worker.profile.enabled": False,  # the dashboard's profile page; none is served
    "distributed.admin.tick.interval": "1s",  # event-loop health check (warns after tick.limit, 3 s)
    "distributed.admin.system-monitor.interval": "5s",  # the dashboard's CPU / memory / network plots
}
# a client of a running scheduler: its batched comm keeps the last low-level-log-length messages it sent (Dask's
# default 1,000 update-graph messages of ~2-3 KB each: the driver grew ~2.8 KB per task until 1,000 tasks, traced
# with bench/driver_memory.py --scheduler external); the cluster's own configuration is not touched
CLIENT_CONFIG = {"distributed.admin.low-level-log-length": LOG_EVENTS}
THREADS_CLUSTER_CONFIG = {  # one in-process worker: nothing to steal, no process to pause or restart
    "distributed.scheduler.work-stealing": False,
    "distributed.worker.memory.monitor-interval": "1s",
}


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@contextlib.contextmanager
def open_client(scheduler: str | None, workers: int | None):
    """Yield ``(client, n_slots, onnxruntime threads per session or None, whether each Dask thread may have its own
    session)`` for ``scheduler`` (module docstring; the caller decides per provider)."""
    import dask
    from distributed import Client, LocalCluster

    scheduler = scheduler or "threads"
    if scheduler.startswith("tcp://") or scheduler.startswith("tls://") or scheduler.startswith("inproc://"):
        with dask.config.set(CLIENT_CONFIG):  # the client's comm keeps its log length from its creation
            client = Client(scheduler)
        try:
            slots = sum(client.nthreads().values()) or 1
            yield client, slots, None, False
        finally:
            client.close()
        return
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be None, {list(SCHEDULERS)} or a 'tcp://host:port' address, got "
                         f"{scheduler!r}")
    n = int(workers) if workers is not None else default_workers()
    if n < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    threads = scheduler == "threads"
    with dask.config.set({**LOCAL_CLUSTER_CONFIG, **(THREADS_CLUSTER_CONFIG if threads else {})}):
        if threads:
            cluster = LocalCluster(n_workers=1, threads_per_worker=n, processes=False, dashboard_address=None)
        else:
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        try:
            with Client(cluster) as client:
                yield client, n, max(1, default_workers() // n), threads
        finally:
            cluster.close()


def bounded_map(client, fn: Callable, tasks: Iterable, max_in_flight: int, **kwargs) -> Iterator:
    """``fn(task, **kwargs)`` for each task on ``client``, at most ``max_in_flight`` at a time; yields results."""
    from distributed import as_completed

    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    it = iter(tasks)
    futures = [client.submit(fn, t, pure=False, **kwargs) for t in islice(it, max_in_flight)]
    if not futures:
        return
    ac = as_completed(futures)
    for fut in ac:
        try:
            result = fut.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        fut.release()
        nxt = next(it, None)
        if nxt is not None:
            ac.add(client.submit(fn, nxt, pure=False, **kwargs))
        yield result
