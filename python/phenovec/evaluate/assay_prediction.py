"""Per-assay evaluation of multi-task assay predictions (GapNet, Hofmarcher et al. 2019, digest part A3).

Inputs: predicted probabilities (one row per sample -- a view, a well, a crop -- with a compound column and one
column per task) and an :class:`phenovec.io.assay_labels.AssayLabels` matrix (1 / 0 / NaN). Predictions are first
averaged per compound (:func:`average_predictions`; GapNet averages its outputs over the views of a sample), then
aligned to the labels by compound; each task is scored on the compounds with a measured label only (missing labels
are masked, not counted as inactive).

Per task (:func:`assay_metrics`): ``n_measured``, ``n_active``, ``n_inactive``, ``auc`` (ROC AUC: the
Mann-Whitney probability that an active outranks an inactive, ties counting one half -- scikit-learn's
``roc_auc_score``), ``auprc`` (average precision, sum over distinct thresholds of (R_k - R_{k-1}) P_k --
scikit-learn's ``average_precision_score``), ``f1`` (of ``p >= 0.5``; 0 when there is no predicted or true
active, scikit-learn's ``zero_division=0``), ``positive_rate`` (the AUPRC of a random ranking) and ``reason``:
empty when scored, else why the metrics are NaN ("no measured label", "one class among measured labels: ...") --
such tasks stay in the table, never silently dropped.

Summary (:func:`assay_summary`): tasks scored / not scored, mean and SD (sample SD, ddof = 1) of AUC, AUPRC and F1
over the scored tasks, the median AUC, and the counts of tasks with AUC > 0.9, > 0.8, > 0.7 (the paper's Table 1).

:func:`measured_vs_auc_figure`: measured compounds per task against AUC (the paper's Fig. A1), one colour per run,
as a PNG (matplotlib, Agg, the report's look).
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "THRESHOLD",
    "AUC_LEVELS",
    "roc_auc",
    "average_precision",
    "f1_at",
    "average_predictions",
    "assay_metrics",
    "assay_summary",
    "evaluate_assay_predictions",
    "measured_vs_auc_figure",
]

THRESHOLD = 0.5
AUC_LEVELS = (0.9, 0.8, 0.7)
COLUMNS = ("task", "n_measured", "n_active", "n_inactive", "positive_rate", "auc", "auprc", "f1", "reason")


def _pair(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    return y, p


def roc_auc(y, p) -> float:
    """ROC AUC of scores ``p`` for 0 / 1 labels ``y`` (average ranks for ties); NaN without both classes."""
    from scipy.stats import rankdata

    y, p = _pair(y, p)
    n1 = int(np.sum(y == 1))
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(p, method="average")
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def average_precision(y, p) -> float:
    """Average precision: thresholds at each distinct score, high to low, sum of recall steps times precision
    (scikit-learn's definition, no interpolation); NaN without an active."""
    y, p = _pair(y, p)
    n1 = int(np.sum(y == 1))
    if n1 == 0:
        return float("nan")
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), len(ps) - 1]  # the last position of each distinct score
    tp = np.cumsum(ys == 1)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n1
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_at(y, p, threshold: float = THRESHOLD) -> float:
    """F1 of the predictions ``p >= threshold``; 0 when there is no true and no predicted active."""
    y, p = _pair(y, p)
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    denom = int(np.sum(pred)) + int(np.sum(y == 1))
    return 2.0 * tp / denom if denom else 0.0


def _check_probabilities(p: np.ndarray, where: str) -> None:
    finite = np.isfinite(p) | np.isnan(p)
    if not finite.all() or np.any(p[~np.isnan(p)] < 0) or np.any(p[~np.isnan(p)] > 1):
        bad = np.argwhere(~finite | (p < 0) | (p > 1))[0]
        raise ValueError(f"{where}: prediction {float(p[tuple(bad)]):g} at row {bad[0]}, task {bad[1] if p.ndim > 1 else 0} "
                         "is not a probability in [0, 1]")


