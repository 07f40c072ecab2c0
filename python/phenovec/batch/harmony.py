"""Harmony (Korsunsky et al. 2019, Nature Methods) as harmonypy 2.1.0 computes it, faster.

:func:`run_harmony` is a drop-in for ``harmonypy.run_harmony`` (same arguments, same defaults, a result with
``Z_corr`` (cells x PCs, float64), ``Z_orig``, ``Z_cos``, ``R`` (cells x clusters), ``Y`` (PCs x clusters),
``K``, ``objective_harmony``, ``objective_kmeans``, ``kmeans_rounds`` and ``result()``), plus ``init_centroids``
(start from given centroids instead of the k-means initialisation).

Peer: harmonypy 2.1.0 (its C++ backend, ``src/harmony.cpp``, which follows R harmony 1.2 / "harmony2"). One
Harmony iteration is

1. clustering: cosine-normalise the corrected embedding, distances ``2 (1 - y.z)`` to the centroids, soft
   assignments ``R = softmax(-dist / sigma)``, then ``max_iter_kmeans`` passes of the diversity-penalised update
   over the cells in a random order, ``N * block_size`` cells at a time
   (``R ~ exp(-dist / sigma) * prod_c ((2E + 1) / (O + E + 1)) ** theta`` for the cell's batch in each variable);
2. correction: per cluster k, a ridge regression of the original embedding on the batch indicators weighted by
   ``R_k`` (one row for the intercept, one per batch the cluster has more than ``batch_prop_cutoff`` of; the
   penalty ``alpha * E`` (``lamb=None``) or ``lamb``), then ``Z_corr = Z_orig - sum_k R_k (M_k for the cell's
   batches)`` and the centroids ``Y_k`` = the intercepts;

until the objective ``(sum R dist + sum sigma R log R + cross-entropy) * 2000 / N`` falls by less than
``epsilon_harmony`` (relative). The initial centroids are harmonypy's: a random cell per cluster, then per
cluster the cell minimising ``-log(u) / |2 (1 - y.z)|`` (u uniform), then 10 Lloyd steps.

Equality with the peer: the same float32 arithmetic and summation order in every step that is not a float64 sum
(``kernels/harmony.py``), the same random stream (``std::mt19937(random_state)``, libstdc++'s shuffle), so the
same initial centroids and cell orders. The ridge sums are float64 sums in another order (per combination of batches),
which changes their last bits only. Tests run harmonypy 2.1.0 itself and assert ``Z_corr`` to 1e-6 relative and
the objective trajectory to 1e-5 relative. An empty k-means cluster that Armadillo refills with a random cell
(``arma::randi``, not reproducible here) takes the last cell instead and warns.

phenovec's policies (stricter than harmonypy, which accepts them): a batch with one cell, a missing batch label,
more clusters than cells and non-finite coordinates are ``ValueError`` naming the variable, batch, row or column.

Speed: the same work as harmonypy, cheaper where the order allows it:

* the k-means initialisation's distances and centroid choice screened with float32 BLAS (the seeding's products
  split over the threads; each Lloyd step's product computed per task of 1,024 cells and screened while in cache,
  16 cells at a time)
  and numpy's SIMD ``log``, then harmonypy's exact order only for the cells that could tie;
* the assignment pass 16 cells at a time, one per SIMD lane (lane buffers on the stack, so that LLVM vectorises
  them; the cells' rows turned into lanes and back by 8 x 8 transposes), with a vectorisable copy of glibc's
  ``expf`` (bit-identical to libm's). A block's cells are independent
  given the frozen O and E: its runs (one per batch of the first variable) run on the Numba threads up to
  :data:`WORKER_STACK_CLUSTERS` clusters, or, where the runs are short (:data:`PACK_BELOW_RUN`), its cells are
  packed into the lanes whatever their batch. Every block's grouping and the sums that take it out of O and E
  are computed at the pass's start, the blocks on the threads (a cell's R row changes only at its own block's
  turn); the sums that put a block back are one sweep over its cells, the rows asked for ahead (``llvm.prefetch``);
* the ridge sums once per combination of batches (one ``dgemm`` each, called from a Numba loop on the threads)
  instead of once per batch and variable, the clusters' systems solved as harmonypy solves them (the largest
  covariate's diagonal block eliminated, the rest by Cholesky, in double);
* Numba-parallel loops elsewhere (``numba.set_num_threads(ncores)`` while running, from
  :data:`PARALLEL_MIN_CELLS` cells with ``ncores=0``), all compiled with LLVM's SLP vectoriser on (Numba's default
  is off; ``kernels/harmony.py: njit``).

Observed outputs: bit-identical to harmonypy 2.1.0 on every input tried (tests; 1k to 100k cells in the benchmark).
Measured side by side in ``bench/harmony_bench.py`` on a 2-core AMD EPYC Zen 3 (sessions 32-33, medians of 5):
2.6-3.0x harmonypy 2.1.0's wall-clock at 100k cells x 50 PCs (1.62 vs 4.73 s, 2.01 vs 5.89 s), 2.8x at 1M (one run
each: 19.5 vs 54.9 s), 1.6-2.4x at 10k, 1.1-1.6x at 2k and 0.9-1.2x at 1k.
Short of the issue's 5x: the assignment passes alone (0.66 s at 100k, their blocks sequential by definition) take
longer than a fifth of harmonypy's time.
"""
from __future__ import annotations

import logging
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Sequence

import numpy as np

from phenovec.batch.finite import require_finite
from phenovec.process.kernel_loader import load_kernel

logger = logging.getLogger("phenovec.batch.harmony")

_F32 = np.float32


