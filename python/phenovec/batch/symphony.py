"""New profiles mapped onto a Harmony reference: Symphony (Kang et al. 2021, Nature Communications), the way to add
plates to a Harmony-corrected set without correcting it again.

A Harmony run leaves soft cluster assignments ``R`` (N x K) and corrected coordinates ``Z_corr`` (N x d). Symphony
keeps of them only ``Nr = R.sum(0)`` (K) and ``C = R.T @ Z_corr`` (K x d), plus Harmony's ``sigma`` (K). A query
(profiles in the reference's coordinates, with their own batch labels, which need not be the reference's) is then

1. assigned to the reference's clusters: ``Y = C / |C|`` by rows, ``x_cos = x / |x|``,
   ``R_q = softmax_k(-2 (1 - x_cos . Y_k) / sigma_k)``;
2. corrected by Harmony's mixture of ridge regressions with the reference as an anchor: per cluster k, with
   ``Phi`` the query's one-hot batches behind an intercept and ``Phi_k = Phi * R_q[:, k]``,
   ``W_k = (Phi_k Phi^T + Nr_k e0 e0^T + diag(0, lamb))^-1 (Phi_k X + e0 C_k)``, the intercept row of ``W_k`` set to 0,
   and ``X_corr = X - sum_k (W_k^T Phi_k)^T``.

Peer: symphonypy 0.2.4 (``symphonypy.pp.harmony_integrate`` on the reference, ``symphonypy.tl.map_embedding`` on the
query): the tests run it and match its corrected query and its ``R`` to 1e-9. Differences, both deliberate:

- symphonypy divides each query row by its largest coordinate before scaling it to unit length (a step of the old,
  numpy harmonypy). When that coordinate is negative the row flips to the antipode and is assigned to the clusters
  farthest from it. Here rows are only scaled to unit length, as Symphony (R) and harmonypy 2.1.0 do; the results
  agree whenever each row's largest coordinate is positive.
- symphonypy forms every cluster's (B + 1) x N matrices densely (O(K B N d)); here the sums run per batch level
  (O(N V K d) for V batch variables), so hundreds of plates cost no more than a few.
- A ``lamb`` given per level follows the levels in sorted order, numbers sorted as numbers (harmonypy's order);
  symphonypy turns labels into text first, so for numeric labels (plates 2, 10, 33) it sorts them "10", "2", "33"
  and gives each penalty to another plate. Pass text labels for its order.

Each query row is divided by its largest absolute coordinate before it is scaled to unit length (the same
direction; a row of 1e160 or 1e-170 would otherwise overflow or underflow the length).

``lamb`` (the query's ridge penalty per batch level) is 1 by default, as in symphonypy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phenovec.batch.finite import require_finite

#: query rows assigned at a time (their K logits stay in cache)
ROWS_PER_BLOCK = 8192

@dataclass(frozen=True, eq=False)
class SymphonyMapping:
    """A query mapped onto a :class:`HarmonyReference`: corrected coordinates (n x d) and soft assignments to the
    reference's clusters (n x K), both float64."""

    Z_corr: np.ndarray
    R: np.ndarray


