"""The batch corrections as profile-table steps (for ``phenovec process`` recipes and the run pipeline), in
pycytominer's vocabulary: ``step(profiles, *, features="infer", meta_features="infer", ...) -> DataFrame`` with the
``Metadata_*`` columns (and pass-through ``Image_*`` / ``ome_arrow_*`` columns) kept in front, the index kept.

Row selections (``controls``, ``negcon``, ``background``, ``rows``) are filters of :mod:`phenovec.io.row_filter`
(``"Metadata_pert_type == 'negcon'"``), never run as code. Steps with a fit take ``fit=`` (a
:class:`~phenovec.batch.fit_record.BatchFit` or the path of a saved one) to re-apply it instead of fitting, and
``return_fit=True`` to also return theirs (``(table, fit)``); ``output_file`` writes the table as the process steps
do. Steps compute in float64; when every input feature is float32 the output features are float32 too. Harmony's fit is a Symphony reference (:mod:`phenovec.batch.symphony`): re-applied, it maps new profiles onto the
fitted run instead of running Harmony again.

Re-applying a fit takes the columns the fit recorded (its features, and its batch, well, count, arm or row-filter
columns) unless the call names others; the arguments only fitting needs (``controls``, ``negcon``, ``background``)
may then be left out. A fit's arrays are checked against its features before use: a fit edited by hand, or saved
for other columns, is refused naming its file.
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.batch.finite import require_finite
from phenovec.batch.fit_record import BatchFit, as_fit
from phenovec.batch.mapping_confidence import MAPPING_DISTANCE
from phenovec.error_context import with_context
from phenovec.io.profiles import declare_features, declared_features
from phenovec.process.columns import check_columns, numeric_features, resolve_columns, select_samples


class _Default(str):
    """A column argument left at its default: re-applying a fit, the column the fit recorded is used instead."""


def _recorded(fit, name: str, value):
    """``value``, or, re-applying ``fit`` with ``value`` left at its default, the fit's recorded ``name``."""
    if fit is not None and isinstance(value, _Default) and name in fit.params:
        return fit.params[name]
    return value


def _needed(value, name: str, step: str, example: str):
    """``value``, which fitting ``step`` needs: ``ValueError`` saying how to give it when it is missing."""
    if value is None:
        raise ValueError(f"{step} needs {name} to fit: a row filter such as \"{example}\" (--set {name}=... on the "
                         f"command line, {name}: ... in a recipe); or give a fit to re-apply")
    return value


def _load(profiles) -> pd.DataFrame:
    if isinstance(profiles, pd.DataFrame):
        return profiles
    from phenovec.io.profiles import read_table

    return read_table(profiles)


def _columns(df, features, meta_features, image_features, exclude: Sequence[str] = ()):
    feats, meta = resolve_columns(df, features, meta_features, image_features)
    feats = [f for f in feats if f not in set(exclude)]
    if not feats:
        raise ValueError("no feature columns left to correct")
    return feats, meta


def _finish(df, feats, meta, out: np.ndarray, names, fit, return_fit, output_file, output_type=None):
    passthrough = [c for c in df.columns if c not in set(feats) and c not in set(meta)
                   and str(c).startswith(("Image_", "ome_arrow_"))]
    kept = [c for c in df.columns if c not in set(feats) and c not in set(meta) and c not in set(passthrough)]
    clash = [c for c in names if c in set(meta) | set(passthrough) | set(kept)]
    if clash:
        raise ValueError(f"the output column {clash[0]!r} is also a column of the input that is not a feature; "
                         "rename or drop it, or name the features to correct with features=[...]")
    if feats and all(df[c].dtype == np.float32 for c in feats):
        # computed in float64; a float32 table stays float32 (half the memory and file); no copy when a step
        # already wrote float32
        out = out.astype(np.float32, copy=False)
    # copy=False: the result's features are ``out`` itself, not one more copy of the table (``out`` is the step's
    # own new array; the metadata slices above are copies)
    result = pd.concat([df.loc[:, meta], df.loc[:, passthrough], df.loc[:, kept],
                        pd.DataFrame(out, columns=list(names), index=df.index, copy=False)], axis="columns",
                       copy=False)
    if list(names) != list(feats) or declared_features(df) is not None:
        # new feature columns (PC1..), or an input whose features were declared: declared, so that a later step (in
        # memory, or through Parquet / AnnData, which keep the list) takes them, not the kept columns: its inference
        # took CellProfiler-prefixed columns left over, or every other numeric column (a class code), for features.
        # (pd.concat keeps no attrs here: the declaration is made again, not inherited.)
        declare_features(result, names)
    if output_file is not None:
        from phenovec.io.profiles import write_profiles

        write_profiles(result, output_file, output_type=output_type, features=list(names))
        result = str(output_file)
    return (result, fit) if return_fit else result