def _real(value, name: str) -> float:
    """``value`` as a float: ``ValueError`` naming ``name`` for None, a string or a non-finite number (float32 of
    None is NaN, which would run on silently: a NaN cut-off corrects nothing, a NaN epsilon never converges)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


#: the ``device`` values :func:`run_harmony` accepts (strings in any case; or a ``torch.device`` of type cpu / cuda)
DEVICES = ("None", "'none'", "'auto'", "'cpu'", "'cuda'", "'cuda:N'")


def harmony_device(device) -> str | None:
    """``device`` checked and resolved before any work: None (the exact CPU kernels) for None, ``"none"`` and
    ``"auto"`` without a CUDA GPU (or without PyTorch); ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (PyTorch) for those
    strings in any case, ``"auto"`` with a GPU, or a ``torch.device`` of type cpu / cuda. Anything else, a CUDA
    device torch cannot see (no GPU, an index past the last) or a PyTorch device without PyTorch is a ValueError
    naming ``device``: torch's own errors (RuntimeError for ``"gpu"``, NotImplementedError for ``"meta"``,
    TypeError for ``False``) came from the middle of the run, past the CLI's error reporting."""
    import re

    accepted = f"accepted: {', '.join(DEVICES)} or a torch.device of type cpu or cuda"
    if device is None:
        return None
    if type(device).__name__ == "device" and type(device).__module__.startswith("torch"):
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"Harmony device={str(device)!r}: device type {device.type!r} is not supported "
                             f"({accepted})")
        name = "cpu" if device.type == "cpu" else str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
        if name == "none":
            return None
        if name not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
            raise ValueError(f"Harmony device={device!r} is not a device Harmony runs on ({accepted})")
    else:
        raise ValueError(f"Harmony device must be None or a device name, got device={device!r} ({accepted})")
    try:
        import torch
    except ImportError:
        if name == "auto":
            return None
        raise ValueError(f"Harmony device={name!r} runs on PyTorch, which is not installed; use device=None (the "
                         "exact CPU kernels)") from None
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else None
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"Harmony device={name!r}: torch sees no CUDA GPU on this machine (torch "
                             f"{torch.__version__}); use device=None (the exact CPU kernels), 'cpu' or 'auto'")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"Harmony device={name!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return name


@contextmanager
def _progress(verbose: bool):
    """With ``verbose``, Harmony's progress lines reach stderr (as harmonypy's own handler prints them) unless the
    caller's logging already takes them; the handler is removed afterwards."""
    if not verbose or logger.hasHandlers() and logger.getEffectiveLevel() <= logging.INFO:
        yield
        return
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the caller's handlers (set above INFO) would print each line a second time
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
#: squared-distance gap below which a cell's nearest k-means centroid is decided in harmonypy's exact float32 order
#: (float32 BLAS errs by ~1e-6 on unit vectors); cells farther apart get the same answer either way
_NEAR_TIE = 1e-4


class HarmonyWarning(UserWarning):
    """A Harmony run is valid but departs from harmonypy (see the module docstring)."""


# --------------------------------------------------------------------------------------------- inputs


def _label_codes(values, name: str) -> tuple[np.ndarray, list]:
    """Codes of a batch variable in sorted-label order (harmonypy's ``_factorize``; a categorical's used labels
    sorted by value too, not in its categories' order); missing labels raise."""
    import pandas as pd

    s = pd.Series(np.asarray(values, dtype=object) if not hasattr(values, "dtype") else values)
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    na = s.isna().to_numpy()
    if na.any():
        row = int(np.argmax(na))
        label = s.index[row] if hasattr(values, "index") else row
        raise ValueError(f"batch variable {name!r} is missing (NaN/None) in row {label!r}; label those rows or "
                         "drop them before Harmony")
    try:
        codes, uniques = pd.factorize(s, sort=True)
    except TypeError:
        uniques, codes = np.unique(s.astype(str).to_numpy(), return_inverse=True)
    return np.asarray(codes, dtype=np.int64), list(uniques)


def _numbers(values, name: str, dtype=np.float32) -> np.ndarray:
    try:
        a = np.asarray(values)
        if a.dtype.kind == "O":
            a = a.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number or a sequence of numbers") from err
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a number or a sequence of numbers, not {a.dtype}")
    if a.ndim > 1 and a.size == max(a.shape):
        a = a.reshape(-1)
    return a.astype(dtype)


def _per_batch(values, phi_n: np.ndarray, name: str, other: str | None = None, dtype=np.float32) -> np.ndarray:
    """One value per batch from one number, one per variable or one per batch (harmonypy's ``_per_batch``; float32
    as there, or ``dtype``)."""
    v = _numbers(values, name, dtype)
    if v.ndim == 0:
        return np.repeat(v, int(phi_n.sum()))
    if v.ndim == 1 and len(v) == len(phi_n):
        return np.repeat(v, phi_n)
    if v.ndim == 1 and len(v) == int(phi_n.sum()):
        return v
    forms = ["one number", f"one per batch variable ({len(phi_n)})", f"one per batch ({int(phi_n.sum())})"]
    forms += [other] if other else []
    raise ValueError(f"{name} must be {', '.join(forms[:-1])}, or {forms[-1]}; got shape {v.shape}")


def _column(meta_data, var: str):
    try:
        return meta_data[var]
    except (KeyError, IndexError, ValueError):
        cols = list(getattr(meta_data, "columns", getattr(meta_data, "keys", lambda: [])()))
        raise KeyError(f"batch variable {var!r} is not a column of meta_data (columns: {cols[:10]})") from None


# --------------------------------------------------------------------------------------------- result


