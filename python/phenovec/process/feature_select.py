"""Feature selection with pycytominer 1.7.1's names, arguments and results: ``feature_select`` and its operations.

Peer: ``pycytominer/feature_select.py`` and ``pycytominer/operations/*.py`` (1.7.1). ``feature_select`` applies
the operations in the order given, each to the features that survived the previous ones, each deciding on
the ``samples`` rows only; the output is ``profiles`` minus every excluded column, in the input's column
order. Each operation is also a standalone function returning the names to **exclude** (peer names and
arguments). What each decides (``X`` = the ``samples`` rows of the features, float64):

- ``variance_threshold`` (``min_variance``, 1e-6): sklearn ``VarianceThreshold``: population variance
  (``np.nanvar``, ddof=0, NaN skipped) ``<= min_variance`` is excluded (sklearn keeps ``var > threshold``;
  the peer's docstring says "less than"), all-NaN columns too; with ``min_variance == 0`` the variance is
  ``nanmin(var, ptp)`` as sklearn. inf is an error (sklearn's), and so is "no feature meets the threshold"
  (sklearn raises it, phenovec names the threshold and the count). Computed on the same F-ordered matrix as
  sklearn, so the variances are bit-identical.
- ``frequency_threshold`` (``freq_cut`` 0.05, ``unique_cut`` 0.01; the pre-1.7 caret ``nearZeroVar`` rule):
  excluded if (count of the 2nd most frequent value / count of the most frequent) ``< freq_cut`` (0.0 when
  fewer than two distinct non-NaN values) or (distinct non-NaN values / all rows) ``< unique_cut``. NaN is
  not a value (``value_counts``/``nunique`` drop it) but counts in the row total. Exact integer counts.
- ``correlation_threshold``: see :mod:`phenovec.process.correlation_threshold` (identical excluded set).
- ``drop_na_columns`` (``na_cutoff`` 0.05): excluded if the NaN fraction ``> na_cutoff``.
- ``drop_outliers`` (``outlier_cutoff`` 500): excluded if ``|max| > cutoff`` or ``|min| > cutoff`` over the
  samples (NaN skipped; all-NaN kept; inf excluded).
- ``blocklist``: :func:`phenovec.process.blocklist.get_blocklist_features` (packaged default list, a list,
  a name, a file). As in the peer it ignores ``samples`` and ``features`` and may drop any named column.
- ``noise_removal`` (``noise_removal_perturb_groups``: a column name or one label per ``samples`` row;
  ``noise_removal_stdev_cutoff``): per group the population sd (ddof=0, NaN skipped; rows whose label is
  missing are ignored, as pandas ``groupby`` drops NaN keys), averaged over the groups (NaN skipped);
  excluded if ``> cutoff``. Computed vectorised; features within 1e-9 of the cutoff are recomputed with the
  peer's own pandas expression so the decision is the peer's.

Differences from the peer (documented policies): a ``samples`` query matching no row, an unknown column or
operation, a non-numeric feature and a list of groups of the wrong length raise errors naming them (the
peer sometimes returns silently, e.g. ``return ValueError`` for a bad ``operation`` type); a list of group
labels is matched to the ``samples`` rows by position (the peer aligns it on the index labels 0..m-1,
which mismatches rows when the index is not a default RangeIndex or ``samples`` is a query); missing-value
strings ("nan", "NA", ...) in object feature columns are NaN (``columns.numeric_features``); an operation
applied to zero remaining features excludes nothing. The standalone functions return names in column
order (the peer's ``list(set(...))`` has no order).
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.process.columns import numeric_features, resolve_columns, select_samples

OPERATIONS = (
    "variance_threshold",
    "frequency_threshold",
    "correlation_threshold",
    "drop_na_columns",
    "blocklist",
    "drop_outliers",
    "noise_removal",
)
_NEEDS_MATRIX = set(OPERATIONS) - {"blocklist"}


# ----------------------------------------------------------------------------------------------- inputs


def load_profiles(profiles) -> pd.DataFrame:
    """A DataFrame as is, or a table path read with :func:`phenovec.io.profiles.read_table`."""
    if isinstance(profiles, pd.DataFrame):
        if not profiles.columns.is_unique:
            dup = profiles.columns[profiles.columns.duplicated()][0]
            raise ValueError(f"profiles has duplicate column {dup!r}")
        return profiles
    if isinstance(profiles, (str, os.PathLike)):
        from phenovec.io.profiles import read_table

        return load_profiles(read_table(profiles))
    raise TypeError(f"profiles must be a DataFrame or a table path, got {type(profiles).__name__}")


def feature_matrix(df: pd.DataFrame, features: Sequence[str], rows: np.ndarray | None = None) -> np.ndarray:
    """The ``rows`` (bool mask; all when None) x ``features`` block as an F-ordered float64 matrix
    (:func:`columns.numeric_features`). F order is the layout pycytominer's numpy/sklearn calls see
    (``np.asarray`` of a DataFrame), which makes per-column reductions (``np.nanvar``) and ``np.corrcoef``
    bit-identical to the peer's."""
    sub = df if rows is None or rows.all() else df.loc[rows]
    return numeric_features(sub, list(features), np.float64, order="F")


