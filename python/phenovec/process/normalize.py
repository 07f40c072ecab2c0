"""pycytominer 1.7.1 ``normalize``, per group in one call, with saved fits and a streamed mode.

Same arguments and output as ``pycytominer.normalize`` (columns: metadata, pass-through ``Image_`` /
``ome_arrow_`` columns, features; the input's index). Equality, float64 features: asserted to 1e-9 relative
(tests run pycytominer on BBBC021 and a LINCS plate, every method, all rows and a DMSO query), observed
bit-identical, because the same numpy/sklearn arithmetic is reproduced (column-major sums, numpy's order
statistics and interpolation). float32 features are computed in float64 here (sklearn keeps float32:
agreement ~1e-6 relative). Fits ignore NaN and NaN stays NaN (sklearn/scipy's policy); inf is rejected,
naming column and row, by every method but mad_robustize (as sklearn rejects it).

- ``standardize``: StandardScaler: ``(x - mean) / sd`` (ddof 0; sklearn's near-constant rule -> sd 1).
- ``robustize``: RobustScaler: ``(x - median) / (q75 - q25)`` (linear percentiles; IQR < 10 eps -> 1).
- ``mad_robustize``: RobustMAD: ``(x - median) / (MAD / (1/1.4826) + epsilon)``, MAD the median of
  ``|x - median|`` (scipy ``median_abs_deviation``).
- ``inverse_normal``: QuantileTransformer(normal, ``min(n_quantiles, rows)`` quantiles) re-implemented with the
  same numpy/scipy calls, on every fitted row: sklearn (so pycytominer) fits on a random unseeded 10,000-row
  subsample above 10,000 rows, where results differ; up to 10,000 rows they are equal.
- ``spherize``: :class:`phenovec.process.spherize.Spherizer`.

phenovec additions: ``by=`` fits each group (e.g. plate) on its rows that ``samples`` selects, in one call
(pycytominer #154; NaN keys form their own group; a group of one fitted row gets pycytominer's result for one
row, e.g. zeros for standardize). ``fit=`` / ``return_fit=`` apply / return a :class:`NormalizeFit` (one
``.npz``). :func:`normalize_stream`: inputs larger than memory, equal to :func:`normalize` (robust methods
bit for bit, standardize to ~1e-12 relative).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.process.column_quantiles import (
    ColumnRange,
    QuantileSelector,
    _group_slices,
    nan_percentiles,
    nan_quantiles,
)
from phenovec.io.archive import load_npz_spec, save_npz_atomic
from phenovec.io.row_filter import RowFilter, parse_filter
from phenovec.process.columns import check_columns, numeric_features, resolve_columns, select_samples

METHODS = ("standardize", "robustize", "mad_robustize", "spherize", "inverse_normal")
STREAM_METHODS = ("standardize", "robustize", "mad_robustize")
_REJECT_INF = ("standardize", "robustize", "spherize", "inverse_normal")  # sklearn's validate_data rejects inf
_MAD_SCALE = 1 / 1.4826  # pycytominer passes scale=1/1.4826 to scipy, which divides by it
_EPS = np.finfo(np.float64).eps
_FORMAT = "phenovec.NormalizeFit"
_NO_COPY = {"copy": False} if int(pd.__version__.split(".")[0]) < 3 else {}  # pandas 3: copy-on-write, no keyword


# ---------------------------------------------------------------------------------------------------------
# group keys
# ---------------------------------------------------------------------------------------------------------
def _key_value(v):
    """A group-key value as a plain, JSON-able Python scalar; every kind of missing value -> None."""
    if isinstance(v, np.generic):
        v = v.item()
    try:
        if v is None or (not isinstance(v, (str, bytes)) and pd.isna(v)):
            return None
    except (TypeError, ValueError):
        pass
    return v


def _by_list(by) -> list[str] | None:
    if by is None:
        return None
    cols = [by] if isinstance(by, str) else list(by)
    if not cols:
        return None
    return cols


def _describe_key(by: Sequence[str], key: tuple) -> str:
    return ", ".join(f"{c}={'NaN' if v is None else repr(v)}" for c, v in zip(by, key))


class _Grouper:
    """Maps rows to group indices by the values of ``by`` (NaN keys are a group), keys in order of appearance."""

    def __init__(self, by: list[str] | None, keys: Sequence[tuple] = ()):
        self.by = by
        self.keys: list[tuple] = [tuple(k) for k in keys] if by else [()]
        self.index = {k: i for i, k in enumerate(self.keys)}

    def codes(self, df: pd.DataFrame, grow: bool) -> np.ndarray:
        n = len(df)
        if not self.by:
            return np.zeros(n, dtype=np.intp)
        parts, uniques = [], []
        for c in self.by:
            codes, uniq = pd.factorize(df[c], use_na_sentinel=False)
            parts.append(np.asarray(codes, dtype=np.int64))
            uniques.append(np.asarray(uniq, dtype=object))
        if len(parts) == 1:
            local = parts[0]
            combos = [(_key_value(u),) for u in uniques[0]]
        else:
            stacked = np.stack(parts, axis=1)
            uniq_rows, first, local = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
            order = np.argsort(first, kind="stable")  # first-appearance order, as the single-column case
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            local = rank[np.asarray(local).reshape(-1)]
            uniq_rows = uniq_rows[order]
            combos = [tuple(_key_value(uniques[j][r[j]]) for j in range(len(self.by))) for r in uniq_rows]
        lut = np.empty(len(combos), dtype=np.intp)
        for i, key in enumerate(combos):
            g = self.index.get(key)
            if g is None:
                if not grow:
                    raise KeyError(f"group {_describe_key(self.by, key)} was not fitted "
                                   f"(fitted groups: {len(self.keys)})")
                g = self.index[key] = len(self.keys)
                self.keys.append(key)
            lut[i] = g
        return lut[local] if n else np.zeros(0, dtype=np.intp)


# ---------------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------------
class _Moments:
    """Per (group, column) non-NaN count, mean and sum of squared deviations, merged batch by batch (Chan et al.)."""

    def __init__(self, d: int):
        self.d = d
        self.n = np.zeros((0, d))
        self.mean = np.zeros((0, d))
        self.m2 = np.zeros((0, d))

    def _grow(self, g: int) -> None:
        if g > len(self.n):
            z = np.zeros((g - len(self.n), self.d))
            self.n, self.mean, self.m2 = (np.vstack([a, z]) for a in (self.n, self.mean, self.m2))

    def update(self, x: np.ndarray, codes: np.ndarray, col_chunk: int = 128) -> None:
        if len(x) == 0:
            return
        self._grow(int(codes.max()) + 1)
        order, groups, starts = _group_slices(np.asarray(codes, dtype=np.intp))
        sizes = np.diff(np.r_[starts, len(order)])
        rowg = np.repeat(np.arange(len(groups)), sizes)
        for c0 in range(0, self.d, col_chunk):
            cs = slice(c0, c0 + col_chunk)
            xs = x[order, cs]
            valid = ~np.isnan(xs)
            nb = np.add.reduceat(valid, starts, axis=0, dtype=np.int64).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mb = np.add.reduceat(np.where(valid, xs, 0.0), starts, axis=0) / nb
                dev = np.where(valid, xs - mb[rowg], 0.0)
                # corrected two-pass sum of squares (as sklearn's _incremental_mean_and_var)
                m2b = np.add.reduceat(dev * dev, starts, axis=0) - np.add.reduceat(dev, starts, axis=0) ** 2 / nb
                na, ma, m2a = self.n[groups, cs], self.mean[groups, cs], self.m2[groups, cs]
                n = na + nb
                delta = mb - ma
                mean = np.where(na == 0, mb, np.where(nb == 0, ma, ma + delta * (nb / n)))
                m2 = np.where(na == 0, m2b, np.where(nb == 0, m2a, m2a + m2b + delta * delta * (na * nb / n)))
            self.n[groups, cs] = n
            self.mean[groups, cs] = mean
            self.m2[groups, cs] = m2

    def loc_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """sklearn StandardScaler's ``mean_`` and ``scale_`` (NaN for a column with no value)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.n > 0, self.mean, np.nan)
            var = np.where(self.n > 0, np.maximum(self.m2, 0.0) / self.n, np.nan)
        return mean, _standard_scale(mean, var, self.n)


