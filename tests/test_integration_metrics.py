"""Integration metrics against scib-metrics 0.6.1 itself, on the same input and the same kNN graph."""
import numpy as np
import pytest
import scipy.sparse as sp

import phenovec.evaluate.integration as pi
from integration_data import scib, scib_neighbors, synthetic_with_graph



@pytest.fixture(scope="module")
def data():
    return synthetic_with_graph(90)


def test_knn_graph_is_exact_with_self_first(data):
    from sklearn.neighbors import NearestNeighbors

    X, _, _, g = data
    d, i = NearestNeighbors(n_neighbors=90, algorithm="brute").fit(X).kneighbors(X)
    assert (g.indices[:, 0] == np.arange(len(X))).all() and (g.distances[:, 0] == 0).all()
    np.testing.assert_array_equal(g.indices, i)
    # the distances against the direct float64 ones (sklearn's |a|^2 + |b|^2 - 2 a.b cancels: its self-distance
    # is ~1e-7, not 0, on some CPUs)
    direct = np.sqrt(((X[:, None, :] - X[g.indices]) ** 2).sum(axis=2))
    np.testing.assert_allclose(g.distances, direct, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.distances, d, atol=1e-6)
    g32 = pi.knn_graph(X.astype(np.float32), 90)
    np.testing.assert_array_equal(g32.indices, i)


def test_one_distance_pass_equals_the_two_functions(data):
    X, labels, _, g = data
    for x in (X, X.astype(np.float32)):
        g2, sil = pi.knn_graph_and_silhouettes(x, labels, 90, tile=37)  # several tiles, a partial one
        ref = pi.knn_graph(x, 90)
        np.testing.assert_array_equal(g2.indices, ref.indices)
        np.testing.assert_array_equal(g2.distances, ref.distances)
        np.testing.assert_array_equal(sil, pi.silhouette_samples(x, labels, tile=37))


def test_one_distance_pass_breaks_ties_by_row_number():
    """30 identical rows (more than k + 8 tie) with interleaved labels: the pass sorted by label keeps the same
    tied rows as the unsorted kNN graph (by row number), so the integration table's graph is ``knn_graph``'s."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    X[:30] = X[0]
    labels = np.array(["b", "a"] * 30)
    ref = pi.knn_graph(X, 5)
    assert ref.indices[0].tolist() == [0, 1, 2, 3, 4]
    for tile in (7, 256):
        g, _ = pi.knn_graph_and_silhouettes(X, labels, 5, tile=tile)
        np.testing.assert_array_equal(g.indices, ref.indices)
        np.testing.assert_array_equal(g.distances, ref.distances)


def _brute_knn(x, k):
    """Exact kNN of the rows' float64 values: self first, then distance, ties by row number."""
    x = x.astype(np.float64)
    d = np.sqrt(((x[:, None, :] - x[None]) ** 2).sum(axis=2))
    np.fill_diagonal(d, -1.0)
    idx = np.lexsort((np.broadcast_to(np.arange(len(x)), d.shape), d), axis=1)[:, :k]
    return idx, np.maximum(np.take_along_axis(d, idx, axis=1), 0.0)


@pytest.mark.parametrize("spread", [100.0, 1e-1, 1e-3])
def test_knn_graph_is_exact_where_float32_products_cancel(spread):
    """float32 rows in tight clusters far from the centre (spread / norm down to 3e-7): the float32 screen misses
    true neighbours there (143 to 600 of 600 rows before the certificate); every row is now proved or recomputed,
    and the graph equals brute force on the rows' values, for both passes."""
    from phenovec.evaluate.integration.distance_pass import distance_pass, screen_sizes
    from phenovec.evaluate.integration.knn_graph import refined_graph, uncertain_rows

    rng = np.random.default_rng(0)
    x = (np.repeat(rng.normal(size=(5, 12)) * 1000, 120, axis=0) + rng.normal(size=(600, 12)) * spread)
    x = x.astype(np.float32)
    idx, dist = _brute_knn(x, 15)
    labels = np.repeat(["a", "b", "c"], 200)
    for g in (pi.knn_graph(x, 15), pi.knn_graph_and_silhouettes(x, labels, 15, tile=64)[0]):
        np.testing.assert_array_equal(g.indices, idx)
        np.testing.assert_allclose(g.distances, dist, rtol=1e-12, atol=1e-9)
    k, kk = screen_sizes(15, len(x))
    xc = (x - x.mean(axis=0, dtype=np.float64)).astype(np.float32)
    norms = np.einsum("ij,ij->i", xc, xc, dtype=np.float64)
    p = distance_pass(xc, norms, kk)
    unproved = len(uncertain_rows(refined_graph(x, p.candidates, k), p.screen, norms, 12, np.float32))
    assert (unproved == 0) if spread == 100.0 else (unproved > 100)  # the certificate is what saves them


