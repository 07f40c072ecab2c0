"""How well mapped profiles fit the reference: Symphony's per-cell mapping metric (Kang et al. 2021,
``calcPerCellMappingMetric`` in Symphony (R); ``symphonypy.tl.per_cell_confidence``).

A profile of a new plate that resembles none of the reference's states (a phenotype the reference never saw, a
failed well, a plate with a new artefact) is still mapped: Symphony's assignment is a softmax, so it always lands
somewhere. The metric says how far from the reference it landed. Per reference cluster k, with the Harmony run's
soft assignments ``R`` as weights, the weighted mean ``m_k`` and the weighted, unbiased covariance ``S_k`` (R's
``cov.wt``: ``sum_i R_ik (z_i - m_k)(z_i - m_k)^T * v1 / (v1^2 - v2)``, ``v1 = sum_i R_ik``, ``v2 = sum_i R_ik^2``)
of the reference's coordinates are kept. A mapped profile ``x`` (its coordinates before the mapping's correction)
with soft assignments ``r`` (the mapping's) then scores ``sum_k r_k sqrt((x - m_k)^T S_k^-1 (x - m_k))``: a weighted
Mahalanobis distance to the clusters it was assigned to. Higher means less confidence.

Reading it: the query's coordinates are taken before correction, so a new plate's own offset raises all its
scores; compare wells within a plate, or plates with each other. Reference profiles scored the same way (their own
coordinates and ``R``) are scored in sample, by covariances they helped fit: with few profiles per cluster and
dimension their scores run low (per-well BBBC021 at 10 PCs: new plates' known wells scored 1.4-2x the reference's
own; ``bench/mapping_confidence_real.py``). How well it flags the unseen is the data's: a state far from every
reference cluster scores high (the tests), while held-out MOAs of BBBC021 wells scored a median ROC AUC of 0.55 and
held-out injury classes of the cell-injury set 0.66 (``bench/RESULTS.md``, session 35).

Symphony (R) takes the reference's coordinates before Harmony's correction by default (``Z_orig = TRUE``),
symphonypy its corrected ones; both take the query's before correction. :meth:`ClusterSpread.fit` takes whichever
it is given; the ``harmony`` step gives it the uncorrected ones, as Symphony (R), so that both sides of the distance
are in the same coordinates. The tests run symphonypy 0.2.4 itself on the same coordinates and match it to 1e-9.

Cost: the fit is ``K`` weighted d x d products over the reference (``O(K N d^2)``), the score ``O(K n d^2)``; both
grow with the square of the dimension, so score principal components, not hundreds of raw features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from phenovec.batch.finite import require_finite

#: the profile-table column of the metric (the ``harmony`` step's ``mapping_confidence``; the report reads it)
MAPPING_DISTANCE = "Metadata_mapping_distance"
#: a covariance whose correlation matrix (the covariance scaled to unit variances, so that the check does not depend
#: on the coordinates' units, as the Mahalanobis distance does not) has its smallest eigenvalue below this fraction
#: of its largest is refused as singular: its Mahalanobis distances would be rounding errors
MIN_CONDITION = 1e-12
#: rows scored (or summed) at a time: their pairwise products (1,024 x 1,275 doubles at d = 50) stay small
ROWS_PER_BLOCK = 1024


@dataclass(frozen=True, eq=False)
class ClusterSpread:
    """Per reference cluster, the weighted mean (``means``, K x d) and weighted unbiased covariance
    (``covariances``, K x d x d) of the reference's coordinates; float64. Every covariance must be positive
    definite."""

    means: np.ndarray
    covariances: np.ndarray
    _inverses: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        m = np.asarray(self.means, dtype=np.float64)
        c = np.asarray(self.covariances, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
            raise ValueError(f"means must be K x d, got shape {m.shape}")
        k, d = m.shape
        if c.shape != (k, d, d):
            raise ValueError(f"covariances must be K x d x d = {(k, d, d)} for means of shape {m.shape}, got "
                             f"{c.shape}")
        for name, a in (("means", m), ("covariances", c)):
            if not np.isfinite(a).all():
                raise ValueError(f"the cluster spread's {name} must be finite")
        variances = np.diagonal(c, axis1=1, axis2=2)
        flat = np.argwhere(~(variances > 0))
        if flat.size:
            j, i = (int(v) for v in flat[0])
            raise ValueError(f"reference cluster {j}'s covariance has variance {variances[j, i]:.3g} in coordinate {i} "
                             f"(0-based): that coordinate is constant over the cluster's cells (or the fit was edited); "
                             "drop constant features (feature_select) or score principal components (n_components)")
        spread = np.sqrt(variances)
        unit = spread[:, :, None] * spread[:, None, :]
        # symmetric to rounding, by its own scale (eigvalsh and cholesky read one triangle only: a fit edited in the
        # other would be used silently as something else)
        skew = np.abs(c - np.swapaxes(c, 1, 2)) / unit
        if not (skew <= 1e-9).all():
            j, i, l = (int(v) for v in np.argwhere(~(skew <= 1e-9))[0])
            raise ValueError(f"reference cluster {j}'s covariance is not symmetric ([{i}, {l}] = {c[j, i, l]:.6g}, "
                             f"[{l}, {i}] = {c[j, l, i]:.6g}): not a covariance; fit it again")
        eigenvalues = np.linalg.eigvalsh(c / unit)  # ascending, per cluster; the correlation matrices'
        flat = np.flatnonzero(~(eigenvalues[:, 0] > MIN_CONDITION * eigenvalues[:, -1]))
        if flat.size:
            j = int(flat[0])
            raise ValueError(f"reference cluster {j}'s covariance is not positive definite (smallest / largest "
                             f"eigenvalue of its correlations {eigenvalues[j, 0] / eigenvalues[j, -1]:.2g}): its "
                             f"cells span fewer than the {d} dimensions (collinear coordinates, or too few cells "
                             "in the cluster); score fewer principal components, drop collinear features or fit fewer "
                             "clusters")
        whiteners = np.linalg.inv(np.linalg.cholesky(c))  # S^-1 = W^T W with W = L^-1 (lower triangular)
        inverses = np.einsum("kji,kjl->kil", whiteners, whiteners)
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "covariances", c)
        object.__setattr__(self, "_inverses", inverses)

    @classmethod
    def fit(cls, z, r) -> "ClusterSpread":
        """The spread of the reference coordinates ``z`` (N x d) under its soft assignments ``r`` (N x K, a Harmony
        run's ``R``)."""
        z = _matrix(z, "the reference coordinates")
        r = _matrix(r, "the reference's R")
        if r.shape[0] != z.shape[0]:
            raise ValueError(f"R has {r.shape[0]} rows for {z.shape[0]} reference rows")
        if (r < 0).any():
            raise ValueError(f"R has a negative weight in row {int(np.argwhere(r < 0)[0][0])}")
        n, d = z.shape
        k = r.shape[1]
        v1 = r.sum(axis=0)
        v2 = np.einsum("nk,nk->k", r, r)
        scale = v1 ** 2 - v2  # 0 when one cell holds all of a cluster's weight
        lone = np.flatnonzero(~(scale > 1e-12 * np.maximum(v1 ** 2, 1e-300)))
        if lone.size:
            j = int(lone[0])
            raise ValueError(f"reference cluster {j} has its weight ({v1[j]:.3g}) on a single cell: its covariance "
                             "is undefined; fit fewer clusters")
        # moments about the data's centre: the subtraction below then loses digits only in proportion to
        # (|m_k - centre| / the cluster's narrowest spread)^2, not to the coordinates' offset from 0
        center = z.mean(axis=0)
        moments = np.zeros((k, d * (d + 1) // 2))
        for lo in range(0, n, ROWS_PER_BLOCK):
            hi = min(lo + ROWS_PER_BLOCK, n)
            moments += r[lo:hi].T @ _products(z[lo:hi] - center)
        shifted = (r.T @ (z - center)) / v1[:, None]
        scatter = _unpack(moments, d) - v1[:, None, None] * shifted[:, :, None] * shifted[:, None, :]
        covariances = scatter * (v1 / scale)[:, None, None]
        means = shifted + center
        return cls(means, covariances)

    @property
    def K(self) -> int:
        return int(self.means.shape[0])

    def distance(self, x, r) -> np.ndarray:
        """Symphony's per-cell mapping metric (n) of the rows of ``x`` (n x d, the reference's coordinates,
        before correction) with soft assignments ``r`` (n x K, e.g. :class:`~phenovec.batch.symphony
        .SymphonyMapping`'s ``R``)."""
        x = _matrix(x, "the query")
        r = _matrix(r, "the query's R")
        k, d = self.means.shape
        if x.shape[1] != d:
            raise ValueError(f"the query must be n x {d} (the reference's coordinates), got shape {x.shape}")
        if r.shape != (x.shape[0], k):
            raise ValueError(f"the query's R must be n x K = {(x.shape[0], k)}, got shape {r.shape}")
        # (x - m)^T A (x - m) = x'^T A x' - 2 (A m')^T x' + m'^T A m', primes about the means' centre: one product
        # of the rows' pairwise products with every cluster's packed A, one of the rows with every A m'
        center = self.means.mean(axis=0)
        m = self.means - center
        packed = _pack(self._inverses)
        am = np.einsum("kij,kj->ki", self._inverses, m)
        mam = np.einsum("ki,ki->k", am, m)
        out = np.empty(x.shape[0])
        for lo in range(0, x.shape[0], ROWS_PER_BLOCK):
            hi = min(lo + ROWS_PER_BLOCK, x.shape[0])
            xb = x[lo:hi] - center
            q = _products(xb) @ packed.T
            q -= 2.0 * (xb @ am.T)
            q += mam
            np.maximum(q, 0.0, out=q)  # rounding only: a quadratic form of a positive definite matrix
            out[lo:hi] = np.einsum("ik,ik->i", r[lo:hi], np.sqrt(q))
        return out


def _products(x: np.ndarray) -> np.ndarray:
    """Each row's products x_i x_j, i <= j (n x d(d+1)/2, row-major upper triangle; a transposed view, so that
    each product is one long contiguous multiplication)."""
    n, d = x.shape
    xt = np.ascontiguousarray(x.T)
    out = np.empty((d * (d + 1) // 2, n))
    at = 0
    for i in range(d):
        np.multiply(xt[i], xt[i:], out=out[at:at + d - i])
        at += d - i
    return out.T


def _unpack(packed: np.ndarray, d: int) -> np.ndarray:
    """K x d x d symmetric matrices from their packed upper triangles (:func:`_products`' order)."""
    iu, ju = np.triu_indices(d)
    full = np.empty((packed.shape[0], d, d))
    full[:, iu, ju] = packed
    full[:, ju, iu] = packed
    return full


def _pack(full: np.ndarray) -> np.ndarray:
    """Symmetric K x d x d matrices packed so that ``_products(x) @ _pack(A).T`` is each row's x^T A x."""
    d = full.shape[1]
    iu, ju = np.triu_indices(d)
    return full[:, iu, ju] * np.where(iu == ju, 1.0, 2.0)


def _matrix(a, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)  # read only: no copy of a float64 input
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array, got shape {a.shape}")
    require_finite(a, what)
    return a