def _with_column(df, meta, name, values):
    """``df`` with the metadata column ``name`` set (replaced if there) and ``meta`` listing it."""
    df = df.copy()
    df[name] = values
    return df, list(meta) + ([name] if name not in set(meta) else [])


def _finite(x, feats, index, step):
    require_finite(x, step, lambda r: index[r], lambda c: feats[c])


def _prepare(df, step, fit, features, meta_features, image_features, exclude=(), finite=False):
    """``(fit or None, features, metadata, feature matrix)``: with a fit, its features; else the inferred ones."""
    if fit is not None:
        fit = as_fit(fit, step)
        feats, meta = _columns(df, fit.param("features"), meta_features, image_features)
    else:
        feats, meta = _columns(df, features, meta_features, image_features, exclude=exclude)
    x = numeric_features(df, feats, np.float64)
    if finite:
        _finite(x, feats, df.index, step)
    return fit, feats, meta, x


def harmony(
    profiles,
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    vars_use: str | Sequence[str] | None = None,
    n_components: int | None = None,
    theta=None,
    lamb=None,
    sigma: float = 0.1,
    nclust: int | None = None,
    max_iter_harmony: int = 10,
    max_iter_kmeans: int = 4,
    epsilon_cluster: float = 1e-3,
    epsilon_harmony: float = 1e-2,
    random_state: int = 0,
    ncores: int = 0,
    device: str | None = None,
    mapping_confidence: bool | None = None,
    fit=None,
    image_features: bool = False,
    return_fit: bool = False,
    output_file: str | os.PathLike | None = None,
):
    """Harmony (:func:`phenovec.batch.harmony.run_harmony`, harmonypy 2.1.0's numbers) on the features, or on their
    first ``n_components`` principal components (sklearn PCA, full SVD, then columns ``PC1..``); batch variables
    ``vars_use``
    (default ``Metadata_Plate``) are metadata columns. ``device``: None (the exact CPU kernels), ``"cuda"`` /
    ``"cuda:N"`` / ``"cpu"`` (PyTorch) or ``"auto"`` (:func:`phenovec.batch.harmony.harmony_device`). Output: the corrected features under the same names.

    The fit is a Symphony reference (:mod:`phenovec.batch.symphony`): with ``fit=``, the profiles are not corrected
    by a new Harmony run but mapped onto the fitted one (its features, its PCA if any, its batch variables unless
    ``vars_use`` names others; ``lamb``: the query's ridge penalty, default 1), so new plates join a corrected set
    without changing it.

    ``mapping_confidence=True`` also keeps each cluster's spread in the fit and adds Symphony's per-cell mapping
    metric (:mod:`phenovec.batch.mapping_confidence`) as a ``Metadata_mapping_distance`` column: on the reference's
    rows when fitting (scored in sample, so they run low), on the mapped rows when re-applying. Default (None): off
    when fitting; when re-applying, on if the fit kept the spread."""
    from phenovec.batch.harmony import harmony_device, run_harmony
    from phenovec.batch.mapping_confidence import ClusterSpread
    from phenovec.batch.symphony import HarmonyReference

    if mapping_confidence is not None and not isinstance(mapping_confidence, (bool, np.bool_)):
        raise ValueError(f"mapping_confidence must be true or false, got {mapping_confidence!r}")
    device = harmony_device(device)  # a bad device is refused before the table is read and the PCA fitted
    df = _load(profiles)
    if fit is not None:
        fit = as_fit(fit, "harmony")
        missing = [a for a in ("cluster_sums", "cluster_weights", "sigma") if a not in fit.arrays]
        if missing:
            raise ValueError(f"this harmony fit has no Symphony reference ({', '.join(missing)} missing): fit it "
                             "again with this version to map new profiles onto it")
        vars_use = fit.param("vars_use") if vars_use is None else vars_use
        has_spread = "spread_covariances" in fit.arrays
        if mapping_confidence and not has_spread:
            raise ValueError("mapping_confidence needs the clusters' spread, which this harmony fit did not keep: "
                             "fit it with mapping_confidence=True")
        mapping_confidence = has_spread if mapping_confidence is None else bool(mapping_confidence)
    vars_use = ["Metadata_Plate"] if vars_use is None else [vars_use] if isinstance(vars_use, str) else list(vars_use)
    check_columns(df, vars_use, "vars_use")
    if fit is not None:
        feats, meta = _columns(df, fit.param("features"), meta_features, image_features)
    else:
        feats, meta = _columns(df, features, meta_features, image_features, exclude=vars_use)
    x = numeric_features(df, feats, np.float64)
    _finite(x, feats, df.index, "harmony")
    if not mapping_confidence and MAPPING_DISTANCE in df.columns:
        # an earlier fit's or mapping's metric would pass for this run's (the report reads it as such)
        warnings.warn(f"harmony: dropping the input's {MAPPING_DISTANCE} column: it scores another Harmony run than "
                      "this one (mapping_confidence is off)", UserWarning, stacklevel=2)
        df = df.drop(columns=[MAPPING_DISTANCE])
        meta = [c for c in meta if c != MAPPING_DISTANCE]
    names = feats
    if fit is not None:
        if "pca_components" in fit.arrays:
            x = (x - fit.array("pca_mean", (len(feats),))) @ fit.array("pca_components", (None, len(feats))).T
            names = [f"PC{i}" for i in range(1, x.shape[1] + 1)]
        zero = np.flatnonzero(~(np.abs(x).max(axis=1) > 0))
        if zero.size:
            where = " in the fit's principal components" if names is not feats else ""
            raise ValueError(f"harmony: row {df.index[zero[0]]!r} is all zeros{where}: it has no direction to assign "
                             "to a Harmony cluster")
        dims = x.shape[1]
        sums = fit.array("cluster_sums", (None, dims))
        k = sums.shape[0]
        try:  # a fit edited by hand is refused naming its file
            reference = HarmonyReference(sums, fit.array("cluster_weights", (k,)), fit.array("sigma", (k,)))
            spread = ClusterSpread(fit.array("spread_means", (k, dims)),
                                   fit.array("spread_covariances", (k, dims, dims))) if mapping_confidence else None
        except ValueError as e:
            raise with_context(e, str(fit.source)) from None
        mapped = reference.map(x, df[vars_use], vars_use, lamb=lamb)  # errors name the table's row labels
        if spread is not None:
            df, meta = _with_column(df, meta, MAPPING_DISTANCE, spread.distance(x, mapped.R))
        return _finish(df, feats, meta, mapped.Z_corr, names, fit, return_fit, output_file)
    pca_arrays = {}
    if n_components is not None:
        from sklearn.decomposition import PCA

        if isinstance(n_components, (bool, np.bool_)) or not isinstance(n_components, (int, np.integer)) \
                or n_components < 1:
            raise ValueError(f"harmony: n_components must be a positive whole number, got {n_components!r}")

        model = PCA(n_components=int(n_components), svd_solver="full")  # exact and deterministic (sklearn's "auto"
        # takes a randomized, unseeded SVD from 500 rows: the same table gave another Harmony run each time)
        x = model.fit_transform(x)
        names = [f"PC{i}" for i in range(1, x.shape[1] + 1)]
        pca_arrays = {"pca_mean": model.mean_, "pca_components": model.components_}
    h = run_harmony(x.T, df[vars_use], vars_use, theta=theta, lamb=lamb, sigma=sigma,
                    nclust=nclust, max_iter_harmony=max_iter_harmony, max_iter_kmeans=max_iter_kmeans,
                    epsilon_cluster=epsilon_cluster, epsilon_harmony=epsilon_harmony, random_state=random_state,
                    ncores=ncores, device=device)
    reference = h.reference()
    spread_arrays = {}
    if mapping_confidence:
        spread = ClusterSpread.fit(x, h.R)
        spread_arrays = {"spread_means": spread.means, "spread_covariances": spread.covariances}
        df, meta = _with_column(df, meta, MAPPING_DISTANCE, spread.distance(x, h.R))
    fit = BatchFit("harmony", {"features": feats, "vars_use": vars_use, "n_components": n_components,
                               "random_state": random_state, "objective_harmony": h.objective_harmony,
                               "kmeans_rounds": h.kmeans_rounds},
                   {"centroids": h.Y.T, "cluster_sums": reference.cluster_sums,
                    "cluster_weights": reference.cluster_weights, "sigma": reference.sigma, **pca_arrays,
                    **spread_arrays})
    return _finish(df, feats, meta, h.Z_corr, names, fit, return_fit, output_file)


