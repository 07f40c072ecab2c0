"""Apply an affine whitening ``((X - mean) / scale) @ W`` to row chunks, CPU and CUDA.

Loaded by path through ``phenovec.process.kernel_loader.load_kernel("whiten")`` (this folder is shipped
as plain files, not as a package). Used by ``phenovec.process.spherize.Spherizer.transform``.

``mean`` and ``scale`` may be ``None`` (skip that step), which reproduces pycytominer 1.7.1's
``Spherize.transform`` operation for operation: ``X - mean_`` (StandardScaler centering), then
``/ scale_`` (the ``-cor`` methods), then ``X_t @ W``. The output is float64 whatever the input dtype.

Paths:

- ``device="cpu"``: numpy/BLAS ``dgemm`` per chunk of ``chunk_rows`` rows (bounded temporary memory:
  one float64 chunk). Row results do not depend on the chunking except through BLAS blocking, so
  they equal the one-shot peer computation to a few ulps (bitwise in the tests run here).
- ``device="cuda"``: a Numba CUDA tiled matmul: each TILE x TILE thread block computes a TILE x TILE
  output tile, staging ``(x - mean) / scale`` (float64, the affine step fused into the load) and ``W``
  tiles in shared memory; float64 accumulation. Float32 input is transferred as float32.

  **Tested only under the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1) on a machine without a GPU**:
  the test suite compares it with the CPU path to 1e-10 on small random data. It has not been run or
  timed on real CUDA hardware.
"""
from __future__ import annotations

import functools
import math

import numpy as np

TILE = 16


def _prep(x, mean, scale, w):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    w = np.ascontiguousarray(w, dtype=np.float64)
    d = x.shape[1]
    if w.ndim != 2 or w.shape[0] != d:
        raise ValueError(f"W must be {d} x k for X with {d} columns, got shape {w.shape}")
    mean = None if mean is None else np.ascontiguousarray(mean, dtype=np.float64).reshape(-1)
    scale = None if scale is None else np.ascontiguousarray(scale, dtype=np.float64).reshape(-1)
    for name, v in (("mean", mean), ("scale", scale)):
        if v is not None and v.shape[0] != d:
            raise ValueError(f"{name} must have {d} entries, got {v.shape[0]}")
    return x, mean, scale, w


def whiten_cpu(x, mean, scale, w, chunk_rows: int = 65536, out: np.ndarray | None = None) -> np.ndarray:
    """``((x - mean) / scale) @ w`` with numpy/BLAS, ``chunk_rows`` rows at a time (float64 output)."""
    x, mean, scale, w = _prep(x, mean, scale, w)
    n = x.shape[0]
    if out is None:
        out = np.empty((n, w.shape[1]), dtype=np.float64)
    step = max(1, int(chunk_rows))
    for i in range(0, n, step):
        a = x[i : i + step]
        if mean is not None:
            a = np.subtract(a, mean, dtype=np.float64)
        elif a.dtype != np.float64:
            a = a.astype(np.float64)
        if scale is not None:
            a = a / scale if mean is None else np.divide(a, scale, out=a)
        np.matmul(a, w, out=out[i : i + step])
    return out


@functools.lru_cache(maxsize=None)
def _cuda_kernel(tile: int):
    """Compile (lazily, once per tile size) the CUDA kernel; imports numba only here."""
    # module globals, not closure variables: the CUDA simulator swaps the kernel's global `cuda`
    global cuda, float64
    from numba import cuda, float64

    @cuda.jit
    def _whiten_kernel(x, mean, scale, w, out):
        n = x.shape[0]
        d = x.shape[1]
        k_out = w.shape[1]
        ty = cuda.threadIdx.y
        tx = cuda.threadIdx.x
        row = cuda.blockIdx.x * tile + ty  # rows on grid.x (up to 2**31 - 1 blocks; grid.y stops at 65,535)
        col = cuda.blockIdx.y * tile + tx
        sa = cuda.shared.array(shape=(tile, tile), dtype=float64)
        sw = cuda.shared.array(shape=(tile, tile), dtype=float64)
        acc = 0.0
        for k0 in range(0, d, tile):
            ka = k0 + tx  # feature loaded into sa by this thread
            if row < n and ka < d:
                sa[ty, tx] = (float64(x[row, ka]) - mean[ka]) / scale[ka]
            else:
                sa[ty, tx] = 0.0
            kw = k0 + ty  # W row loaded into sw by this thread
            if kw < d and col < k_out:
                sw[ty, tx] = w[kw, col]
            else:
                sw[ty, tx] = 0.0
            cuda.syncthreads()
            for k in range(tile):
                acc += sa[ty, k] * sw[k, tx]
            cuda.syncthreads()
        if row < n and col < k_out:
            out[row, col] = acc

    return _whiten_kernel


def whiten_cuda(x, mean, scale, w, chunk_rows: int = 65536, out: np.ndarray | None = None, tile: int = TILE) -> np.ndarray:
    """``((x - mean) / scale) @ w`` with the Numba CUDA tiled kernel, ``chunk_rows`` rows per launch.

    ``mean=None`` is sent as zeros and ``scale=None`` as ones (``(x - 0) / 1 == x`` exactly).
    Tested only under the Numba CUDA simulator here (no GPU on the development machine).
    """
    from numba import cuda

    x, mean, scale, w = _prep(x, mean, scale, w)
    n, d = x.shape
    k_out = w.shape[1]
    if out is None:
        out = np.empty((n, k_out), dtype=np.float64)
    kernel = _cuda_kernel(int(tile))
    dw = cuda.to_device(w)
    dmean = cuda.to_device(np.zeros(d) if mean is None else mean)
    dscale = cuda.to_device(np.ones(d) if scale is None else scale)
    step = max(1, int(chunk_rows))
    for i in range(0, n, step):
        xc = np.ascontiguousarray(x[i : i + step])
        m = xc.shape[0]
        dx = cuda.to_device(xc)
        dout = cuda.device_array((m, k_out), dtype=np.float64)
        grid = (math.ceil(m / tile), math.ceil(k_out / tile))
        kernel[grid, (tile, tile)](dx, dmean, dscale, dw, dout)
        out[i : i + m] = dout.copy_to_host()
    return out


def whiten(x, mean, scale, w, device: str = "cpu", chunk_rows: int = 65536, out: np.ndarray | None = None) -> np.ndarray:
    """Dispatch to :func:`whiten_cpu` or :func:`whiten_cuda` (``device`` is ``"cpu"`` or ``"cuda"``)."""
    if device == "cuda":
        return whiten_cuda(x, mean, scale, w, chunk_rows=chunk_rows, out=out)
    if device == "cpu":
        return whiten_cpu(x, mean, scale, w, chunk_rows=chunk_rows, out=out)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