def test_knn_graph_ties_and_errors():
    X = np.array([[0.0, 0], [1, 0], [0, 0], [-1, 0], [0, 3]])
    g = pi.knn_graph(X, 3)
    # row 0: itself, then its duplicate (row 2), then the tie of rows 1 and 3 broken by row number
    assert g.indices[0].tolist() == [0, 2, 1] and g.indices[2].tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="exceeds the number of rows"):
        pi.knn_graph(X, 6)
    with pytest.raises(ValueError, match="row 1"):
        pi.knn_graph(np.array([[0.0], [np.nan], [1.0]]), 2)


def test_connectivities_equal_umap(data):
    from umap.umap_ import fuzzy_simplicial_set

    X, _, _, g = data
    g50 = g.subset_neighbors(50)
    ref = fuzzy_simplicial_set(sp.coo_matrix(([], ([], [])), shape=(len(X), 1)), n_neighbors=50, random_state=None,
                               metric=None, knn_indices=g50.indices, knn_dists=g50.distances,
                               set_op_mix_ratio=1.0, local_connectivity=1.0)[0]
    assert abs(ref - g50.knn_graph_connectivities).max() == 0


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_silhouettes(data, metric):
    X, labels, batches, _ = data
    assert abs(pi.silhouette_label(X, labels, metric=metric) - scib.silhouette_label(X, labels, metric=metric)) < 1e-6
    for between in (("nearest", "mean_other", "furthest") if metric == "euclidean" else ("nearest",)):
        ours = pi.silhouette_batch(X, labels, batches, metric=metric, between_cluster_distances=between)
        ref = scib.silhouette_batch(X, labels, batches, metric=metric, between_cluster_distances=between)
        assert abs(ours - ref) < 1e-6, between
    assert abs(pi.bras(X, labels, batches) - scib.bras(X, labels, batches)) < 1e-6


def test_silhouette_samples_singletons_and_float32(data):
    from scib_metrics.utils import silhouette_samples

    X, labels, _, _ = data
    lab = labels.astype(object)
    lab[:2] = ["solo_a", "solo_b"]  # singleton classes score 0, as scib / scikit-learn
    ours = pi.silhouette_samples(X, lab)
    np.testing.assert_allclose(ours, silhouette_samples(X, lab), atol=1e-5)
    assert ours[0] == 0 and ours[1] == 0
    np.testing.assert_allclose(pi.silhouette_samples(X.astype(np.float32), lab), ours, atol=1e-5)


def test_lisi(data):
    _, labels, batches, g = data
    nn = scib_neighbors(g)
    assert abs(pi.ilisi_knn(g, batches) - scib.ilisi_knn(nn, batches)) < 1e-6
    assert abs(pi.clisi_knn(g, labels) - scib.clisi_knn(nn, labels)) < 1e-6
    assert abs(pi.ilisi_knn(g, batches, scale=False) - scib.ilisi_knn(nn, batches, scale=False)) < 1e-6
    np.testing.assert_allclose(pi.lisi_knn(g, batches), scib.lisi_knn(nn, batches), rtol=1e-4)
    g30 = g.subset_neighbors(30)
    assert abs(pi.ilisi_knn(g30, batches, perplexity=7) - scib.ilisi_knn(scib_neighbors(g30), batches, perplexity=7)) < 1e-6


def test_graph_connectivity(data):
    _, labels, _, g = data
    for k in (5, 15):
        gk = g.subset_neighbors(k)
        assert abs(pi.graph_connectivity(gk, labels) - scib.graph_connectivity(scib_neighbors(gk), labels)) < 1e-12


def test_accepts_scib_neighbors_results(data):
    _, _, batches, g = data
    assert pi.ilisi_knn(scib_neighbors(g), batches) == pi.ilisi_knn(g, batches)


def test_silhouette_batch_undefined_as_scib(data):
    X, labels, batches, _ = data
    one_per_label = np.array([f"plate{v[-1]}" for v in labels])  # every label lies in one batch
    with pytest.raises(ValueError, match="undefined"):
        scib.silhouette_batch(X, labels, one_per_label)
    with pytest.raises(ValueError, match="no label has rows from at least 2 batches"):
        pi.silhouette_batch(X, labels, one_per_label)


def test_bad_annotations(data):
    X, labels, batches, g = data
    b = batches.astype(object)
    b[7] = np.nan
    with pytest.raises(ValueError, match="batches: missing value .* row 7"):
        pi.ilisi_knn(g, b)
    with pytest.raises(ValueError, match="batch: missing value .* row 7"):
        pi.silhouette_batch(X, labels, b)
    with pytest.raises(ValueError, match="at least 2 needed"):
        pi.ilisi_knn(g, np.full(len(X), "plate0"))
    lab = labels.astype(object)
    lab[3] = None
    with pytest.raises(ValueError, match="labels: missing value .* row 3"):
        pi.silhouette_label(X, lab)
    with pytest.raises(ValueError, match="labels: 599 values for 600 rows"):
        pi.clisi_knn(g, labels[:-1])
