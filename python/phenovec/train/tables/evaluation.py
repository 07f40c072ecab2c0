"""Evaluation of learned profile representations on the test split (the FSL-CP thesis' Table 4.1 protocol).

- :func:`knn_table`: kNN accuracy (k = 5 by default) of each representation for the **replicate** label (the
  perturbation: compound + dose; "which compound is this well") and the **MOA** label, every row a query with only
  itself left out (the thesis' scikit-learn ``KNeighborsClassifier`` on the test replicates), plus ``moa_nsc``: the
  MOA with every well of the query's compound left out ("not same compound", the stricter BBBC021 protocol).
  Computed by :func:`phenovec.evaluate.knn.knn_accuracy` (its documented vote tie rule).
- :func:`map_table`: replicate and MOA retrieval mAP (:mod:`phenovec.evaluate.average_precision` /
  :mod:`phenovec.evaluate.map`, copairs semantics): per group the mean AP, then its mean over groups and, with a
  null, the fraction of groups retrieved at corrected p < 0.05.
- :func:`task_auc`: the fnn's per-task ROC AUC on held-out compounds (predictions averaged over each compound's
  rows; only measured labels; tasks with one class in the test set are skipped), mean and SD over tasks.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["activity_table", "knn_table", "map_table", "task_auc"]


def knn_table(reps: dict, meta: pd.DataFrame, *, perturbation: str, compound: str, moa: str | None = None,
              k: int = 5, metric: str = "cosine") -> pd.DataFrame:
    """One row per (representation, label): ``representation``, ``label``, ``k``, ``accuracy``, ``n_queries``."""
    from phenovec.evaluate.knn import knn_accuracy

    meta = meta.reset_index(drop=True)
    labels = [("replicate", perturbation, perturbation, "well")]
    if moa is not None:
        labels += [("moa", moa, compound, "well"), ("moa_nsc", moa, compound, "compound")]
    rows = []
    for name, x in reps.items():
        for label, col, cpd, leave in labels:
            if leave == "compound" and meta[compound].nunique() < 2:
                continue
            summary, _ = knn_accuracy(meta, np.asarray(x, dtype=np.float64), moa_col=col, compound_col=cpd,
                                      k=min(k, len(meta) - 1), leave_out=leave, similarity_metric=metric)
            rows.append({"representation": name, "label": label, "k": int(summary["k"].iloc[0]),
                         "accuracy": float(summary["accuracy"].iloc[0]), "n_queries": int(summary["n_queries"].iloc[0])})
    return pd.DataFrame(rows)


def map_table(reps: dict, meta: pd.DataFrame, *, perturbation: str, compound: str, moa: str | None = None,
              metric: str = "cosine", null_size: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (representation, label): ``mean_average_precision`` (mean of the groups' mAP) and
    ``fraction_retrieved`` (groups with corrected p < 0.05; NaN without a null)."""
    from phenovec.evaluate.average_precision import UnpairedError, average_precision
    from phenovec.evaluate.map import mean_average_precision

    meta = meta.reset_index(drop=True)
    rules = [("replicate", [perturbation], [], [perturbation])]
    if moa is not None:
        rules.append(("moa", [moa], [compound], [moa]))
    rows = []
    for name, x in reps.items():
        for label, same, diff, neg_diff in rules:
            try:
                ap = average_precision(meta, np.asarray(x, dtype=np.float64), pos_sameby=same, pos_diffby=diff,
                                       neg_sameby=[], neg_diffby=neg_diff, distance=metric, progress_bar=False)
            except UnpairedError:
                continue
            ok = ap[ap["n_pos_pairs"] > 0]
            if null_size > 0:
                m = mean_average_precision(ap, same, null_size, 0.05, seed, progress_bar=False)
                value, retrieved = float(m["mean_average_precision"].mean()), float(m["below_corrected_p"].mean())
            else:
                value = float(ok.groupby(same, observed=True)["average_precision"].mean().mean())
                retrieved = float("nan")
            rows.append({"representation": name, "label": label, "mean_average_precision": value,
                         "fraction_retrieved": retrieved, "n_groups": int(ok.groupby(same, observed=True).ngroups)})
    return pd.DataFrame(rows)


def task_auc(probabilities: np.ndarray, labels: np.ndarray, groups: np.ndarray, tasks) -> pd.DataFrame:
    """Per-task ROC AUC over compounds (``groups``: one code per row); ``labels`` rows x tasks with NaN missing."""
    from sklearn.metrics import roc_auc_score

    groups = np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    n = len(uniq)
    p = np.zeros((n, probabilities.shape[1]))
    np.add.at(p, inv, probabilities)
    p /= np.bincount(inv, minlength=n)[:, None]
    first = np.zeros(n, dtype=np.int64)
    first[inv[::-1]] = np.arange(len(inv))[::-1]
    y = labels[first]
    rows = []
    for t, name in enumerate(tasks):
        m = ~np.isnan(y[:, t])
        yt = y[m, t]
        n_act = int((yt == 1).sum())
        auc = float(roc_auc_score(yt, p[m, t])) if 0 < n_act < len(yt) else float("nan")
        rows.append({"task": str(name), "auc": auc, "n_measured": int(m.sum()), "n_active": n_act})
    return pd.DataFrame(rows)


def _by_compound(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-compound means of the rows of x, each compound's first row index)."""
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.zeros((len(uniq), x.shape[1]))
    np.add.at(sums, inv, x)
    first = np.zeros(len(uniq), dtype=np.int64)
    first[inv[::-1]] = np.arange(len(inv))[::-1]
    return sums / np.bincount(inv, minlength=len(uniq))[:, None], first


def activity_table(train_reps: dict, test_reps: dict, train_labels: np.ndarray, test_labels: np.ndarray,
                   train_groups: np.ndarray, test_groups: np.ndarray, tasks, seed: int = 0,
                   min_per_class: int = 2) -> pd.DataFrame:
    """Per (representation, assay): ROC AUC on the test compounds of a logistic-regression probe (standardised,
    balanced classes, seeded) fitted on the training compounds' mean representation and measured labels. Assays
    with fewer than ``min_per_class`` training actives or inactives, or one class among the test compounds, get NaN."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = []
    for name in train_reps:
        xtr, ftr = _by_compound(np.asarray(train_reps[name], dtype=np.float64), train_groups)
        xte, fte = _by_compound(np.asarray(test_reps[name], dtype=np.float64), test_groups)
        ytr, yte = train_labels[ftr], test_labels[fte]
        for t, task in enumerate(tasks):
            mtr, mte = ~np.isnan(ytr[:, t]), ~np.isnan(yte[:, t])
            a, b = ytr[mtr, t], yte[mte, t]
            auc = float("nan")
            if min((a == 1).sum(), (a == 0).sum()) >= min_per_class and 0 < (b == 1).sum() < len(b):
                clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000,
                                                                         random_state=seed))
                clf.fit(xtr[mtr], a)
                auc = float(roc_auc_score(b, clf.predict_proba(xte[mte])[:, 1]))
            rows.append({"representation": name, "task": str(task), "auc": auc, "n_train": int(mtr.sum()),
                         "n_test": int(mte.sum())})
    return pd.DataFrame(rows)
