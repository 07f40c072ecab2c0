"""The PyTorch few-shot learners (prototypical network, MAML second / first order, multitask FNN): they learn on a
synthetic activity table whose actives are driven by MOAs, sit at chance when the profiles carry no signal, keep
episodes apart, are deterministic given the seed and refuse bad support sets."""
from __future__ import annotations

import numpy as np
import pytest

import torch
from sklearn.metrics import roc_auc_score  # noqa: E402

from phenovec.activity.learner import TaskData  # noqa: E402
from phenovec.activity.learners.backbone import FNN  # noqa: E402
from phenovec.activity.learners.maml import FirstOrderMAMLLearner, MAMLLearner  # noqa: E402
from phenovec.activity.learners.multitask import MultitaskLearner, label_matrix, masked_bce  # noqa: E402
from phenovec.activity.learners.protonet import ProtoNetLearner  # noqa: E402

N_MOA, N_FEATURES, PER_MOA = 8, 24, 24
TRAIN_MOAS, TEST_MOAS = range(0, 5), range(5, 8)
SUPPORT, QUERY, EPISODES = 16, 32, 8

# small learners: seconds each on two shared cores
SMALL = {"hidden": (64, 64)}
LEARNERS = {
    "protonet": lambda: ProtoNetLearner(**SMALL, embedding=32, episodes=150),
    "maml": lambda: MAMLLearner(**SMALL, meta_batches=40, meta_batch_size=4),
    "maml_fo": lambda: FirstOrderMAMLLearner(**SMALL, meta_batches=40, meta_batch_size=4),
    "multitask": lambda: MultitaskLearner(**SMALL, epochs=30, batch_size=64),
}


