"""The report's JSON: every number, tidy (tables as lists of row records), NaN / inf written as ``null``.

Layout (``schema`` = ``phenovec.report/1``)::

    settings, counts, notes, provenance,
    replicate_map:  {per_treatment: [...], mean_map, fraction_significant}
    moa_map:        {per_moa: [...], mean_map, fraction_significant}
    enrichment:     [{enrichment_percentile, threshold, odds_ratio, p-value, ...}]
    precision_recall: {per_treatment: [...], summary: [{k, mean_precision, mean_recall}]}
    precision_at_r: {per_treatment: [...], mean}
    hit_at_k:       {percent_scores: [{percent, score}], accumulated: [{percent, hits, expected, normalised_score}]}
    pca:            {explained_variance_ratio: [...], wells: [{plate, treatment, moa, control, PC1, PC2}]}
    per_moa:        [...]
    scope:          {evaluated, wells, by_split, held_out, split | reason}: which wells the metrics are over
    training_wells: {wells, replicate_map, replicate_scored, ..., moa_map, ...} (secondary view) or null
    views:          {explained_variance_ratio, wells: [{plate, treatment, moa, control, split, PC1, PC2, UMAP1, ...}]}
    qc:             {cells_per_well: [...], flagged_wells: [...], edge: {inside: n, ...}} or null
    training:       the training run's per-epoch table or null; dataset: its name or null
    batch_effects:  {wells, plates, labels, methods, scaled, baseline, undefined, scores: [...], metrics: [...]}
                    or null
    mapping:        {column, per_plate: [...], top: [...]} (profiles mapped with the harmony step's
                    mapping_confidence) or null
    moaprofiler:    {wells, moas, compounds, summary, delta_per_moa, groups, knn, enrichment, holdout} or null
    activity:       {source, auroc: [{learner, M, tasks, auroc}], wilcoxon: [{M, learner, versus, tasks, p}]} or null

A metric that could not be computed is ``null`` and ``notes`` says why.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from phenovec.report.metrics import ReportMetrics

SCHEMA = "phenovec.report/1"


def clean(v):
    """JSON-safe value: numpy scalars to Python, NaN / inf / NA to None, containers recursively."""
    if isinstance(v, pd.DataFrame):
        return [clean(rec) for rec in v.to_dict(orient="records")]
    if isinstance(v, dict):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray, pd.Series)):
        return [clean(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, str):
        return v
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def _map_block(table: pd.DataFrame | None, key: str):
    if table is None:
        return None
    return {key: table, "mean_map": float(table["mean_average_precision"].mean()),
            "fraction_significant": float(table["below_corrected_p"].mean())}


def report_numbers(r: ReportMetrics, provenance: dict) -> dict:
    """The JSON document (see the module docstring), already cleaned."""
    from phenovec.activity.report_section import activity_numbers
    from phenovec.report.mapping import mapping_numbers

    doc = {
        "schema": SCHEMA,
        "settings": r.settings,
        "counts": r.counts,
        "notes": r.notes,
        "replicate_map": _map_block(r.replicate_map, "per_treatment"),
        "moa_map": _map_block(r.moa_map, "per_moa"),
        "enrichment": r.enrichment,
        "precision_recall": None if r.precision_recall is None else {
            "per_treatment": r.precision_recall, "summary": r.precision_recall_summary},
        "precision_at_r": None if r.precision_at_r is None else {
            "per_treatment": r.precision_at_r, "mean": r.precision_at_r_mean},
        "hit_at_k": None if r.hit_at_k_scores is None else {
            "percent_scores": r.hit_at_k_scores, "accumulated": r.hit_at_k_accumulated},
        "pca": {"explained_variance_ratio": r.pca_explained_variance_ratio, "wells": r.pca},
        "per_moa": r.per_moa,
        "scope": r.scope,
        "training_wells": r.secondary,
        "views": None if r.views is None else {"explained_variance_ratio": r.views_explained_variance,
                                                "wells": r.views},
        "qc": None if r.qc_wells is None else {"cells_per_well": r.qc_wells, "flagged_wells": r.qc_flagged,
                                               "edge": r.context.edge if r.context is not None else None},
        "training": None if r.context is None or r.context.training is None else r.context.training,
        "dataset": None if r.context is None else r.context.dataset,
        "assays": None if r.context is None or r.context.assay_per_task is None else {
            "per_task": r.context.assay_per_task, "summary": r.context.assay_summary},
        "batch_effects": None if r.batch_effects is None else {
            "wells": r.batch_effects.wells, "plates": r.batch_effects.plates, "labels": r.batch_effects.labels,
            "methods": r.batch_effects.methods, "scaled": r.batch_effects.scaled,
            "baseline": r.batch_effects.baseline, "undefined": r.batch_effects.undefined,
            "scores": r.batch_effects.scores, "metrics": r.batch_effects.table},
        "mapping": mapping_numbers(r.mapping),
        "moaprofiler": None if r.moaprofiler is None else {
            "wells": r.moaprofiler.wells, "moas": r.moaprofiler.moas, "compounds": r.moaprofiler.compounds,
            "summary": r.moaprofiler.summary, "delta_per_moa": r.moaprofiler.delta_per_moa,
            "groups": r.moaprofiler.groups, "knn": r.moaprofiler.knn, "enrichment": r.moaprofiler.enrichment,
            "holdout": r.moaprofiler.holdout},
        "activity": activity_numbers(r.activity),
        "provenance": provenance,
    }
    return clean(doc)