def tvn(
    profiles,
    controls: str | None = None,
    batch: str | None = _Default("Metadata_Plate"),
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    regularization: float = 0.5,
    target: str = "controls",
    fit=None,
    image_features: bool = False,
    return_fit: bool = False,
    output_file: str | os.PathLike | None = None,
):
    """TVN (:mod:`phenovec.batch.tvn`): PCA on the ``controls`` rows, per-``batch`` CORAL (``batch=None``: none);
    outputs ``PC1..``. Re-applied, the fit's batch column unless ``batch`` names another."""
    from phenovec.batch.tvn import apply_tvn, fit_tvn

    df = _load(profiles)
    fit = None if fit is None else as_fit(fit, "tvn")
    batch = _recorded(fit, "batch", batch)
    if batch is not None:
        check_columns(df, [batch], "batch")
        if df[batch].isna().any():
            raise ValueError(f"batch column {batch!r} is missing in row {df.index[np.argmax(df[batch].isna())]!r}")
    batches = None if batch is None else df[batch].to_numpy()
    fit, feats, meta, x = _prepare(df, "tvn", fit, features, meta_features, image_features, finite=True)
    if fit is None:
        mask = select_samples(df, _needed(controls, "controls", "tvn", "Metadata_pert_type == 'negcon'"),
                              key="tvn controls")
        fit = fit_tvn(x, mask, batches, regularization, target)
        fit.params.update({"features": feats, "controls": controls, "batch": None if batch is None else str(batch)})
    else:
        d = len(feats)
        for name in ("mean1", "scale1", "pca_mean"):
            fit.array(name, (d,))
        p = fit.array("pca_components", (None, d)).shape[0]
        for name in ("mean2", "scale2"):
            fit.array(name, (p,))
        if fit.param("coral"):
            fit.array("coral", (len(fit.param("batches")), p, p))
    out = apply_tvn(fit, x, batches, in_place=True)  # x is this step's own matrix
    del x
    return _finish(df, feats, meta, out, [f"PC{i}" for i in range(1, out.shape[1] + 1)], fit, return_fit, output_file)