def _check_fraction(value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} must be between 0 and 1, got {value!r}")
    return v


def sample_rows(df: pd.DataFrame, samples: str = "all") -> np.ndarray:
    """The ``samples`` mask (:func:`columns.select_samples`, which evaluates the query on the columns it names)."""
    return select_samples(df, samples)


def _prepare(population_df, features, samples):
    df = load_profiles(population_df)
    feats, _ = resolve_columns(df, features)
    rows = sample_rows(df, samples)
    return df, feats, rows


# ----------------------------------------------------------------------------------------- operations


def variance_exclusions(x: np.ndarray, names: Sequence[str], min_variance: float = 1e-6) -> list[str]:
    """Names whose variance over the rows of ``x`` is ``<= min_variance`` (sklearn ``VarianceThreshold``)."""
    names = list(names)
    if not names:
        return []
    inf = np.isinf(x).any(axis=0)
    if inf.any():
        j = int(np.flatnonzero(inf)[0])
        raise ValueError(f"variance_threshold: feature {names[j]!r} contains infinity (sklearn rejects it)")
    x = np.asfortranarray(x)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        var = np.nanvar(x, axis=0)
        if min_variance == 0:
            var = np.nanmin(np.array([var, np.ptp(x, axis=0)]), axis=0)
    keep = var > min_variance
    if not keep.any():
        raise ValueError(
            f"variance_threshold: no feature has variance above min_variance={min_variance!r} "
            f"({len(names)} features, {x.shape[0]} rows; sklearn VarianceThreshold raises here too)"
        )
    return [names[j] for j in np.flatnonzero(~keep)]


def variance_threshold(
    population_df: pd.DataFrame,
    features: str | Sequence[str] = "infer",
    samples: str = "all",
    min_variance: float = 1e-6,
) -> list[str]:
    """Features with variance ``<= min_variance`` on the ``samples`` rows (pycytominer 1.7.1, identical set)."""
    if isinstance(min_variance, bool) or not isinstance(min_variance, (int, float)):
        raise ValueError(f"min_variance must be a number, got {min_variance!r}")
    if not min_variance >= 0:
        raise ValueError(f"min_variance must be non-negative, got {min_variance!r}")
    df, feats, rows = _prepare(population_df, features, samples)
    return variance_exclusions(feature_matrix(df, feats, rows), feats, min_variance)


