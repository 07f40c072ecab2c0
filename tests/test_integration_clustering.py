"""Integration metrics against scib-metrics 0.6.1 itself (PCR, isolated labels, k-means and Leiden NMI / ARI)."""
import numpy as np
import pandas as pd
import pytest

import phenovec.evaluate.integration as pi
from integration_data import scib, scib_neighbors, synthetic_with_graph



@pytest.fixture(scope="module")
def data():
    return synthetic_with_graph(15)


def test_pcr(data):
    from scib_metrics.utils import principal_component_regression as scib_pcr

    X, _, batches, _ = data
    rng = np.random.default_rng(1)
    cont = rng.normal(size=len(X)) + X[:, 0]
    for kwargs, cov in (({"categorical": True}, batches), ({}, cont), ({"categorical": True, "n_components": 4}, batches)):
        ours = pi.principal_component_regression(X, cov, **kwargs)
        ref = scib_pcr(X, cov, **kwargs)
        assert abs(ours - ref) < 1e-6 * max(1, abs(ref)), kwargs
    post = X - np.array([X[batches == b].mean(axis=0) for b in batches]) * 0.7
    assert abs(pi.pcr_comparison(X, post, batches, categorical=True)
               - scib.pcr_comparison(X, post, batches, categorical=True)) < 1e-6


def test_pcr_refuses_a_constant_covariate_as_scib_does(data):
    from scib_metrics.utils import principal_component_regression as scib_pcr

    X = data[0]
    for cov, kwargs in ((np.full(len(X), "plate0"), {"categorical": True}), (np.full(len(X), 2.5), {})):
        with pytest.raises(ValueError, match="constant"):
            scib_pcr(X, cov, **kwargs)
        with pytest.raises(ValueError, match="covariate: every row has the value .*constant covariate"):
            pi.principal_component_regression(X, cov, **kwargs)
    with pytest.raises(ValueError, match="constant covariate"):
        pi.pcr_comparison(X, X * 0.5, np.full(len(X), "plate0"), categorical=True)
    # a missing value in a numeric covariate: scib-metrics returns NaN silently; refused here, naming the row
    cov = np.arange(len(X), dtype=float)
    cov[7] = np.nan
    assert np.isnan(scib_pcr(X, cov))
    with pytest.raises(ValueError, match=r"covariate: value nan in row 7 \(1 non-finite\)"):
        pi.principal_component_regression(X, cov)
    with pytest.raises(ValueError, match="categorical=True"):
        pi.principal_component_regression(X, np.array(["a", "b"] * (len(X) // 2) + ["a"] * (len(X) % 2)))
    bad = X.copy()
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match=r"X: non-finite value inf \(NaN / inf\) in row 3, column 2"):
        pi.principal_component_regression(bad, cov)


def test_pcr_without_variance_to_compare_is_undefined(data):
    """A baseline with no batch variance (profiles standardised per plate: PCR ~1e-33, rounding) made
    pcr_comparison the quotient of two rounding errors, which min-max scaling stretched into 0 vs 1 and a ranking
    that flipped with the order of the tables (or ZeroDivisionError, as scib-metrics, when exactly 0); an embedding
    without variance gave NaN silently. Both are UndefinedMetricError now, blank in integration_table."""
    from phenovec.evaluate.integration.undefined import UndefinedMetricError

    X, labels, batches, _ = data
    per_plate = X.copy()
    for b in np.unique(batches):
        on = batches == b
        per_plate[on] = (X[on] - X[on].mean(axis=0)) / X[on].std(axis=0)
    rotated = per_plate @ np.linalg.qr(np.random.default_rng(0).normal(size=(X.shape[1],) * 2))[0]
    assert pi.principal_component_regression(per_plate, batches, categorical=True) < 1e-25
    with pytest.raises(UndefinedMetricError, match="no batch variance to remove"):
        pi.pcr_comparison(per_plate, rotated, batches, categorical=True)
    with pytest.raises(UndefinedMetricError, match="every row is the same"):
        pi.principal_component_regression(np.zeros_like(X), batches, categorical=True)
    with pytest.raises(UndefinedMetricError, match="every row is the same"):
        pi.pcr_comparison(X, np.zeros_like(X), batches, categorical=True)
    assert pi.pcr_comparison(per_plate, X, batches, categorical=True, scale=False) > 0  # unscaled: defined
    res = pi.integration_table({"per_plate": per_plate, "rotated": rotated}, "Metadata_Plate", "Metadata_moa",
                               metadata=pd.DataFrame({"Metadata_Plate": batches, "Metadata_moa": labels}),
                               mean_average_precision=False, skip_undefined=True)
    assert "no batch variance to remove" in res.undefined["pcr_comparison"]
    assert res.table.query("metric == 'pcr_comparison'")["value"].isna().all()
    totals = res.scores.set_index("method")["total"]
    assert totals["per_plate"] == pytest.approx(totals["rotated"], abs=1e-9)  # the same distances: the same score


def test_isolated_labels(data):
    X, labels, batches, _ = data
    lab = labels.copy()
    lab[batches == "plate2"] = np.where(lab[batches == "plate2"] == "moa4", "moa0", lab[batches == "plate2"])
    # moa4 now lives in 2 plates, the others in 3: it is the isolated label
    assert abs(pi.isolated_labels(X, lab, batches) - scib.isolated_labels(X, lab, batches)) < 1e-6
    assert abs(pi.isolated_labels(X, lab, batches, iso_threshold=3)
               - scib.isolated_labels(X, lab, batches, iso_threshold=3)) < 1e-6


def test_kmeans_nmi_ari_with_scibs_own_seeding(data):
    import jax
    from scib_metrics.utils import _kmeans

    X, labels, _, _ = data
    X32 = X.astype(np.float32)
    k = len(np.unique(labels))
    km = _kmeans.KMeans(k)
    key = jax.random.split(km.seed, 1)[0]  # the key scib's fit() draws its one initialisation from
    mean = X32.mean(axis=0)
    init = np.asarray(_kmeans._initialize_plus_plus(X32 - mean, k, key)) + mean
    ref = scib.nmi_ari_cluster_labels_kmeans(X32, labels)
    ours = pi.nmi_ari_cluster_labels_kmeans(X32, labels, init=init)
    assert ours == pytest.approx(ref, abs=1e-12)
    np.testing.assert_array_equal(pi.KMeans(k, init=init).fit(X32).labels_, km.fit(X32.copy()).labels_)
    # phenovec's own seeding (NumPy's generator) is deterministic and finds the same well-separated structure
    a = pi.nmi_ari_cluster_labels_kmeans(X, labels, seed=3)
    assert a == pi.nmi_ari_cluster_labels_kmeans(X, labels, seed=3)
    assert a["nmi"] > 0.5 and a["ari"] > 0.3


def test_leiden(data):
    _, labels, _, g = data
    g15 = g.subset_neighbors(15)
    for res in (0.4, 1.0):
        assert pi.nmi_ari_cluster_labels_leiden(g15, labels, optimize_resolution=False, resolution=res) == pytest.approx(
            scib.nmi_ari_cluster_labels_leiden(scib_neighbors(g15), labels, optimize_resolution=False,
                                               resolution=res), abs=1e-12)