def subtract_well_mean(
    profiles,
    well: str = _Default("Metadata_Well"),
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    fit=None,
    image_features: bool = False,
    return_fit: bool = False,
    output_file: str | os.PathLike | None = None,
):
    """Subtract each feature's mean over the rows of the same well position (:mod:`phenovec.batch.well_position`).
    Re-applied, the fit's well column unless ``well`` names another."""
    from phenovec.batch.well_position import subtract_well_means, well_means

    df = _load(profiles)
    fit = None if fit is None else as_fit(fit, "subtract_well_mean")
    well = _recorded(fit, "well", well)
    check_columns(df, [well], "well")
    fit, feats, meta, x = _prepare(df, "subtract_well_mean", fit, features, meta_features, image_features, [well])
    if fit is None:
        labels, means = well_means(x, df[well], df.index, feats)
        fit = BatchFit("subtract_well_mean", {"features": feats, "well": str(well), "wells": labels}, {"means": means})
    wells = fit.param("wells")
    out = subtract_well_means(x, df[well], wells, fit.array("means", (len(wells), len(feats))), in_place=True)
    return _finish(df, feats, meta, out, feats, fit, return_fit, output_file)


def regress_cell_count(
    profiles,
    cell_count: str = _Default("Cells_Count_Count"),
    min_unique: int = 100,
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    fit=None,
    image_features: bool = False,
    return_fit: bool = False,
    output_file: str | os.PathLike | None = None,
):
    """Replace each feature with more than ``min_unique`` values by its OLS residual on ``cell_count``
    (:mod:`phenovec.batch.cell_count`); the count column itself is kept unchanged. Re-applied, the fit's count
    column unless ``cell_count`` names another."""
    from phenovec.batch.cell_count import apply_cell_count, fit_cell_count

    df = _load(profiles)
    fit = None if fit is None else as_fit(fit, "regress_cell_count")
    cell_count = _recorded(fit, "cell_count", cell_count)
    check_columns(df, [cell_count], "cell_count")
    counts = numeric_features(df, [cell_count], np.float64)[:, 0]
    fit, feats, meta, x = _prepare(df, "regress_cell_count", fit, features, meta_features, image_features,
                                   [cell_count])
    if fit is None:
        mask, a, b = fit_cell_count(x, counts, min_unique)
        fit = BatchFit("regress_cell_count", {"features": feats, "cell_count": str(cell_count),
                                              "min_unique": min_unique},
                       {"regressed": mask, "intercept": a, "slope": b})
    d = (len(feats),)
    out = apply_cell_count(x, counts, fit.array("regressed", d).astype(bool), fit.array("intercept", d),
                           fit.array("slope", d), in_place=True)  # x is this step's own matrix
    del x
    return _finish(df, feats, meta, out, feats, fit, return_fit, output_file)


