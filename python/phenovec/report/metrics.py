"""Every number of the report, computed with :mod:`phenovec.evaluate` (no metric is reimplemented here).

Row selections and rules (``T`` = treatment column, ``M`` = MOA column, controls from ``control_query``):

- **Replicate mAP** (phenotypic activity, copairs' protocol with ``assign_reference_index``): all wells,
  controls get a unique ``Metadata_Reference_Index`` (others -1); ``average_precision`` with
  ``pos_sameby=[T, ref]``, ``pos_diffby=[]``, ``neg_sameby=[]``, ``neg_diffby=[T, ref]`` (a treatment
  well's positives are its replicate wells, its negatives the control wells); control rows dropped; then
  ``mean_average_precision(sameby=[T])`` with seeded permutation p-values and BH correction.
  Treatments with a single well have no positive and get no mAP (copairs drops them too).
- **MOA mAP** (phenotypic consistency): non-control wells with an MOA; ``pos_sameby=[M]``,
  ``pos_diffby=[T]`` (same MOA, another treatment), ``neg_diffby=[M]``; ``mean_average_precision([M])``.
- **Retrieval metrics** (cytominer-eval family, on non-control wells whose MOA has >= 2 wells):
  ``replicate_groups=[M]``, ``groupby_columns=[T]``: ``enrichment`` at ``percentiles``,
  ``precision_recall`` at ``ks``, ``precision_at_r``, ``hit_at_k`` (``percent_list``) with the
  normalised accumulated score (Bornholdt 2021). Note that at well level a well's same-MOA pairs
  include its own treatment's replicate wells (the MOA mAP above excludes them).
- **PCA** of all well profiles (scikit-learn, ``svd_solver="full"``), 2 components, for the
  plate / control technical-artifact check (Bornholdt 2021).
- **Per-MOA table**: wells, treatments, mean replicate mAP of its treatments and the fraction of them
  significant (corrected p < threshold), the MOA mAP with p-values, and mean precision@R / precision@k
  over its treatments.

The same ``similarity`` metric ('cosine' by default) is used by every metric.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

import phenovec.evaluate as pe
from phenovec.report.inputs import ReportInput

REFERENCE_COLUMN = "Metadata_Reference_Index"
DEFAULT_PERCENTILES = (0.5, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995)
DEFAULT_KS = (1, 5, 10, 20, 50)
DEFAULT_PERCENT_LIST = (1, 2, 5, 10)


@dataclass
class ReportMetrics:
    """Tables (pandas) and scalars behind the report; ``notes`` explain every metric left out."""

    settings: dict
    counts: dict
    replicate_map: pd.DataFrame | None = None
    moa_map: pd.DataFrame | None = None
    enrichment: pd.DataFrame | None = None
    precision_recall: pd.DataFrame | None = None
    precision_recall_summary: pd.DataFrame | None = None
    precision_at_r: pd.DataFrame | None = None
    precision_at_r_mean: float | None = None
    hit_at_k_scores: pd.DataFrame | None = None
    hit_at_k_accumulated: pd.DataFrame | None = None
    pca: pd.DataFrame | None = None
    pca_explained_variance_ratio: list = field(default_factory=list)
    per_moa: pd.DataFrame | None = None
    notes: list = field(default_factory=list)
    # what was evaluated (held-out wells or all) and the training-wells view; set by build_report
    scope: dict = field(default_factory=dict)
    secondary: dict | None = None
    views: pd.DataFrame | None = None  # PCA / UMAP of every well (phenovec.report.views)
    views_explained_variance: list = field(default_factory=list)
    context: Any = None  # phenovec.report.context.ReportContext or None
    qc_wells: pd.DataFrame | None = None
    qc_flagged: pd.DataFrame | None = None
    batch_effects: Any = None  # phenovec.report.batch_effects.BatchEffects or None
    mapping: Any = None  # phenovec.report.mapping.MappingSection or None
    moaprofiler: Any = None  # phenovec.report.moaprofiler.MoaProfilerSection or None
    activity: Any = None  # phenovec.activity.report_section.ActivitySection or None


def activity_table(inp: ReportInput) -> pd.DataFrame:
    """Metadata for the replicate-vs-control mAP: T, M, plate and the reference index of the controls."""
    t, m, p = inp.treatment_column, inp.moa_column, inp.plate_column
    cols = list(dict.fromkeys([t, m, p]))
    meta = inp.meta[cols].copy()
    meta[REFERENCE_COLUMN] = np.where(inp.control, np.arange(len(meta)), -1)
    return meta


def retrieval_rows(inp: ReportInput) -> np.ndarray:
    """Non-control wells with an MOA whose MOA has at least two such wells (row indices)."""
    moa = inp.meta[inp.moa_column]
    ok = ~inp.control & moa.notna().to_numpy()
    counts = moa[ok].value_counts()
    ok &= moa.map(counts).fillna(0).to_numpy() >= 2
    return np.flatnonzero(ok)


def _enrichment(meta, x, groups, percentiles, sim, notes) -> pd.DataFrame | None:
    try:
        return pe.enrichment(meta, x, replicate_groups=groups, percentile=list(percentiles), similarity_metric=sim)
    except ValueError:
        pass  # some percentile is undefined on this table: evaluate them one by one, keep the defined ones
    parts = []
    for q in percentiles:
        try:
            parts.append(pe.enrichment(meta, x, replicate_groups=groups, percentile=q, similarity_metric=sim))
        except ValueError as e:
            notes.append(f"enrichment at percentile {q}: {e}")
    return pd.concat(parts, ignore_index=True) if parts else None


def compute_metrics(inp: ReportInput, *, similarity: str = "cosine", null_size: int = 10000, seed: int = 0,
                    threshold: float = 0.05, percentiles=DEFAULT_PERCENTILES, ks=DEFAULT_KS,
                    percent_list=DEFAULT_PERCENT_LIST) -> ReportMetrics:
    """All report numbers (see the module docstring for the exact selections)."""
    from sklearn.decomposition import PCA

    if int(null_size) < 1:
        raise ValueError(f"null_size must be a positive integer, got {null_size!r}")
    t, m, p = inp.treatment_column, inp.moa_column, inp.plate_column
    meta, x, ctrl = inp.meta, inp.x, inp.control
    notes: list[str] = []
    settings = {"similarity": similarity, "null_size": int(null_size), "seed": int(seed), "threshold": float(threshold),
                "percentiles": [float(q) for q in percentiles], "ks": [int(k) for k in ks],
                "percent_list": list(percent_list), "moa_column": m, "treatment_column": t, "plate_column": p,
                "control_query": inp.control_query, "control_rule": inp.control_rule}
    counts = {"wells": int(len(meta)), "features": int(x.shape[1]), "control_wells": int(ctrl.sum()),
              "treatment_wells": int((~ctrl).sum()), "treatments": int(meta.loc[~ctrl, t].nunique()),
              "moas": int(meta.loc[~ctrl, m].nunique()), "plates": int(meta[p].nunique()),
              "treatment_wells_without_moa": int(meta.loc[~ctrl, m].isna().sum())}
    res = ReportMetrics(settings=settings, counts=counts, notes=notes)

    res.replicate_map = replicate_map_table(inp, similarity, null_size, seed, threshold, notes)
    if res.replicate_map is not None:
        counts["treatments_with_replicates"] = int(len(res.replicate_map))
    res.moa_map = moa_map_table(inp, similarity, null_size, seed, threshold, notes)
    moas = meta.loc[~ctrl & meta[m].notna().to_numpy()].groupby(m)[t].nunique()
    counts["moas_with_two_treatments"] = int((moas >= 2).sum())

    # cytominer-eval retrieval family
    rr = retrieval_rows(inp)
    counts["retrieval_wells"] = int(len(rr))
    if len(rr) >= 3 and meta.iloc[rr][m].nunique() >= 2:
        rmeta = meta.iloc[rr][[t, m]].reset_index(drop=True)
        rx = x[rr]
        common = dict(replicate_groups=[m], similarity_metric=similarity)
        res.enrichment = _enrichment(rmeta, rx, [m], percentiles, similarity, notes)
        pr = pe.precision_recall(rmeta, rx, groupby_columns=[t], k=list(ks), **common)
        res.precision_recall = pr
        res.precision_recall_summary = (pr.groupby("k", sort=False)[["precision", "recall"]].mean().reset_index()
                                        .rename(columns={"precision": "mean_precision", "recall": "mean_recall"}))
        res.precision_at_r, res.precision_at_r_mean = pe.precision_at_r(rmeta, rx, groupby_columns=[t], **common)
        hk = pe.hit_at_k(rmeta, rx, groupby_columns=[t], percent_list=list(percent_list), **common)
        res.hit_at_k_scores = pd.DataFrame({"percent": list(hk.percent_scores.keys()),
                                            "score": list(hk.percent_scores.values())})
        counts["hits"] = len(hk.hits_list)
        res.hit_at_k_accumulated = hk.accumulated
    else:
        notes.append("retrieval metrics (enrichment, precision/recall@k, precision@R, hit@k): need at least two "
                     "MOAs with two or more treatment wells")

    # PCA of the well profiles
    n_comp = min(2, x.shape[0], x.shape[1])
    pca = PCA(n_components=n_comp, svd_solver="full")
    z = pca.fit_transform(x)
    pcs = pd.DataFrame({c: meta[c].to_numpy() for c in dict.fromkeys([p, t, m])})
    pcs["control"] = ctrl
    for i in range(n_comp):
        pcs[f"PC{i + 1}"] = z[:, i]
    res.pca = pcs
    res.pca_explained_variance_ratio = [float(v) for v in pca.explained_variance_ratio_]

    res.per_moa = per_moa_table(inp, res, threshold)
    return res


def replicate_map_table(inp: ReportInput, similarity: str, null_size: int, seed: int, threshold: float,
                        notes: list) -> pd.DataFrame | None:
    """Replicate (phenotypic activity) mAP per treatment: replicates against control wells (module docstring)."""
    t = inp.treatment_column
    act = activity_table(inp)
    try:
        ap = pe.average_precision(act, inp.x, pos_sameby=[t, REFERENCE_COLUMN], pos_diffby=[], neg_sameby=[],
                                  neg_diffby=[t, REFERENCE_COLUMN], distance=similarity, progress_bar=False)
        ap = ap[~inp.control].reset_index(drop=True)
        rmap = pe.mean_average_precision(ap, [t], null_size=null_size, threshold=threshold, seed=seed,
                                         progress_bar=False)
        return rmap.drop(columns=["indices"])
    except pe.UnpairedError as e:
        notes.append(f"replicate mAP: {e} (no treatment has two wells, or no control well)")
        return None


def moa_map_table(inp: ReportInput, similarity: str, null_size: int, seed: int, threshold: float,
                  notes: list) -> pd.DataFrame | None:
    """MOA (phenotypic consistency) mAP per MOA: same MOA, another treatment (module docstring)."""
    t, m, meta = inp.treatment_column, inp.moa_column, inp.meta
    rows = np.flatnonzero(~inp.control & meta[m].notna().to_numpy())
    try:
        moa_ap = pe.average_precision(meta.iloc[rows][[t, m]].reset_index(drop=True), inp.x[rows], pos_sameby=[m],
                                      pos_diffby=[t], neg_sameby=[], neg_diffby=[m], distance=similarity,
                                      progress_bar=False)
        mmap = pe.mean_average_precision(moa_ap, [m], null_size=null_size, threshold=threshold, seed=seed,
                                         progress_bar=False)
        return mmap.drop(columns=["indices"])
    except (pe.UnpairedError, ValueError) as e:
        notes.append(f"MOA mAP: {e} (no MOA has two treatments)")
        return None


def map_summary(inp: ReportInput, similarity: str = "cosine", null_size: int = 10000, seed: int = 0,
                threshold: float = 0.05) -> dict:
    """Replicate and MOA mAP means with their denominators (the secondary, training-wells view of a report)."""
    notes: list[str] = []
    t, m = inp.treatment_column, inp.moa_column
    out = {"wells": int(len(inp.meta)), "treatments": int(inp.meta.loc[~inp.control, t].nunique()),
           "moas": int(inp.meta.loc[~inp.control, m].nunique()), "notes": notes}
    r = replicate_map_table(inp, similarity, null_size, seed, threshold, notes)
    if r is not None:
        out.update(replicate_map=float(r["mean_average_precision"].mean()), replicate_scored=int(len(r)),
                   replicate_significant=int(r["below_corrected_p"].sum()))
    mm = moa_map_table(inp, similarity, null_size, seed, threshold, notes)
    if mm is not None:
        out.update(moa_map=float(mm["mean_average_precision"].mean()), moa_scored=int(len(mm)),
                   moa_significant=int(mm["below_corrected_p"].sum()))
    return out


def per_moa_table(inp: ReportInput, res: ReportMetrics, threshold: float) -> pd.DataFrame:
    """One row per MOA of the treatment wells (see the module docstring)."""
    t, m = inp.treatment_column, inp.moa_column
    tw = inp.meta.loc[~inp.control & inp.meta[m].notna(), [t, m]]
    table = tw.groupby(m, sort=True).agg(n_wells=(t, "size"), n_treatments=(t, "nunique")).reset_index()
    t2m = tw.drop_duplicates(t).set_index(t)[m]
    if res.replicate_map is not None:
        r = res.replicate_map.assign(**{m: lambda d: d[t].map(t2m)}).dropna(subset=[m])
        agg = r.groupby(m).agg(n_treatments_with_replicates=(t, "size"),
                               mean_replicate_map=("mean_average_precision", "mean"),
                               fraction_treatments_significant=("below_corrected_p", "mean")).reset_index()
        table = table.merge(agg, on=m, how="left")
    if res.moa_map is not None:
        mm = res.moa_map[[m, "mean_average_precision", "p_value", "corrected_p_value", "below_corrected_p"]].rename(
            columns={"mean_average_precision": "moa_map", "p_value": "moa_p_value",
                     "corrected_p_value": "moa_corrected_p_value", "below_corrected_p": "moa_significant"})
        table = table.merge(mm, on=m, how="left")
    if res.precision_at_r is not None:
        par = res.precision_at_r.assign(**{m: lambda d: d[t].map(t2m)})
        table = table.merge(par.groupby(m)["precision_at_r"].mean().rename("mean_precision_at_r").reset_index(),
                            on=m, how="left")
    if res.precision_recall is not None:
        k = 10 if 10 in set(res.precision_recall["k"]) else int(res.precision_recall["k"].iloc[0])
        pr = res.precision_recall[res.precision_recall["k"] == k].assign(**{m: lambda d: d[t].map(t2m)})
        table = table.merge(pr.groupby(m)["precision"].mean().rename(f"mean_precision_at_{k}").reset_index(),
                            on=m, how="left")
    return table
