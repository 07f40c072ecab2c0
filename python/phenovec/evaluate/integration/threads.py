"""Thread counts for small sub-problems: one BLAS and one Numba thread below a size threshold.

``kbet_per_label`` runs one small eigendecomposition and kNN search per label. On 2 busy cores, OpenBLAS' and
Numba's thread teams cost more than such problems (a 333 x 333 ``eigh`` took 0.65 s with 2 OpenBLAS threads and
0.03 s with one on the benchmark machine; ARPACK's 100 eigenpairs of a 3,330-row label 33 s with two, 9 s with
one), so problems of at most ``SMALL_ROWS`` rows run single-threaded.
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import numba
from threadpoolctl import threadpool_limits

SMALL_ROWS = 5000


@contextmanager
def _single_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        numba.set_num_threads(before)


def threads_for(rows: int):
    """A context running its body single-threaded when ``rows <= SMALL_ROWS``, else unchanged."""
    return _single_thread() if rows <= SMALL_ROWS else nullcontext()


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; all CPUs where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