def _positive_threshold(value, where: str) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (np.isfinite(value) and value > 0):
        raise ValueError(f"{where}: threshold must be a finite number > 0, got {value!r}")


def remove_outliers(
    profiles,
    threshold: float = 100.0,
    clip: bool = True,
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    fit=None,
    image_features: bool = False,
    return_fit: bool = False,
    output_file: str | os.PathLike | None = None,
):
    """Drop the features whose 99th percentile of ``|x|`` exceeds ``threshold``, clip the rest to ``+-threshold``
    (:mod:`phenovec.batch.outliers`; the fit keeps the surviving features)."""
    from phenovec.batch.outliers import keep_columns, outlier_features

    df = _load(profiles)
    fit, feats, meta, x = _prepare(df, "remove_outliers", fit, features, meta_features, image_features)
    if fit is not None:
        kept = list(fit.param("kept"))
        threshold, clip = fit.param("threshold"), fit.param("clip")
        unknown = [f for f in kept if f not in set(feats)]
        if unknown:
            raise ValueError(f"{fit.source}: the remove_outliers fit keeps {unknown[0]!r}, which is not one of its "
                             "features")
    _positive_threshold(threshold, "remove_outliers" if fit is None else f"{fit.source}: remove_outliers")
    if fit is None:
        drop = outlier_features(x, threshold)
        kept = [f for f, d in zip(feats, drop) if not d]
        fit = BatchFit("remove_outliers", {"features": feats, "kept": kept, "threshold": float(threshold),
                                           "clip": bool(clip)})
    # the kept columns and the clip in the step's own matrix: re-reading the kept columns and clipping into a new
    # array held two more float64 tables beside it (300k x 500: 5.3 GB peak)
    where = {f: j for j, f in enumerate(feats)}
    out = keep_columns(x, [where[f] for f in kept])
    del x
    if clip:
        np.clip(out, -threshold, threshold, out=out)
    return _finish(df, feats, meta, out, kept, fit, return_fit, output_file)


def rank_int(
    profiles,
    ties: str = "stochastic",
    seed: int = 0,
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    image_features: bool = False,
    output_file: str | os.PathLike | None = None,
):
    """Rank-based inverse normal transform with Blom's constant, per feature (:mod:`phenovec.batch.rank_int`)."""
    from phenovec.batch.rank_int import blom_transform

    df = _load(profiles)
    feats, meta = _columns(df, features, meta_features, image_features)
    x = numeric_features(df, feats, np.float64)
    _finite(x, feats, df.index, "rank_int")
    return _finish(df, feats, meta, blom_transform(x, ties, seed, in_place=True), feats, None, False, output_file)


