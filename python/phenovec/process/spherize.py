"""Sphering (whitening) of profiles: pycytominer 1.7.1 ``Spherize`` semantics, per group, saved fits, streaming.

Peer: ``pycytominer/operations/transform.py::Spherize`` at 1.7.1 (the release that fixed #747: 1.3.0-1.7.0
took the SVD of the raw matrix, so their output was not white) and ``pycytominer.normalize(method="spherize")``.
What is computed, for the ``n x d`` fit matrix ``X`` (the ``samples`` rows):

1. ``-cor`` methods standardize with the population sd (sklearn ``StandardScaler``, ddof=0);
   ``PCA``/``ZCA`` subtract the column mean when ``center=True`` and use ``X`` as is otherwise.
   ``-cor`` with ``center=False`` is an error (as in the peer). Call the result ``X_t``.
2. ``X_t = U S V^T`` (``np.linalg.svd``: the peer's ``full_matrices=True`` call when ``n <= d``;
   ``full_matrices=False`` when ``n > d``, which gives bit-identical ``S`` and ``V`` without the peer's
   ``n x n`` ``U``). ``r`` = numerical rank with ``np.linalg.matrix_rank``'s tolerance
   ``max(S) * max(n, d) * eps``.
3. If ``n <= d``: ``S`` is padded to ``d`` entries as ``[S[:r], S[r-1] repeated d-r times]``.
4. ``W_PCA = V diag(sqrt(n-1) / (S + epsilon))`` (epsilon is added to the *singular values*);
   ``ZCA``: ``W = W_PCA V^T``. Output ``X_t @ W`` for every row (fit rows and the others);
   PCA outputs are named ``PC1..PCd``, ZCA keeps the feature names.

Equality with the peer (tests run pycytominer 1.7.1 itself on BBBC021 and the LINCS plate, all four
methods, samples all/DMSO, center True/False, n <= d, per plate): asserted to 1e-6 absolute, observed
bit-identical (max difference 0.0; PCA up to column sign). That needs the same arithmetic, not just the
same formulas: the mean/variance are summed over a column-major copy as sklearn does on the peer's
``DataFrame.values``, and the same LAPACK routine is called; with C-order sums (last-bit differences) the
outputs differed by up to 1.3e-5 on BBBC021 (rank 498 < 516: null directions scaled by sqrt(n-1)/epsilon
amplify roundoff) and LAPACK's null-space basis changed completely for PCA with n <= d. Expect bits (not
the 1e-6 agreement on well-posed data) to change with another BLAS/LAPACK build, the CUDA transform, or
inputs of more than ``chunk_rows`` rows (BLAS blocks each chunk).
**Sign convention (phenovec):** every principal axis (row of ``V^T``) is flipped so that its entry of
largest absolute value is positive, in the in-memory and the streaming fit alike. ZCA is invariant to
this (bit-identical ``W``); PCA outputs equal the peer's up to the sign of each PC column. When
``n <= d`` the last ``d - r`` PCs are an arbitrary orthonormal basis of the fit rows' null space (the
peer's too): the in-memory fit uses the peer's LAPACK call so they agree up to sign, the streaming fit
(eigh) picks another basis.

Policies (bad input never gives silent output):

- NaN/inf in a fit or transformed feature: ``ValueError`` naming the column and the row (peer: LinAlgError
  on fit, NaN rows on transform).
- ``-cor`` and a feature constant over the fit rows: ``ValueError`` naming it (peer: ``ValueError`` without the
  name when sklearn's variance is exactly 0; phenovec also rejects features sklearn calls numerically
  constant, whose scale sklearn silently sets to 1).
- ``PCA``/``ZCA`` with ``center=True`` and a constant feature: no error, as in the peer. The feature is an
  exact null direction with singular value ~0, so its axis is scaled by ``sqrt(n-1)/epsilon``: the
  fit rows stay finite (their component there is 0), but any other row that departs from the constant
  is multiplied by ~``1e6*sqrt(n-1)``. A :class:`SpherizeWarning` names the feature(s); output equals the peer.
- ``n > d`` but rank ``r < d`` (linearly dependent features): same amplification, warned about, peer output.
- ``n <= d`` (fewer fit rows than features): the peer's padding, plus a :class:`SpherizeWarning`: the
  ``d - r`` null-space directions are not estimated from data, they get the scale of the smallest
  non-zero singular value, and epsilon is the only other regularisation.
- The peer's rank checks are reproduced: ``n <= d`` with rank not in {n-1, n} and the (practically
  unreachable) ``center and rank == n < d`` raise ``ValueError``.
- Fewer than 2 fit rows (overall or in a ``by`` group): ``ValueError`` naming the group (peer: all-zero
  output for PCA/ZCA since sqrt(n-1) = 0; an error for -cor).

Streaming: :meth:`Spherizer.fit_stream` accumulates ``n``, the mean and the centered cross-product ``M2``
over batches with ``kernels/covariance.py`` (CUDA or BLAS), then ``eigh`` of the Gram matrix of ``X_t``
(``M2``, ``M2 / (sd sd^T)`` for -cor, ``M2 + n mean mean^T`` uncentered): ``S = sqrt(eigenvalues)``,
``V`` = eigenvectors, sorted descending, same sign convention. Eigenvalues at or below the Gram's
rounding level ``max(eig) * max(n, d) * eps`` are set to 0 (the SVD gives ~``S[0]*eps`` there).
Working on the Gram squares the condition number: a singular value ``s`` is recovered to about
``eps * S[0]**2 / s`` absolute instead of ``eps * S[0]``. Measured max |stream - in-memory| on the outputs:
<= 1e-11 on synthetic centered data with condition number 100, 1e-10 on the LINCS plate (ZCA-cor, all
wells), 3e-6 on BBBC021 ZCA-cor (condition number 2.5e6 plus 18 exact null directions), and meaningless for
BBBC021 raw ZCA (condition number 8e8: the Gram loses every direction below ~1e-8 * S[0], rank 297 vs 498).
Use the in-memory fit when the matrix fits in memory and is ill-conditioned; the streamed fit is for
large, reasonably conditioned inputs (e.g. 200,000 x 300 float32: 3 s streamed vs 38 s SVD on 2 cores).

Transform: ``kernels/whiten.py`` applies ``((X - mean) / scale) @ W`` in row chunks with BLAS or a Numba
CUDA tiled matmul (``device="auto"`` picks CUDA when ``numba.cuda.is_available()``). The CUDA kernels are
tested only under the Numba CUDA simulator (no GPU on the development machine).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from phenovec.io.archive import load_npz_spec, save_npz_atomic
from phenovec.process.columns import check_columns, numeric_features, resolve_columns, select_samples
from phenovec.process.kernel_loader import load_kernel, resolve_device

METHODS = ("PCA", "ZCA", "PCA-cor", "ZCA-cor")
FORMAT = "phenovec.spherize"
FORMAT_VERSION = 1
_EPS = np.finfo(np.float64).eps


class SpherizeWarning(UserWarning):
    """A spherize fit is valid but some directions are not estimated from data (see module docstring)."""


# --------------------------------------------------------------------------------------------- helpers


def _check_finite(x: np.ndarray, names: Sequence[str], rows: Sequence[Any], what: str) -> None:
    """``ValueError`` naming the first non-finite entry's feature and row label."""
    ok = np.isfinite(x)
    if ok.all():
        return
    r, c = np.argwhere(~ok)[0]
    raise ValueError(
        f"{what}: feature {names[c]!r} is {float(x[r, c])} in row {_py(rows[r])!r}; spherize needs finite features "
        "(drop or impute missing values first)"
    )


