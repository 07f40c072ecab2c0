"""Class latent assignment (MOAProfiler, Wong et al. 2023, Fig. 3e / 5e).

For each query well, every MOA's MOA-level embedding (MLE) is the per-feature median of that MOA's
wells with the query left out (only the query's own MOA changes); the query is assigned the MOA of
the MLE most similar to it (PCC in the paper). Scores are sklearn's support-weighted F1, precision and
recall (``average="weighted"``, ``zero_division=0``). Less sensitive to single-well outliers than k-NN.
Ties between MLEs go to the first MOA in sorted order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from phenovec.evaluate.moa_labels import group_medians, leave_one_out_medians, moa_labels
from phenovec.evaluate.reference_similarity import paired_similarity, similarity_to
from phenovec.evaluate.similarity import as_profiles, check_metric


def weighted_scores(truth: np.ndarray, pred: np.ndarray) -> dict:
    """The paper's scores: accuracy and support-weighted F1 / precision / recall."""
    kw = dict(average="weighted", zero_division=0)
    return {"f1": f1_score(truth, pred, **kw), "precision": precision_score(truth, pred, **kw),
            "recall": recall_score(truth, pred, **kw), "accuracy": accuracy_score(truth, pred)}


def class_latent_assignment(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    *,
    moa_col: str,
    compound_col: str | None = None,
    similarity_metric: str = "pearson",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leave-query-out MLE assignment of every well; returns ``(summary, predictions)``.

    - ``summary`` (one row): ``f1``, ``precision``, ``recall`` (support-weighted), ``accuracy``, ``n_wells``,
      ``n_moas``, ``similarity_metric``.
    - ``predictions``: one row per well: ``row`` (position in the input), the compound (if given) and MOA
      columns, ``predicted``, ``correct``, ``similarity`` (to the predicted MLE), ``similarity_own`` (to its own
      MOA's leave-query-out MLE).

    Errors (naming the column): a missing label, one MOA, a MOA with one well (no MLE without the query).
    """
    metric = check_metric(similarity_metric)
    prof = as_profiles(profiles, feats, features=features, meta_features=meta_features)
    lab = moa_labels(prof.meta, moa_col, compound_col, what="class_latent_assignment")
    x = np.asarray(prof.feats, dtype=np.float64)
    moa = lab.moa
    sim = similarity_to(x, group_medians(x, moa, lab.n_moas), metric)
    own = np.empty(len(x))
    for m in range(lab.n_moas):
        rows = np.flatnonzero(moa == m)
        own[rows] = paired_similarity(x[rows], leave_one_out_medians(x[rows]), metric)
    sim[np.arange(len(x)), moa] = own
    pred = np.argmax(sim, axis=1)
    scores = weighted_scores(moa, pred)
    summary = pd.DataFrame([{**scores, "n_wells": len(x), "n_moas": lab.n_moas, "similarity_metric": metric}])
    cols = [moa_col] if compound_col is None else [compound_col, moa_col]
    table = prof.meta[cols].reset_index(drop=True)
    table.insert(0, "row", np.arange(len(x)))
    table["predicted"] = lab.moas[pred]
    table["correct"] = pred == moa
    table["similarity"] = sim[np.arange(len(x)), pred]
    table["similarity_own"] = own
    return summary, table
