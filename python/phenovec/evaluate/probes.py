"""Frozen-encoder probes: how much of a label a fixed embedding carries, read out by simple classifiers.

The RxRx2 deck's evaluation of its SimCLR encoder ("freeze encoder, classifier head, extract embeddings, Random
Forest with 100 trees and a fixed seed"; accuracy, precision, recall, F1) on any table of embeddings or profiles.
``probe`` fits, per split, each of

* ``logistic``: scikit-learn ``StandardScaler`` (fitted on the training rows) + ``LogisticRegression``
  (L2, ``C`` = 1, lbfgs, ``max_iter`` 1000, multinomial for more than two classes), and
* ``random_forest``: ``RandomForestClassifier(n_estimators=100, random_state=seed)`` (one job, so the forest is
  the same on any machine),

and scores its test rows: accuracy, balanced accuracy, macro precision / recall / F1, one-vs-rest AUROC per class
and their macro mean, and the confusion matrix.

**Splits** (replicates never straddle train and test):

* ``split_column``: rows whose value is ``train_value`` train, ``test_value`` test, others are ignored (one
  split named ``test``);
* else ``group_column``: stratified grouped ``n_folds``-fold cross-validation (``StratifiedGroupKFold``, shuffled
  with ``seed``), every group (a well, a compound, a site) wholly in one fold. One of the two is required: a
  random row-level split of single-cell or replicate embeddings would let a probe recognise a replicate rather
  than the label.

**AUROC**: one-vs-rest per class from the predicted probabilities (``roc_auc_score(y == c, p_c)``); a class with
no positive or no negative test row gets NaN and is left out of the macro mean. A class unseen in a fold's
training rows gets probability 0. For two classes the macro mean equals the binary AUROC (each class's curve is
the other's mirror).

Returns ``ProbeResult``: ``scores`` (tidy: ``model, split, metric, class, value``; ``class`` empty for the
whole-split metrics), ``confusion`` (tidy: ``model, true, predicted, count`` summed over splits),
``predictions`` (one row per scored test row: ``row, model, split, true, predicted`` and ``p_<class>``) and
``summary`` (per model: mean and SD over splits of each metric, the pooled confusion matrix as nested lists, the
class order, row and split counts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.evaluate.similarity import as_profiles

MODELS = ("logistic", "random_forest")


@dataclass
class ProbeResult:
    scores: pd.DataFrame
    confusion: pd.DataFrame
    predictions: pd.DataFrame
    summary: dict = field(default_factory=dict)


def make_probe(name: str, seed: int = 0, n_trees: int = 100, max_iter: int = 1000):
    """The unfitted scikit-learn estimator of probe ``name`` (module docstring)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=n_trees, random_state=seed, n_jobs=1)
    raise ValueError(f"unknown probe model {name!r}; known: {', '.join(MODELS)}")


