"""Mondrian cross-conformal prediction (phenovec.activity.conformal): class-conditional validity on held-out data
over many seeds (within a binomial tolerance), efficiency, the thesis' 1 / -1 / 0 calls, and the errors."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.linear_model import LogisticRegression

from phenovec.activity.conformal import MondrianCrossConformal, binary_calls, conformal_report, label_sets
from phenovec.activity.scaffold import scaffold_kfold

N_SEEDS = 12


def _task(seed: int, n: int, shift: float, active_rate: float = 0.3, d: int = 5):
    """Imbalanced binary task: actives are Gaussian shifted by ``shift`` along every feature."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < active_rate).astype(int)
    x = rng.normal(size=(n, d)) + shift * y[:, None]
    return x, y


@lru_cache(maxsize=None)
def _pooled(shift: float, epsilon: float):
    errors = {0: [0, 0], 1: [0, 0]}  # class -> [misses, n]
    reports = []
    for seed in range(N_SEEDS):
        x, y = _task(seed, 600, shift)  # about 36 actives per calibration fold (> 1/epsilon)
        xt, yt = _task(10_000 + seed, 300, shift)
        cp = MondrianCrossConformal(LogisticRegression(), n_folds=5, epsilon=epsilon, seed=seed).fit(x, y)
        p = cp.p_values(xt)
        sets = label_sets(p, epsilon)
        for c in (0, 1):
            errors[c][0] += int(np.sum(~sets[yt == c, c]))
            errors[c][1] += int(np.sum(yt == c))
        reports.append(conformal_report(p, yt, cp.classes_, epsilon))
    return errors, reports


@pytest.mark.parametrize("shift", [1.0, 0.0])
@pytest.mark.parametrize("epsilon", [0.05, 0.2])
def test_validity_per_class_over_seeds(shift, epsilon):
    """Per class, the pooled miss count over 12 seeds stays below the binomial(n, epsilon) 99.9% quantile -- with
    signal and without (shift 0: no information, still valid, just inefficient)."""
    errors, reports = _pooled(shift, epsilon)
    for c, (misses, n) in errors.items():
        assert misses <= binom.ppf(0.999, n, epsilon), (c, misses, n, misses / n)
    total = sum(m for m, _ in errors.values()) / sum(n for _, n in errors.values())
    if shift > 0:  # and not trivially valid: with signal the error rate is near epsilon, not 0
        assert total > epsilon / 2
    assert np.mean([r.error_rate for r in reports]) == pytest.approx(total, rel=1e-9, abs=0.02)


def test_efficiency_tracks_signal():
    """Separable classes give mostly singleton sets; no signal gives mostly two-label sets."""
    _, strong = _pooled(3.0, 0.05)
    _, none = _pooled(0.0, 0.05)
    assert np.mean([r.singleton_fraction for r in strong]) > 0.85
    assert np.mean([r.mean_set_size for r in none]) > 1.7
    assert np.mean([r.singleton_fraction for r in none]) < 0.3


def test_binary_calls_and_report_fields():
    p = np.array([[0.01, 0.5], [0.5, 0.01], [0.5, 0.5], [0.01, 0.02]])
    assert binary_calls(p, 0.05).tolist() == [1, -1, 0, 0]
    r = conformal_report(p, np.array([1, 1, 0, 0]), np.array([0, 1]), 0.05)
    assert r.error_rate == pytest.approx(0.5)  # row 2 (true 1, set {0}) and row 4 (empty) miss
    assert r.class_error_rate == {0: 0.5, 1: 0.5}
    assert r.singleton_fraction == 0.5 and r.empty_fraction == 0.25 and r.mean_set_size == 1.0
    assert "error_rate[1]" in r.as_row()


def test_given_folds_string_labels_and_reproducibility():
    x, y = _task(3, 300, 1.5)
    labels = np.where(y == 1, "active", "inactive")
    folds = np.arange(300) % 5
    a = MondrianCrossConformal(LogisticRegression(), epsilon=0.1, seed=1).fit(x, labels, folds=folds)
    b = MondrianCrossConformal(LogisticRegression(), epsilon=0.1, seed=1).fit(x, labels, folds=folds)
    assert a.classes_.tolist() == ["active", "inactive"]
    assert np.array_equal(a.p_values(x[:20]), b.p_values(x[:20]))
    assert len(a.models_) == 5 and a.predict_proba(x[:3]).shape == (3, 2)
    c = MondrianCrossConformal(LogisticRegression(), epsilon=0.1, seed=2).fit(x, labels)
    assert not np.array_equal(a.p_values(x[:20]), c.p_values(x[:20]))
    # scaffold folds as the thesis: groups of rows sharing a scaffold are one fold
    scaffolds = [f"s{i // 4}" for i in range(300)]
    s = MondrianCrossConformal(LogisticRegression(), epsilon=0.1).fit(x, labels, folds=scaffold_kfold(scaffolds, 5))
    assert s.predict_sets(x[:5]).shape == (5, 2)


@pytest.mark.filterwarnings("ignore:class .* calibration compounds per fold")
def test_errors_name_the_problem():
    x, y = _task(0, 100, 1.0)
    with pytest.raises(ValueError, match="at least two classes"):
        MondrianCrossConformal(LogisticRegression()).fit(x, np.zeros(100))
    y_few = np.zeros(100, dtype=int)
    y_few[:3] = 1
    with pytest.raises(ValueError, match="class 1 has 3 compounds, fewer than the 5"):
        MondrianCrossConformal(LogisticRegression()).fit(x, y_few)
    folds = np.where(y_few == 1, 0, np.arange(100) % 4 + 1)
    with pytest.raises(ValueError, match="fold 0: no compound of class 0 to calibrate on"):
        MondrianCrossConformal(LogisticRegression()).fit(x, y_few, folds=folds)
    with pytest.warns(UserWarning, match="class 1: at most 5 calibration compounds per fold"):
        MondrianCrossConformal(LogisticRegression()).fit(x, (np.arange(100) % 4 == 0).astype(int))
    with pytest.raises(ValueError, match="epsilon must be in"):
        MondrianCrossConformal(LogisticRegression(), epsilon=1.5)
    with pytest.raises(RuntimeError, match="not fitted"):
        MondrianCrossConformal(LogisticRegression()).p_values(x)
    with pytest.raises(ValueError, match="label 'x' is not one of"):
        conformal_report(np.full((2, 2), 0.5), np.array(["x", "y"]), np.array(["a", "b"]))