@dataclass(frozen=True, eq=False)
class HarmonyReference:
    """What Symphony keeps of a Harmony run: ``cluster_sums`` (``C = R.T @ Z_corr``, K x d), ``cluster_weights``
    (``Nr = R.sum(0)``, K) and ``sigma`` (K), all float64."""

    cluster_sums: np.ndarray
    cluster_weights: np.ndarray
    sigma: np.ndarray

    def __post_init__(self):
        c = np.asarray(self.cluster_sums, dtype=np.float64)
        w = np.asarray(self.cluster_weights, dtype=np.float64).reshape(-1)
        s = np.asarray(self.sigma, dtype=np.float64).reshape(-1)
        if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
            raise ValueError(f"cluster_sums must be K x d, got shape {c.shape}")
        k = c.shape[0]
        if s.size == 1:
            s = np.repeat(s, k)
        if w.shape != (k,) or s.shape != (k,):
            raise ValueError(f"cluster_weights and sigma must have one value per cluster ({k}), got {w.shape} and "
                             f"{s.shape}")
        for name, a in (("cluster_sums", c), ("cluster_weights", w), ("sigma", s)):
            if not np.isfinite(a).all():
                raise ValueError(f"the reference's {name} must be finite")
        if (s <= 0).any():
            raise ValueError(f"sigma must be positive, got {float(s.min())!r}")
        norms = np.linalg.norm(c, axis=1)
        if (norms == 0).any():
            raise ValueError(f"reference cluster {int(np.argmax(norms == 0))} has no weight or a zero centroid")
        object.__setattr__(self, "cluster_sums", c)
        object.__setattr__(self, "cluster_weights", w)
        object.__setattr__(self, "sigma", s)

    @classmethod
    def from_harmony(cls, result, sigma=None) -> "HarmonyReference":
        """The reference of a Harmony run: a :class:`phenovec.batch.harmony.Harmony` (its own ``sigma``) or any
        result with harmonypy 2.1.0's ``R`` (N x K) and ``Z_corr`` (N x d), with ``sigma`` given (harmonypy's
        result does not keep it; default 0.1, harmonypy's)."""
        r = np.asarray(result.R, dtype=np.float64)
        z = np.asarray(result.Z_corr, dtype=np.float64)
        if r.ndim != 2 or z.ndim != 2 or r.shape[0] != z.shape[0]:
            raise ValueError(f"R ({r.shape}) and Z_corr ({z.shape}) must both have one row per cell")
        if not np.allclose(r.sum(axis=1), 1.0, atol=1e-3):  # each cell's assignments sum to 1
            hint = " (they look like K x N, harmonypy <= 0.0.10's layout: pass R.T and Z_corr.T)" \
                if np.allclose(r.sum(axis=0), 1.0, atol=1e-3) else ""
            raise ValueError(f"R's rows must be cells whose assignments sum to 1{hint}")
        if sigma is None:
            sigma = getattr(result, "sigma", None)
        if sigma is None:
            sigma = 0.1
        s = np.asarray(sigma, dtype=np.float32).astype(np.float64).reshape(-1)  # Harmony's sigma is float32
        return cls(r.T @ z, r.sum(axis=0), s)

    @property
    def K(self) -> int:
        return int(self.cluster_sums.shape[0])

    @property
    def centroids(self) -> np.ndarray:
        """The clusters' unit-length centroids (K x d) the query is assigned to."""
        return self.cluster_sums / np.linalg.norm(self.cluster_sums, axis=1, keepdims=True)

    def assign(self, data_mat) -> np.ndarray:
        """Soft assignments (n x K) of the rows of ``data_mat`` (n x d, the reference's coordinates)."""
        return self._assign(_query_matrix(data_mat, self.cluster_sums.shape[1]))

    def _assign(self, x: np.ndarray) -> np.ndarray:
        scale = np.abs(x).max(axis=1, keepdims=True)
        if (scale == 0).any():
            raise ValueError(f"query row {int(np.argmax(scale[:, 0] == 0))} is all zeros: it has no direction to "
                             "assign to a cluster")
        x = x / scale  # the largest coordinate 1 in size: the length neither overflows nor underflows
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        y = self.centroids.T
        r = np.empty((x.shape[0], self.K))
        for lo in range(0, x.shape[0], ROWS_PER_BLOCK):  # blocks of rows: the temporaries stay in cache
            hi = min(lo + ROWS_PER_BLOCK, x.shape[0])
            logits = -2.0 * (1.0 - (x[lo:hi] / norms[lo:hi]) @ y) / self.sigma
            logits -= logits.max(axis=1, keepdims=True)
            block = np.exp(logits, out=r[lo:hi])
            block /= block.sum(axis=1, keepdims=True)
        return r

    def map(self, data_mat, meta_data=None, vars_use=None, lamb=None) -> SymphonyMapping:
        """Map the query ``data_mat`` (n x d, the reference's coordinates) onto the reference, correcting the
        batches named by ``vars_use`` (columns of ``meta_data``; None: the query is one batch). ``lamb``: the ridge
        penalty, one number, one per batch variable or one per batch level (levels in sorted order); default 1."""
        x = _query_matrix(data_mat, self.cluster_sums.shape[1])
        r = self._assign(x)
        codes, n_levels = _query_batches(meta_data, vars_use, x.shape[0])
        penalty = _penalties(lamb, n_levels)
        unpenalised = [v for v, part in enumerate(np.split(penalty, np.cumsum(n_levels)[:-1])) if not part.any()]
        if len(unpenalised) > 1:
            # each variable's levels add up to the intercept: two such sums are the same column of Phi
            raise ValueError("the query's ridge systems are singular when two batch variables have lamb 0 on every "
                             "level: give at least one of them a positive lamb")
        levels = [_levels(codes[:, v], nv) for v, nv in enumerate(n_levels)]
        w = self._ridge(x, r, codes, n_levels, levels, penalty)
        z = x.copy()
        offset = 1
        for nv, (order, bounds) in zip(n_levels, levels):
            for b in range(nv):
                cells = order[bounds[b]:bounds[b + 1]]
                z[cells] -= r[cells] @ w[:, offset + b, :]
            offset += nv
        return SymphonyMapping(z, r)

    def _ridge(self, x, r, codes, n_levels, levels, penalty) -> np.ndarray:
        """Every cluster's ridge solution W_k ((B + 1) x d, the intercept's row 0), stacked K x (B + 1) x d
        (``levels``: each variable's cells sorted by level and the levels' bounds, :func:`_levels`)."""
        import scipy.sparse as sp

        n, d = x.shape
        k = self.K
        b1 = 1 + int(sum(n_levels))
        gram = np.zeros((k, b1, b1))
        rhs = np.zeros((k, b1, d))
        gram[:, 0, 0] = r.sum(axis=0) + self.cluster_weights
        rhs[:, 0, :] = r.T @ x + self.cluster_sums
        starts = np.concatenate([[1], 1 + np.cumsum(n_levels)]).astype(np.int64)
        every_cell = np.arange(n)

        def weight_sums(key, n_keys):  # (n_keys x K): the assignments summed per key
            onehot = sp.csr_matrix((np.ones(n), (key, every_cell)), shape=(n_keys, n))
            return np.asarray(onehot @ r)

        for v, nv in enumerate(n_levels):
            sv = starts[v]
            s = weight_sums(codes[:, v], nv).T  # K x nv
            gram[:, 0, sv:sv + nv] = s
            gram[:, sv:sv + nv, 0] = s
            idx = np.arange(sv, sv + nv)
            gram[:, idx, idx] = s
            order, bounds = levels[v]
            for b in range(nv):
                cells = order[bounds[b]:bounds[b + 1]]
                rhs[:, sv + b, :] = r[cells].T @ x[cells]
            for u in range(v):
                su, nu = starts[u], n_levels[u]
                pair = weight_sums(codes[:, u] * nv + codes[:, v], nu * nv).reshape(nu, nv, k).transpose(2, 0, 1)
                gram[:, su:su + nu, sv:sv + nv] = pair
                gram[:, sv:sv + nv, su:su + nu] = pair.transpose(0, 2, 1)
        diag = np.arange(1, b1)
        gram[:, diag, diag] += penalty
        singular = "a cluster's ridge system for the query is singular: give every batch level a positive lamb"
        try:
            w = np.linalg.solve(gram, rhs)
        except np.linalg.LinAlgError:
            raise ValueError(singular) from None
        if not np.isfinite(w).all():
            raise ValueError(singular)
        w[:, 0, :] = 0.0  # the intercept (the cluster's own position) is kept
        return w