def _standard_scale(mean: np.ndarray, var: np.ndarray, n: np.ndarray) -> np.ndarray:
    """sklearn: ``sqrt(var)``, 1 where ``_is_constant_feature`` (var <= n eps var + (n mean eps)^2)."""
    with np.errstate(invalid="ignore", over="ignore"):
        constant = var <= n * _EPS * var + (n * mean * _EPS) ** 2
        scale = np.sqrt(var)
    scale[constant] = 1.0
    return scale


def _standard_loc_scale(x: np.ndarray, col_chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """StandardScaler.fit on ``x`` with sklearn's own operations (_incremental_mean_and_var from zero: sum, corrected
    two-pass variance, NaN ignored) on column-contiguous blocks, as sklearn sees a DataFrame: bit-identical."""
    n, d = x.shape
    mean, var, cnt = np.empty(d), np.empty(d), np.empty(d)
    for c0 in range(0, d, col_chunk):
        cs = slice(c0, c0 + col_chunk)
        xf = np.asfortranarray(x[:, cs])
        nan = np.isnan(xf)
        any_nan = nan.any()
        sum_op = np.nansum if any_nan else np.sum
        with np.errstate(invalid="ignore", divide="ignore"):
            s = sum_op(xf, axis=0)
            c = n - (sum_op(nan.astype(np.float64), axis=0) if any_nan else np.zeros(xf.shape[1]))
            mean[cs] = (0.0 + s) / c
            t = s / c
            temp = xf - t
            corr = sum_op(temp, axis=0)
            temp **= 2
            var[cs] = (sum_op(temp, axis=0) - corr**2 / c) / c
        cnt[cs] = c
    return mean, _standard_scale(mean, var, cnt)


def _robust_loc_scale(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RobustScaler from ``q = (median, q25, q75)``: center, IQR (below 10 eps -> 1, as _handle_zeros_in_scale)."""
    iqr = q[2] - q[1]
    with np.errstate(invalid="ignore"):
        iqr = np.where(iqr < 10 * _EPS, 1.0, iqr)
    return q[0], iqr


def _mad_scale(mad_raw: np.ndarray, epsilon: float) -> np.ndarray:
    return mad_raw / _MAD_SCALE + epsilon


# ---------------------------------------------------------------------------------------------------------
# the fit
# ---------------------------------------------------------------------------------------------------------
@dataclass
class NormalizeFit:
    """A fitted normalization, per group: apply it to new rows with :meth:`transform`, keep it with :meth:`save`.

    ``loc`` / ``scale`` (groups x features) hold the centre and divisor for standardize, robustize and
    mad_robustize (output ``(x - loc) / scale``; for mad_robustize ``scale = MAD / (1/1.4826) + epsilon``);
    ``models`` holds one fitted Spherizer per group (spherize) or one :class:`InverseNormal` per group
    (inverse_normal). ``keys`` are the group keys (tuples of the ``by`` values, ``None`` for NaN; ``[()]``
    without ``by``); ``n_fitted`` the rows each group was fitted on.
    """

    method: str
    features: list[str]
    by: list[str] | None
    keys: list[tuple]
    loc: np.ndarray | None = None
    scale: np.ndarray | None = None
    models: list | None = None
    params: dict = field(default_factory=dict)
    samples: str = "all"
    n_fitted: np.ndarray | None = None
    output_features: list[str] | None = None
    passes: int = 1

    def __post_init__(self):
        if self.output_features is None:
            self.output_features = list(self.features)
        self._grouper = _Grouper(self.by, self.keys)

    # -- applying --------------------------------------------------------------------------------------
    def group_codes(self, df: pd.DataFrame) -> np.ndarray:
        """Index into ``keys`` of each row; ``KeyError`` naming the first key that was not fitted."""
        if self.by:
            check_columns(df, self.by, "by")
        return self._grouper.codes(df, grow=False)

    def transform_matrix(self, x: np.ndarray, codes: np.ndarray, inplace: bool = False) -> np.ndarray:
        """Normalize a float64 feature matrix whose rows belong to groups ``codes``."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"expected a matrix with {len(self.features)} feature columns, got shape {x.shape}")
        codes = np.asarray(codes, dtype=np.intp)
        if self.loc is not None:
            out = x if inplace else x.copy()
            if len(self.keys) == 1:
                out -= self.loc[0]
                out /= self.scale[0]
                return out
            return _apply_group_affine(x, out, codes, self.loc, self.scale)
        out = np.empty((len(x), len(self.output_features)), dtype=np.float64)
        order, groups, starts = _group_slices(codes)
        ends = np.r_[starts[1:], len(order)]
        for g, s, e in zip(groups, starts, ends):
            rows = order[s:e] if len(groups) > 1 else slice(None)
            out[rows] = np.asarray(self.models[g].transform(x[rows]), dtype=np.float64)
        return out

    def transform(self, profiles, meta_features="infer", image_features: bool = False) -> pd.DataFrame:
        """Apply the fit to new rows (DataFrame or path); pycytominer's output layout. Rows of a group that was
        not fitted raise ``KeyError`` naming the group key."""
        df = _load(profiles)
        feats, meta = resolve_columns(df, self.features, meta_features, image_features)
        x = _feature_matrix(df, feats)
        if self.method in _REJECT_INF:
            _check_finite(x, feats, df.index)
        if self.method == "spherize":
            _check_no_nan(x, feats, df.index)
        y = self.transform_matrix(x, self.group_codes(df), inplace=True)
        return _assemble(df, meta, feats, self.output_features, y)

    # -- saving ----------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write one ``.npz`` (arrays + a JSON ``spec``), atomically (temporary file, then ``os.replace``)."""
        p = Path(path)
        arrays: dict[str, np.ndarray] = {}
        spec = {
            "format": _FORMAT, "version": 1, "method": self.method, "features": list(self.features),
            "by": self.by, "keys": [list(k) for k in self.keys], "params": self.params, "samples": self.samples,
            "output_features": list(self.output_features), "passes": int(self.passes),
        }
        if self.loc is not None:
            arrays["loc"], arrays["scale"] = np.asarray(self.loc), np.asarray(self.scale)
        if self.n_fitted is not None:
            arrays["n_fitted"] = np.asarray(self.n_fitted, dtype=np.int64)
        if self.models is not None:
            spec["models"] = []
            for i, m in enumerate(self.models):
                if self.method == "inverse_normal":
                    arrays[f"model{i}__quantiles_"] = m.quantiles_
                    spec["models"].append({"n_quantiles_": int(m.n_quantiles_)})
                else:  # Spherizer: its own array / info split (as SpherizeFit saves it)
                    names = []
                    for name, a in m._arrays().items():
                        arrays[f"model{i}__{name}"] = a
                        names.append(name)
                    spec["models"].append({"arrays": names, "info": m._info()})
        try:
            text = json.dumps(spec, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"NormalizeFit.save: a group key or parameter is not JSON-serialisable ({e})") from None
        arrays["spec"] = np.array(text)
        return save_npz_atomic(p, arrays)

    @classmethod
    def load(cls, path) -> "NormalizeFit":
        """Read a fit written by :meth:`save`."""
        spec, arrays = load_npz_spec(path, _FORMAT, "NormalizeFit")
        models = None
        if "models" in spec:
            models = []
            for i, st in enumerate(spec["models"]):
                if spec["method"] == "inverse_normal":
                    models.append(InverseNormal(arrays[f"model{i}__quantiles_"]))
                else:
                    from phenovec.process.spherize import Spherizer

                    p = spec["params"]
                    sph = Spherizer._from_arrays(p["spherize_method"], p["spherize_epsilon"], p["spherize_center"],
                                                 {k: arrays[f"model{i}__{k}"] for k in st["arrays"]}, st["info"],
                                                 spec["features"])
                    sph.return_numpy = True
                    models.append(sph)
        return cls(
            method=spec["method"], features=spec["features"], by=spec["by"],
            keys=[tuple(k) for k in spec["keys"]], loc=arrays.get("loc"), scale=arrays.get("scale"),
            models=models, params=spec["params"], samples=spec["samples"], n_fitted=arrays.get("n_fitted"),
            output_features=spec["output_features"], passes=spec.get("passes", 1),
        )


class InverseNormal:
    """sklearn ``QuantileTransformer(output_distribution="normal", n_quantiles=min(n_quantiles, rows),
    subsample=None)``: same quantiles (``np.nanpercentile`` at ``100 * linspace(0, 1, n_quantiles_)``), same
    transform (mean of the two-sided ``np.interp``, bounds at ``1e-7``, ``ndtri``, clip at
    ``ndtri(1e-7 - eps)``), NaN kept; the ``ndtri`` and the percentiles vectorised over the columns.
    Equal to pycytominer's (bit-identical in the tests) whenever it fits on at most 10,000 rows."""

    BOUNDS_THRESHOLD = 1e-7  # sklearn.preprocessing._data.BOUNDS_THRESHOLD

    def __init__(self, quantiles: np.ndarray):
        self.quantiles_ = np.asarray(quantiles, dtype=np.float64)
        self.n_quantiles_ = self.quantiles_.shape[0]
        self.references_ = np.linspace(0, 1, self.n_quantiles_, endpoint=True)

    @classmethod
    def fit(cls, x: np.ndarray, n_quantiles: int) -> "InverseNormal":
        nq = max(1, min(int(n_quantiles), len(x)))
        return cls(nan_percentiles(x, np.linspace(0, 1, nq, endpoint=True) * 100))

    def transform(self, x: np.ndarray) -> np.ndarray:
        from scipy.special import ndtri

        x = np.asarray(x, dtype=np.float64)
        q, r = self.quantiles_, self.references_
        r_rev = -r[::-1]
        u = np.empty(x.shape, dtype=np.float64, order="F")
        bt = self.BOUNDS_THRESHOLD
        for j in range(x.shape[1]):
            xj, qj, uj = x[:, j], q[:, j], u[:, j]
            nan = np.isnan(xj)
            if nan.any():
                f = ~nan
                uj[nan] = np.nan
                uj[f] = 0.5 * (np.interp(xj[f], qj, r) - np.interp(-xj[f], -qj[::-1], r_rev))
            else:
                np.subtract(np.interp(xj, qj, r), np.interp(-xj, -qj[::-1], r_rev), out=uj)
                uj *= 0.5
            with np.errstate(invalid="ignore"):
                uj[xj + bt > qj[-1]] = 1
                uj[xj - bt < qj[0]] = 0
        with np.errstate(invalid="ignore", divide="ignore"):
            y = ndtri(u)
        return np.clip(y, ndtri(bt - np.spacing(1)), ndtri(1 - (bt - np.spacing(1))), out=y)


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _load(profiles) -> pd.DataFrame:
    if isinstance(profiles, pd.DataFrame):
        return profiles
    from phenovec.io.profiles import read_table

    return read_table(profiles)


def _apply_group_affine(x: np.ndarray, out: np.ndarray, codes: np.ndarray, loc: np.ndarray, scale: np.ndarray,
                        block_rows: int = 4096) -> np.ndarray:
    """``out[i] = (x[i] - loc[codes[i]]) / scale[codes[i]]`` (the same two IEEE operations as the peer's
    ``(x - loc) / scale``, so bit-identical), without gathering rows of a column-major matrix: column by column
    when ``x`` is Fortran-ordered (each column contiguous; ``loc[codes, j]`` gathers from a small table),
    else in blocks of rows. ``out`` may be ``x``."""
    if x.flags.f_contiguous and out.flags.f_contiguous:
        for j in range(x.shape[1]):
            np.subtract(x[:, j], loc[codes, j], out=out[:, j])
            out[:, j] /= scale[codes, j]
        return out
    for s in range(0, x.shape[0], block_rows):
        c = codes[s : s + block_rows]
        np.subtract(x[s : s + block_rows], loc[c], out=out[s : s + block_rows])
        out[s : s + block_rows] /= scale[c]
    return out


def _feature_matrix(df: pd.DataFrame, feats: Sequence[str]) -> np.ndarray:
    """The features as a float64 column-major matrix (:func:`columns.numeric_features` with ``order="F"``):
    column-major is how sklearn sees the peer's DataFrame, and what the column statistics read."""
    return numeric_features(df, feats, np.float64, order="F")


def _check_method(method: str) -> str:
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"unknown normalize method {method!r}; use one of {list(METHODS)}")
    return method.lower()


def _check_finite(x: np.ndarray, features: Sequence[str], index) -> None:
    with np.errstate(invalid="ignore", over="ignore"):
        suspect = np.flatnonzero(~np.isfinite(x.sum(axis=0)))  # inf (or NaN, or overflow) in the column sum
    if not len(suspect):
        return
    bad = np.isinf(x[:, suspect])
    if bad.any():
        r, c = np.argwhere(bad)[0]
        c = suspect[c]
        raise ValueError(f"feature column {features[c]!r} holds {x[r, c]} at row {index[r]!r}: standardize, "
                         "robustize, inverse_normal and spherize reject infinite values (as pycytominer/sklearn); "
                         "replace them (e.g. with NaN) first")


def _check_no_nan(x: np.ndarray, features: Sequence[str], index) -> None:
    nan = np.isnan(x)
    if nan.any():
        r, c = np.argwhere(nan)[0]
        raise ValueError(f"spherize cannot use missing values: feature column {features[c]!r} is NaN at row "
                         f"{index[r]!r}; drop or impute NaN first (e.g. feature_select(operation='drop_na_columns'))")


def _passthrough(columns, feats, meta) -> list:
    skip = set(feats) | set(meta)
    return [c for c in columns if c not in skip and isinstance(c, str) and c.startswith(("Image_", "ome_arrow_"))]


def _assemble(df: pd.DataFrame, meta, feats, out_names, y: np.ndarray) -> pd.DataFrame:
    """pycytominer's layout: metadata, pass-through image columns, normalized features; the input's index."""
    feat_df = pd.DataFrame(y, columns=list(out_names), index=df.index)
    parts = [df.loc[:, list(meta)], df.loc[:, _passthrough(df.columns, feats, meta)], feat_df]  # .loc copies
    return pd.concat(parts, axis=1, **_NO_COPY)  # the output owns ``y``: no second copy of the features


def _params(method, mad_robustize_epsilon, spherize_center, spherize_method, spherize_epsilon,
            inverse_normal_n_quantiles) -> dict:
    if method == "mad_robustize":
        if mad_robustize_epsilon is None:
            raise ValueError("mad_robustize_epsilon must be a float")
        return {"mad_robustize_epsilon": float(mad_robustize_epsilon)}
    if method == "spherize":
        return {"spherize_center": bool(spherize_center), "spherize_method": spherize_method,
                "spherize_epsilon": float(spherize_epsilon)}
    if method == "inverse_normal":
        if int(inverse_normal_n_quantiles) < 1:
            raise ValueError(f"inverse_normal_n_quantiles must be >= 1, got {inverse_normal_n_quantiles}")
        return {"inverse_normal_n_quantiles": int(inverse_normal_n_quantiles)}
    return {}


def _fit_matrix(x: np.ndarray, mask: np.ndarray, codes: np.ndarray, grouper: _Grouper, method: str,
                params: dict, feats: list[str], samples: str) -> NormalizeFit:
    """Fit ``method`` on the rows ``mask`` selects, separately for each group of ``codes``."""
    G = len(grouper.keys)
    n_fit = np.bincount(codes[mask], minlength=G)
    _check_groups(n_fit, grouper, samples)
    xf, cf = (x, codes) if mask.all() else (x[mask], codes[mask])
    loc = scale = models = None
    out_names = list(feats)
    order, groups, starts = _group_slices(cf)
    ends = np.r_[starts[1:], len(order)]
    slices = [order[s:e] if G > 1 else slice(None) for s, e in zip(starts, ends)]
    if method == "standardize":
        loc = np.empty((G, len(feats)))
        scale = np.empty((G, len(feats)))
        for g, rows in zip(groups, slices):
            loc[g], scale[g] = _standard_loc_scale(xf[rows])
    else:
        if method in ("robustize", "mad_robustize"):
            loc = np.empty((G, len(feats)))
            scale = np.empty((G, len(feats)))
            for g, rows in zip(groups, slices):
                xg = xf[rows]
                if method == "robustize":
                    loc[g], scale[g] = _robust_loc_scale(nan_quantiles(xg, ["median", 0.25, 0.75]))
                else:
                    med = nan_quantiles(xg, ["median"])[0]
                    loc[g] = med
                    dev = xg - med
                    np.abs(dev, out=dev)
                    scale[g] = _mad_scale(nan_quantiles(dev, ["median"], overwrite=True)[0],
                                          params["mad_robustize_epsilon"])
        elif method == "inverse_normal":
            models = [None] * G
            for g, rows in zip(groups, slices):
                models[g] = InverseNormal.fit(xf[rows], params["inverse_normal_n_quantiles"])
        else:  # spherize
            from phenovec.process.spherize import Spherizer

            models = [None] * G
            for g, rows in zip(groups, slices):
                try:
                    models[g] = Spherizer(method=params["spherize_method"], epsilon=params["spherize_epsilon"],
                                          center=params["spherize_center"], return_numpy=True).fit(xf[rows],
                                                                                                   names=feats)
                except ValueError as e:
                    if not grouper.by:
                        raise
                    raise ValueError(f"group {_describe_key(grouper.by, grouper.keys[g])}: {e}") from None
            out_names = list(models[0].output_names(list(feats)))
    return NormalizeFit(method=method, features=list(feats), by=grouper.by, keys=list(grouper.keys), loc=loc,
                        scale=scale, models=models, params=params, samples=samples, n_fitted=n_fit,
                        output_features=out_names)


def _check_groups(n_fit: np.ndarray, grouper: _Grouper, samples: str) -> None:
    empty = np.flatnonzero(n_fit == 0)
    if len(empty):
        if grouper.by:
            key = grouper.keys[empty[0]]
            more = f" (and {len(empty) - 1} more groups)" if len(empty) > 1 else ""
            raise ValueError(f"samples query {samples!r} matches no row in group "
                             f"{_describe_key(grouper.by, key)}{more}: nothing to fit that group on")
        raise ValueError(f"samples query {samples!r} matches no row")


# ---------------------------------------------------------------------------------------------------------
# in memory
# ---------------------------------------------------------------------------------------------------------
def normalize(
    profiles,
    features="infer",
    image_features: bool = False,
    meta_features="infer",
    samples: str = "all",
    method: str = "standardize",
    output_file=None,
    output_type: str | None = None,
    mad_robustize_epsilon: float | None = 1e-18,
    spherize_center: bool = True,
    spherize_method: str = "ZCA-cor",
    spherize_epsilon: float = 1e-6,
    inverse_normal_n_quantiles: int = 1000,
    *,
    by: str | Sequence[str] | None = None,
    fit: "NormalizeFit | str | os.PathLike | None" = None,
    return_fit: bool = False,
):
    """pycytominer 1.7.1 ``normalize`` (see the module docstring for each method and the tolerance).

    ``profiles``: DataFrame or path. ``samples``: ``"all"`` or a filter choosing the rows to fit on
    (:mod:`phenovec.io.row_filter`: pycytominer's ``"Metadata_broad_sample == 'DMSO'"``, never run as code);
    every row is transformed. ``by``: column(s); each group (NaN keys included, as their own group) is fitted
    on its own selected rows and transformed with its own fit; a group where ``samples`` selects no row raises
    ``ValueError`` naming the group and the query. ``fit``: a :class:`NormalizeFit` or its ``.npz`` path
    to apply instead of fitting (its method, features, groups and parameters are used; ``features`` must be
    ``"infer"`` or the fit's features). ``return_fit``: also return the fit. With ``output_file`` the table is
    written (CSV / Parquet / AnnData by name or ``output_type``) and its path returned, as pycytominer.

    Errors: unknown columns (``KeyError``), non-numeric feature values (column, row and value named), infinite
    values (methods other than mad_robustize), NaN in rows fitted by spherize, unknown method.
    """
    df = _load(profiles)
    if fit is not None:
        if not isinstance(fit, NormalizeFit):
            fit = NormalizeFit.load(fit)
        if not (isinstance(features, str) and features == "infer") and list(features) != list(fit.features):
            raise ValueError("features differ from the saved fit's features; pass features='infer' to use the fit's")
        out = fit.transform(df, meta_features=meta_features, image_features=image_features)
    else:
        method = _check_method(method)
        params = _params(method, mad_robustize_epsilon, spherize_center, spherize_method, spherize_epsilon,
                         inverse_normal_n_quantiles)
        feats, meta = resolve_columns(df, features, meta_features, image_features)
        by_cols = _by_list(by)
        if by_cols:
            check_columns(df, by_cols, "by")
        x = _feature_matrix(df, feats)
        if method in _REJECT_INF:
            _check_finite(x, feats, df.index)
        if method == "spherize":
            _check_no_nan(x, feats, df.index)
        mask = select_samples(df, samples)
        grouper = _Grouper(by_cols)
        codes = grouper.codes(df, grow=True)
        fit = _fit_matrix(x, mask, codes, grouper, method, params, feats, samples)
        y = fit.transform_matrix(x, codes, inplace=True)
        out = _assemble(df, meta, feats, fit.output_features, y)
    result = out
    if output_file is not None:
        from phenovec.io.profiles import write_profiles

        write_profiles(out, output_file, output_type=output_type, features=fit.output_features)
        result = str(output_file)
    return (result, fit) if return_fit else result


# ---------------------------------------------------------------------------------------------------------
# streamed
# ---------------------------------------------------------------------------------------------------------
def _batch_mask(batch: pd.DataFrame, samples: "RowFilter | None") -> np.ndarray:
    """The rows of one batch that ``samples`` (parsed once by :func:`_samples_filter`; None: all) selects."""
    if samples is None:
        return np.ones(len(batch), dtype=bool)
    return samples.mask(batch)


def _samples_filter(samples) -> "RowFilter | None":
    """``samples`` checked before any pass: None for ``"all"``, else the parsed filter (never run as code)."""
    if samples is None or samples == "all":
        return None
    return parse_filter(samples, key="samples")


def normalize_stream(
    source,
    output_file,
    features="infer",
    image_features: bool = False,
    meta_features="infer",
    samples: str = "all",
    method: str = "standardize",
    by: str | Sequence[str] | None = None,
    batch_rows: int = 65536,
    mad_robustize_epsilon: float | None = 1e-18,
    *,
    fit: "NormalizeFit | str | os.PathLike | None" = None,
    return_fit: bool = False,
    progress: bool | None = None,
    quantile_options: dict | None = None,
):
    """``normalize`` for inputs larger than memory: fit passes over ``source``, then one transform pass writing
    Parquet batch by batch (to a temporary file renamed into place at the end: a failure leaves no output).

    ``source``: anything :func:`phenovec.process.source.open_source` accepts (DataFrame, Parquet file or
    directory, CSV, Zarr embedding store). Fits standardize (count, mean and squared deviations per batch, merged in float64 (Chan et al.):
    equal to :func:`normalize` to ~1e-12 relative), robustize and mad_robustize (exact streamed order
    statistics, :mod:`phenovec.process.column_quantiles`: equal to :func:`normalize` bit for bit; a few more
    passes, each reading the input once). Memory depends on batch_rows x columns and groups x columns, never
    on the number of rows. ``inverse_normal`` and ``spherize`` are not fitted here (spherize streaming lives in
    :mod:`phenovec.process.spherize`); any saved fit (``fit=``, all methods) is applied in a single pass.
    ``quantile_options``: ``bits`` / ``collect_limit`` / ``max_cells`` / ``max_values`` of
    :class:`~phenovec.process.column_quantiles.QuantileSelector` (passes vs memory; same result).
    Returns the output path (and the fit with ``return_fit``; ``fit.passes`` = fitting passes over the input).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from phenovec.process.source import open_source

    out_path = Path(output_file)
    if not out_path.name.lower().endswith((".parquet", ".pq")):
        raise ValueError(f"normalize_stream writes Parquet: name the output *.parquet, got {out_path.name!r}")
    if int(batch_rows) < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    batch_rows = int(batch_rows)
    samples_filter = _samples_filter(samples) if fit is None else None  # checked before reading any row
    src = open_source(source)
    if src.num_rows == 0:
        raise ValueError(f"{getattr(src, 'name', 'source')}: no rows to normalize")
    if progress is None:
        progress = sys.stderr.isatty()
    n_batches = -(-src.num_rows // batch_rows)

    def batches(desc):
        return tqdm(src.iter_batches(batch_rows=batch_rows), total=n_batches, desc=desc, disable=not progress,
                    unit="batch", leave=False)

    head = next(iter(src.iter_batches(batch_rows=min(batch_rows, 1000))))
    given_fit = fit is not None
    if given_fit:
        if not isinstance(fit, NormalizeFit):
            fit = NormalizeFit.load(fit)
        if not (isinstance(features, str) and features == "infer") and list(features) != list(fit.features):
            raise ValueError("features differ from the saved fit's features; pass features='infer' to use the fit's")
        feats, meta = resolve_columns(head, fit.features, meta_features, image_features)
        if fit.by:
            check_columns(head, fit.by, "by")
    else:
        method = _check_method(method)
        if method not in STREAM_METHODS:
            raise ValueError(f"normalize_stream fits {list(STREAM_METHODS)}; fit {method!r} in memory with "
                             "normalize(..., return_fit=True) (spherize streaming: phenovec.process.spherize) "
                             "and apply it streamed with normalize_stream(..., fit=...)")
        params = _params(method, mad_robustize_epsilon, True, "ZCA-cor", 1e-6, 1000)
        feats, meta = resolve_columns(head, features, meta_features, image_features)
        by_cols = _by_list(by)
        if by_cols:
            check_columns(head, by_cols, "by")
        fit = _fit_stream(batches, feats, samples, samples_filter, method, params, by_cols,
                          quantile_options or {})
    del head
    check_inf = given_fit and fit.method in _REJECT_INF  # a fresh fit checked every row in its first pass

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    writer = None
    try:
        for batch in batches("normalize_stream: transform"):
            x = _feature_matrix(batch, feats)
            if check_inf:
                _check_finite(x, feats, batch.index)
            if fit.method == "spherize":
                _check_no_nan(x, feats, batch.index)
            y = fit.transform_matrix(x, fit.group_codes(batch), inplace=True)
            table = pa.Table.from_pandas(_assemble(batch, meta, feats, fit.output_features, y), preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(str(tmp), table.schema, compression="snappy")
            elif not table.schema.equals(writer.schema):
                try:
                    table = table.cast(writer.schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
                    raise ValueError(f"rows {batch.index[0]}..{batch.index[-1]}: column types differ from the first "
                                     f"batch's ({e})") from None
            writer.write_table(table)
        writer.close()
        writer = None
        os.replace(tmp, out_path)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    return (str(out_path), fit) if return_fit else str(out_path)


def _fit_stream(batches, feats, samples, flt, method, params, by_cols, qopts) -> NormalizeFit:
    """Fitting passes of :func:`normalize_stream` (see there); ``flt``: ``samples`` parsed (None: all rows)."""
    grouper = _Grouper(by_cols)
    d = len(feats)
    acc = _Moments(d) if method == "standardize" else ColumnRange(d)
    n_fit = np.zeros(0, dtype=np.int64)
    passes = 1
    for batch in batches("normalize_stream: pass 1 (fit)"):
        x = _feature_matrix(batch, feats)
        if method in _REJECT_INF:
            _check_finite(x, feats, batch.index)
        mask = _batch_mask(batch, flt)
        codes = grouper.codes(batch, grow=True)
        if len(n_fit) < len(grouper.keys):
            n_fit = np.r_[n_fit, np.zeros(len(grouper.keys) - len(n_fit), dtype=np.int64)]
        n_fit += np.bincount(codes[mask], minlength=len(grouper.keys))
        if mask.any():
            acc.update(x[mask], codes[mask])
    _check_groups(n_fit, grouper, samples)
    G = len(grouper.keys)
    if method == "standardize":
        acc._grow(G)
        loc, scale = acc.loc_scale()
    else:
        acc._grow(G)

        def select(qs, vmin, vmax, values_of):
            nonlocal passes
            sel = QuantileSelector(acc.count, vmin, vmax, qs, **qopts)
            while not sel.done:
                passes += 1
                for batch in batches(f"normalize_stream: pass {passes} (quantiles)"):
                    mask = _batch_mask(batch, flt)
                    if mask.any():
                        sub = batch[mask]
                        codes = grouper.codes(sub, grow=False)
                        sel.update(values_of(_feature_matrix(sub, feats), codes), codes)
                sel.end_pass()
            return sel.values()

        q = select(["median", 0.25, 0.75] if method == "robustize" else ["median"], acc.min, acc.max,
                   lambda x, codes: x)
        if method == "robustize":
            loc, scale = _robust_loc_scale(q)
        else:
            med = q[0]
            with np.errstate(invalid="ignore"):
                top = np.fmax(np.abs(acc.min - med), np.abs(acc.max - med))
            mad = select(["median"], np.zeros_like(med), np.where(acc.count > 0, top, 0.0),
                         lambda x, codes: np.abs(x - med[codes]))[0]
            loc, scale = med, _mad_scale(mad, params["mad_robustize_epsilon"])
    return NormalizeFit(method=method, features=list(feats), by=by_cols, keys=list(grouper.keys), loc=loc,
                        scale=scale, params=params, samples=samples, n_fitted=n_fit, passes=passes)
