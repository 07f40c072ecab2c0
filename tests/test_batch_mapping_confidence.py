"""Symphony's per-cell mapping metric (phenovec.batch.mapping_confidence) against symphonypy 0.2.4 itself, what it
flags, its refusals, and the harmony step's ``mapping_confidence``."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from phenovec.batch import harmony
from phenovec.batch.harmony import run_harmony
from phenovec.batch.mapping_confidence import ClusterSpread
from phenovec.batch.mapping_confidence import MAPPING_DISTANCE
from test_batch_symphony import _cells, _symphonypy, _table, cli_fit_then_map

logging.getLogger("harmonypy").setLevel(logging.WARNING)


@pytest.mark.parametrize("key", ["Metadata_Plate", ["Metadata_Plate", "Metadata_Site"]])
@pytest.mark.parametrize("corrected", [False, True])
def test_per_cell_metric_equals_symphonypy(key, corrected):
    """``symphonypy.tl.per_cell_confidence`` on the reference's uncorrected coordinates (Symphony (R)'s default,
    the harmony step's) and on its corrected ones (symphonypy's default): the same metric to 1e-9."""
    import symphonypy as sp  # the peer, pinned in requirements/ci-no-deps.txt: missing is a failure

    x_ref, meta_ref = _cells(900, seed=0)
    x_q, meta_q = _cells(400, n_plates=3, plate_prefix="Q", seed=1)
    ref, query = _symphonypy(x_ref, meta_ref, x_q, meta_q, key)
    sp.tl.per_cell_confidence(query, ref, ref_basis_adjusted="X_pca_harmony" if corrected else "X_pca")
    want = query.obs["symphony_per_cell_dist"].to_numpy()

    h = run_harmony(x_ref, meta_ref, key)
    spread = ClusterSpread.fit(h.Z_corr if corrected else x_ref, h.R)
    got = spread.distance(x_q, h.reference().map(x_q, meta_q, key).R)
    assert np.abs(got - want).max() <= 1e-9 * np.abs(want).max()
    assert np.ptp(want) > 1.0  # the cells differ: not a constant both sides could agree on
    np.testing.assert_allclose(spread.means.T, ref.uns["harmony"]["cluster_centers"][..., 0].T, rtol=1e-10)
    np.testing.assert_allclose(np.linalg.inv(spread.covariances), ref.uns["harmony"]["inv_cluster_covs"],
                               rtol=1e-7, atol=1e-9 * np.abs(ref.uns["harmony"]["inv_cluster_covs"]).max())


def test_metric_flags_a_state_the_reference_never_saw():
    """A query plate holds the reference's six states and a seventh it never saw. The mapping still puts the new
    state's cells somewhere; the metric ranks them above the plate's known cells (ROC AUC > 0.95), and the
    reference's own cells score like the known ones."""
    from sklearn.metrics import roc_auc_score

    d = 10
    x_ref, meta_ref = _cells(1200, d=d, seed=0)
    x_q, meta_q = _cells(500, d=d, n_plates=1, plate_prefix="Q", seed=4, shift=0.0)
    novel = np.random.default_rng(7).random(len(x_q)) < 0.15
    x_q[novel] = np.random.default_rng(8).normal(size=(novel.sum(), d)) * 0.6 + np.linspace(-3, 3, d) + 1.0
    h = run_harmony(x_ref, meta_ref, "Metadata_Plate", nclust=12)
    spread = ClusterSpread.fit(x_ref, h.R)
    score = spread.distance(x_q, h.reference().map(x_q, meta_q, "Metadata_Plate").R)
    assert roc_auc_score(novel, score) > 0.95
    own = spread.distance(x_ref, h.R)
    assert abs(np.median(score[~novel]) - np.median(own)) < 0.35 * np.median(own)
    assert np.median(score[novel]) > np.percentile(own, 95)