def _py(v):
    """numpy scalar -> Python scalar (for readable messages)."""
    return v.item() if isinstance(v, np.generic) else v


def _names_list(names: Sequence[str], k: int = 5) -> str:
    names = [_py(n) for n in names]
    more = f" and {len(names) - k} more" if len(names) > k else ""
    return ", ".join(repr(n) for n in names[:k]) + more


def _check_method(method: str, center: bool, epsilon: float) -> None:
    if method not in METHODS:
        raise ValueError(f"Error {method} not supported. Select one of {list(METHODS)}")
    if method.endswith("-cor") and not center:
        raise ValueError("PCA-cor and ZCA-cor require center=True")
    if not (isinstance(epsilon, (int, float, np.floating)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")


def _fix_signs(vt: np.ndarray) -> np.ndarray:
    """Flip each row of ``vt`` so its largest-|.| entry is positive (in place; first index on ties)."""
    if vt.size:
        idx = np.argmax(np.abs(vt), axis=1)
        neg = vt[np.arange(vt.shape[0]), idx] < 0
        vt[neg] *= -1.0
    return vt


def _peer_rank_checks(n: int, d: int, r: int, center: bool) -> None:
    # pycytominer 1.7.1: `not ((r == d) | (center & (r == n - 1)) | (not center & (r == n)))`, where
    # `not center & (r == n)` parses as `not (center & (r == n))`: it fires only for center and r == n < d.
    if center and r == n and r != d:
        raise ValueError(
            f"The data matrix X is not full rank: n = {n}, d = {d}, r = {r} (pycytominer 1.7.1 raises here too: "
            "a centered matrix has rank <= n - 1, so check for duplicated or degenerate rows)"
        )
    if n <= d and r not in (n - 1, n):
        raise ValueError(
            f"fit matrix with n = {n} rows <= d = {d} features has rank {r}, not n - 1 or n (pycytominer 1.7.1 "
            "raises here too): the fit rows are linearly dependent (duplicated rows?)"
        )


def _whitening_matrix(s: np.ndarray, vt: np.ndarray, n: int, d: int, r: int, method: str, epsilon: float):
    """Peer steps 3-4: pad (n <= d), add epsilon, ``W = V diag(sqrt(n-1)/(S+eps))`` [``@ V^T`` for ZCA]."""
    if n <= d:
        s = np.concatenate((s[0:r], np.repeat(s[r - 1], d - r)))
    se = s + epsilon
    if np.any(se == 0):
        raise ValueError(
            f"epsilon = 0 with a rank-deficient fit (rank {r} < d = {d}): a zero singular value cannot be inverted; "
            "use epsilon > 0"
        )
    w = (vt / se[:, np.newaxis]).transpose() * np.sqrt(n - 1)
    if method in ("ZCA", "ZCA-cor"):
        w = w @ vt
    return s, np.ascontiguousarray(w)


@dataclass
class _Notes:
    """Facts about one fit that deserve a warning (collected so that per-group fits warn once)."""

    n_le_d: tuple[int, int, int] | None = None  # (n, d, r)
    deficient: tuple[int, int, int] | None = None  # (n, d, r) with n > d, r < d
    constant: list[str] = field(default_factory=list)

    def messages(self, epsilon: float) -> list[tuple[str, str]]:
        """``(kind, message)`` pairs."""
        out = []
        if self.n_le_d is not None:
            n, d, r = self.n_le_d
            out.append((
                "n_le_d",
                f"spherize fit on n = {n} rows <= d = {d} features (rank {r}): as in pycytominer 1.7.1 the "
                f"{d - r} null-space directions are not estimated from data; they get the smallest non-zero "
                f"singular value, and epsilon = {epsilon:g} is the only other regularisation. Use more fit rows "
                "(controls) than features, or fewer features, for a real whitening",
            ))
        if self.deficient is not None:
            n, d, r = self.deficient
            out.append((
                "deficient",
                f"spherize fit matrix has rank {r} < d = {d} features (n = {n}): {d - r} directions (linearly "
                f"dependent or constant features) have singular value ~0 and are scaled by sqrt(n-1)/epsilon = "
                f"{math.sqrt(n - 1) / max(epsilon, 1e-300):.3g}, as in pycytominer 1.7.1; rows with components "
                "there are amplified. Drop redundant features (feature_select) first",
            ))
        if self.constant:
            out.append(("constant", "features constant over the spherize fit rows (null directions, scaled by "
                        f"sqrt(n-1)/epsilon as in pycytominer 1.7.1): {_names_list(self.constant)}"))
        return out


# --------------------------------------------------------------------------------------------- Spherizer


class Spherizer:
    """pycytominer 1.7.1 ``Spherize`` (sphering / whitening), fitted in memory or streamed.

    ``Spherizer(method="ZCA-cor", epsilon=1e-6, center=True, return_numpy=False)`` has the peer's
    parameters (note: the peer class defaults to ``method="ZCA"``; ``normalize`` and this class default to
    ``"ZCA-cor"``). phenovec additions: ``device`` (``"auto"|"cpu"|"cuda"``, for the transform and the
    streamed covariance) and ``chunk_rows`` (rows per transform chunk).

    Fitted attributes: ``mean_`` (``None`` when not centering), ``scale_`` (population sd, -cor only, else
    ``None``), ``W_`` (``d x d``; alias ``W`` as in the peer), ``singular_values_`` (padded, before epsilon),
    ``components_`` (``V^T``, rows = principal axes, phenovec sign convention), ``rank_``, ``n_samples_``,
    ``feature_names_in_`` (when fitted on a DataFrame). Equality with the peer and all policies: see the
    module docstring.
    """

    def __init__(
        self,
        method: str = "ZCA-cor",
        epsilon: float = 1e-6,
        center: bool = True,
        return_numpy: bool = False,
        device: str = "auto",
        chunk_rows: int = 65536,
        solver: str = "auto",
    ):
        _check_method(method, center, epsilon)
        if solver not in ("auto", "svd", "gram"):
            raise ValueError(f"solver must be 'auto', 'svd' or 'gram', got {solver!r}")
        self.solver = solver
        self.method = method
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.return_numpy = return_numpy
        self.device = device
        self.chunk_rows = int(chunk_rows)
        self.feature_names_in_: list[str] | None = None

    # ------------------------------------------------------------------ input handling

    def _matrix(self, X, what: str, names: Sequence[str] | None = None):
        """``(x float64, feature names, row labels)``; checks finiteness."""
        if isinstance(X, pd.DataFrame):
            cols = list(names) if names is not None else [str(c) for c in X.columns]
            if names is not None:
                check_columns(X, cols, "features")
            x = numeric_features(X, cols, np.float64)
            rows = X.index
        else:
            x = np.asarray(X, dtype=np.float64)
            if x.ndim != 2:
                raise ValueError(f"{what}: expected a 2-D matrix, got shape {x.shape}")
            cols = list(names) if names is not None else [f"column {j}" for j in range(x.shape[1])]
            rows = range(x.shape[0])
        _check_finite(x, cols, rows, what)
        return x, cols, rows

    # ------------------------------------------------------------------ fit

    def fit(self, X, y=None, *, names: Sequence[str] | None = None) -> "Spherizer":
        """Fit on the rows of ``X`` (DataFrame of features or ``n x d`` array), in memory (SVD, as the peer).
        ``names``: what errors and warnings call an array's columns (default ``column i``)."""
        x, cols, _ = self._matrix(X, "spherize fit input")
        if names is not None and not isinstance(X, pd.DataFrame):
            if len(names) != x.shape[1]:
                raise ValueError(f"names: {len(names)} names for {x.shape[1]} columns")
            cols = list(names)
        notes = self._fit_matrix(x, cols)
        self.feature_names_in_ = cols if isinstance(X, pd.DataFrame) else None
        for _, m in notes.messages(self.epsilon):
            warnings.warn(m, SpherizeWarning, stacklevel=2)
        return self

    def _fit_matrix(self, x: np.ndarray, names: Sequence[str]) -> _Notes:
        n, d = x.shape
        if n < 2:
            raise ValueError(f"spherize needs at least 2 fit rows, got {n}")
        if d < 1:
            raise ValueError("spherize needs at least one feature")
        notes = _Notes()
        cor = self.method.endswith("-cor")
        mean = scale = None
        # Column-major, as the peer's ``DataFrame.values`` is: numpy then sums each column pairwise over
        # contiguous memory, giving the peer's mean and variance bit for bit (a C-ordered matrix is summed
        # row after row and differs in the last bits, which LAPACK's null-space basis amplifies).
        x = np.asfortranarray(x)
        if cor or self.center:
            # sklearn StandardScaler.fit: mean = sum / n; var = (sum((x - T)^2) - sum(x - T)^2 / n) / n
            mean = x.sum(axis=0) / n
            xt = x - mean
        else:
            xt = x
        constant = np.ptp(x, axis=0) == 0
        if cor:
            corr = xt.sum(axis=0)
            var = (xt * xt).sum(axis=0)
            var -= corr**2 / n
            var /= n
            upper = n * _EPS * var + (n * mean * _EPS) ** 2  # sklearn _is_constant_feature
            bad = constant | (var == 0) | (var <= upper)
            if bad.any():
                raise ValueError(
                    f"{self.method}: feature(s) constant over the {n} fit rows: {_names_list(np.asarray(names)[bad])}. "
                    "Divide by zero error, make sure low variance columns are removed (feature_select "
                    "operation='variance_threshold')"
                )
            scale = np.sqrt(var)
            xt /= scale
        elif self.center and constant.any():
            notes.constant = [names[j] for j in np.flatnonzero(constant)]

        gram = self._gram_solution(xt) if n > d and self.solver != "svd" else None
        if gram is not None:
            s, vt = gram
            self.solver_used_ = "gram"
        elif n <= d:
            _, s, vt = np.linalg.svd(xt, full_matrices=True)  # the peer's exact call
            self.solver_used_ = "svd"
        else:
            _, s, vt = np.linalg.svd(xt, full_matrices=False)  # same S and V, no n x n U
            self.solver_used_ = "svd"
        tol = (s.max() if s.size else 0.0) * max(n, d) * _EPS  # np.linalg.matrix_rank's default
        r = int(np.count_nonzero(s > tol))
        self._finish(s, vt, n, d, r, mean, scale, notes)
        return notes

    def _gram_solution(self, xt: np.ndarray):
        """``(S, V^T)`` from ``eigh`` of the Gram matrix ``X_t^T X_t`` (n d^2 / 2 flops: about 4-6x less work than
        the SVD of a tall matrix), or ``None`` when it is not accurate enough and the SVD must be used.

        ``eigh`` recovers each eigenvalue to ``~eps * lambda_max``, so a singular value ``s_i`` to a relative
        ``~eps * kappa_i^2 / 2`` (``kappa_i = s_max / s_i``) and the output to about ``eps * kappa^2`` relative.
        ``solver="auto"`` takes this path only when ``kappa = sqrt(lambda_max / lambda_min) <= 1e4``
        (error bound ~2e-8 relative; measured <= 1e-9 abs on the LINCS plate), else the peer's SVD;
        ``solver="gram"`` always takes it (e.g. for speed on ill-conditioned data, at that accuracy)."""
        g = xt.T @ xt
        lam, v = np.linalg.eigh(g)
        lam, v = lam[::-1], v[:, ::-1]
        if self.solver == "auto" and not (lam[-1] > 0 and lam[0] <= 1e8 * lam[-1]):
            return None
        s = np.sqrt(np.clip(lam, 0.0, None))
        return s, np.ascontiguousarray(v.T)

    def _finish(self, s, vt, n, d, r, mean, scale, notes: _Notes) -> None:
        _peer_rank_checks(n, d, r, self.center)
        if n <= d:
            notes.n_le_d = (n, d, r)
        elif r < d:
            notes.deficient = (n, d, r)
        _fix_signs(vt)
        s_pad, w = _whitening_matrix(s, vt, n, d, r, self.method, self.epsilon)
        self.mean_ = mean
        self.scale_ = scale
        self.singular_values_ = s_pad
        self.components_ = vt
        self.W_ = w
        self.rank_ = r
        self.n_samples_ = n
        self.n_features_in_ = d

    def fit_stream(self, batches: Iterable, features: Sequence[str] | None = None, progress: bool | None = None) -> "Spherizer":
        """Fit from an iterable of row batches without holding them all (covariance kernel + ``eigh``).

        ``batches``: 2-D float arrays or DataFrames (e.g. ``open_source(path).iter_batches(columns=feats)``);
        for DataFrames ``features`` selects the columns (default: all columns of the first batch) and
        errors name the DataFrame's row label, for arrays the running row number. Same semantics as
        :meth:`fit` up to the precision of the Gram route (module docstring: condition number squared);
        equal to the in-memory fit to ~1e-10 on well-conditioned data (tests). Uses ``self.device``.
        """
        from tqdm.auto import tqdm

        cov = load_kernel("covariance")
        device = resolve_device(self.device)
        acc = None
        names: list[str] | None = list(features) if features is not None else None
        lo = hi = None
        offset = 0
        framed = False
        for b in tqdm(batches, desc="spherize fit (stream)", unit="batch", disable=None if progress is None else not progress):
            if isinstance(b, pd.DataFrame):
                framed = True
                if names is None:
                    names = [str(c) for c in b.columns]
                check_columns(b, names, "features")
                x = numeric_features(b, names, np.float64)
                rows = b.index
            else:
                x = np.asarray(b)
                if x.ndim != 2:
                    raise ValueError(f"spherize stream batch must be 2-D, got shape {x.shape}")
                if x.dtype not in (np.float32, np.float64):
                    x = x.astype(np.float64)
                if names is None:
                    names = [f"column {j}" for j in range(x.shape[1])]
                rows = range(offset, offset + x.shape[0])
            if x.shape[1] != len(names):
                raise ValueError(f"spherize stream batch has {x.shape[1]} columns, expected {len(names)}")
            if x.shape[0] == 0:
                continue
            _check_finite(x, names, rows, "spherize fit input")
            if acc is None:
                acc = cov.CovarianceAccumulator(len(names), device=device)
                lo, hi = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
            else:
                np.minimum(lo, x.min(axis=0), out=lo)
                np.maximum(hi, x.max(axis=0), out=hi)
            acc.update(x)
            offset += x.shape[0]
        if acc is None or acc.n < 2:
            raise ValueError(f"spherize needs at least 2 fit rows, got {0 if acc is None else acc.n}")
        notes = self._fit_moments(acc.n, acc.mean, acc.m2, lo == hi, names)
        self.feature_names_in_ = names if framed else None
        for _, m in notes.messages(self.epsilon):
            warnings.warn(m, SpherizeWarning, stacklevel=2)
        return self

    def _fit_moments(self, n: int, mean: np.ndarray, m2: np.ndarray, constant: np.ndarray, names) -> _Notes:
        d = mean.shape[0]
        notes = _Notes()
        cor = self.method.endswith("-cor")
        scale = None
        if cor:
            var = np.diag(m2) / n
            upper = n * _EPS * var + (n * mean * _EPS) ** 2
            bad = constant | (var == 0) | (var <= upper)
            if bad.any():
                raise ValueError(
                    f"{self.method}: feature(s) constant over the {n} fit rows: {_names_list(np.asarray(names)[bad])}. "
                    "Divide by zero error, make sure low variance columns are removed"
                )
            scale = np.sqrt(var)
            g = m2 / np.outer(scale, scale)
        elif self.center:
            g = m2.copy()
            if constant.any():
                notes.constant = [names[j] for j in np.flatnonzero(constant)]
        else:
            g = m2 + n * np.outer(mean, mean)
        lam, vecs = np.linalg.eigh(g)
        lam = lam[::-1]
        vt = np.ascontiguousarray(vecs[:, ::-1].T)
        tol = max(lam[0], 0.0) * max(n, d) * _EPS
        keep = lam > tol
        s = np.where(keep, np.sqrt(np.where(keep, lam, 0.0)), 0.0)
        r = int(np.count_nonzero(keep))
        self._finish(s, vt, n, d, r, mean if (cor or self.center) else None, scale, notes)
        return notes

    # ------------------------------------------------------------------ transform

    @property
    def W(self) -> np.ndarray:
        """The whitening matrix (pycytominer's attribute name)."""
        return self.W_

    def output_names(self, features: Sequence[str]) -> list[str]:
        """Output column names: ``PC1..PCd`` for PCA/PCA-cor, the feature names for ZCA/ZCA-cor (as the peer)."""
        features = list(features)
        if self.method in ("PCA", "PCA-cor"):
            return [f"PC{i}" for i in range(1, len(features) + 1)]
        return features

    def _check_fitted(self) -> None:
        if not hasattr(self, "W_"):
            raise RuntimeError("this Spherizer is not fitted yet: call fit() or fit_stream() first")

    def _transform_matrix(self, x: np.ndarray) -> np.ndarray:
        whiten = load_kernel("whiten")
        return whiten.whiten(x, self.mean_, self.scale_, self.W_, device=resolve_device(self.device), chunk_rows=self.chunk_rows)

    def transform(self, X, y=None):
        """``((X - mean_) / scale_) @ W_`` for every row of ``X`` (peer ``Spherize.transform``).

        DataFrame input: columns are taken by the fitted feature names when fitted on a DataFrame (else
        by position); the output keeps ``X``'s index (the peer resets it to 0..n-1). Array input gives a
        DataFrame with columns ``0..d-1`` (ZCA) or ``PC1..PCd`` (the peer accepts DataFrames only).
        ``return_numpy=True`` returns the float64 array.
        """
        self._check_fitted()
        names = self.feature_names_in_ if isinstance(X, pd.DataFrame) else None
        x, cols, rows = self._matrix(X, "spherize transform input", names)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features, the spherize fit has {self.n_features_in_}")
        out = self._transform_matrix(x)
        if self.return_numpy:
            return out
        if isinstance(X, pd.DataFrame):
            return pd.DataFrame(out, columns=self.output_names(cols), index=X.index)
        return pd.DataFrame(out, columns=self.output_names(range(out.shape[1])) if self.method.startswith("PCA") else None)

    def transform_stream(self, batches: Iterable) -> Iterable[np.ndarray]:
        """Yield the transformed float64 array of each batch (arrays or DataFrames), one batch in memory."""
        self._check_fitted()
        for b in batches:
            names = self.feature_names_in_ if isinstance(b, pd.DataFrame) else None
            x, _, _ = self._matrix(b, "spherize transform input", names)
            yield self._transform_matrix(x)

    def fit_transform(self, X, y=None):
        """``fit(X)`` then ``transform(X)`` (the peer's ``TransformerMixin.fit_transform``)."""
        return self.fit(X).transform(X)

    # ------------------------------------------------------------------ (de)serialisation of one fit

    def _arrays(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        out = {"W": self.W_, "singular_values": self.singular_values_}
        if self.mean_ is not None:
            out["mean"] = self.mean_
        if self.scale_ is not None:
            out["scale"] = self.scale_
        return out

    def _info(self) -> dict:
        return {"n": int(self.n_samples_), "rank": int(self.rank_)}

    @classmethod
    def _from_arrays(cls, method, epsilon, center, arrays: dict, info: dict, names, device="auto") -> "Spherizer":
        sph = cls(method=method, epsilon=epsilon, center=center, device=device)
        sph.W_ = np.ascontiguousarray(arrays["W"], dtype=np.float64)
        sph.singular_values_ = arrays["singular_values"]
        sph.mean_ = arrays.get("mean")
        sph.scale_ = arrays.get("scale")
        sph.n_samples_ = int(info["n"])
        sph.rank_ = int(info["rank"])
        sph.n_features_in_ = sph.W_.shape[0]
        sph.feature_names_in_ = list(names)
        return sph


# --------------------------------------------------------------------------------------------- saved fits


def _key_to_json(key):
    if isinstance(key, tuple):
        return [_key_to_json(k) for k in key]
    if isinstance(key, np.generic):
        key = key.item()
    if key is None or isinstance(key, (str, bool, int, float)):
        return key
    raise TypeError(f"group key {key!r} of type {type(key).__name__} cannot be saved (use str/int/float group values)")


def _key_from_json(key):
    return tuple(key) if isinstance(key, list) else key


@dataclass
class SpherizeFit:
    """Fitted sphering transforms, one global or one per ``by`` group, re-applicable and savable.

    ``spherizers`` maps the group key (``None`` for a global fit; the group value, or a tuple of values
    for several ``by`` columns) to its fitted :class:`Spherizer`. ``save(path)`` writes one ``.npz`` (arrays
    plus a JSON spec; written to a temporary name then renamed); ``SpherizeFit.load(path)`` reads it.
    """

    method: str
    epsilon: float
    center: bool
    features: list[str]
    by: list[str] | None
    samples: str
    spherizers: dict

    @property
    def output_names(self) -> list[str]:
        """Output feature names (``PC1..PCd`` for PCA methods, else the fitted feature names)."""
        return Spherizer(self.method, self.epsilon, self.center).output_names(self.features)

    def __getitem__(self, key) -> Spherizer:
        try:
            return self.spherizers[key]
        except KeyError:
            raise KeyError(f"no spherize fit for group {key!r} (by={self.by}); fitted groups: "
                           f"{_names_list(list(self.spherizers))}") from None

    def transform(self, profiles, meta_features="infer", device: str = "auto", **kw):
        """Apply to new profiles: ``spherize(profiles, fit=self, ...)``."""
        return spherize(profiles, meta_features=meta_features, fit=self, device=device, **kw)

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz``: per group ``g<i>_W``, ``g<i>_singular_values`` [, ``_mean``, ``_scale``] and a JSON
        ``spec`` (method, epsilon, center, features, by, samples, group keys, n, rank); atomic (temp + rename)."""
        p = Path(path)
        arrays: dict[str, np.ndarray] = {}
        groups = []
        for i, (key, sph) in enumerate(self.spherizers.items()):
            for name, a in sph._arrays().items():
                arrays[f"g{i}_{name}"] = a
            groups.append({"key": _key_to_json(key), **sph._info()})
        spec = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "peer": "pycytominer 1.7.1 operations.transform.Spherize",
            "method": self.method,
            "epsilon": self.epsilon,
            "center": self.center,
            "features": list(self.features),
            "by": self.by,
            "samples": self.samples,
            "groups": groups,
        }
        arrays["spec"] = np.array(json.dumps(spec))
        return save_npz_atomic(p, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> "SpherizeFit":
        """Read a fit written by :meth:`save` (no pickle); ``ValueError`` if the file is not one."""
        spec, stored = load_npz_spec(path, FORMAT, "spherize fit")
        if spec.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: spherize fit format version {spec.get('version')} is not supported")
        sphs = {}
        for i, g in enumerate(spec["groups"]):
            arrays = {k[len(f"g{i}_"):]: v for k, v in stored.items() if k.startswith(f"g{i}_")}
            sphs[_key_from_json(g["key"])] = Spherizer._from_arrays(
                spec["method"], spec["epsilon"], spec["center"], arrays, g, spec["features"], device
            )
        return cls(spec["method"], float(spec["epsilon"]), bool(spec["center"]), list(spec["features"]),
                   spec["by"], spec["samples"], sphs)


# --------------------------------------------------------------------------------------------- DataFrame API


def _group_rows(df: pd.DataFrame, by: list[str]) -> dict:
    """Group key -> row positions (sorted keys); ``ValueError`` naming the row for a missing group value."""
    for c in by:
        na = df[c].isna().to_numpy()
        if na.any():
            raise ValueError(f"by column {c!r} is missing in row {_py(df.index[np.argmax(na)])!r}; fill it or drop the row")
    key = by[0] if len(by) == 1 else by
    return dict(df.groupby(key, sort=True).indices)


def spherize(
    profiles,
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    samples: str = "all",
    method: str = "ZCA-cor",
    epsilon: float = 1e-6,
    center: bool = True,
    by: str | Sequence[str] | None = None,
    fit: SpherizeFit | str | os.PathLike | None = None,
    return_fit: bool = False,
    output_file: str | os.PathLike | None = None,
    image_features: bool = False,
    output_type: str | None = None,
    compression_options=None,
    float_format: str | None = None,
    device: str = "auto",
    solver: str = "auto",
):
    """Sphere (whiten) profiles: ``pycytominer.normalize(method="spherize")`` 1.7.1, optionally per group.

    ``profiles``: DataFrame or a path (``read_table``). Columns: ``features``/``meta_features`` as
    pycytominer (inferred CellProfiler features, ``Metadata_*`` metadata). The transform is fitted on the
    ``samples`` rows (``"all"`` or a row filter, :mod:`phenovec.io.row_filter`, e.g.
    ``"Metadata_broad_sample == 'DMSO'"``) and applied to all rows. ``method``/``epsilon``/``center`` are the peer's ``spherize_method``,
    ``spherize_epsilon``, ``spherize_center``.

    Returns the peer's frame: metadata columns, then pass-through ``Image_*``/``ome_arrow_*`` non-feature
    columns, then the outputs (``PC1..PCd`` for PCA methods, feature names for ZCA), index kept. Equal to
    pycytominer 1.7.1 to <= 1e-6 absolute (ZCA; PCA up to each PC's sign, see the module docstring).

    phenovec additions:

    - ``by``: column name(s) (e.g. ``"Metadata_Plate"``): one fit per group on that group's ``samples``
      rows, applied to that group's rows (equal to looping the peer over groups). Default: one global fit.
      A group whose ``samples`` rows number fewer than 2 raises ``ValueError`` naming it.
    - ``fit``: a :class:`SpherizeFit` (or a path to a saved one) to apply instead of fitting; its features,
      method, epsilon, center and ``by`` are used (conflicting explicit arguments raise). Rows of a group
      the fit does not have raise ``KeyError`` naming the group.
    - ``return_fit``: also return the :class:`SpherizeFit` (``(result, fit)``).
    - ``output_file``: write the result (csv/parquet/anndata by name or ``output_type``) and return the path
      as a string, as pycytominer does.
    - ``device``: ``"auto"|"cpu"|"cuda"`` for the transform kernel.
    - ``solver``: ``"auto"`` (default: ``eigh`` of the Gram matrix when the fit rows are well conditioned,
      condition number <= 1e4, agreeing with the peer to ~1e-9; the peer's SVD otherwise), ``"svd"`` (always the
      peer's SVD: bit-identical output) or ``"gram"`` (always ``eigh``); see :meth:`Spherizer._gram_solution`.
    """
    from phenovec.io.profiles import read_table, write_profiles

    df = profiles if isinstance(profiles, pd.DataFrame) else read_table(profiles)
    by_cols = None if by is None else ([by] if isinstance(by, str) else list(by))

    if fit is not None:
        if not isinstance(fit, SpherizeFit):
            fit = SpherizeFit.load(fit, device=device)
        for name, given, default, have in (
            ("method", method, "ZCA-cor", fit.method),
            ("epsilon", epsilon, 1e-6, fit.epsilon),
            ("center", center, True, fit.center),
        ):
            if given != default and given != have:
                raise ValueError(f"{name}={given!r} conflicts with the given fit ({name}={have!r})")
        if by_cols is not None and by_cols != fit.by:
            raise ValueError(f"by={by_cols} conflicts with the given fit (by={fit.by})")
        if not isinstance(features, str) and list(features) != fit.features:
            raise ValueError("features= differs from the features the given fit was made on")
        if samples != "all" and samples != fit.samples:
            raise ValueError(f"samples={samples!r} conflicts with the given fit (fitted on samples={fit.samples!r}); "
                             "no fitting happens when fit= is given")
        feats, meta = resolve_columns(df, fit.features, meta_features, image_features)
        by_cols = fit.by
        method, epsilon, center = fit.method, fit.epsilon, fit.center
    else:
        _check_method(method, center, epsilon)
        feats, meta = resolve_columns(df, features, meta_features, image_features)
    if by_cols is not None:
        check_columns(df, by_cols, "by")
        clash = [c for c in by_cols if c in set(feats)]
        if clash:
            raise ValueError(f"by column {clash[0]!r} is also a feature")

    x = numeric_features(df, feats, np.float64)
    _check_finite(x, feats, df.index, "spherize input")
    groups = {None: np.arange(len(df))} if by_cols is None else _group_rows(df, by_cols)

    if fit is None:
        mask = select_samples(df, samples)
        sphs = {}
        notes_by_group = {}
        from tqdm.auto import tqdm

        for key, idx in tqdm(groups.items(), desc="spherize fit", unit="group", disable=len(groups) < 2 or None):
            rows = idx[mask[idx]]
            label = "the profiles" if key is None else f"group {key!r} (by={by_cols})"
            if len(rows) < 2:
                raise ValueError(f"spherize: {label} has {len(rows)} fit row(s) for samples={samples!r}; need at least 2")
            sph = Spherizer(method=method, epsilon=epsilon, center=center, device=device, solver=solver)
            try:
                notes_by_group[key] = sph._fit_matrix(x[rows], feats)
            except ValueError as e:
                raise ValueError(f"spherize {label}: {e}") from None
            sph.feature_names_in_ = list(feats)
            sphs[key] = sph
        _warn_groups(notes_by_group, epsilon)
        fit = SpherizeFit(method, float(epsilon), bool(center), list(feats), by_cols, samples, sphs)
    else:
        missing = [k for k in groups if k not in fit.spherizers]
        if missing:
            raise KeyError(
                f"spherize fit has no group {missing[0]!r} (by={fit.by})" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                + f"; fitted groups: {_names_list(list(fit.spherizers))}"
            )

    if by_cols is None:  # one fit: transform in place of a scatter copy
        sph = fit.spherizers[None]
        sph.device = device
        out = sph._transform_matrix(x)
    else:
        out = np.empty((len(df), len(feats)), dtype=np.float64)
        for key, idx in groups.items():
            sph = fit.spherizers[key]
            sph.device = device
            out[idx] = sph._transform_matrix(x[idx])

    out_names = fit.output_names
    passthrough = [
        c for c in df.columns
        if c not in set(feats) and c not in set(meta) and str(c).startswith(("Image_", "ome_arrow_"))
    ]
    result = pd.concat(
        [df.loc[:, meta], df.loc[:, passthrough], pd.DataFrame(out, columns=out_names, index=df.index, copy=False)],
        axis="columns", copy=False,
    )
    if output_file is not None:
        write_profiles(result, output_file, output_type=output_type, features=out_names,
                       compression_options=compression_options, float_format=float_format)
        result = str(output_file)
    return (result, fit) if return_fit else result


def _warn_groups(notes_by_group: dict, epsilon: float) -> None:
    """One warning per kind of note, naming the groups (a per-plate fit must not print 55 warnings)."""
    kinds: dict[str, list] = {}
    for key, notes in notes_by_group.items():
        for kind, m in notes.messages(epsilon):
            kinds.setdefault(kind, []).append((key, m))
    for _, items in kinds.items():
        key, m = items[0]
        if key is None:
            warnings.warn(m, SpherizeWarning, stacklevel=3)
        else:
            extra = f" (and {len(items) - 1} more groups)" if len(items) > 1 else ""
            warnings.warn(f"group {key!r}{extra}: {m}", SpherizeWarning, stacklevel=3)