class Harmony:
    """Result of :func:`run_harmony`, with harmonypy 2.1.0's attributes (cells in rows)."""

    def __init__(self, state: dict):
        self._s = state

    @property
    def Z_corr(self) -> np.ndarray:
        """Corrected embedding (N x d, float64)."""
        return self._s["z_corr"].astype(np.float64)

    @property
    def Z_orig(self) -> np.ndarray:
        """Original embedding (N x d, float64 of the float32 input)."""
        return self._s["z_orig"].astype(np.float64)

    @property
    def Z_cos(self) -> np.ndarray:
        """Corrected embedding with each cell scaled to unit length (N x d)."""
        z = self._s["z_corr"].copy()
        load_kernel("harmony").normalise_rows(z)
        return z.astype(np.float64)

    @property
    def R(self) -> np.ndarray:
        """Soft cluster assignments (N x K)."""
        return self._s["r"].astype(np.float64)

    @property
    def Y(self) -> np.ndarray:
        """Centroids (d x K, C-contiguous as harmonypy's)."""
        return np.ascontiguousarray(self._s["y"].T, dtype=np.float64)

    @property
    def K(self) -> int:
        return int(self._s["y"].shape[0])

    @property
    def sigma(self) -> np.ndarray:
        """The clusters' softmax widths (K, float64 of Harmony's float32; phenovec addition, which
        :class:`phenovec.batch.symphony.HarmonyReference` keeps)."""
        return self._s["sigma"].astype(np.float64)

    def reference(self):
        """This run as a Symphony reference (:class:`phenovec.batch.symphony.HarmonyReference`), onto which new
        profiles are mapped without running Harmony again (phenovec addition)."""
        from phenovec.batch.symphony import HarmonyReference

        return HarmonyReference.from_harmony(self)

    @property
    def objective_harmony(self) -> list[float]:
        return [float(v) for v in self._s["objective_harmony"]]

    @property
    def objective_kmeans(self) -> list[float]:
        return [float(v) for v in self._s["objective_kmeans"]]

    @property
    def kmeans_rounds(self) -> list[int]:
        return list(self._s["kmeans_rounds"])

    @property
    def initial_centroids(self) -> np.ndarray:
        """The centroids the run started from (K x d, before their normalisation; phenovec addition)."""
        return self._s["init_centroids"].astype(np.float64)

    def result(self) -> np.ndarray:
        return self.Z_corr


# --------------------------------------------------------------------------------------------- the algorithm


#: with ``ncores=0``, cells below which Harmony runs on one thread. On 2 idle cores (session 27, medians of 9) two
#: threads win from ~1,000 cells: 1,000 cells 0.044 s on 2 vs 0.048-0.051 s on 1, 2,000 0.095-0.10 vs 0.13 s, 5,000
#: 0.165 vs 0.20 s; at 500 they do not (0.024-0.025 vs 0.023 s). (Session 25 measured 5,000, before the short runs
#: were packed into the SIMD lanes and the ridge sums moved into Numba.) On a 2-core machine busy with other work a
#: parallel region can cost 10-40 ms, and one thread was faster up to ~50,000 cells (session 22): pass ``ncores=1``
#: there.
PARALLEL_MIN_CELLS = 1_000
#: cells from which the k-means screens' products are split over Harmony's threads (below, one product is cheaper
#: than starting the threads)
SPLIT_PRODUCT_MIN_CELLS = 5_000


@contextmanager
def _threads(ncores: int, n_cells: int):
    """Numba threads = ``ncores`` (0: all, or one below :data:`PARALLEL_MIN_CELLS` cells) and BLAS on one thread
    while Harmony runs: its BLAS products are small ones, which BLAS threads only slow down (measured 10-20x on 2
    busy cores)."""
    import numba
    # SciPy's own OpenBLAS, which Numba's np.dot calls (the ridge sums, the k-means screens), loaded before the limit:
    # threadpoolctl limits only the libraries loaded when it is entered, so a process's first run used to run those
    # products on 2 BLAS threads inside each Numba thread
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    limit = numba.config.NUMBA_NUM_THREADS
    if ncores and ncores > 0:
        threads = max(1, min(int(ncores), limit))
    else:
        threads = limit if n_cells >= PARALLEL_MIN_CELLS else 1
    try:
        numba.set_num_threads(threads)
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        numba.set_num_threads(before)


def _product(a: np.ndarray, b: np.ndarray, buffer: np.ndarray, pool: ThreadPoolExecutor | None) -> np.ndarray:
    """``a @ b`` (float32) for the k-means screens, into the first ``len(a)`` rows of ``buffer`` (reused: a fresh
    K x N result is mapped and faulted in anew each time, which doubled the product's time at 100k cells), ``b``'s
    columns (the cells) in contiguous shares on ``pool``'s threads (BLAS stays on one thread each: OpenBLAS' own
    threads spin after a product and slow the Numba loops that follow). The screens allow for BLAS's rounding, so
    the result does not depend on the split."""
    import numba

    out = buffer[: a.shape[0]]
    if pool is None:
        return np.matmul(a, b, out=out)
    cuts = np.linspace(0, b.shape[1], numba.get_num_threads() + 1).astype(np.int64)
    for f in [pool.submit(np.matmul, a, b[:, lo:hi], out=out[:, lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:])]:
        f.result()
    return out


@contextmanager
def _product_pool(n_cells: int):
    """The threads of :func:`_product` (Harmony's thread count, from :data:`SPLIT_PRODUCT_MIN_CELLS` cells), or
    None."""
    import numba

    threads = numba.get_num_threads()
    if threads <= 1 or n_cells < SPLIT_PRODUCT_MIN_CELLS:
        yield None
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="phenovec-harmony-product") as pool:
        yield pool


