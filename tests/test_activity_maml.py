"""MAML on one-vs-rest tasks: the inner step has the right sign, and the zeroed head and class-balanced loss fix the
below-chance scores of the thesis' MAML (a training task's actives are inactives of every test task); the test-time
inner learning rate is chosen on the validation tasks, and the benchmark hands those over apart."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from phenovec.activity.episodes import episodes
from phenovec.activity.learners.backbone import as_tensor
from phenovec.activity.learners.maml import FirstOrderMAMLLearner, MAMLLearner
from phenovec.activity.synthetic import synthetic_activity
from phenovec.activity.tasks import build_tasks, compound_profiles
from phenovec.io.activity_labels import one_vs_rest_labels

SMALL = {"hidden": (32, 32), "meta_batches": 25, "meta_batch_size": 4}
THESIS = {"zero_head": False, "balanced": False}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    from phenovec.activity.benchmark import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tasks():
    """One-vs-rest MOA tasks over every compound (8 actives, 88 inactives each): 6 train, 2 validation, 4 test."""
    _, wells = synthetic_activity(n_moas=12, compounds_per_moa=8, n_features=16, seed=1)
    labels = one_vs_rest_labels(wells, compound_column="Metadata_compound", class_column="Metadata_MOA")
    return build_tasks(labels, compound_profiles(wells, "Metadata_compound"), min_actives=5, min_inactives=5,
                       test=4, validation=2, seed=0)


def mean_auroc(learner, ts, m: int, n: int = 6) -> float:
    out = []
    for t in ts.test:
        for e in episodes(t, m, n, seed=0):
            learner.fit(t.x[e.support], t.y[e.support])
            out.append(roc_auc_score(t.y[e.query], learner.predict_proba(t.x[e.query])))
    return float(np.mean(out))


@pytest.fixture(scope="module")
def trained(tasks):
    return {"thesis": MAMLLearner(**SMALL, **THESIS).pretrain(tasks.train + tasks.validation, seed=0),
            "default": MAMLLearner(**SMALL).pretrain(tasks.train + tasks.validation, seed=0)}


@pytest.mark.parametrize("zero_head", [False, True])
@pytest.mark.parametrize("balanced", [False, True])
def test_inner_step_lowers_the_support_loss(tasks, trained, zero_head, balanced):
    """A sign check: a small inner step goes downhill on the support loss, whatever the head and loss."""
    learner = trained["default"]
    t = tasks.test[0]
    e = next(episodes(t, 16, 1, seed=0))
    xs, ys = as_tensor(t.x[e.support], learner.device), as_tensor(t.y[e.support], learner.device)
    try:
        learner.balanced = balanced
        start = dict(learner._meta)
        if zero_head:  # from the zeroed head's first step (a zeroed head leaves only the head a gradient)
            learner.zero_head = True
            start = learner._adapt(start, xs, ys, first_order=True, lr=0.5)
        learner.zero_head = False
        before = float(learner._loss(start, xs, ys))
        assert float(learner._loss(learner._adapt(start, xs, ys, first_order=True, lr=1e-2), xs, ys)) < before
    finally:
        learner.zero_head, learner.balanced = True, True


def test_thesis_maml_ranks_one_vs_rest_tasks_backwards_and_the_fix_does_not(tasks, trained):
    """The thesis' meta-learned weights, barely adapted, score test tasks far below chance (its head says "a
    training task's active", which every test task calls inactive); one step at alpha = 0.5 leaves it well short.
    With the zeroed head and balanced loss MAML is far above chance at M = 16 and 32."""
    thesis = trained["thesis"]
    thesis.fit_lr = 1e-6
    try:
        assert mean_auroc(thesis, tasks, 16) < 0.3
    finally:
        thesis.fit_lr = thesis.inner_lr
    fixed = {m: mean_auroc(trained["default"], tasks, m) for m in (16, 32)}
    assert min(fixed.values()) > 0.9, fixed
    assert mean_auroc(thesis, tasks, 16) < fixed[16] - 0.1


def test_inner_lr_chosen_on_validation_tasks(tasks):
    learner = FirstOrderMAMLLearner(**SMALL, select_inner_lr=[0.1, 0.5, 5.0], select_episodes=4)
    assert learner.uses_validation
    learner.pretrain(tasks.train, validation=tasks.validation, seed=0)
    assert set(learner.selection) == {0.1, 0.5, 5.0}
    assert learner.fit_lr == max(learner.selection, key=learner.selection.get)
    assert learner.selection[5.0] < learner.selection[learner.fit_lr]  # 5 steps at 5.0 overshoot
    # the chosen rate is the one fit uses, and refitting is deterministic
    t = tasks.test[0]
    e = next(episodes(t, 16, 1, seed=0))
    p1 = learner.fit(t.x[e.support], t.y[e.support]).predict_proba(t.x[e.query])
    learner.fit_lr = 5.0
    p2 = learner.fit(t.x[e.support], t.y[e.support]).predict_proba(t.x[e.query])
    assert not np.allclose(p1, p2)
    assert not MAMLLearner(**SMALL).uses_validation


def test_bad_selection_options():
    with pytest.raises(ValueError, match="select_inner_lr"):
        MAMLLearner(select_inner_lr=[0.1, -1.0])
    with pytest.raises(ValueError, match="select_episodes"):
        MAMLLearner(select_inner_lr=[0.1], select_episodes=0)


def test_benchmark_pretrains_a_selecting_learner_on_train_tasks_only(tmp_path, monkeypatch):
    """A learner with uses_validation gets the training tasks and the validation tasks apart; others get both."""
    from phenovec.activity.benchmark import BenchmarkConfig, run_benchmark

    labels, wells = synthetic_activity(n_moas=8, compounds_per_moa=12, n_features=8, seed=2)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    wells.to_csv(tmp_path / "wells.csv", index=False)
    calls = []
    original = MAMLLearner.pretrain

    def spy(self, tasks, *, seed=0, validation=None):
        calls.append((self.name, sorted(t.name for t in tasks), sorted(t.name for t in validation or [])))
        return original(self, tasks, seed=seed, validation=validation)

    monkeypatch.setattr(MAMLLearner, "pretrain", spy)
    cfg = BenchmarkConfig.from_dict({
        "labels": {"path": "labels.csv"}, "profiles": {"path": "wells.csv"},
        "tasks": {"min_actives": 5, "min_inactives": 5, "test": 2, "validation": 2},
        "episodes": {"support_sizes": [8], "episodes": 2},
        "learners": {"maml": {"hidden": [16], "meta_batches": 2, "meta_batch_size": 2, "select_inner_lr": [0.5]},
                     "maml_plain": {"learner": "maml", "hidden": [16], "meta_batches": 2, "meta_batch_size": 2}}},
        base=tmp_path)
    run_benchmark(cfg, tmp_path / "out")
    tp = pd.read_csv(tmp_path / "out" / "throughput.csv").set_index("learner")
    assert json.loads(tp.loc["maml", "settings"])["inner_lr"] == 0.5 and pd.isna(tp.loc["maml_plain", "settings"])
    (_, train_a, val_a), (_, train_b, val_b) = calls
    assert len(train_a) == 4 and len(val_a) == 2 and not set(train_a) & set(val_a)
    assert train_b == sorted(train_a + val_a) and val_b == []
