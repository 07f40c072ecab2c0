"""Single-task baselines of the FSL-CP thesis (ch. 2): logistic regression, a feed-forward network and gradient
boosting, each fitted afresh on every support set after a seeded random search of ``n_configs`` (10) hyper-parameter
configurations by stratified inner cross-validation (AUROC) on that support set.

The inner cross-validation has ``min(inner_folds, the smaller class's count)`` folds; a support set with a class of
one compound cannot be cross-validated and takes the first configuration of the search (still seeded). Nothing is
learnt from the training tasks (``pretrain`` is a no-op). Profiles are standardised on the support set (logistic
regression and the network).
"""
from __future__ import annotations

import warnings

import numpy as np

from phenovec.activity.learner import Learner, check_support


class _SearchedLearner(Learner):
    """A scikit-learn estimator chosen per support set by a seeded random search (see the module docstring)."""

    def __init__(self, *, n_configs: int = 10, inner_folds: int = 3):
        if isinstance(n_configs, bool) or not isinstance(n_configs, int) or n_configs < 1:
            raise ValueError(f"{self.name}: n_configs must be an integer >= 1, got {n_configs!r}")
        if isinstance(inner_folds, bool) or not isinstance(inner_folds, int) or inner_folds < 2:
            raise ValueError(f"{self.name}: inner_folds must be an integer >= 2, got {inner_folds!r}")
        self.n_configs = n_configs
        self.inner_folds = inner_folds
        self.model_ = None
        self.params_: dict | None = None

    def _estimator(self, seed: int):
        raise NotImplementedError

    def _space(self) -> dict:
        raise NotImplementedError

    def fit(self, x, y, *, seed: int = 0) -> "Learner":
        from sklearn.base import clone
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import ParameterSampler, StratifiedKFold
        from threadpoolctl import threadpool_limits

        x, y = check_support(x, y, f"{self.name} support set")
        configs = list(ParameterSampler(self._space(), n_iter=self.n_configs, random_state=seed))
        folds = min(self.inner_folds, int(np.bincount(y, minlength=2).min()))
        base = self._estimator(seed)
        # one thread: on support sets of 8-96 compounds thread start-up costs more than it saves (10x for
        # gradient boosting on a loaded machine)
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            best = configs[0]
            if folds >= 2 and len(configs) > 1:
                splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y))
                scores = []
                for c in configs:
                    model = clone(base).set_params(**c)
                    scores.append(np.mean([_auroc(y[te], model.fit(x[tr], y[tr]).predict_proba(x[te])[:, 1])
                                           for tr, te in splits]))
                best = configs[int(np.argmax(scores))]
            self.model_ = clone(base).set_params(**best).fit(x, y)
        self.params_ = best
        return self

    def predict_proba(self, x) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        if self.model_ is None:
            raise ValueError(f"{self.name}: predict_proba before fit")
        with threadpool_limits(1):
            return self.model_.predict_proba(np.asarray(x, dtype=np.float32))[:, 1].astype(np.float64)


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic (ties count 1/2); 0.5 when a fold holds one class. Used for the inner
    cross-validation, where scikit-learn's scorer costs more than the fits."""
    pos, neg = p[y == 1], p[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


class LogisticRegressionLearner(_SearchedLearner):
    """L2 logistic regression on standardised profiles; the search draws C (1e-3 .. 1e2, log-uniform) and the class
    weighting (none / balanced)."""

    name = "logreg"

    def _estimator(self, seed: int):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=seed))

    def _space(self) -> dict:
        from scipy.stats import loguniform

        return {"logisticregression__C": loguniform(1e-3, 1e2),
                "logisticregression__class_weight": [None, "balanced"]}


class FNNLearner(_SearchedLearner):
    """A single-task feed-forward network (scikit-learn ``MLPClassifier``; L-BFGS, which suits tens of compounds
    better than Adam) on standardised profiles; the search draws the hidden layers, the L2 penalty and the
    activation."""

    name = "fnn"

    def __init__(self, *, n_configs: int = 10, inner_folds: int = 3, max_iter: int = 200):
        super().__init__(n_configs=n_configs, inner_folds=inner_folds)
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"{self.name}: max_iter must be an integer >= 1, got {max_iter!r}")
        self.max_iter = max_iter

    def _estimator(self, seed: int):
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), MLPClassifier(solver="lbfgs", max_iter=self.max_iter,
                                                             random_state=seed))

    def _space(self) -> dict:
        from scipy.stats import loguniform

        return {"mlpclassifier__hidden_layer_sizes": [(32,), (64,), (128,), (64, 32), (128, 64)],
                "mlpclassifier__alpha": loguniform(1e-4, 10.0),
                "mlpclassifier__activation": ["relu", "tanh"]}


class GradientBoostingLearner(_SearchedLearner):
    """Gradient-boosted trees (scikit-learn ``HistGradientBoostingClassifier``, no early stopping); the search draws
    the learning rate, the number of iterations, the leaves per tree, the minimum leaf size and the L2 penalty."""

    name = "gbm"

    def _estimator(self, seed: int):
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(early_stopping=False, random_state=seed)

    def _space(self) -> dict:
        from scipy.stats import loguniform

        return {"learning_rate": loguniform(1e-2, 3e-1), "max_iter": [25, 50, 100],
                "max_leaf_nodes": [4, 8, 16, 31], "min_samples_leaf": [1, 2, 4],
                "l2_regularization": loguniform(1e-4, 1.0)}