def assay_metrics(probabilities, labels, tasks: Sequence[str] | None = None, *, threshold: float = THRESHOLD,
                  compounds: Sequence | None = None, where: str = "predictions") -> pd.DataFrame:
    """The per-task table (columns :data:`COLUMNS`) of aligned ``probabilities`` and ``labels`` (both samples x
    tasks; labels 1 / 0 / NaN). A NaN probability where the label is measured is an error naming the task and
    the sample (``compounds[i]`` when given)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if y.ndim == 1:
        y = y[:, None]
    if p.shape != y.shape:
        raise ValueError(f"{where}: predictions {p.shape} and labels {y.shape} differ in shape")
    tasks = [f"task_{j}" for j in range(p.shape[1])] if tasks is None else [str(t) for t in tasks]
    if len(tasks) != p.shape[1]:
        raise ValueError(f"{where}: {len(tasks)} task names for {p.shape[1]} columns")
    bad_label = ~np.isnan(y) & (y != 0) & (y != 1)
    if bad_label.any():
        i, j = np.argwhere(bad_label)[0]
        raise ValueError(f"{where}: label {y[i, j]:g} of task {tasks[j]!r}, row {i} is not 1, 0 or NaN")
    _check_probabilities(p, where)
    rows = []
    for j, task in enumerate(tasks):
        m = ~np.isnan(y[:, j])
        missing = m & np.isnan(p[:, j])
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            who = f"compound {compounds[i]!r}" if compounds is not None else f"row {i}"
            raise ValueError(f"{where}: task {task!r} has no prediction (NaN) for {who}, which has a measured label")
        yj, pj = y[m, j], p[m, j]
        n1 = int(np.sum(yj == 1))
        n0 = len(yj) - n1
        row = {"task": task, "n_measured": len(yj), "n_active": n1, "n_inactive": n0,
               "positive_rate": n1 / len(yj) if len(yj) else np.nan,
               "auc": np.nan, "auprc": np.nan, "f1": np.nan, "reason": ""}
        if len(yj) == 0:
            row["reason"] = "no measured label"
        elif n1 == 0 or n0 == 0:
            row["reason"] = f"one class among measured labels ({n1} active, {n0} inactive)"
        else:
            row.update(auc=roc_auc(yj, pj), auprc=average_precision(yj, pj), f1=f1_at(yj, pj, threshold))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def assay_summary(per_task: pd.DataFrame, levels: Sequence[float] = AUC_LEVELS) -> dict:
    """Mean / SD (ddof 1) / median over the scored tasks and counts of tasks above each AUC level."""
    for col in ("task", "auc", "auprc", "f1"):
        if col not in per_task.columns:
            raise ValueError(f"per-task table: no column {col!r} (expected the table of assay_metrics)")
    scored = per_task[per_task["auc"].notna()]
    out: dict = {"n_tasks": int(len(per_task)), "n_scored": int(len(scored)),
                 "n_not_scored": int(len(per_task) - len(scored))}
    for m in ("auc", "auprc", "f1"):
        v = scored[m].to_numpy(dtype=np.float64)
        out[f"{m}_mean"] = float(v.mean()) if len(v) else float("nan")
        out[f"{m}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    out["auc_median"] = float(np.median(scored["auc"])) if len(scored) else float("nan")
    for lv in levels:
        out[f"auc_gt_{lv:g}"] = int(np.sum(scored["auc"].to_numpy() > lv))
    return out


def average_predictions(predictions: pd.DataFrame, compound_column: str, tasks: Sequence[str]) -> pd.DataFrame:
    """Mean prediction per compound over its rows (views, replicates, crops): one row per compound (first-seen
    order), the compound column, ``n_views`` and the task columns. NaN entries are left out of a mean."""
    if compound_column not in predictions.columns:
        raise ValueError(f"predictions: unknown compound column {compound_column!r} (columns: "
                         f"{', '.join(map(str, list(predictions.columns)[:20]))})")
    missing = [t for t in tasks if t not in predictions.columns]
    if missing:
        raise ValueError(f"predictions: no column for task {missing[0]!r} ({len(missing)} tasks missing); the "
                         "prediction table needs one probability column per label task")
    comp = predictions[compound_column]
    if comp.isna().any():
        raise ValueError(f"predictions: column {compound_column!r} is empty at row {int(np.flatnonzero(comp.isna())[0])}")
    vals = predictions[list(tasks)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    _check_probabilities(vals, "predictions")
    key = comp.astype(str).to_numpy()
    codes, uniq = pd.factorize(key, sort=False)
    sums = np.zeros((len(uniq), len(tasks)))
    counts = np.zeros((len(uniq), len(tasks)))
    ok = ~np.isnan(vals)
    np.add.at(sums, codes, np.where(ok, vals, 0.0))
    np.add.at(counts, codes, ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
    out = pd.DataFrame(mean, columns=list(tasks))
    out.insert(0, "n_views", np.bincount(codes, minlength=len(uniq)))
    out.insert(0, compound_column, uniq)
    return out


def evaluate_assay_predictions(predictions: pd.DataFrame, labels, *, compound_column: str,
                               tasks: Sequence[str] | None = None, average: bool = True,
                               threshold: float = THRESHOLD, match: str = "exact") -> tuple[pd.DataFrame, dict]:
    """``(per_task, summary)`` of a prediction table against :class:`~phenovec.io.assay_labels.AssayLabels`.

    ``tasks`` defaults to every label task (each must be a prediction column); with ``average`` the rows of a
    compound are averaged first. Only compounds with a label row are scored; the summary also says how many
    prediction compounds had none (``compounds_without_labels``) and how many were scored."""
    tasks = list(labels.tasks) if tasks is None else [str(t) for t in tasks]
    unknown = [t for t in tasks if t not in labels.tasks]
    if unknown:
        raise ValueError(f"{labels.source}: unknown task {unknown[0]!r} (tasks)")
    table = average_predictions(predictions, compound_column, tasks) if average else predictions
    if not average:
        missing = [t for t in tasks if t not in table.columns]
        if missing:
            raise ValueError(f"predictions: no column for task {missing[0]!r}")
        if compound_column not in table.columns:
            raise ValueError(f"predictions: unknown compound column {compound_column!r}")
    joined = labels.subset(tasks=tasks).join(table, compound_column, match=match, table_name="predictions")
    p = table[tasks].to_numpy(dtype=np.float64)
    per_task = assay_metrics(p, joined.values, tasks, threshold=threshold,
                             compounds=table[compound_column].to_numpy(), where="predictions")
    r = joined.report
    summary = assay_summary(per_task)
    summary.update(n_prediction_rows=int(len(predictions)), n_compounds=int(r.table_compounds),
                   n_compounds_scored=int(r.matched_compounds),
                   compounds_without_labels=len(r.unlabelled_compounds), threshold=float(threshold))
    return per_task, summary


def measured_vs_auc_figure(per_task, path: str | os.PathLike | None = None, *, title: str | None = None):
    """Measured compounds per task (log x) against AUC, one colour per run (``per_task``: a per-task table, or a
    mapping run name -> table); returns a :class:`phenovec.report.figures.Figure` and writes the PNG to ``path``
    (atomically) when given. Tasks without an AUC are not drawn (the caption counts them)."""
    from phenovec.io.atomic import write_bytes_atomic
    from phenovec.figure import Figure, png_bytes as _png, pyplot as _pyplot

    runs: Mapping[str, pd.DataFrame] = per_task if isinstance(per_task, Mapping) else {"": per_task}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    skipped = 0
    for i, (name, t) in enumerate(runs.items()):
        for col in ("n_measured", "auc"):
            if col not in t.columns:
                plt.close(fig)
                raise ValueError(f"per-task table {name or ''}: no column {col!r}")
        s = t[t["auc"].notna()]
        skipped += int(len(t) - len(s))
        ax.scatter(s["n_measured"], s["auc"], s=14, alpha=0.7, color=f"C{i}",
                   label=f"{name} (mean AUC {s['auc'].mean():.3f})" if name else None)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("measured compounds per task")
    ax.set_ylabel("ROC AUC")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if any(runs):
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    png = _png(fig)
    caption = ("Per-task ROC AUC against the number of compounds with a measured label (GapNet Fig. A1); "
               f"{skipped} task(s) without an AUC (one class or no label among the scored compounds) not drawn.")
    if path is not None:
        write_bytes_atomic(path, png)
    return Figure("assay_measured_vs_auc", "Measured compounds per assay vs AUC", caption, png)