def test_spread_refusals_name_the_problem():
    x, meta = _cells(300, d=4, seed=0)
    r = run_harmony(x, meta, "Metadata_Plate", nclust=5).R
    spread = ClusterSpread.fit(x, r)
    with pytest.raises(ValueError, match=r"R has 299 rows for 300 reference rows"):
        ClusterSpread.fit(x, r[:-1])
    bad = x.copy()
    bad[11, 3] = np.nan
    with pytest.raises(ValueError, match="the reference coordinates: value nan in row 11, column 3"):
        ClusterSpread.fit(bad, r)
    neg = r.copy()
    neg[9, 1] = -0.1
    with pytest.raises(ValueError, match="negative weight in row 9"):
        ClusterSpread.fit(x, neg)
    lone = np.zeros_like(r)
    lone[:, 0] = 1.0
    lone[:, 1] = 0.0
    lone[5] = [0.0, 1.0, 0.0, 0.0, 0.0]
    lone[:, 2:] = 0.5
    with pytest.raises(ValueError, match=r"reference cluster 1 has its weight \(1\) on a single cell"):
        ClusterSpread.fit(x, lone)
    flat = x.copy()
    flat[:, 2] = flat[:, 0] - flat[:, 1]  # the cells span 3 of the 4 dimensions
    with pytest.raises(ValueError, match=r"reference cluster 0's covariance is not positive definite \(smallest "
                                         r".* 4 dimensions"):
        ClusterSpread.fit(flat, r)
    const = x.copy()
    const[:, 1] = 2.5
    with pytest.raises(ValueError, match=r"variance 0 in coordinate 1 .* constant"):
        ClusterSpread.fit(const, r)
    skewed = spread.covariances.copy()
    skewed[2, 0, 3] += 0.5  # one triangle edited: eigvalsh / cholesky would read only the other
    with pytest.raises(ValueError, match=r"cluster 2's covariance is not symmetric \(\[0, 3\]"):
        ClusterSpread(spread.means, skewed)
    with pytest.raises(ValueError, match=r"covariances must be K x d x d = \(5, 4, 4\)"):
        ClusterSpread(spread.means, spread.covariances[:, :3])
    with pytest.raises(ValueError, match=r"the query must be n x 4 .* got shape \(7, 3\)"):
        spread.distance(x[:7, :3], r[:7])
    with pytest.raises(ValueError, match=r"the query's R must be n x K = \(7, 5\), got shape \(7, 4\)"):
        spread.distance(x[:7], r[:7, :4])