def pca(
    profiles,
    variance: float = 0.98,
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    fit=None,
    image_features: bool = False,
    return_fit: bool = False,
    output_file: str | os.PathLike | None = None,
):
    """PCA keeping ``variance`` of the variance (:mod:`phenovec.batch.pca`); outputs ``PC1..``."""
    from phenovec.batch.pca import apply_pca, fit_pca

    df = _load(profiles)
    fit, feats, meta, x = _prepare(df, "pca", fit, features, meta_features, image_features, finite=True)
    if fit is None:
        fit = fit_pca(x, variance)
        fit.params["features"] = feats
    else:
        fit.array("mean", (len(feats),))
        fit.array("components", (None, len(feats)))
    float32 = bool(feats) and all(df[c].dtype == np.float32 for c in feats)  # _finish's output type, written
    # directly: the float64 scores (as large as the table at 98 % of 500 random features) are never whole
    out = apply_pca(fit, x, in_place=True, dtype=np.float32 if float32 else np.float64)  # x: this step's own
    del x
    return _finish(df, feats, meta, out, [f"PC{i}" for i in range(1, out.shape[1] + 1)], fit, return_fit, output_file)


def sphere_by_map(
    profiles,
    negcon: str | None = None,
    perturbation: str = "Metadata_JCP2022",
    plate: str = "Metadata_Plate",
    poscon: str | None = None,
    method: str = "ZCA",
    n_epsilons: int = 25,
    epsilons: Sequence[float] | None = None,
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    fit=None,
    image_features: bool = False,
    return_fit: bool = False,
    output_file: str | os.PathLike | None = None,
):
    """Sphering fitted on the ``negcon`` rows with epsilon chosen by mAP over the recipe's grid
    (:mod:`phenovec.batch.sphering_search`); the fit keeps the chosen epsilon, every candidate's scores and the
    whitening (re-applied with ``fit=``): ``((x - mean) / scale) @ W``, ``scale`` the negcon rows' standard
    deviations for the ``-cor`` methods (as :class:`~phenovec.process.spherize.Spherizer` transforms)."""
    from phenovec.batch.sphering_search import choose_epsilon, epsilon_grid
    from phenovec.process.spherize import Spherizer

    df = _load(profiles)
    fit, feats, meta, x = _prepare(df, "sphere_by_map", fit, features, meta_features, image_features, finite=True)
    if fit is None:
        negcon = _needed(negcon, "negcon", "sphere_by_map", "Metadata_pert_type == 'negcon'")
        check_columns(df, [perturbation, plate], "perturbation/plate")
        for column, what in ((perturbation, "perturbation"), (plate, "plate")):
            missing = np.flatnonzero(df[column].isna().to_numpy())
            if missing.size:  # read as the text 'nan' it was one more perturbation / plate, and moved the epsilon
                raise ValueError(f"sphere_by_map: {what} column {column!r} is missing (NaN / None) in row "
                                 f"{df.index[missing[0]]!r} ({missing.size} such rows); drop or fill them first")
        neg = select_samples(df, negcon, key="sphere_by_map negcon")
        pos = None if poscon is None else select_samples(df, poscon, key="sphere_by_map poscon")
        if epsilons is None and not (isinstance(n_epsilons, (int, np.integer)) and n_epsilons >= 1):
            raise ValueError(f"sphere_by_map: n_epsilons must be a whole number >= 1, got {n_epsilons!r}")
        grid = epsilon_grid(n_epsilons) if epsilons is None else np.asarray(epsilons, dtype=np.float64).reshape(-1)
        if grid.size == 0:
            raise ValueError("sphere_by_map: no epsilon to try (epsilons is empty, or n_epsilons < 1)")
        from phenovec.evaluate.average_precision import UnpairedError

        try:
            best, table = choose_epsilon(x, df[perturbation].to_numpy(), df[plate].to_numpy(), neg, method, grid,
                                         pos, names=feats)
        except UnpairedError:
            raise ValueError(f"sphere_by_map: no perturbation in {perturbation!r} (other than the negcon and poscon "
                             "rows) has 2 or more replicate rows, so no epsilon can be scored by mAP; check the "
                             "perturbation column and the negcon filter") from None
        sph = Spherizer(method=method, epsilon=best, center=True, device="cpu").fit(x[neg], names=feats)
        fit = BatchFit("sphere_by_map", {"features": feats, "method": method, "epsilon": best, "negcon": negcon,
                                         "scores": table.to_dict(orient="list")},
                       {"W": sph.W_, "mean": sph.mean_, **({} if sph.scale_ is None else {"scale": sph.scale_})})
    d = len(feats)
    method = fit.param("method")
    z = x - fit.array("mean", (d,))
    if method.endswith("-cor"):
        if "scale" not in fit.arrays:
            raise ValueError(f"{fit.source}: this {method} sphere_by_map fit has no 'scale' (fits saved before "
                             "phenovec kept it whitened unstandardised rows); fit it again")
        z = z / fit.array("scale", (d,))
    out = z @ fit.array("W", (d, None))
    names = [f"PC{i}" for i in range(1, out.shape[1] + 1)] if method.startswith("PCA") else feats
    return _finish(df, feats, meta, out, names, fit, return_fit, output_file)