def probe_splits(meta: pd.DataFrame, y: np.ndarray, *, split_column: str | None = None, train_value="train",
                 test_value="test", group_column: str | None = None, n_folds: int = 5,
                 seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, train rows, test rows) per split (module docstring)."""
    if split_column is not None:
        if split_column not in meta.columns:
            raise ValueError(f"split column {split_column!r} is not in the table (columns: {', '.join(meta.columns)})")
        values = meta[split_column].astype(str).to_numpy()
        tr, te = np.flatnonzero(values == str(train_value)), np.flatnonzero(values == str(test_value))
        if not len(tr) or not len(te):
            raise ValueError(f"split column {split_column!r}: {len(tr)} rows are {train_value!r} and {len(te)} are "
                             f"{test_value!r}; both are needed (values: {sorted(set(values))[:10]})")
        return [("test", tr, te)]
    if group_column is None:
        raise ValueError("probe needs split_column (a train / test column) or group_column (grouped cross-validation, "
                         "so that replicates never straddle train and test)")
    if group_column not in meta.columns:
        raise ValueError(f"group column {group_column!r} is not in the table (columns: {', '.join(meta.columns)})")
    from sklearn.model_selection import StratifiedGroupKFold

    groups = meta[group_column].astype(str).to_numpy()
    n_groups = len(np.unique(groups))
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if n_groups < n_folds:
        raise ValueError(f"group column {group_column!r} has {n_groups} groups, fewer than the {n_folds} folds")
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    import warnings

    with warnings.catch_warnings():  # "the least populated class has only k members": grouped CV is still valid
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        return [(f"fold{i + 1}", tr, te) for i, (tr, te) in enumerate(cv.split(np.zeros(len(y)), y, groups))]


def _auroc_per_class(y: np.ndarray, proba: np.ndarray, n_cls: int) -> np.ndarray:
    from sklearn.metrics import roc_auc_score

    out = np.full(n_cls, np.nan)
    for c in range(n_cls):
        pos = y == c
        if pos.any() and not pos.all():
            out[c] = roc_auc_score(pos, proba[:, c])
    return out


def probe(profiles, feats=None, features: Sequence[str] | None = None, meta_features: Sequence[str] | None = None,
          *, label_column: str, split_column: str | None = None, train_value="train", test_value="test",
          group_column: str | None = None, n_folds: int = 5, models: Sequence[str] = MODELS, seed: int = 0,
          n_trees: int = 100, max_iter: int = 1000) -> ProbeResult:
    """Fit each probe on each split's training rows and score its test rows (module docstring).

    ``profiles`` is a whole table (``feats=None``: ``Metadata_*`` columns are metadata unless ``features`` /
    ``meta_features`` say otherwise) or a metadata frame with ``feats`` (N x D).
    """
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

    prof = as_profiles(profiles, feats, features, meta_features)
    meta, x = prof.meta, np.asarray(prof.feats, dtype=np.float64)
    if label_column not in meta.columns:
        raise ValueError(f"label column {label_column!r} is not in the table's metadata (columns: "
                         f"{', '.join(map(str, meta.columns))})")
    if not len(x):
        raise ValueError("probe: the table has no rows")
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"feature {prof.features[c]!r} is {x[r, c]} at row {r}: probes need finite features")
    labels = meta[label_column]
    if labels.isna().any():
        raise ValueError(f"label column {label_column!r} is missing (NaN) at row {int(np.flatnonzero(labels.isna())[0])}")
    classes = sorted(pd.unique(labels.astype(str)))
    if len(classes) < 2:
        raise ValueError(f"label column {label_column!r} has one class ({classes[0]!r}); a probe needs two or more")
    y = labels.astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    for m in models:
        make_probe(m)  # unknown names fail before any fitting
    splits = probe_splits(meta, y, split_column=split_column, train_value=train_value, test_value=test_value,
                          group_column=group_column, n_folds=n_folds, seed=seed)
    n_cls = len(classes)
    score_rows, conf, preds = [], {m: np.zeros((n_cls, n_cls), dtype=np.int64) for m in models}, []
    for name, tr, te in splits:
        if len(np.unique(y[tr])) < 2:
            raise ValueError(f"split {name}: the training rows hold one class ({classes[y[tr][0]]!r})")
        for m in models:
            est = make_probe(m, seed, n_trees, max_iter)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning)
                warnings.filterwarnings("ignore", message=".*lbfgs failed to converge.*")
                est.fit(x[tr], y[tr])
            proba = np.zeros((len(te), n_cls))
            proba[:, est.classes_] = est.predict_proba(x[te])
            pred = est.predict(x[te])
            yt = y[te]
            p, r, f, _ = precision_recall_fscore_support(yt, pred, labels=np.arange(n_cls), average="macro",
                                                         zero_division=0)
            auc = _auroc_per_class(yt, proba, n_cls)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*y_pred contains classes not in y_true.*")
                bal = balanced_accuracy_score(yt, pred)
            values = {"accuracy": accuracy_score(yt, pred), "balanced_accuracy": bal, "precision_macro": p,
                      "recall_macro": r, "f1_macro": f,
                      "auroc_macro": float(np.nanmean(auc)) if np.isfinite(auc).any() else np.nan}
            score_rows += [{"model": m, "split": name, "metric": k, "class": "", "value": float(v)}
                           for k, v in values.items()]
            score_rows += [{"model": m, "split": name, "metric": "auroc", "class": classes[c], "value": float(auc[c])}
                           for c in range(n_cls)]
            conf[m] += confusion_matrix(yt, pred, labels=np.arange(n_cls))
            preds.append(pd.DataFrame({"row": te, "model": m, "split": name, "true": [classes[i] for i in yt],
                                       "predicted": [classes[i] for i in pred],
                                       **{f"p_{c}": proba[:, i] for i, c in enumerate(classes)}}))
    scores = pd.DataFrame(score_rows, columns=["model", "split", "metric", "class", "value"])
    confusion = pd.DataFrame([{"model": m, "true": classes[i], "predicted": classes[j], "count": int(conf[m][i, j])}
                              for m in models for i in range(n_cls) for j in range(n_cls)],
                             columns=["model", "true", "predicted", "count"])
    whole = scores[scores["class"] == ""]
    summary = {"label_column": label_column, "classes": classes, "n_rows": int(len(x)), "n_features": int(x.shape[1]),
               "splits": [name for name, _, _ in splits],
               "split": ({"column": split_column, "train": str(train_value), "test": str(test_value)}
                         if split_column is not None else {"group_column": group_column, "n_folds": int(n_folds)}),
               "seed": int(seed), "n_trees": int(n_trees), "models": {}}
    for m in models:
        g = whole[whole["model"] == m].groupby("metric", sort=False)["value"]
        summary["models"][m] = {**{f"{k}_mean": float(v) for k, v in g.mean().items()},
                                **{f"{k}_sd": float(v) if np.isfinite(v) else 0.0 for k, v in g.std(ddof=1).items()},
                                "confusion": conf[m].tolist()}
    return ProbeResult(scores, confusion, pd.concat(preds, ignore_index=True), summary)