def test_singularity_check_does_not_depend_on_units():
    """The Mahalanobis distance does not change when a coordinate is rescaled, nor may the refusal of a singular
    covariance: raw features whose spreads differ by 1e7 (an area in pixels beside a Zernike moment) were refused as
    'not positive definite' (eigenvalue ratio 1e-14) while their correlations were well conditioned."""
    x, meta = _cells(500, d=3, seed=2)
    r = run_harmony(x, meta, "Metadata_Plate", nclust=4).R
    units = np.array([1e4, 1.0, 1e-3])
    want = ClusterSpread.fit(x, r).distance(x, r)
    got = ClusterSpread.fit(x * units, r).distance(x * units, r)
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_harmony_step_mapping_confidence(tmp_path):
    """``mapping_confidence=True``: the fit keeps the spread of the step's own coordinates (its PCs), the fitted
    table and every table mapped with the fit get ``Metadata_mapping_distance``, equal to the module's numbers."""
    x_ref, meta_ref = _cells(800, seed=0)
    x_q, meta_q = _cells(300, n_plates=2, plate_prefix="Q", seed=1, shift=2.0)
    ref_table, query_table = _table(x_ref, meta_ref), _table(x_q, meta_q)
    corrected, fit = harmony(ref_table, n_components=6, mapping_confidence=True, return_fit=True)
    path = fit.save(tmp_path / "harmony_fit.npz")
    from sklearn.decomposition import PCA

    pcs = PCA(n_components=6).fit_transform(x_ref)
    h = run_harmony(pcs, meta_ref, "Metadata_Plate")
    spread = ClusterSpread.fit(pcs, h.R)
    np.testing.assert_allclose(corrected[MAPPING_DISTANCE].to_numpy(), spread.distance(pcs, h.R), rtol=1e-12)
    np.testing.assert_array_equal(corrected.filter(like="PC").to_numpy(), h.Z_corr)  # the correction unchanged
    assert corrected.columns.get_loc(MAPPING_DISTANCE) < corrected.columns.get_loc("PC1")  # with the metadata

    mapped = harmony(query_table, fit=path)  # default: on, as the fit kept the spread
    q_pcs = (x_q - fit.arrays["pca_mean"]) @ fit.arrays["pca_components"].T
    want = spread.distance(q_pcs, h.reference().map(q_pcs, meta_q, "Metadata_Plate").R)
    np.testing.assert_allclose(mapped[MAPPING_DISTANCE].to_numpy(), want, rtol=1e-12)
    assert list(mapped.columns) == list(corrected.columns)
    stale = query_table.assign(**{MAPPING_DISTANCE: -1.0})  # a column from an earlier mapping: replaced, not doubled
    again = harmony(stale, fit=path)
    assert list(again.columns) == list(mapped.columns)
    np.testing.assert_allclose(again[MAPPING_DISTANCE].to_numpy(), want, rtol=1e-12)
    off = harmony(query_table, fit=path, mapping_confidence=False)
    assert MAPPING_DISTANCE not in off.columns
    pd.testing.assert_frame_equal(off, mapped.drop(columns=MAPPING_DISTANCE))
    # a run that does not score it drops an earlier run's column (the report would show it as this run's)
    with pytest.warns(UserWarning, match=f"dropping the input's {MAPPING_DISTANCE}"):
        pd.testing.assert_frame_equal(harmony(stale, fit=path, mapping_confidence=False), off)
    with pytest.warns(UserWarning, match=f"dropping the input's {MAPPING_DISTANCE}"):
        refit = harmony(ref_table.assign(**{MAPPING_DISTANCE: 1.0}), n_components=6)
    pd.testing.assert_frame_equal(refit, corrected.drop(columns=MAPPING_DISTANCE))

    # an all-zero row is named by its label, not its position
    zeroed = query_table.set_axis([f"q{i}" for i in range(len(query_table))])
    zeroed.loc["q7", fit.params["features"]] = fit.arrays["pca_mean"]  # zero in the fit's PCs
    with pytest.raises(ValueError, match="harmony: row 'q7' is all zeros in the fit's principal components"):
        harmony(zeroed, fit=path)
    # a fit edited by hand is refused naming its file
    from phenovec.batch.fit_record import BatchFit

    edited = dict(fit.arrays)
    covs = edited["spread_covariances"].copy()
    covs[0, 0, 1] += 100.0
    edited["spread_covariances"] = covs
    bad = BatchFit(fit.step, fit.params, edited).save(tmp_path / "edited.npz")
    with pytest.raises(ValueError, match=r"edited\.npz: reference cluster 0's covariance is not symmetric"):
        harmony(query_table, fit=bad)
    edited["cluster_sums"] = np.full_like(fit.arrays["cluster_sums"], np.nan)
    bad = BatchFit(fit.step, fit.params, edited).save(tmp_path / "edited2.npz")
    with pytest.raises(ValueError, match=r"edited2\.npz: .*cluster_sums must be finite"):
        harmony(query_table, fit=bad)

    plain = harmony(ref_table, n_components=6, return_fit=True)[1]
    assert MAPPING_DISTANCE not in harmony(query_table, fit=plain).columns
    with pytest.raises(ValueError, match="did not keep: fit it with mapping_confidence=True"):
        harmony(query_table, fit=plain, mapping_confidence=True)
    with pytest.raises(ValueError, match="mapping_confidence must be true or false, got 'yes'"):
        harmony(query_table, fit=path, mapping_confidence="yes")


def test_cli_mapping_confidence(tmp_path):
    """``phenovec process batch harmony --set mapping_confidence=true``: the column on both tables."""
    _, q_csv, fit_path = cli_fit_then_map(tmp_path, 400, 150, 5, "nclust=8", "mapping_confidence=true")
    want = harmony(pd.read_csv(q_csv), fit=str(fit_path))
    got = pd.read_parquet(tmp_path / "q.parquet")
    np.testing.assert_allclose(got[MAPPING_DISTANCE].to_numpy(), want[MAPPING_DISTANCE].to_numpy(), rtol=1e-12)
    assert (pd.read_parquet(tmp_path / "ref.parquet")[MAPPING_DISTANCE] > 0).all()
