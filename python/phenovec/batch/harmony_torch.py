"""Harmony on a PyTorch device (a GPU, or torch's CPU): ``run_harmony(..., device="cuda")``.

The algorithm of :mod:`phenovec.batch.harmony` (harmonypy 2.1.0's), step for step, with the cell-by-cell loops
replaced by tensor operations on the device:

* the same start: the rows normalised on the host by the CPU path's kernel (harmonypy's ``scale_to_unit_length``;
  zero rows stay zero), harmonypy's initial centroids from them, and the same ``mt19937`` cell orders (drawn on the
  CPU, a few bytes per cell per pass);
* clustering on the device: distances ``2 (1 - z.y)`` as one matrix product, soft assignments by softmax, and each
  pass of the diversity-penalised update block by block (a block's cells are reassigned together with O and E
  frozen, as harmonypy does, so a block is a handful of tensor operations; blocks stay sequential);
* the ridge correction: the R-weighted sums per batch, the intercept's and per combination of batches on the
  device, in float64 as harmonypy's are, as accumulations over the cells a chunk at a time (no Python loop over the
  combinations: plate x well has thousands), then the same small per-cluster systems as the CPU path
  (:class:`phenovec.batch.harmony._Ridge`, on the CPU: at most K systems of size B + 1), and the correction applied
  on the device, cluster by cluster with the batches gathered per variable.

Floating-point rounding differs from harmonypy's C++ (other summation orders, the device's ``exp``), so the result
is close to harmonypy's (tests: ``Z_corr`` within 2e-6 relative and the same number of iterations on the CPU
device) but not bit-identical; the Numba path (``device=None``) stays the exact one. The float32 matmuls run in
IEEE float32 whatever the caller's PyTorch settings (no TF32 / bf16 shortcuts; the settings are restored after).
Device memory: the N x d embedding (original, corrected and normalised), the N x K assignments and distances,
the N x C batch codes (C batch variables; no N x B one-hot), the B x K x (d+1) ridge sums and a chunk of the
ridge's cells (:data:`RIDGE_CHUNK_VALUES`); never N x N or N x B. Host memory as the CPU path's ridge
(:class:`phenovec.batch.harmony._Ridge`).
"""
from __future__ import annotations

import math

import numpy as np

from phenovec.process.kernel_loader import load_kernel

#: the ridge sums' chunk of cells, in R-weighted coordinates (cells x K x (d+1) doubles): 2^23 = 64 MB of device
#: memory, whatever N (the N x K x (d+1) products at once would be 40 GB at 1M cells, 100 clusters, 50 PCs)
RIDGE_CHUNK_VALUES = 1 << 23


def _device(name: str):
    """The torch device of ``name`` (already checked by :func:`phenovec.batch.harmony.harmony_device`; checked again
    for direct callers)."""
    import torch

    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Harmony device={name!r}: torch sees no CUDA GPU on this machine "
                         f"(torch {torch.__version__}); use device=None (the CPU kernels) or 'auto'")
    return dev


def _normalise_rows(t):
    """Rows of ``t`` scaled to unit L2 norm as ``kern.normalise_rows`` scales them (harmonypy's
    ``scale_to_unit_length``: the norm summed in double and rounded to float32; zero rows stay zero), on the
    device."""
    import torch

    nrm = t.double().square().sum(1).sqrt().float()
    return torch.where(nrm[:, None] > 0, t / torch.where(nrm > 0, nrm, 1.0)[:, None], t)


def harmonize_torch(*args, **kwargs) -> dict:
    """The state dict of :func:`phenovec.batch.harmony._harmonize`, computed with torch on a device
    (:func:`_harmonize_torch`'s arguments), its float32 matmuls in IEEE float32 whatever the caller set: a training
    script's ``torch.set_float32_matmul_precision("high")`` or ``torch.backends.cuda.matmul.allow_tf32 = True``
    would run them with TF32 inputs on a GPU (10-bit significands; 3e-3 relative off harmonypy in an emulation), or
    bf16 ones on a CPU with AMX. The caller's settings are restored afterwards
    (:func:`phenovec.evaluate.precision.float32_matmul_flags`)."""
    from phenovec.evaluate.precision import float32_matmul_flags

    with float32_matmul_flags("ieee", "ieee"):
        return _harmonize_torch(*args, **kwargs)