def synthetic_tasks(seed: int = 0, shuffle: bool = False) -> tuple[list[TaskData], list[TaskData]]:
    """Profiles = MOA centroid + noise; task k = "the compound's MOA is k" over a random subset of compounds.

    Training tasks (MOAs 0-4) and held-out tasks (MOAs 5-7) label disjoint compound pools, so a compound's
    identity carries nothing from training to testing; the training pool holds the training MOAs only (held-out
    MOAs are unseen in pre-training, rather than seen as inactive in every training task), the held-out pool all.
    ``shuffle`` permutes the profiles across compounds: labels and profiles are then unrelated."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(N_MOA, N_FEATURES)).astype(np.float32)
    pools = []
    for pool, moas in (("train", TRAIN_MOAS), ("test", range(N_MOA))):
        moa = np.repeat(np.array(moas), PER_MOA)
        x = (centroids[moa] + 1.0 * rng.normal(size=(len(moa), N_FEATURES))).astype(np.float32)
        if shuffle:
            x = x[rng.permutation(len(x))]
        ids = np.array([f"{pool}-{i}" for i in range(len(moa))])
        pools.append((x, moa, ids))

    def task(k: int, pool: tuple) -> TaskData:
        x, moa, ids = pool
        pos = np.flatnonzero(moa == k)
        neg = rng.choice(np.flatnonzero(moa != k), 3 * len(pos), replace=False)
        rows = np.sort(np.concatenate([pos, neg]))
        return TaskData(f"moa-{k}", x[rows], (moa[rows] == k).astype(np.int8), ids[rows])

    return [task(k, pools[0]) for k in TRAIN_MOAS], [task(k, pools[1]) for k in TEST_MOAS]


def test_episode(task: TaskData, episode: int) -> tuple[np.ndarray, ...]:
    """A stratified support set of SUPPORT and a query set of QUERY, reproducible per (task, episode)."""
    rng = np.random.default_rng([episode, int(task.name.split("-")[1])])
    pos, neg = np.flatnonzero(task.y == 1), np.flatnonzero(task.y == 0)
    n_pos = round(SUPPORT * len(pos) / len(task.y))
    support = np.concatenate([rng.choice(pos, n_pos, replace=False),
                              rng.choice(neg, SUPPORT - n_pos, replace=False)])
    rest = np.setdiff1d(np.arange(len(task.y)), support)
    query = rng.choice(rest, QUERY, replace=False)
    while len(np.unique(task.y[query])) < 2:  # pragma: no cover - a one-class query has no AUROC
        query = rng.choice(rest, QUERY, replace=False)
    return task.x[support], task.y[support], task.x[query], task.y[query]


test_episode.__test__ = False  # a helper, not a test


def mean_auroc(learner, tasks: list[TaskData]) -> float:
    scores = []
    for task in tasks:
        for e in range(EPISODES):
            xs, ys, xq, yq = test_episode(task, e)
            p = learner.fit(xs, ys, seed=e).predict_proba(xq)
            assert p.shape == (len(xq),) and p.dtype == np.float64 and ((p >= 0) & (p <= 1)).all()
            scores.append(roc_auc_score(yq, p))
    return float(np.mean(scores))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these networks are tiny, and on a loaded two-core machine more threads only contend
    (5-10x slower measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return synthetic_tasks(0), synthetic_tasks(0, shuffle=True)


@pytest.fixture(scope="module")
def pretrained(data):
    """Every learner pre-trained on the real-signal training tasks (once per module)."""
    (train, _), _ = data
    return {name: make().pretrain(train, seed=3) for name, make in LEARNERS.items()}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_learns_on_held_out_tasks(name, data, pretrained):
    (_, test), _ = data
    assert mean_auroc(pretrained[name], test) > 0.75


@pytest.mark.parametrize("name", list(LEARNERS))
def test_at_chance_without_signal(name, data):
    _, (train, test) = data
    learner = LEARNERS[name]().pretrain(train, seed=3)
    assert abs(mean_auroc(learner, test) - 0.5) < 0.1


@pytest.mark.parametrize("name", list(LEARNERS))
def test_episodes_do_not_leak(name, data, pretrained):
    (_, test), _ = data
    learner = pretrained[name]
    a, b = test_episode(test[0], 0), test_episode(test[1], 1)
    xq = np.concatenate([a[2], b[2]])
    first = learner.fit(a[0], a[1], seed=0).predict_proba(xq)
    other = learner.fit(b[0], b[1], seed=0).predict_proba(xq)
    again = learner.fit(a[0], a[1], seed=0).predict_proba(xq)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("name", list(LEARNERS))
def test_deterministic_given_seed(name, data, pretrained):
    (train, test), _ = data
    xs, ys, xq, _ = test_episode(test[0], 0)
    first = LEARNERS[name]().pretrain(train, seed=3).fit(xs, ys, seed=1).predict_proba(xq)
    np.testing.assert_array_equal(first, pretrained[name].fit(xs, ys, seed=1).predict_proba(xq))
    other = LEARNERS[name]().pretrain(train, seed=4).fit(xs, ys, seed=1).predict_proba(xq)
    assert not np.array_equal(first, other)


def test_global_random_state_untouched(data):
    (train, _), _ = data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ProtoNetLearner(**SMALL, episodes=2).pretrain(train, seed=0)
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_multitask_episodes_in_either_order(data, pretrained):
    """The pre-trained weights are restored after each episode: A then B gives what B then A gives."""
    (_, test), _ = data
    learner = pretrained["multitask"]
    before = {k: v.clone() for k, v in learner._pretrained.state_dict().items()}
    a, b = test_episode(test[0], 2), test_episode(test[2], 3)
    pa1 = learner.fit(a[0], a[1], seed=5).predict_proba(a[2])
    pb1 = learner.fit(b[0], b[1], seed=6).predict_proba(b[2])
    pb2 = learner.fit(b[0], b[1], seed=6).predict_proba(b[2])
    pa2 = learner.fit(a[0], a[1], seed=5).predict_proba(a[2])
    np.testing.assert_array_equal(pa1, pa2)
    np.testing.assert_array_equal(pb1, pb2)
    for k, v in learner._pretrained.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_multitask_body_fine_tuning_restores_weights(data):
    (train, test), _ = data
    learner = MultitaskLearner(**SMALL, epochs=5, finetune_body=True, head_steps=20).pretrain(train, seed=0)
    before = {k: v.clone() for k, v in learner._pretrained.state_dict().items()}
    a, b = test_episode(test[0], 0), test_episode(test[1], 0)
    pa1 = learner.fit(a[0], a[1], seed=0).predict_proba(a[2])
    learner.fit(b[0], b[1], seed=0)
    np.testing.assert_array_equal(pa1, learner.fit(a[0], a[1], seed=0).predict_proba(a[2]))
    for k, v in learner._pretrained.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    frozen = MultitaskLearner(**SMALL, epochs=5, head_steps=20).pretrain(train, seed=0)
    assert not np.array_equal(pa1, frozen.fit(a[0], a[1], seed=0).predict_proba(a[2]))


def test_maml_second_and_first_order_differ(data, pretrained):
    """At the same settings (5 inner steps, maml_fo's default) the two orders meta-learn different weights, and
    both learn."""
    (train, test), _ = data
    fo = pretrained["maml_fo"]
    so = MAMLLearner(**SMALL, meta_batches=40, meta_batch_size=4, inner_steps=fo.inner_steps).pretrain(train, seed=3)
    assert not so.first_order and fo.first_order and fo.inner_steps == 5
    assert mean_auroc(so, test) > 0.75
    for k in so._meta:
        assert so._meta[k].shape == fo._meta[k].shape
    assert any(not torch.equal(so._meta[k], fo._meta[k]) for k in so._meta)
    xs, ys, xq, _ = test_episode(test[0], 0)
    assert not np.allclose(so.fit(xs, ys).predict_proba(xq), fo.fit(xs, ys).predict_proba(xq))
    with pytest.raises(ValueError, match="second order"):
        FirstOrderMAMLLearner(first_order=False)


def test_maml_meta_gradient_matches_autograd():
    """The torch.func meta-gradient equals one written with torch.autograd (create_graph for second order)."""
    from torch.func import functional_call, grad

    gen = torch.Generator().manual_seed(0)
    xs, xq = torch.randn(6, 5, generator=gen), torch.randn(7, 5, generator=gen)
    ys, yq = torch.tensor([0, 1, 0, 1, 1, 0.0]), torch.tensor([1, 0, 0, 1, 1, 0, 1.0])
    grads = {}
    for first_order in (False, True):
        learner = MAMLLearner(hidden=(8,), input_dropout=0.0, dropout=0.0, inner_steps=2, first_order=first_order,
                              zero_head=False, balanced=False)  # the plain BCE written out below
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            learner._model = FNN(5, 1, hidden=(8,), input_dropout=0.0, dropout=0.0)
        params = {k: p.detach() for k, p in learner._model.named_parameters()}
        got, _ = grad(learner._meta_loss, has_aux=True)(params, [(xs, ys, xq, yq)])
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        current = dict(leaves)
        for _ in range(2):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                functional_call(learner._model, current, (xs,))[:, 0], ys)
            g = torch.autograd.grad(loss, list(current.values()), create_graph=not first_order)
            current = {k: v - 0.5 * gk for (k, v), gk in zip(current.items(), g)}
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            functional_call(learner._model, current, (xq,))[:, 0], yq)
        expected = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        for k in params:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6)
        grads[first_order] = got
    assert any(not torch.allclose(grads[False][k], grads[True][k]) for k in grads[False])


def test_masked_bce_ignores_missing_labels():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    target = torch.tensor([[1.0, -1.0], [-1.0, 0.0]])
    expected = (torch.nn.functional.binary_cross_entropy_with_logits(logits[0, 0], target[0, 0])
                + torch.nn.functional.binary_cross_entropy_with_logits(logits[1, 1], target[1, 1])) / 2
    torch.testing.assert_close(masked_bce(logits, target), expected)
    changed = logits.clone()
    changed[0, 1] = changed[1, 0] = 100.0
    torch.testing.assert_close(masked_bce(changed, target), expected)


def test_label_matrix_joins_tasks_by_compound():
    x = np.eye(3, dtype=np.float32)
    a = TaskData("a", x[[0, 1]], np.array([1, 0]), np.array(["c0", "c1"]))
    b = TaskData("b", x[[1, 2]], np.array([1, 0]), np.array(["c1", "c2"]))
    compounds, profiles, labels = label_matrix([a, b], "here")
    assert compounds.tolist() == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(profiles, x)
    np.testing.assert_array_equal(labels, [[1, -1], [0, 1], [-1, 0]])
    clash = TaskData("b", x[[2, 2]], np.array([1, 0]), np.array(["c1", "c2"]))
    with pytest.raises(ValueError, match="compound 'c1' has a different profile in task 'b'"):
        label_matrix([a, clash], "here")
    twice = TaskData("b", x[[1, 1]], np.array([1, 0]), np.array(["c1", "c1"]))
    with pytest.raises(ValueError, match="here: task 'b' lists compound 'c1' twice"):
        label_matrix([a, twice], "here")
    short = TaskData("b", x[[1, 2]], np.array([1, 0]), np.array(["c1"]))
    with pytest.raises(ValueError, match=r"here: task 'b': expected x \(n, d\), y \(n,\) and compounds \(n,\)"):
        label_matrix([a, short], "here")


@pytest.mark.parametrize("name", list(LEARNERS))
def test_refusals(name, data, pretrained):
    (train, test), _ = data
    learner = pretrained[name]
    xs, ys, xq, _ = test_episode(test[0], 0)
    with pytest.raises(ValueError, match=f"{name} fit: the support set holds one class only"):
        learner.fit(xs, np.zeros_like(ys))
    with pytest.raises(ValueError, match=r"expected query profiles of shape \(n, 24\)"):
        learner.fit(xs, ys).predict_proba(xq[:, :5])
    fresh = LEARNERS[name]()
    with pytest.raises(RuntimeError, match="pretrain"):
        fresh.fit(xs, ys)
    with pytest.raises(RuntimeError, match="fit"):
        fresh.predict_proba(xq)
    one_class = TaskData("flat", train[0].x, np.zeros_like(train[0].y), train[0].compounds)
    if name == "multitask":  # a one-class task still adds labels to the multitask matrix
        return
    with pytest.raises(ValueError, match="task 'flat' has 0 actives"):
        fresh.pretrain([train[1], one_class])
