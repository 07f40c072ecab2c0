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
"""
from __future__ import annotations

import contextlib
import os
from itertools import islice
from typing import Callable, Iterable, Iterator

SCHEDULERS = ("threads", "processes")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@contextlib.contextmanager
def open_client(scheduler: str | None, workers: int | None):
    """Yield ``(client, n_slots, onnxruntime threads per session or None, whether each Dask thread may have its own
    session)`` for ``scheduler`` (module docstring; the caller decides per provider)."""
    from distributed import Client, LocalCluster

    scheduler = scheduler or "threads"
    if scheduler.startswith("tcp://") or scheduler.startswith("tls://") or scheduler.startswith("inproc://"):
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
    if scheduler == "threads":
        cluster = LocalCluster(n_workers=1, threads_per_worker=n, processes=False, dashboard_address=None)
    else:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with Client(cluster) as client:
            yield client, n, max(1, default_workers() // n), scheduler == "threads"
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