def _harmonize_torch(device, z_orig, cell_batches, cov_bounds, phi_n, pr_b, sigma, theta, lamb, alpha, nclust,
                     block_size, max_iter_harmony, max_iter_kmeans, eps_kmeans, eps_harmony, cutoff, random_state,
                     init_centroids, verbose: bool = False) -> dict:
    """:func:`harmonize_torch`'s work (float32 matmul settings already forced)."""
    import torch

    from phenovec.batch.harmony import (_F32, _check, _finite_objective, _harmony_converged, _kmeans_converged,
                                        _Ridge, logger, start_centroids)

    kern = load_kernel("harmony")
    dev = _device(device)
    f32 = torch.float32
    n, d = z_orig.shape
    k = nclust
    n_batches = int(phi_n.sum())

    z0 = torch.from_numpy(z_orig).to(dev)
    # the start on the host, as the CPU path makes it: the same normalised rows (torch's normalize divides by
    # max(norm, 1e-12) in other rounding; the k-means initialisation's choices hang on the last bits), the same
    # centroids, normalised the same way
    z_cos = z_orig.copy()
    kern.normalise_rows(z_cos)
    y_np, mt = start_centroids(z_cos, k, random_state, init_centroids)
    init = y_np.copy()
    y_np = np.ascontiguousarray(y_np, dtype=np.float32)
    kern.normalise_rows(y_np)
    zc = torch.from_numpy(z_cos).to(dev)
    y = torch.from_numpy(y_np).to(dev)
    # each cell's batch per variable (N x C codes, not an N x B one-hot: 8 GB at 1M cells x 2,000 plates): O's sums
    # are per-variable accumulations into the batches' rows, the penalty a per-variable gather
    cb = torch.from_numpy(cell_batches).to(dev)
    n_cov = cb.shape[1]
    sig = torch.from_numpy(sigma).to(dev)
    sig64 = sig.double()
    th = torch.from_numpy(theta).to(dev)
    prb = torch.from_numpy(pr_b).to(dev)
    o = torch.zeros((n_batches, k), dtype=f32, device=dev)
    e = torch.zeros_like(o)

    def assign(stage):
        nonlocal dist, r
        dist = 2.0 * (1.0 - zc @ y.T)
        r = torch.softmax(-dist / sig, dim=1)
        if not torch.isfinite(r).all():
            _check(1, stage)
        o.copy_(batch_sums(cb, r))
        e.copy_(prb[:, None] * r.sum(0)[None, :])

    def batch_sums(codes, rows):
        """``Phi^T rows`` (B x K) for the cells whose batch codes are ``codes``: each variable's rows accumulated
        into their batches' (``index_put_`` with accumulate; PyTorch documents it as deterministic on the CPU only:
        on CUDA the last bits of these float32 sums may differ between runs, not checked on a GPU yet)."""
        out = torch.zeros((n_batches, rows.shape[1]), dtype=rows.dtype, device=dev)
        for c in range(n_cov):
            out.index_put_((codes[:, c],), rows, accumulate=True)
        return out

    def objective(error, entropy):
        cross = (th[:, None] * sig[None, :] * o * torch.log((o + e + 1.0) / (2.0 * e + 1.0))).double().sum()
        return float(_F32((error + entropy + float(cross)) * 2000.0 / n))

    def entropy_of(r_rows):
        return float((sig64 * torch.xlogy(r_rows, r_rows).double()).sum())

    dist = r = None
    assign("initialization")
    obj_kmeans = [_finite_objective(objective(float((r.double() * dist.double()).sum()), entropy_of(r)),
                                    "initialization")]
    obj_harmony = [obj_kmeans[-1]]
    rounds = []

    n_blocks = int(math.ceil(1.0 / float(np.float32(block_size))))
    per_block = max(1, int(np.float32(n) * np.float32(block_size)))
    ridge = _Ridge(z_orig, cell_batches, kern.combination_order(cell_batches), phi_n, lamb, alpha, cutoff)
    n_combos = len(ridge.starts)
    combination = np.empty(n, np.int64)  # each cell's combination of batches (the ridge's order)
    combination[ridge.order] = np.repeat(np.arange(n_combos), ridge.ends - ridge.starts)
    comb_dev = torch.from_numpy(combination).to(dev)
    # the ridge sums take the cells in chunks of at most RIDGE_CHUNK_VALUES R-weighted coordinates (K x (d+1) each)
    chunk = max(1, RIDGE_CHUNK_VALUES // (k * (d + 1)))
    window = 3

    def ridge_sums(counted):
        """:meth:`_Ridge.weighted_sums` on the device, in float64: each batch's R-weighted sums of ``[z, 1]``
        (B x K x (d+1)), the intercept's over the cells ``counted`` (G x K) in each cluster (K x (d+1)) and each
        combination's total weight (G x K), as accumulations over the cells a chunk at a time: no Python loop over
        the combinations of batches (13,000 of them, one product each, took 141 s at 30k cells)."""
        f64 = torch.float64
        rz = torch.zeros((n_batches, k, d + 1), dtype=f64, device=dev)
        weighted = torch.zeros((k, d + 1), dtype=f64, device=dev)
        totals = torch.zeros((n_combos, k), dtype=f64, device=dev)
        counted_dev = torch.from_numpy(counted).to(dev)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            r64 = r[lo:hi].double()
            z1 = torch.cat([z0[lo:hi].double(), torch.ones((hi - lo, 1), dtype=f64, device=dev)], dim=1)
            rz_cells = r64[:, :, None] * z1[:, None, :]
            for c in range(n_cov):
                rz.index_put_((cb[lo:hi, c],), rz_cells, accumulate=True)
            weighted += (r64 * counted_dev[comb_dev[lo:hi]]).T @ z1
            totals.index_put_((comb_dev[lo:hi],), r64, accumulate=True)
        return rz.cpu().numpy(), weighted.cpu().numpy(), totals.cpu().numpy()

    for it in range(1, max_iter_harmony + 1):
        if verbose:
            logger.info("Harmony iteration %d of %d", it, max_iter_harmony)
        if len(obj_harmony) > 1:
            zc = _normalise_rows(zc)
            assign("cluster initialization")
        done = 0
        for i in range(max_iter_kmeans):
            order = torch.from_numpy(kern.mt_shuffled_range(mt, n)).to(dev)
            error = entropy = 0.0
            for blk in range(n_blocks):
                lo = blk * per_block
                hi = n if blk == n_blocks - 1 else min(n, (blk + 1) * per_block)
                if lo >= n:
                    break
                idx = order[lo:hi]
                cb_b = cb[idx]
                r_old = r[idx]
                o.sub_(batch_sums(cb_b, r_old))
                e.sub_(prb[:, None] * r_old.sum(0)[None, :])
                log_div = th[:, None] * (torch.log(2.0 * e + 1.0) - torch.log(o + e + 1.0))
                penalty = log_div[cb_b[:, 0]]
                for c in range(1, n_cov):
                    penalty = penalty + log_div[cb_b[:, c]]
                logits = -dist[idx] / sig + penalty
                r_new = torch.softmax(logits, dim=1)
                if not torch.isfinite(r_new).all():
                    _check(1, "assignment update")
                r[idx] = r_new
                o.add_(batch_sums(cb_b, r_new))
                e.add_(prb[:, None] * r_new.sum(0)[None, :])
                error += float((r_new.double() * dist[idx].double()).sum())
                entropy += entropy_of(r_new)
            obj_kmeans.append(_finite_objective(objective(error, entropy), "assignment update"))
            done = i + 1
            if i > window and _kmeans_converged(obj_kmeans, window, eps_kmeans):
                break
        rounds.append(done)
        obj_harmony.append(obj_kmeans[-1])
        y_np = y.cpu().numpy().copy()
        m, used = ridge.solve_sums(ridge_sums, o.cpu().numpy(), e.cpu().numpy(), y_np, k)
        # Z_corr = Z_orig - sum_k R_k (sum over the cell's used batches of M_k), the batches per variable gathered:
        # N x d at a time, never N x K x d
        m_dev = torch.from_numpy(m * used[:, None, None]).to(dev)  # a batch no cluster kept corrects nothing
        shift = torch.zeros_like(z0)
        for q in range(k):
            m_q = m_dev[:, q, :]
            per_cell = m_q[cb[:, 0]]
            for c in range(1, n_cov):
                per_cell = per_cell + m_q[cb[:, c]]
            shift.addcmul_(r[:, q:q + 1], per_cell)
        zc = z0 - shift
        kern.normalise_rows(y_np)  # the new centroids (the intercepts, on the host), as the CPU path normalises them
        y = torch.from_numpy(y_np).to(dev)
        if _harmony_converged(obj_harmony[-2], obj_harmony[-1], eps_harmony):
            if verbose:
                logger.info("Harmony converged after %d iteration%s", it, "s" if it > 1 else "")
            break
    z_corr = zc.cpu().numpy()
    if not np.isfinite(z_corr).all():
        raise FloatingPointError("Harmony numerical error: corrected coordinates must be finite")
    return {"z_corr": z_corr, "z_orig": z_orig, "r": r.cpu().numpy(), "y": y.cpu().numpy(),
            "objective_harmony": obj_harmony, "objective_kmeans": obj_kmeans, "kmeans_rounds": rounds,
            "init_centroids": init}
