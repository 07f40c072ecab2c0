"""sBEE against scib-metrics 0.6.1's ``sbee`` itself, on the same input and kNN graph."""
import importlib

import numpy as np
import pytest

import phenovec.evaluate.integration as pi
from integration_data import scib, scib_neighbors, synthetic, synthetic_with_graph

sbee_module = importlib.import_module("phenovec.evaluate.integration.sbee")  # the package's `sbee` is the function


@pytest.mark.parametrize("kwargs", [dict(n=600), dict(n=900, n_labels=7, n_batches=4, seed=3),
                                    dict(n=300, n_batches=2, seed=5, dtype=np.float32)])
def test_sbee_equals_scib(kwargs):
    X, labels, batches, g = synthetic_with_graph(30, **kwargs)
    ours = pi.sbee(g, X, batches, labels)
    ref = scib.sbee(scib_neighbors(g), X, batches, labels)
    assert abs(ours - ref) < 1e-12 and 0 < ours < 1


@pytest.mark.parametrize("offset", [1e5, 1e6])
def test_sbee_of_uncentred_rows_equals_scib(offset):
    """Raw units far from 0 (a constant offset, as CellProfiler intensities): the medians' GEMM cancelled to 6e-6 off
    scib's direct distances at 1e6 before the rows were centred per label; the kNN graph is the offset's too."""
    X, labels, batches, g = synthetic_with_graph(30, n=400, seed=2)
    Xo = X + offset
    ref = scib.sbee(scib_neighbors(g), Xo, batches, labels)
    assert abs(pi.sbee(g, Xo, batches, labels) - ref) < 1e-12


def test_sbee_edge_cases_equal_scib():
    X, labels, batches = synthetic(n=400, n_labels=4, n_batches=3, seed=8)
    lab, bat = labels.astype(object), batches.astype(object)
    lab[:12], bat[:12] = "only_plate0", "plate0"  # a label in one batch: inter = intra, a perfect distance score
    lab[12], bat[12] = "single", "plate1"  # a group of one row: intra 0, undefined, scored 0
    lab[13:20], bat[13:17], bat[17:20] = "dups", "plate0", "plate2"
    X[13:17] = np.random.default_rng(0).normal(size=X.shape[1]) * 37.3 + 0.1234567  # duplicate rows
    X[20:23] = X[30]  # duplicates across labels
    g = pi.knn_graph(X, 50)  # "single" and "dups" have fewer rows than k
    for sensitivity in (0.15, 0.5):
        with np.errstate(invalid="ignore"):
            ref = scib.sbee(scib_neighbors(g), X, bat, lab, sensitivity=sensitivity)
        assert abs(pi.sbee(g, X, bat, lab, sensitivity=sensitivity) - ref) < 1e-12


def test_duplicate_rows_have_an_exact_zero_median(monkeypatch):
    """The GEMM leaves ~1e-6 where cdist has exactly 0 for some duplicates; those rows are recomputed."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 12))
    labels = np.zeros(40, int)
    batches = np.r_[np.zeros(20, int), np.ones(20, int)]
    gemm_nonzero = 0
    for _ in range(20):
        X[:15] = rng.normal(size=12) * rng.uniform(1, 100) + rng.uniform(-5, 5)  # 15 of the group's 20 rows
        assert (sbee_module.intra_inter_medians(X, batches, labels)[0][:15] == 0).all()
        with monkeypatch.context() as m:
            m.setattr(sbee_module, "_ZERO_REL", -1.0)
            gemm_nonzero += (sbee_module.intra_inter_medians(X, batches, labels)[0][:15] != 0).any()
    assert gemm_nonzero > 0  # else this test could not fail


def test_sbee_refusals():
    X, labels, batches, g = synthetic_with_graph(20, n=100)
    with pytest.raises(ValueError, match="batches: 99 values for 100 rows"):
        pi.sbee(g, X, batches[:-1], labels)
    with pytest.raises(ValueError, match="X_emb: 99 rows for 100 rows"):
        pi.sbee(g, X[:-1], batches, labels)
    lab = labels.astype(object)
    lab[4] = np.nan
    with pytest.raises(ValueError, match="labels: missing value .* row 4"):
        pi.sbee(g, X, batches, lab)
    with pytest.raises(ValueError, match="sensitivity"):
        pi.sbee(g, X, batches, labels, sensitivity=0)


def test_medians_on_threads_equal_one_thread():
    X, labels, batches = synthetic(n=700, n_labels=6, n_batches=4, seed=9)
    lab = np.unique(labels, return_inverse=True)[1]
    bat = np.unique(batches, return_inverse=True)[1]
    one = sbee_module.intra_inter_medians(X, bat, lab, workers=1)
    two = sbee_module.intra_inter_medians(X, bat, lab, workers=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert (one[0] > 0).all() and (one[1] > 0).all()
