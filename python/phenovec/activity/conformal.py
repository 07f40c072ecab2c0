"""Mondrian (class-conditional) cross-conformal prediction over any probabilistic classifier (FSL-CP thesis ch. 3,
after Sun et al.).

The training compounds are cut into k folds (5 by default; stratified and seeded, or given -- e.g. the scaffold
folds of :func:`phenovec.activity.scaffold.scaffold_kfold`, as the thesis does). Each fold serves once as the
calibration set of a model fitted on the other k-1 folds. The conformity of a compound with a candidate label c is
the model's probability of c (the thesis' CM(label, output) = |1 - label - output| for a binary output); per class
c the calibration conformities of the compounds whose true label is c (Mondrian: class by class) give the p-value
of a new compound for label c::

    p_c = (#{calibration compounds of class c with conformity <= the new one's} + 1) / (n_c + 1)

averaged over the k folds. A p-value is never below 1 / (n_c + 1), so a class with fewer than 1/epsilon - 1
calibration compounds per fold (19 at epsilon 0.05) is never excluded from a set; :meth:`fit` warns then. The thesis writes the count over n_c without the +1; the +1 is the standard smoothed
form that makes a split-conformal p-value valid (it is never 0), and averaging over folds keeps it close to valid.

At significance epsilon (0.05 by default) a compound's conformal label set is every class with p > epsilon. Under
exchangeability the true label is outside the set for at most a fraction epsilon of the compounds *of each class*
(validity); :func:`conformal_report` measures that on held-out compounds, with the efficiency: the fraction of
singleton sets and the mean set size (the fewer labels, the more useful). For a binary task the thesis' call is
:func:`binary_calls`: 1 (active: the set is {active}), -1 (inactive: the set is {inactive}), 0 (uncertain: both
labels or none).

The classifier is any scikit-learn-style estimator with ``fit(X, y)``, ``predict_proba(X)`` and ``classes_``; it
is cloned (``sklearn.base.clone``) per fold, so it is never fitted in place.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["MondrianCrossConformal", "conformal_report", "label_sets", "binary_calls", "ConformalReport"]


def _check_epsilon(epsilon: float) -> float:
    e = float(epsilon)
    if not 0.0 < e < 1.0:
        raise ValueError(f"conformal significance epsilon must be in (0, 1); got {epsilon!r}")
    return e


class MondrianCrossConformal:
    """Mondrian cross-conformal classifier.

    Parameters: ``estimator`` (unfitted scikit-learn-style classifier, cloned per fold), ``n_folds`` (5),
    ``epsilon`` (0.05, the default significance of :meth:`predict_sets`), ``seed`` (the stratified fold cut).
    After :meth:`fit`: ``classes_``, ``models_`` (one per fold), ``calibration_`` (per fold, per class, the sorted
    calibration conformities).
    """

    def __init__(self, estimator, n_folds: int = 5, epsilon: float = 0.05, seed: int = 0):
        if int(n_folds) != n_folds or n_folds < 2:
            raise ValueError(f"cross-conformal n_folds must be an integer >= 2; got {n_folds!r}")
        self.estimator = estimator
        self.n_folds = int(n_folds)
        self.epsilon = _check_epsilon(epsilon)
        self.seed = seed

    def fit(self, X, y, folds=None) -> "MondrianCrossConformal":
        """Fit the k fold models and collect the per-class calibration conformities.

        ``folds``: optional fold id per row (e.g. scaffold folds); its distinct values define the folds and
        override ``n_folds``. Every class needs at least one compound in every calibration fold and in every
        training part; otherwise the error names the fold and the class.
        """
        from sklearn.base import clone
        from sklearn.model_selection import StratifiedKFold

        X = np.asarray(X)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"conformal fit needs X (n x d) and y (n); got X {X.shape} and y {y.shape}")
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"conformal fit needs at least two classes; got only {self.classes_.tolist()}")
        if folds is None:
            counts = np.bincount(y_idx)
            if counts.min() < self.n_folds:
                c = self.classes_.tolist()[int(np.argmin(counts))]
                raise ValueError(f"class {c!r} has {counts.min()} compounds, fewer than the {self.n_folds} "
                                 "cross-conformal folds")
            cut = StratifiedKFold(self.n_folds, shuffle=True, random_state=self.seed)
            splits = [cal for _, cal in cut.split(X, y_idx)]
        else:
            folds = np.asarray(folds)
            if folds.shape != y.shape:
                raise ValueError(f"folds must give one fold id per row ({len(y)}); got shape {folds.shape}")
            splits = [np.flatnonzero(folds == f) for f in np.unique(folds)]
            if len(splits) < 2:
                raise ValueError("conformal folds: need at least two distinct fold ids")
        self.models_, self.calibration_ = [], []
        for f, cal in enumerate(splits):
            train = np.setdiff1d(np.arange(len(y)), cal)
            for c_idx, c in enumerate(self.classes_.tolist()):
                if not np.any(y_idx[cal] == c_idx):
                    raise ValueError(f"conformal fold {f}: no compound of class {c!r} to calibrate on")
                if not np.any(y_idx[train] == c_idx):
                    raise ValueError(f"conformal fold {f}: no compound of class {c!r} to train on")
            model = clone(self.estimator).fit(X[train], y[train])
            proba = self._proba(model, X[cal])
            self.models_.append(model)
            self.calibration_.append(
                [np.sort(proba[y_idx[cal] == c_idx, c_idx]) for c_idx in range(len(self.classes_))])
        for c_idx, c in enumerate(self.classes_.tolist()):
            smallest = max(len(cal[c_idx]) for cal in self.calibration_)
            if 1.0 / (smallest + 1) > self.epsilon:
                warnings.warn(f"class {c!r}: at most {smallest} calibration compounds per fold, so its p-value is "
                              f"never below 1/{smallest + 1} = {1 / (smallest + 1):.3f} > epsilon {self.epsilon}: "
                              "the class is never excluded from a label set (use more compounds or fewer folds)",
                              stacklevel=2)
        return self

    def _proba(self, model, X) -> np.ndarray:
        """predict_proba with columns in ``self.classes_`` order."""
        model_classes = np.asarray(model.classes_)
        cols = [int(np.flatnonzero(model_classes == c)[0]) for c in self.classes_]
        return np.asarray(model.predict_proba(X), dtype=np.float64)[:, cols]

    def _check_fitted(self):
        if not getattr(self, "models_", None):
            raise RuntimeError("MondrianCrossConformal is not fitted: call fit(X, y) first")

    def p_values(self, X) -> np.ndarray:
        """n x n_classes p-values (columns in ``classes_`` order), averaged over the fold models."""
        self._check_fitted()
        X = np.asarray(X)
        total = np.zeros((len(X), len(self.classes_)))
        for model, cal in zip(self.models_, self.calibration_):
            proba = self._proba(model, X)
            for c_idx, scores in enumerate(cal):
                at_most = np.searchsorted(scores, proba[:, c_idx], side="right")
                total[:, c_idx] += (at_most + 1) / (len(scores) + 1)
        return total / len(self.models_)

    def predict_proba(self, X) -> np.ndarray:
        """The fold models' mean probability (columns in ``classes_`` order): a point score next to the sets."""
        self._check_fitted()
        return np.mean([self._proba(m, np.asarray(X)) for m in self.models_], axis=0)

    def predict_sets(self, X, epsilon: float | None = None) -> np.ndarray:
        """n x n_classes boolean: class c is in compound i's label set (p > epsilon)."""
        return label_sets(self.p_values(X), self.epsilon if epsilon is None else epsilon)