def frequency_exclusions(x: np.ndarray, names: Sequence[str], freq_cut: float = 0.05,
                         unique_cut: float = 0.01) -> list[str]:
    """Names failing caret's ``nearZeroVar`` rule on the rows of ``x`` (see module docstring)."""
    names = list(names)
    n, d = x.shape
    if d == 0:
        return []
    s = np.sort(x, axis=0)  # NaN last
    nvalid = n - np.isnan(x).sum(axis=0)
    new = np.ones_like(s, dtype=bool)
    new[1:] = s[1:] != s[:-1]
    new &= np.arange(n)[:, None] < nvalid[None, :]
    nunique = new.sum(axis=0)
    starts = np.flatnonzero(new.ravel(order="F"))  # column-major: runs of column 0, then column 1, ...
    col = starts // n
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    last = np.ones(len(starts), dtype=bool)
    last[:-1] = col[1:] != col[:-1]
    ends[last] = col[last] * n + nvalid[col[last]]
    lengths = ends - starts
    order = np.lexsort((-lengths, col))
    lengths, col = lengths[order], col[order]
    first = np.flatnonzero(np.r_[True, col[1:] != col[:-1]]) if len(col) else np.array([], dtype=np.int64)
    top1 = np.zeros(d, dtype=np.int64)
    top2 = np.zeros(d, dtype=np.int64)
    top1[col[first]] = lengths[first]
    two = nunique[col[first]] >= 2
    top2[col[first][two]] = lengths[first[two] + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(nunique >= 2, top2 / np.maximum(top1, 1), 0.0)
    unique_ratio = nunique / n
    bad = (ratio < freq_cut) | (unique_ratio < unique_cut)
    return [names[j] for j in np.flatnonzero(bad)]


def frequency_threshold(
    population_df: pd.DataFrame,
    features: str | Sequence[str] = "infer",
    samples: str = "all",
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
) -> list[str]:
    """Near-zero-variance features by frequency and uniqueness (pycytominer 1.7.1, identical set)."""
    freq_cut = _check_fraction(freq_cut, "freq_cut")
    unique_cut = _check_fraction(unique_cut, "unique_cut")
    df, feats, rows = _prepare(population_df, features, samples)
    return frequency_exclusions(feature_matrix(df, feats, rows), feats, freq_cut, unique_cut)


def na_exclusions(x: np.ndarray, names: Sequence[str], cutoff: float = 0.05) -> list[str]:
    """Names whose NaN fraction over the rows of ``x`` is ``> cutoff``."""
    names = list(names)
    if not names:
        return []
    frac = np.isnan(x).sum(axis=0) / x.shape[0]
    return [names[j] for j in np.flatnonzero(frac > cutoff)]


def get_na_columns(
    population_df: pd.DataFrame,
    features: str | Sequence[str] = "infer",
    samples: str = "all",
    cutoff: float = 0.05,
) -> list[str]:
    """Features with a NaN fraction above ``cutoff`` on the ``samples`` rows (pycytominer 1.7.1, identical set)."""
    cutoff = _check_fraction(cutoff, "cutoff")
    df, feats, rows = _prepare(population_df, features, samples)
    return na_exclusions(feature_matrix(df, feats, rows), feats, cutoff)


def outlier_exclusions(x: np.ndarray, names: Sequence[str], outlier_cutoff: float = 500) -> list[str]:
    """Names whose ``|max|`` or ``|min|`` over the rows of ``x`` exceeds ``outlier_cutoff`` (NaN skipped)."""
    names = list(names)
    if not names:
        return []
    hi = np.abs(np.fmax.reduce(x, axis=0))
    lo = np.abs(np.fmin.reduce(x, axis=0))
    return [names[j] for j in np.flatnonzero((hi > outlier_cutoff) | (lo > outlier_cutoff))]


def drop_outlier_features(
    population_df: pd.DataFrame,
    features: str | Sequence[str] = "infer",
    samples: str = "all",
    outlier_cutoff: float = 500,
) -> list[str]:
    """Features whose absolute max or min exceeds ``outlier_cutoff`` (pycytominer 1.7.1, identical set)."""
    df, feats, rows = _prepare(population_df, [features] if isinstance(features, str) and features != "infer"
                               else features, samples)
    return outlier_exclusions(feature_matrix(df, feats, rows), feats, float(outlier_cutoff))


def _group_labels(df: pd.DataFrame, rows: np.ndarray, groups) -> pd.Series:
    """One label per ``samples`` row: a column of ``df`` or a sequence matched by position."""
    if isinstance(groups, str):
        if groups not in df.columns:
            raise KeyError(f"noise_removal_perturb_groups: unknown column {groups!r}")
        return df.loc[rows, groups].reset_index(drop=True)
    if isinstance(groups, (list, tuple, np.ndarray, pd.Series, pd.Index)):
        labels = list(groups)
        m = int(rows.sum())
        if len(labels) != m:
            raise ValueError(
                f"noise_removal_perturb_groups has {len(labels)} labels but the samples select {m} rows"
            )
        return pd.Series(labels)
    raise TypeError(
        "noise_removal_perturb_groups must be a column name or one label per samples row, "
        f"got {type(groups).__name__}"
    )


def noise_exclusions(x: np.ndarray, names: Sequence[str], labels: pd.Series, stdev_cutoff: float) -> list[str]:
    """Names whose mean within-group sd (ddof=0) exceeds ``stdev_cutoff``; ``labels`` = one per row of ``x``."""
    names = list(names)
    if not names:
        return []
    codes, _ = pd.factorize(labels, sort=True)
    use = codes >= 0  # NaN labels: pandas groupby(dropna=True) ignores those rows
    order = np.argsort(codes[use], kind="stable")
    xs = x[use][order]
    cs = codes[use][order]
    if len(cs) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    valid = ~np.isnan(xs)
    with np.errstate(divide="ignore", invalid="ignore"):
        cnt = np.add.reduceat(valid, starts, axis=0).astype(np.float64)
        mean = np.add.reduceat(np.where(valid, xs, 0.0), starts, axis=0) / cnt
        dev = np.where(valid, xs - np.repeat(mean, np.diff(np.r_[starts, len(cs)]), axis=0), 0.0)
        sd = np.sqrt(np.add.reduceat(dev * dev, starts, axis=0) / cnt)
        sd[cnt == 0] = np.nan
        good = ~np.isnan(sd)
        m = np.where(good, sd, 0.0).sum(axis=0) / good.sum(axis=0)
    bad = m > stdev_cutoff
    near = np.flatnonzero(np.abs(m - stdev_cutoff) <= 1e-9 * max(1.0, abs(stdev_cutoff)))
    if len(near):  # decide these with the peer's own pandas expression
        frame = pd.DataFrame(x[:, near], columns=[names[j] for j in near])
        exact = frame.assign(group_id=labels.to_numpy()).groupby("group_id").std(ddof=0).mean()
        bad[near] = (exact > stdev_cutoff).to_numpy()
    return [names[j] for j in np.flatnonzero(bad)]


def noise_removal(
    population_df: pd.DataFrame,
    noise_removal_perturb_groups,
    features: str | Sequence[str] = "infer",
    samples: str = "all",
    noise_removal_stdev_cutoff: float = 0.8,
) -> list[str]:
    """Features whose within-perturbation sd, averaged over perturbations, exceeds the cutoff (pycytominer 1.7.1).

    ``noise_removal_perturb_groups``: a column name, or one label per ``samples`` row (by position).
    """
    df, feats, rows = _prepare(population_df, features, samples)
    labels = _group_labels(df, rows, noise_removal_perturb_groups)
    return noise_exclusions(feature_matrix(df, feats, rows), feats, labels, float(noise_removal_stdev_cutoff))


# ------------------------------------------------------------------------------------------ composition


def _operations(operation) -> list[str]:
    if isinstance(operation, str):
        ops = operation.split()
    elif isinstance(operation, (list, tuple)):
        ops = list(operation)
    else:
        raise TypeError(f"operation must be a string or a list of strings, got {type(operation).__name__}")
    unknown = [op for op in ops if op not in OPERATIONS]
    if unknown:
        raise ValueError(f"unknown feature_select operation {unknown[0]!r}; choose from {list(OPERATIONS)}")
    return ops


def feature_select(
    profiles,
    features: str | Sequence[str] = "infer",
    image_features: bool = False,
    samples: str = "all",
    operation: str | Sequence[str] = "variance_threshold",
    output_file: str | os.PathLike | None = None,
    output_type: str | None = None,
    na_cutoff: float = 0.05,
    corr_threshold: float = 0.9,
    corr_method: str = "pearson",
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    compression_options=None,
    float_format: str | None = None,
    blocklist=None,
    blocklist_name: str | Sequence[str] | None = None,
    blocklist_file: str | os.PathLike | None = None,
    outlier_cutoff: float = 500.0,
    noise_removal_perturb_groups=None,
    noise_removal_stdev_cutoff: float | None = None,
    min_variance: float = 1e-6,
):
    """pycytominer 1.7.1 ``feature_select``: same signature, same output frame (see module docstring).

    ``operation``: one name or a list, applied in order to the surviving features. Returns ``profiles``
    without the excluded columns (input column order), or, with ``output_file``, writes it
    (csv/parquet/h5ad/zarr from ``output_type`` or the file name; ``compression_options`` and
    ``float_format`` as pandas) and returns the path as a string. ``output_type=None`` infers the type from
    the name (the peer defaults to "csv" whatever the name).
    """
    from phenovec.process.blocklist import get_blocklist_features
    from phenovec.process.correlation_threshold import (
        check_correlation_method,
        check_threshold,
        correlation_exclusions,
    )

    ops = _operations(operation)
    # validate every argument an operation will use before any work
    if "correlation_threshold" in ops:
        corr_method = check_correlation_method(corr_method)
        corr_threshold = check_threshold(corr_threshold)
    if "drop_na_columns" in ops:
        na_cutoff = _check_fraction(na_cutoff, "na_cutoff")
    if "frequency_threshold" in ops:
        freq_cut = _check_fraction(freq_cut, "freq_cut")
        unique_cut = _check_fraction(unique_cut, "unique_cut")
    if "variance_threshold" in ops:
        if isinstance(min_variance, bool) or not isinstance(min_variance, (int, float)) or not min_variance >= 0:
            raise ValueError(f"min_variance must be a non-negative number, got {min_variance!r}")
    if "noise_removal" in ops and (noise_removal_perturb_groups is None or noise_removal_stdev_cutoff is None):
        raise ValueError("noise_removal needs both noise_removal_perturb_groups and noise_removal_stdev_cutoff")

    df = load_profiles(profiles)
    feats, _ = resolve_columns(df, features, image_features=image_features)
    rows = sample_rows(df, samples)
    x = feature_matrix(df, feats, rows) if _NEEDS_MATRIX & set(ops) else None
    col = {f: j for j, f in enumerate(feats)}
    labels = _group_labels(df, rows, noise_removal_perturb_groups) if "noise_removal" in ops else None

    excluded: list[str] = []
    for op in ops:
        if x is None or len(feats) == x.shape[1]:
            sub = x
        else:
            sub = np.asfortranarray(x[:, [col[f] for f in feats]])
        if op == "variance_threshold":
            drop = variance_exclusions(sub, feats, min_variance)
        elif op == "frequency_threshold":
            drop = frequency_exclusions(sub, feats, freq_cut, unique_cut)
        elif op == "correlation_threshold":
            drop = correlation_exclusions(sub, feats, corr_threshold, corr_method)
        elif op == "drop_na_columns":
            drop = na_exclusions(sub, feats, na_cutoff)
        elif op == "drop_outliers":
            drop = outlier_exclusions(sub, feats, float(outlier_cutoff))
        elif op == "noise_removal":
            drop = noise_exclusions(sub, feats, labels, float(noise_removal_stdev_cutoff))
        else:  # blocklist
            drop = get_blocklist_features(blocklist=blocklist, blocklist_name=blocklist_name,
                                          population_df=df, blocklist_file=blocklist_file)
        excluded += drop
        gone = set(excluded)
        feats = [f for f in feats if f not in gone]

    gone = set(excluded)
    out = df.drop(columns=[c for c in df.columns if c in gone])
    if output_file is None:
        return out
    from phenovec.io.profiles import write_profiles

    write_profiles(out, output_file, output_type=output_type, compression_options=compression_options,
                   float_format=float_format)
    return str(output_file)