def harmony_initial_centroids(z_cos: np.ndarray, nclust: int, random_state: int = 0,
                              scratch: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
    """harmonypy 2.1.0's k-means initialisation on the unit-length embedding ``z_cos`` (N x d float32):
    returns ``(centroids K x d float32, generator state after it)``. ``scratch``: a contiguous float32 array of at
    least N x K entries to hold the screens' products (Harmony passes its distance matrix, which the first
    assignment overwrites: at 100k cells that is 40 MB this machine need not map afresh)."""
    kern = load_kernel("harmony")
    mt = kern.mt_seed(np.int64(int(random_state) & 0xFFFFFFFF))
    x = np.ascontiguousarray(z_cos, dtype=np.float32)
    n = x.shape[0]
    k = int(nclust)
    seeds = kern.kmeans_random_cells(mt, n, k)
    chosen = np.zeros(n, dtype=np.bool_)
    cells = np.empty(k, dtype=np.int64)
    step = max(1, (1 << 24) // max(n, 1))  # screening dots for at most 2**24 (cell, cluster) pairs at a time
    x_t = x.T
    if scratch is None:
        buffer = np.empty((k, n), np.float32)  # every seeding screen's product (at most k rows)
    else:
        if scratch.dtype != np.float32 or scratch.size < k * n or not scratch.flags.c_contiguous:
            raise ValueError(f"scratch must be a contiguous float32 array of at least {k} x {n} entries")
        buffer = scratch.reshape(-1)[: k * n].reshape(k, n)
    assignment = np.empty(n, np.int64)
    unsure = np.empty(n, np.bool_)
    # the draws and their logs a few rows at a time, in two reused buffers: fresh K x N arrays (40 MB each at 100k
    # cells) cost more in page faults than the draws themselves, and these stay in the caches
    draw_rows = min(k, max(1, (1 << 21) // max(n, 1)))
    draws = np.empty((draw_rows, n), np.float32)
    neg_logs = np.empty((draw_rows, n), np.float32)
    with _product_pool(n) as pool:
        for i in range(0, k, step):
            gt = _product(x[seeds[i: i + step]], x_t, buffer, pool)
            for s in range(0, gt.shape[0], draw_rows):
                rows = min(draw_rows, gt.shape[0] - s)
                u, neg_log_u = draws[:rows], neg_logs[:rows]
                kern.mt_uniform_rows(mt, u)  # the draws, in harmonypy's order
                with np.errstate(divide="ignore"):
                    np.log(u, out=neg_log_u)  # numpy's SIMD log, for screening only
                np.negative(neg_log_u, out=neg_log_u)
                kern.kmeans_seed_cells(x, seeds, gt[s: s + rows], u, neg_log_u, i + s, chosen, cells)
        y = x[cells].copy()
        for _ in range(10):
            # nearest means by BLAS (a task of cells at a time), then the exact float32 order for the cells whose
            # runner-up is close
            kern.nearest_candidates(x, y, np.einsum("ij,ij->i", y, y, dtype=np.float64), _NEAR_TIE, assignment, unsure)
            kern.assign_nearest_exact(x, y, np.flatnonzero(unsure), assignment)
            new, status = kern.lloyd_update(y, x, assignment)
            if status == 1:
                raise ValueError("Harmony's k-means initialisation failed (every cluster but one is empty); "
                                 "use fewer clusters (nclust) or pass init_centroids")
            if status == 2:
                warnings.warn("an empty k-means cluster was refilled with the last cell (harmonypy picks a random "
                              "cell with Armadillo's generator): results depart from harmonypy", HarmonyWarning,
                              stacklevel=3)
            y = new
    return y, mt


def run_harmony(
    data_mat,
    meta_data,
    vars_use,
    theta=None,
    lamb=None,
    sigma=0.1,
    nclust=None,
    tau=0,
    block_size=0.05,
    max_iter_harmony=10,
    max_iter_kmeans=4,
    epsilon_cluster=1e-3,
    epsilon_harmony=1e-2,
    alpha=0.2,
    batch_prop_cutoff=1e-5,
    verbose=False,
    random_state=0,
    ncores=0,
    init_centroids=None,
    device=None,
) -> Harmony:
    """Harmony batch correction: harmonypy 2.1.0's ``run_harmony`` (same arguments and defaults, except
    ``verbose=False``) with its numbers (module docstring).

    ``data_mat``: cells x PCs (or PCs x cells; a square one is read as PCs x cells, as harmonypy reads it) array or
    DataFrame (numeric columns); ``meta_data``: a DataFrame
    (or mapping of columns) with the batch variables ``vars_use`` (one name or a list). ``theta`` / ``lamb``: one
    number, one per variable or one per batch (levels in sorted order); ``lamb=None`` (or -1) estimates the
    penalty as ``alpha * E``. ``verbose=True`` prints the run's size and each iteration to stderr (through the
    ``phenovec.batch.harmony`` logger; a handler of the caller's takes them instead). ``random_state=None`` is
    seed 0, as in harmonypy. ``ncores``: Numba threads (0: all of them from :data:`PARALLEL_MIN_CELLS` cells on,
    else one). ``init_centroids``: K x d centroids to start from
    (phenovec addition; the random stream is advanced past harmonypy's initialisation draws first, so passing
    harmonypy's own initial centroids reproduces its run). ``device``: None or ``"none"`` (default: the exact CPU
    kernels), ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` or a ``torch.device`` (PyTorch,
    :mod:`phenovec.batch.harmony_torch`: close to harmonypy, not bit-identical), ``"auto"`` (CUDA where torch sees
    a GPU, else None); anything else is a ValueError before any work (:func:`harmony_device`).
    """
    device = harmony_device(device)  # before any work: a bad device is refused at once
    kern = load_kernel("harmony")
    if hasattr(data_mat, "select_dtypes"):
        data_mat = data_mat.select_dtypes(include=[np.number]).to_numpy()
    elif hasattr(data_mat, "values") and not isinstance(data_mat, np.ndarray):
        data_mat = data_mat.values
    data = np.asarray(data_mat)
    if data.ndim != 2:
        raise ValueError(f"data_mat must be a 2-D matrix, got shape {data.shape}")
    vars_use = [vars_use] if isinstance(vars_use, str) else list(vars_use)
    if not vars_use:
        raise ValueError("vars_use names no batch variable")
    columns = [_column(meta_data, v) for v in vars_use]
    n = len(columns[0])
    if data.shape[1] == n:  # harmonypy's order: a square matrix is PCs x cells
        z = data.T
    elif data.shape[0] == n:
        z = data
    else:
        raise ValueError(f"data_mat has shape {data.shape}, but meta_data has {n} cells. One dimension of data_mat "
                         "must match the number of cells.")
    if data.dtype.kind == "f" and data.dtype.itemsize > 4:
        require_finite(z, "Harmony data_mat")
        big = np.abs(z) > np.finfo(np.float32).max
        if big.any():
            r, c = np.argwhere(big)[0]
            raise ValueError(f"Harmony data_mat: value {float(z[r, c])!r} in row {int(r)}, column {int(c)} is beyond "
                             "float32's range (Harmony runs in float32, as harmonypy); rescale the coordinates")
    z_orig = np.ascontiguousarray(z, dtype=np.float32)
    require_finite(z_orig, "Harmony data_mat")
    d = z_orig.shape[1]
    if nclust is None:
        nclust = int(min(round(n / 30.0), 100))
    nclust = int(nclust)
    if nclust < 1:
        raise ValueError(f"nclust must be at least 1, got {nclust}")
    if nclust > n:
        raise ValueError(f"nclust = {nclust} clusters for {n} cells: Harmony needs at least as many cells as clusters")

    cell_batches = np.empty((n, len(vars_use)), dtype=np.int64)
    phi_n = np.empty(len(vars_use), dtype=np.int64)
    offset = 0
    labels = []
    for c, (var, col) in enumerate(zip(vars_use, columns)):
        codes, uniques = _label_codes(col, var)
        if len(codes) != n:
            raise ValueError(f"batch variable {var!r} has {len(codes)} values, {vars_use[0]!r} has {n}")
        counts = np.bincount(codes, minlength=len(uniques))
        if (counts < 2).any():
            one = uniques[int(np.argmax(counts < 2))]
            raise ValueError(f"batch variable {var!r}: batch {one!r} has {int(counts.min())} row; Harmony needs at "
                             "least 2 rows per batch (merge or drop it)")
        cell_batches[:, c] = codes + offset
        phi_n[c] = len(uniques)
        offset += len(uniques)
        labels.append(uniques)
    n_batches = int(phi_n.sum())
    cov_bounds = np.cumsum(phi_n).astype(np.int64)

    sigma_v = np.asarray(sigma, dtype=np.float64)
    if sigma_v.ndim == 0:
        sigma_v = np.repeat(sigma_v, nclust)
    if sigma_v.shape != (nclust,):
        raise ValueError(f"sigma must be one number or one per cluster ({nclust}), got shape {sigma_v.shape}")
    bad = ~(np.isfinite(sigma_v) & (sigma_v.astype(np.float32) > 0))
    if bad.any():
        q = int(np.argmax(bad))
        raise ValueError(f"sigma must be finite and positive (as a float32), got {float(sigma_v[q])!r} for cluster {q}")
    theta_v = _per_batch(2.0 if theta is None else theta, phi_n, "theta")
    lamb_v = None if lamb is None else _numbers(lamb, "lamb")
    estimate = lamb_v is None or (lamb_v.size == 1 and lamb_v.reshape(-1)[0] == -1)
    if not estimate:
        if lamb_v.ndim != 1 or len(lamb_v) != n_batches + 1:
            other = f"the intercept's penalty and then one per batch ({n_batches + 1})"
            lamb_v = np.insert(_per_batch(lamb_v, phi_n, "lamb", other), 0, 0)
        if not np.all(np.isfinite(lamb_v)) or np.any(lamb_v < 0):
            raise ValueError("lamb must be finite and not negative")
    elif not _real(alpha, "alpha") >= 0:
        raise ValueError("alpha must be finite and not negative")
    n_b = np.bincount(cell_batches.ravel(), minlength=n_batches).astype(np.float32)
    pr_b = (n_b / n).astype(np.float32)
    if tau > 0:
        theta_v = theta_v * (1 - np.exp(-(n_b / (nclust * tau)) ** 2))
    theta_v = theta_v.astype(np.float32)
    sigma32 = sigma_v.astype(np.float32)
    lamb32 = None if estimate else lamb_v.astype(np.float32)

    block_size = _real(block_size, "block_size")
    if not 0 < np.float32(block_size):
        raise ValueError(f"block_size must be above 0 (the fraction of the cells updated at a time), got "
                         f"{block_size!r}")
    numbers = [_F32(_real(v, name)) for v, name in ((alpha, "alpha"), (epsilon_cluster, "epsilon_cluster"),
                                                    (epsilon_harmony, "epsilon_harmony"),
                                                    (batch_prop_cutoff, "batch_prop_cutoff"))]
    alpha32, eps_cluster, eps_harmony, cutoff = numbers
    seed = 0 if random_state is None else int(random_state)  # harmonypy: None is seed 0
    with _progress(bool(verbose)):
        if verbose:
            logger.info("Harmony: %d cells x %d dimensions, %d clusters, batch variables %s (%s batches), %s", n, d,
                        nclust, vars_use, "+".join(str(int(p)) for p in phi_n),
                        "exact CPU kernels" if device is None else f"PyTorch on {device}")
        if device is not None:
            from phenovec.batch.harmony_torch import harmonize_torch

            with _threads(ncores, n):  # the initialisation and the ridge systems stay on the CPU
                state = harmonize_torch(
                    device, z_orig, cell_batches, cov_bounds, phi_n, pr_b, sigma32, theta_v, lamb32, alpha32, nclust,
                    block_size, int(max_iter_harmony), int(max_iter_kmeans), eps_cluster, eps_harmony, cutoff, seed,
                    init_centroids, bool(verbose))
        else:
            with _threads(ncores, n):
                state = _on_stack_for(
                    nclust, _harmonize,
                    kern, z_orig, cell_batches, cov_bounds, phi_n, pr_b, sigma32, theta_v, lamb32, alpha32, nclust,
                    block_size, int(max_iter_harmony), int(max_iter_kmeans), eps_cluster, eps_harmony, cutoff, seed,
                    init_centroids, bool(verbose),
                )
    return Harmony({**state, "labels": labels, "vars_use": vars_use, "sigma": sigma32})


#: lead runs (a block's cells of one batch of the first variable) shorter than this on average are reassigned packed
#: 16 cells to a SIMD step whatever their batch (``kernels/harmony.py: update_assignments``; same bits either way).
#: Measured on 2 idle cores: the passes at 2,000 cells (runs of ~5) 70 -> 38 ms, at 10,000 (~25) 101 -> 87-95 ms; at
#: 100,000 (~250) packing was 5-10 % slower (the runs' sums then take a second pass over the block)
PACK_BELOW_RUN = 64
#: clusters up to which the assignment kernels' scratch (``kernels/harmony.py: _reassign_run``, ``_reassign_lanes``;
#: 128 bytes per cluster on the stack) runs on the calling thread; above, Harmony runs in a thread with a stack sized
#: for it
STACK_CLUSTERS = 1024
#: clusters up to which a block's runs are reassigned on the Numba worker threads, whose stacks may be small (the
#: scratch is then at most 32 KiB); above, the pass runs on the calling thread
WORKER_STACK_CLUSTERS = 256


def _on_stack_for(nclust: int, fn, *args):
    """``fn(*args)``, in a helper thread with a large enough stack when ``nclust`` > :data:`STACK_CLUSTERS`."""
    if nclust <= STACK_CLUSTERS:
        return fn(*args)
    import threading

    out: dict = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as err:  # re-raised in the caller
            out["error"] = err

    before = threading.stack_size()
    threading.stack_size(max(before, 32 << 20) + 256 * nclust)
    try:
        worker = threading.Thread(target=target, name="phenovec-harmony")
        worker.start()
    finally:
        threading.stack_size(before)
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _check(flags: int, stage: str) -> None:
    if flags & 1:
        raise FloatingPointError(f"Harmony numerical error during {stage}: assignment normalizers must be finite and "
                                 "positive (sigma too small for the distances?)")
    if flags & 2:
        raise FloatingPointError(f"Harmony numerical error during {stage}: assignment columns must sum to one")


def _finite_objective(value, stage: str):
    """harmonypy's check after each objective: a non-finite one (sigma so small that the logits overflow) stops
    the run."""
    if not np.isfinite(value):
        raise FloatingPointError(f"Harmony numerical error during {stage}: objectives must be finite (got {value}; "
                                 "sigma too small for the distances?)")
    return value


def _harmonize(kern, z_orig, cell_batches, cov_bounds, phi_n, pr_b, sigma, theta, lamb, alpha, nclust, block_size,
               max_iter_harmony, max_iter_kmeans, eps_kmeans, eps_harmony, cutoff, random_state, init_centroids,
               verbose):
    import numba

    n, d = z_orig.shape
    k = nclust
    n_batches = int(phi_n.sum())
    z_corr = z_orig.copy()
    kern.normalise_rows(z_corr)
    dist = np.empty((n, k), np.float32)
    y, mt = start_centroids(z_corr, k, random_state, init_centroids, scratch=dist)
    init = y.copy()
    kern.normalise_rows(y)

    r = np.empty((n, k), np.float32)
    o = np.zeros((n_batches, k), np.float32)
    e = np.zeros((n_batches, k), np.float32)
    cells, run_group, run_begin, run_end = kern.batch_runs(cell_batches, cov_bounds, n_batches)

    def assign(stage):
        _check(int(kern.assign_without_diversity(z_corr, y, sigma, dist, r) > 0), stage)
        kern.rebuild_o_e(r, pr_b, cells, run_group, run_begin, run_end, o, e)

    assign("initialization")
    err, ent = kern.init_objective_terms(r, dist, sigma)
    obj_kmeans = [_finite_objective(kern.objective(err, ent, o, e, theta, sigma, n)[0], "initialization")]
    obj_harmony = [obj_kmeans[-1]]
    rounds = []

    n_blocks = int(math.ceil(1.0 / float(np.float32(block_size))))
    cells_per_block = max(1, int(np.float32(n) * np.float32(block_size)))
    by_combination = kern.combination_order(cell_batches)
    ridge = _Ridge(z_orig, cell_batches, by_combination, phi_n, lamb, alpha, cutoff)
    window = 3
    # a block's lead runs on the Numba threads (same values): each worker keeps the assignment scratch (128 bytes per
    # cluster) on its own stack, which may be small, so only up to WORKER_STACK_CLUSTERS clusters (32 KiB)
    parallel_runs = numba.get_num_threads() > 1 and k <= WORKER_STACK_CLUSTERS
    for it in range(1, max_iter_harmony + 1):
        if verbose:
            logger.info("Harmony iteration %d of %d", it, max_iter_harmony)
        if len(obj_harmony) > 1:
            kern.normalise_rows(z_corr)
            assign("cluster initialization")
        done = 0
        for i in range(max_iter_kmeans):
            order = kern.mt_shuffled_range(mt, n)
            err, ent, flags = kern.update_assignments(order, r, dist, o, e, pr_b, sigma, theta, cell_batches,
                                                      cov_bounds, n_blocks, cells_per_block, parallel_runs,
                                                      PACK_BELOW_RUN)
            _check(int(flags), "assignment update")
            obj_kmeans.append(_finite_objective(kern.objective(err, ent, o, e, theta, sigma, n)[0],
                                                "assignment update"))
            done = i + 1
            if i > window and _kmeans_converged(obj_kmeans, window, eps_kmeans):
                break
        rounds.append(done)
        obj_harmony.append(obj_kmeans[-1])
        m, used = ridge.solve(r, o, e, y)
        kern.apply_corrections(z_orig, r, m, used, cell_batches, by_combination, z_corr)
        kern.normalise_rows(y)
        if _harmony_converged(obj_harmony[-2], obj_harmony[-1], eps_harmony):
            if verbose:
                logger.info("Harmony converged after %d iteration%s", it, "s" if it > 1 else "")
            break
    if not np.isfinite(z_corr).all():
        raise FloatingPointError("Harmony numerical error: corrected coordinates must be finite")
    return {"z_corr": z_corr, "z_orig": z_orig, "r": r, "y": y, "objective_harmony": obj_harmony,
            "objective_kmeans": obj_kmeans, "kmeans_rounds": rounds, "init_centroids": init}


def start_centroids(z_cos: np.ndarray, k: int, random_state: int, init_centroids=None, scratch=None):
    """(K x d float32 centroids, generator state): harmonypy's initialisation (``scratch``: see
    :func:`harmony_initial_centroids`), or ``init_centroids`` with the generator advanced past the draws
    harmonypy's initialisation makes."""
    kern = load_kernel("harmony")
    n, d = z_cos.shape
    if init_centroids is None:
        return harmony_initial_centroids(z_cos, k, random_state, scratch)
    y = np.array(init_centroids, dtype=np.float32)
    if y.shape != (k, d):
        if y.shape == (d, k):
            y = np.ascontiguousarray(y.T)
        else:
            raise ValueError(f"init_centroids must be nclust x d = {k} x {d}, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("init_centroids must be finite")
    mt = kern.mt_seed(np.int64(random_state & 0xFFFFFFFF))
    kern.mt_uniform01(mt, np.empty(k + k * n, np.float32))  # the draws harmonypy's initialisation makes
    return y, mt


def _kmeans_converged(obj: list, window: int, eps) -> bool:
    if len(obj) <= window + 1:
        return False
    old = _F32(0)
    new = _F32(0)
    for i in range(window):
        old = _F32(old + obj[-2 - i])
        new = _F32(new + obj[-1 - i])
    return bool(_F32(abs(_F32(old - new))) / _F32(abs(old)) < eps)


def _harmony_converged(old, new, eps) -> bool:
    old, new = _F32(old), _F32(new)
    if not (np.isfinite(old) and np.isfinite(new) and np.isfinite(eps)):
        return False
    if old == 0:
        return bool(new == 0)
    delta = _F32(_F32(old - new) / _F32(abs(old)))
    return bool(delta >= 0 and delta < eps)


#: the ridge sums skip the per-combination tensor where combinations average fewer cells than this (measured: the
#: fused kernel 1.3-1.8x faster at 1k-10k cells with 480 combinations, even at 30k, 1.3x slower at 50k-100k)
FUSED_BELOW_CELLS = 64
#: cluster shares of the fused ridge sums: fixed, so that their rounding does not depend on the thread count
FUSED_SHARES = 2


class _Ridge:
    """The per-cluster ridge regressions of harmonypy 2.1.0's ``moe_correct_ridge``.

    Every sum the systems need (each batch's R-weighted coordinate sums and totals, the intercept's, the overlap
    of batches of different variables) is a sum over the cells of one *combination* of batches (one batch per
    variable), so the cells are sorted by combination once and each iteration computes, per combination g,
    ``S_g = R_g^T [Z_g, 1]`` (N K (d+1) multiply-adds in all, whatever the number of variables, one ``dgemm`` per
    combination); the per-batch sums are then sums of the S_g. The clusters' systems are assembled, checked and
    solved in one Numba kernel, cluster by cluster, by harmonypy's method (``ridge_systems``: the diagonal
    block of the covariate with the most kept batches eliminated first, the rest factored by Cholesky)."""

    def __init__(self, z_orig, cell_batches, by_combination, phi_n, lamb, alpha, cutoff):
        self.n, self.d = z_orig.shape
        self.n_cov = cell_batches.shape[1]
        self.n_batches = int(phi_n.sum())
        self.phi_n = phi_n
        self.cov_first = np.concatenate([[0], np.cumsum(phi_n)[:-1]]).astype(np.int64)
        self.batch_cov = np.repeat(np.arange(self.n_cov), phi_n).astype(np.int64)
        self.lamb = lamb
        self.alpha = alpha
        self.cutoff = cutoff
        self.sizes = np.bincount(cell_batches.ravel(), minlength=self.n_batches).astype(np.float32)
        self.order = by_combination
        sorted_batches = cell_batches[by_combination]
        change = np.ones(self.n, dtype=bool)
        change[1:] = (sorted_batches[1:] != sorted_batches[:-1]).any(axis=1)
        self.starts = np.flatnonzero(change)
        self.ends = np.append(self.starts[1:], self.n)
        self.combos = sorted_batches[self.starts]  # G x n_cov batch indices
        g = len(self.starts)
        self.h = np.zeros((g, self.n_batches))  # combination -> batch indicator
        self.h[np.arange(g)[:, None], self.combos] = 1.0
        # the original embedding in combination order with a column of ones, in double: S_g = R_g^T [Z_g, 1] is one
        # BLAS product per combination
        self.z_aug = np.empty((self.n, self.d + 1))
        self.z_aug[:, :self.d] = z_orig[by_combination]
        self.z_aug[:, self.d] = 1.0

    def keeps(self, o):
        avg = o / self.sizes[:, None]  # float32, B x K, as harmonypy
        above = avg > self.cutoff
        keep = np.zeros_like(above)
        active = np.zeros(o.shape[1], dtype=bool)
        for c in range(self.n_cov):
            lo, hi = self.cov_first[c], self.cov_first[c] + self.phi_n[c]
            ok = above[lo:hi].sum(axis=0) > 1
            keep[lo:hi] = above[lo:hi] & ok[None, :]
            active |= ok
        keep &= active[None, :]
        return keep, active

    def solve(self, r, o, e, y):
        """Solve every active cluster's system; set ``y``'s rows to the intercepts; return ``(M, used)`` with
        ``M[b, k]`` the correction direction of batch b in cluster k (float32)."""
        return self.solve_sums(lambda counted: self.weighted_sums(r, counted), o, e, y, r.shape[1])

    def weighted_sums(self, r, counted):
        """``(rz, weighted, totals)``: each batch's R-weighted coordinate sums and total (B x K x (d+1)), the
        intercept's over the cells ``counted`` in each cluster (K x (d+1)), each combination's total weight
        (G x K). Where combinations average under :data:`FUSED_BELOW_CELLS` cells the combination sums are never
        stored (``fused_batch_sums``, the clusters in :data:`FUSED_SHARES` shares on the threads); else they are
        (:meth:`combination_sums`) and summed per batch. The two ways differ at most in the last bits of these
        doubles."""
        if self.n >= FUSED_BELOW_CELLS * len(self.starts):
            return self.batch_sums_of(self.combination_sums(r), counted)
        k = r.shape[1]
        rz = np.empty((self.n_batches, k, self.d + 1))
        weighted = np.empty((k, self.d + 1))
        totals = np.empty((len(self.starts), k))
        load_kernel("harmony").fused_batch_sums(r, self.z_aug, self.order, self.starts, self.ends, self.combos,
                                                counted, FUSED_SHARES, rz, weighted, totals)
        return rz, weighted, totals

    def batch_sums_of(self, sums, counted):
        """:meth:`weighted_sums` from the combination sums ``sums`` (G x K x (d+1))."""
        k = sums.shape[1]
        rz = np.empty((self.n_batches, k, self.d + 1))
        weighted = np.empty((k, self.d + 1))
        load_kernel("harmony").batch_sums(sums, self.combos, counted, rz, weighted)
        return rz, weighted, np.ascontiguousarray(sums[:, :, self.d])

    def combination_sums(self, r) -> np.ndarray:
        """``S[g, k] = sum over combination g's cells of R[j, k] [z_j, 1]`` (G x K x (d+1), double: a ``dgemm`` per
        combination, on Harmony's threads)."""
        out = np.empty((len(self.starts), r.shape[1], self.d + 1))
        load_kernel("harmony").combination_sums(r, self.z_aug, self.order, self.starts, self.ends, out)
        return out

    def solve_sums(self, weighted_sums, o, e, y, k: int):
        """:meth:`solve` from ``weighted_sums(counted)`` (:meth:`weighted_sums`' result; called only when some
        cluster is corrected)."""
        d = self.d
        keep, active = self.keeps(o)
        used = keep.any(axis=1)
        m = np.zeros((self.n_batches, k, d), np.float32)
        if not active.any():
            return m, used
        kern = load_kernel("harmony")
        # cells counted in the intercept: those with any batch kept in the cluster (once each; several variables)
        counted = (self.h @ keep) > 0  # G x K
        rz, weighted, totals = weighted_sums(counted)
        ks = np.flatnonzero(active)
        if self.n_cov > 1:
            cooc = kern.cooccurrence(totals, self.combos, self.n_batches)
        else:
            cooc = np.empty((0, 0, 0))  # one variable: the batches share no cells
        if self.lamb is None:  # estimated penalties
            pen, lamb0 = (self.alpha * e).astype(np.float64), 0.0
        else:
            pen, lamb0 = np.broadcast_to(self.lamb[1:].astype(np.float64)[:, None], e.shape), float(self.lamb[0])
        bad = np.zeros(len(ks), np.int64)
        kern.ridge_systems(ks, keep, self.batch_cov, rz, np.ascontiguousarray(weighted[:, d]),
                           np.ascontiguousarray(weighted[:, :d]), cooc,
                           np.ascontiguousarray(pen), lamb0, m, y, bad)
        if bad.any():
            raise FloatingPointError(f"Harmony ridge correction, cluster {int(ks[np.argmax(bad)])}: the ridge system "
                                     "is singular; lamb (or alpha) is zero or too small")
        return m, used