def label_sets(p_values: np.ndarray, epsilon: float = 0.05) -> np.ndarray:
    """The conformal label sets: p-value > epsilon, per class."""
    return np.asarray(p_values) > _check_epsilon(epsilon)


def binary_calls(p_values: np.ndarray, epsilon: float = 0.05, active_column: int = 1) -> np.ndarray:
    """The thesis' binary conformal call per compound: 1 active, -1 inactive, 0 uncertain (both labels or none)."""
    sets = label_sets(p_values, epsilon)
    if sets.shape[1] != 2:
        raise ValueError(f"binary_calls needs two classes; got {sets.shape[1]}")
    active, inactive = sets[:, active_column], sets[:, 1 - active_column]
    return np.where(active & ~inactive, 1, np.where(inactive & ~active, -1, 0)).astype(np.int64)


@dataclass(frozen=True)
class ConformalReport:
    """Validity and efficiency of conformal label sets on labelled held-out compounds.

    ``error_rate``: fraction whose true label is outside its set (valid when <= epsilon); ``class_error_rate``:
    the same per class (Mondrian validity); ``singleton_fraction``, ``empty_fraction``, ``mean_set_size``:
    efficiency; ``n``: compounds.
    """

    epsilon: float
    n: int
    error_rate: float
    class_error_rate: dict
    singleton_fraction: float
    empty_fraction: float
    mean_set_size: float

    def as_row(self) -> dict:
        row = {k: v for k, v in self.__dict__.items() if k != "class_error_rate"}
        row.update({f"error_rate[{c}]": v for c, v in self.class_error_rate.items()})
        return row


def conformal_report(p_values: np.ndarray, y, classes, epsilon: float = 0.05) -> ConformalReport:
    """Validity and efficiency of the sets from ``p_values`` (columns = ``classes``) against true labels ``y``."""
    sets = label_sets(p_values, epsilon)
    classes = np.asarray(classes)
    y = np.asarray(y)
    if sets.shape != (len(y), len(classes)):
        raise ValueError(f"p-values {sets.shape} do not match {len(y)} labels x {len(classes)} classes")
    col = np.array([int(np.flatnonzero(classes == v)[0]) if np.any(classes == v) else -1 for v in y])
    if np.any(col < 0):
        bad = y[col < 0].tolist()[0]
        raise ValueError(f"label {bad!r} is not one of the conformal classes {classes.tolist()}")
    covered = sets[np.arange(len(y)), col]
    size = sets.sum(axis=1)
    return ConformalReport(
        epsilon=float(epsilon),
        n=int(len(y)),
        error_rate=float(1.0 - covered.mean()),
        class_error_rate={c.item() if hasattr(c, "item") else c: float(1.0 - covered[col == j].mean())
                          for j, c in enumerate(classes) if np.any(col == j)},
        singleton_fraction=float(np.mean(size == 1)),
        empty_fraction=float(np.mean(size == 0)),
        mean_set_size=float(size.mean()),
    )