def _query_matrix(data_mat, d: int) -> np.ndarray:
    if hasattr(data_mat, "select_dtypes"):
        data_mat = data_mat.select_dtypes(include=[np.number]).to_numpy()
    x = np.array(data_mat, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"the query must be n x {d} (the reference's coordinates), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("the query has no rows")
    require_finite(x, "the query")
    return x


def _query_batches(meta_data, vars_use, n: int) -> tuple[np.ndarray, list[int]]:
    """(n x V level codes, levels per variable); no ``vars_use``: one batch."""
    from phenovec.batch.harmony import _column, _label_codes

    if vars_use is None:
        return np.zeros((n, 1), np.int64), [1]
    vars_use = [vars_use] if isinstance(vars_use, str) else list(vars_use)
    if not vars_use:
        return np.zeros((n, 1), np.int64), [1]
    if meta_data is None:
        raise ValueError(f"vars_use {vars_use} needs meta_data with those columns")
    codes = np.empty((n, len(vars_use)), np.int64)
    n_levels = []
    for v, var in enumerate(vars_use):
        c, labels = _label_codes(_column(meta_data, var), var)
        if len(c) != n:
            raise ValueError(f"batch variable {var!r} has {len(c)} values for {n} query rows")
        codes[:, v] = c
        n_levels.append(len(labels))
    return codes, n_levels


def _penalties(lamb, n_levels: list[int]) -> np.ndarray:
    """One float64 penalty per batch level (1 by default): one number, one per variable, or one per level."""
    from phenovec.batch.harmony import _per_batch

    a = _per_batch(1.0 if lamb is None else lamb, np.asarray(n_levels), "lamb", dtype=np.float64)
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("lamb must be finite and not negative")
    return a


def _levels(codes: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(cells sorted by level, stably; each level's bounds in that order)."""
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=n_levels))])
    return order, bounds