def arm_correction(
    profiles,
    background: str | None = None,
    arm: str = _Default("Metadata_arm"),
    gene: str | None = "Metadata_Symbol",
    rows: str | None = _Default("all"),
    min_genes: int = 20,
    features: str | Sequence[str] = "infer",
    meta_features: str | Sequence[str] = "infer",
    fit=None,
    image_features: bool = False,
    return_fit: bool = False,
    output_file: str | os.PathLike | None = None,
):
    """CRISPR chromosome-arm correction (:mod:`phenovec.batch.arm_correction`): subtract each arm's mean over the
    ``background`` rows (knockouts of unexpressed genes) from the ``rows`` (default all) on that arm. Re-applied,
    the fit's arm column and row filter unless ``arm`` / ``rows`` name others."""
    from phenovec.batch.arm_correction import apply_arm_means, fit_arm_means

    df = _load(profiles)
    fit = None if fit is None else as_fit(fit, "arm_correction")
    arm, rows = _recorded(fit, "arm", arm), _recorded(fit, "rows", rows)
    check_columns(df, [arm] + ([gene] if gene and fit is None else []), "arm/gene")
    sel = None if rows is None or rows == "all" else select_samples(df, rows, key="arm_correction rows")
    fit, feats, meta, x = _prepare(df, "arm_correction", fit, features, meta_features, image_features)
    if fit is None:
        bg = select_samples(df, _needed(background, "background", "arm_correction", "Metadata_zfpkm < -3"),
                            key="arm_correction background")
        if sel is not None:
            bg = bg & sel  # not in place: the filter's mask may be a read-only view (pandas copy-on-write)
        inf = np.argwhere(np.isinf(x) & bg[:, None])
        if inf.size:  # NaN is skipped by the arms' means (pandas mean); inf would make every row of its arm -inf
            r, c = inf[0]
            raise ValueError(f"arm_correction: value {x[r, c]} in background row {df.index[r]!r}, feature "
                             f"{feats[c]!r}; an infinite value has no mean")
        labels, means = fit_arm_means(x, df[arm].to_numpy(), bg, None if gene is None else df[gene].to_numpy(),
                                      min_genes)
        fit = BatchFit("arm_correction", {"features": feats, "arm": str(arm), "arms": labels, "background": background,
                                          "rows": None if rows is None else str(rows), "min_genes": min_genes},
                       {"means": means})
    arms = fit.param("arms")
    means = fit.array("means", (len(arms), len(feats)))
    if np.isinf(means).any():
        raise ValueError(f"{fit.source}: the arm_correction fit's means hold an infinite value; fit it again")
    out = apply_arm_means(x, df[arm].to_numpy(), arms, means, sel)
    return _finish(df, feats, meta, out, feats, fit, return_fit, output_file)
