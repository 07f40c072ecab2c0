"""Null distributions of average precision under random ranking, per (M, L) configuration.

Two samplers:

- ``"copairs"`` (default): copairs 0.5.5's exact random stream. Configurations are the sorted
  unique (n_pos_pairs, n_total_pairs) rows; per-configuration seeds are
  ``default_rng(seed).integers(8096, size=K)``; each null row permutes ``arange(L)`` with
  ``Generator.permuted`` and keeps the first M positions; AP is computed in float32 as copairs does.
  With copairs' on-disk cache empty (or seeded by the same calls), p-values are *identical* to copairs'.
  Rows are processed in chunks (same stream, bounded memory); the cost is copairs' own,
  O(null_size x L) per configuration.
- ``"fast"``: the Rust sampler (Floyd's algorithm, O(M log M) per sample, parallel), seeded per
  (seed, M, L). Same distribution, different stream: p-values are statistically equivalent to
  copairs', not identical. Use it for large L.
"""
from __future__ import annotations

import numpy as np

from phenovec import _core

NULL_METHODS = ("copairs", "fast")
_CHUNK_ELEMS = 1 << 24


def _copairs_random_ap(num_perm: int, num_pos: int, total: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if total < 2**16 else np.uint32
    out = np.empty(num_perm, dtype=np.float32)
    ranks = np.arange(1, num_pos + 1, dtype=np.float32)
    step = max(1, _CHUNK_ELEMS // max(1, total))
    for s in range(0, num_perm, step):
        c = min(step, num_perm - s)
        idx = np.tile(np.arange(total, dtype=dtype), (c, 1))
        rng.permuted(idx, axis=1, out=idx)
        rel_k = np.sort(idx[:, :num_pos], axis=1)
        pr_k = ranks / (rel_k + 1)
        out[s : s + c] = (pr_k.sum(axis=1) / num_pos).astype(np.float32)
    return out


def null_distributions(confs: np.ndarray, null_size: int, seed: int, method: str = "copairs",
                       progress_bar: bool = False) -> np.ndarray:
    """Null AP rows for each configuration row (M, L) of ``confs`` (sorted unique, as copairs)."""
    if method not in NULL_METHODS:
        raise ValueError(f"null_method must be one of {NULL_METHODS}, got {method!r}")
    if null_size < 1:
        raise ValueError(f"null_size must be >= 1, got {null_size}")
    confs = np.asarray(confs, dtype=np.int64).reshape(-1, 2)
    if len(confs) and ((confs[:, 0] < 1) | (confs[:, 0] > confs[:, 1])).any():
        bad = confs[(confs[:, 0] < 1) | (confs[:, 0] > confs[:, 1])][0]
        raise ValueError(f"null configuration needs 0 < n_pos_pairs <= n_total_pairs, got {tuple(bad)}")
    if method == "fast":
        return _core.random_ap(confs[:, 0].copy(), confs[:, 1].copy(), int(null_size), int(seed) & (2**64 - 1))
    seeds = np.random.default_rng(seed).integers(8096, size=len(confs))
    out = np.empty((len(confs), null_size), dtype=np.float32)
    it = range(len(confs))
    if progress_bar:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="null distributions", leave=False)
    for i in it:
        m, l = confs[i]
        out[i] = _copairs_random_ap(null_size, int(m), int(l), seeds[i])
    return out


def unique_configs(n_pos: np.ndarray, n_total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique (M, L) rows and each input row's index into them."""
    confs, inv = np.unique(np.stack([np.asarray(n_pos, np.int64), np.asarray(n_total, np.int64)], axis=1),
                           axis=0, return_inverse=True)
    return confs, np.asarray(inv).ravel()
