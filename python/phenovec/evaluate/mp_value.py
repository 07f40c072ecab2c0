"""mp-value: multidimensional perturbation value (Hutz et al., J Biomol Screen 2013), seeded.

Peer: cytominer-eval 0.1 ``operations.mp_value`` (``evaluate(operation="mp_value")``), same
statistic, same permutation scheme and output columns, but with a random stream of its own.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import linalg
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from phenovec.evaluate.grit import control_rows
from phenovec.evaluate.pairs import check_columns, encode_column
from phenovec.evaluate.similarity import as_profiles

PCA_VARIANCE_KEPT = 0.9
_CHUNK_ELEMS = 1 << 22


def squared_mahalanobis(pert: np.ndarray, control: np.ndarray) -> float:
    """Squared Mahalanobis distance of ``pert``'s mean row from the control rows' distribution.

    Location = control mean, covariance = ``np.cov(control.T, bias=1)`` and its pseudo-inverse
    ``scipy.linalg.pinvh``: sklearn ``EmpiricalCovariance().fit(control).mahalanobis(mean)``.
    """
    loc = control.mean(axis=0)
    cov = np.atleast_2d(np.cov(control.T, bias=1))
    prec = linalg.pinvh(cov, check_finite=False)
    d = pert.mean(axis=0) - loc
    return float(d @ prec @ d)


def squared_mahalanobis_permuted(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """:func:`squared_mahalanobis` of ``scores[m]`` against ``scores[~m]`` for every mask row ``m``.

    Batched: covariances by one einsum, pseudo-inverses by a stacked ``eigh`` with scipy
    ``pinvh``'s cut-off (eigenvalues with ``|w| <= max|w| * k * eps`` are dropped).
    """
    n_pert = int(masks[0].sum())
    order = np.argsort(~masks, axis=1, kind="stable")  # pert rows first, then control rows
    pert = scores[order[:, :n_pert]]
    ctrl = scores[order[:, n_pert:]]
    loc = ctrl.mean(axis=1)
    xc = ctrl - loc[:, None, :]
    cov = np.einsum("pni,pnj->pij", xc, xc) / ctrl.shape[1]
    w, u = np.linalg.eigh(cov)
    cut = np.abs(w).max(axis=1, keepdims=True) * (w.shape[1] * np.finfo(np.float64).eps)
    keep = np.abs(w) > cut
    proj = np.einsum("pij,pi->pj", u, pert.mean(axis=1) - loc)
    return np.where(keep, proj * proj / np.where(keep, w, 1.0), 0.0).sum(axis=1)


def mp_value(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    *,
    control_perts,
    replicate_id: str,
    rescale_pca: bool = True,
    nb_permutations: int = 100,
    seed: int = 0,
) -> pd.DataFrame:
    """Permutation p-value of each replicate group's distance from the controls.

    ``profiles`` is a whole profile table (``feats=None``) or a metadata frame with ``feats``.
    For every distinct value of ``replicate_id`` (sorted, the peer's groupby order; the control
    perturbations are scored too), as cytominer-eval 0.1:

    1. stack the group's rows, then all control rows (rows whose ``replicate_id`` is in
       ``control_perts``), each in table order;
    2. PCA fitted on the stack (``PCA(n_components=0.9, svd_solver="full")``: the fewest components
       whose cumulative explained variance ratio exceeds 0.9); with ``rescale_pca`` the scores are
       multiplied by the explained variance ratios;
    3. statistic = squared Mahalanobis distance of the group's mean score from the control scores'
       empirical distribution (:func:`squared_mahalanobis`);
    4. null: ``nb_permutations`` times, shuffle the group/control labels of the stack
       (``permutation`` of a boolean mask whose first ``len(group)`` entries are True) and recompute;
       p = mean(null >= observed) (no +1; ties count as exceeding).

    Seeding: one ``np.random.RandomState(seed)`` drives the permutations, drawn in the same order as
    the peer draws from numpy's global stream (groups in sorted order, ``nb_permutations`` masks
    each; nothing else draws). So ``np.random.seed(seed)`` followed by the peer gives the *identical*
    p-values (tested on the LINCS plate), while our global numpy state is left alone. One exception:
    a permutation that reproduces the observed split is an exact tie, counted as ``null >= obs``
    here; the peer recomputes it from a differently laid-out copy and the comparison goes either way
    by rounding. This matters only for small stacks (e.g. one-row groups with few controls, where
    1 / C(n_stack, n_group) is not negligible); there our p-value is >= the peer's by at most the
    fraction of such permutations (tested).

    The null statistics are computed in batches (:func:`squared_mahalanobis_permuted`), the same
    quantity as sklearn's to rounding.

    Features are used in float64. One-row groups are allowed (their mean is that row), as in the
    peer. Errors: unknown column, missing ``replicate_id`` values (the peer's groupby silently
    drops them), a control perturbation that does not occur, fewer than two control rows, NaN/inf
    features (naming row and column), ``nb_permutations < 1``, a stack without variance.

    Output: columns ``[replicate_id, "mp_value"]`` as the peer.
    """
    if isinstance(nb_permutations, bool) or not isinstance(nb_permutations, (int, np.integer)) or nb_permutations < 1:
        raise ValueError(f"nb_permutations must be a positive integer, got {nb_permutations!r}")
    prof = as_profiles(profiles, feats, features=features, meta_features=meta_features)
    meta = prof.meta
    check_columns(meta, [replicate_id], "replicate_id")
    encode_column(meta, replicate_id, "replicate_id")
    x = np.asarray(prof.feats, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise ValueError(
            f"feature matrix has a non-finite value ({x[r, c]}) at row {r}, feature column "
            f"{prof.features[c]!r} ({int((~finite).sum())} in all): drop or impute them first"
        )
    ctrl = control_rows(meta, replicate_id, control_perts)
    if ctrl.sum() < 2:
        raise ValueError(f"control_perts match {int(ctrl.sum())} row of {replicate_id!r}: at least 2 control rows needed")
    x_ctrl = x[ctrl]
    n_ctrl = len(x_ctrl)

    codes, values = pd.factorize(meta[replicate_id], sort=True)
    rng = np.random.RandomState(seed)
    out = np.empty(len(values))
    with threadpool_limits(limits=1):  # small per-group matrices: BLAS threads only contend
        for k in range(len(values)):
            out[k] = _group_mp_value(x[codes == k], x_ctrl, rescale_pca, nb_permutations, rng, f"{replicate_id} = {values[k]!r}")
    return pd.DataFrame({replicate_id: np.asarray(values), "mp_value": out})


def _group_mp_value(x_pert: np.ndarray, x_ctrl: np.ndarray, rescale_pca: bool, nb_permutations: int,
                    rng: np.random.RandomState, name: str) -> float:
    n_pert, n_ctrl = len(x_pert), len(x_ctrl)
    stack = np.concatenate([x_pert, x_ctrl])
    if not (stack.var(axis=0) > 0).any():
        raise ValueError(f"{name}: its rows and the control rows are all identical (no variance for PCA)")
    pca = PCA(n_components=PCA_VARIANCE_KEPT, svd_solver="full")
    scores = pca.fit_transform(stack)
    if rescale_pca:
        scores = scores * pca.explained_variance_ratio_
    obs = squared_mahalanobis(scores[:n_pert], scores[-n_ctrl:])
    mask = np.zeros(len(stack), dtype=bool)
    mask[:n_pert] = True
    null = np.empty(nb_permutations)
    _permutation_null(scores, mask, obs, rng, null)
    return float(np.mean(null >= obs))


def _permutation_null(scores: np.ndarray, mask: np.ndarray, obs: float, rng: np.random.RandomState,
                      null: np.ndarray) -> None:
    """Fill ``null`` with the statistic of successive ``rng.permutation(mask)`` splits, in chunks."""
    n = len(null)
    step = max(1, _CHUNK_ELEMS // (len(scores) * scores.shape[1] + scores.shape[1] ** 2))
    for start in range(0, n, step):
        masks = np.stack([rng.permutation(mask) for _ in range(min(step, n - start))])
        chunk = squared_mahalanobis_permuted(scores, masks)
        # a permutation that reproduces the observed split ties with it exactly (see mp_value)
        chunk[(masks == mask).all(axis=1)] = obs
        null[start : start + len(masks)] = chunk
