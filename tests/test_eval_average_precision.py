"""Equivalence with copairs 0.5.5, run on the same real inputs, plus bad input.

AP, n_pos_pairs, n_total_pairs and normalized AP must match copairs to 1e-9; mAP p-values with the
default ``null_method="copairs"`` must be identical (copairs run with an empty, private cache).
"""
import numpy as np
import pandas as pd
import pytest
from copairs import compute as cp_compute
from copairs.map import average_precision as cp_ap
from copairs.map import mean_average_precision as cp_map
from copairs.map import multilabel as cp_multilabel
from copairs.map.average_precision import p_values as cp_p_values
from copairs.map.normalization import expected_ap as cp_expected_ap
from copairs.matching import assign_reference_index
from statsmodels.stats.multitest import multipletests

import phenovec.evaluate as pe
from phenovec.evaluate.null import null_distributions


def split(df):
    meta = df.filter(regex="^Metadata_").reset_index(drop=True)
    feats = df.drop(columns=meta.columns).to_numpy(dtype=np.float64)
    return meta, feats


def assert_ap_equal(ours: pd.DataFrame, theirs: pd.DataFrame):
    assert len(ours) == len(theirs)
    np.testing.assert_array_equal(ours["n_pos_pairs"].to_numpy(), theirs["n_pos_pairs"].to_numpy())
    np.testing.assert_array_equal(ours["n_total_pairs"].to_numpy(), theirs["n_total_pairs"].to_numpy())
    for c in ("average_precision", "normalized_average_precision"):
        a, b = ours[c].to_numpy(float), theirs[c].to_numpy(float)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=0, atol=1e-9)


ACTIVITY = dict(pos_sameby=["Metadata_broad_sample", "Metadata_Reference_Index"], pos_diffby=[],
                neg_sameby=[], neg_diffby=["Metadata_broad_sample", "Metadata_Reference_Index"])


@pytest.fixture(scope="module")
def activity(nelisa):
    meta, feats = split(nelisa)
    meta = assign_reference_index(meta, "Metadata_control_type == 'negcon'")
    ours = pe.average_precision(meta, feats, **ACTIVITY)
    theirs = cp_ap(meta, feats, progress_bar=False, **ACTIVITY)
    return meta, feats, ours, theirs


def test_phenotypic_activity_ap_matches_copairs(activity):
    _, _, ours, theirs = activity
    assert_ap_equal(ours, theirs)
    assert ours["average_precision"].notna().sum() > 1000


def test_map_pvalues_identical_to_copairs(activity, tmp_path):
    _, _, ours, theirs = activity
    a = pe.mean_average_precision(ours, ["Metadata_broad_sample"], null_size=2000, threshold=0.05, seed=3, progress_bar=False)
    b = cp_map(theirs, ["Metadata_broad_sample"], null_size=2000, threshold=0.05, seed=3, progress_bar=False, cache_dir=tmp_path)
    assert list(a.columns) == list(b.columns)
    np.testing.assert_array_equal(a["Metadata_broad_sample"], b["Metadata_broad_sample"])
    np.testing.assert_allclose(a["mean_average_precision"], b["mean_average_precision"], atol=1e-12)
    np.testing.assert_array_equal(a["p_value"].to_numpy(), b["p_value"].to_numpy())
    np.testing.assert_allclose(a["corrected_p_value"], b["corrected_p_value"], atol=1e-12)
    np.testing.assert_array_equal(a["below_corrected_p"], b["below_corrected_p"])
    assert a["below_corrected_p"].sum() > 10  # the data has active compounds; the test can tell


def test_per_query_pvalues_identical_to_copairs(activity):
    _, _, ours, theirs = activity
    sub_o, sub_t = ours.iloc[:300], theirs.iloc[:300]
    np.testing.assert_array_equal(pe.p_values(sub_o, null_size=500, seed=1), cp_p_values(sub_t, null_size=500, seed=1, progress_bar=False))


def test_copairs_null_stream_is_reproduced():
    confs = np.array([[1, 5], [3, 40], [3, 70000]])
    ours = null_distributions(confs, 300, seed=11)
    seeds = np.random.default_rng(11).integers(8096, size=3)
    for i, (m, l) in enumerate(confs):
        np.testing.assert_array_equal(ours[i], cp_compute.random_ap(300, m, l, seeds[i]))


def test_fast_null_is_statistically_equivalent():
    from scipy.stats import ks_2samp

    confs = np.array([[4, 60]])
    fast = null_distributions(confs, 20000, seed=5, method="fast")[0]
    ref = cp_compute.random_ap(20000, 4, 60, 123)
    assert ks_2samp(fast, ref).pvalue > 1e-3
    assert abs(fast.mean() - cp_expected_ap(4, 56)) < 3 * fast.std() / np.sqrt(len(fast))


@pytest.mark.parametrize("distance", ["cosine", "correlation", "euclidean"])
def test_moa_retrieval_bbbc021_matches_copairs(bbbc021, distance):
    df = bbbc021[bbbc021["Metadata_moa"] != "DMSO"]
    meta, feats = split(df)
    args = dict(pos_sameby=["Metadata_moa"], pos_diffby=["Metadata_compound"], neg_sameby=[], neg_diffby=["Metadata_moa"])
    ours = pe.average_precision(meta, feats, distance=distance, **args)
    theirs = cp_ap(meta, feats, distance=distance, progress_bar=False, **args)
    assert_ap_equal(ours, theirs)


def test_float32_input_matches_copairs(lincs_plate):
    meta, feats = split(lincs_plate)
    feats = feats.astype(np.float32)
    args = dict(pos_sameby=["Metadata_broad_sample"], pos_diffby=[], neg_sameby=[], neg_diffby=["Metadata_broad_sample"])
    ours = pe.average_precision(meta, feats, **args)
    theirs = cp_ap(meta, feats, progress_bar=False, **args)
    np.testing.assert_array_equal(ours["n_pos_pairs"], theirs["n_pos_pairs"])
    a, b = ours["average_precision"].to_numpy(), theirs["average_precision"].to_numpy()
    # float32 input: copairs' own float32 arithmetic perturbs similarities by ~1 ulp, which can swap a
    # positive and a negative that are that close; all other rows agree exactly.
    d = np.abs(a[~np.isnan(a)] - b[~np.isnan(b)])
    assert (d < 1e-9).mean() > 0.99 and d.max() < 1e-3


def test_multilabel_target_consistency_matches_copairs(nelisa):
    df = nelisa[nelisa["Metadata_target_list"].notna()]
    meta, feats = split(df)
    meta["Metadata_target_list"] = meta["Metadata_target_list"].str.split("|")
    meta["Metadata_row"] = np.arange(len(meta))
    args = dict(pos_sameby=["Metadata_target_list"], pos_diffby=["Metadata_broad_sample"], neg_sameby=[],
                neg_diffby=["Metadata_target_list", "Metadata_broad_sample"])
    ours = pe.average_precision(meta, feats, multilabel_col="Metadata_target_list", **args)
    theirs = cp_multilabel.average_precision(meta, feats, multilabel_col="Metadata_target_list", progress_bar=False, **args)
    key = [c for c in ours.columns if c.startswith("Metadata_")]
    o = ours.sort_values(["Metadata_row", "Metadata_target_list"]).reset_index(drop=True)
    t = theirs.sort_values(["Metadata_row", "Metadata_target_list"]).reset_index(drop=True)
    np.testing.assert_array_equal(o["Metadata_row"], t["Metadata_row"])
    assert len(o) == len(t) > 100
    np.testing.assert_array_equal(o["Metadata_target_list"], t["Metadata_target_list"])
    assert set(key) <= set(t.columns)
    assert_ap_equal(o, t)


def test_benjamini_hochberg_matches_statsmodels():
    p = np.random.default_rng(0).uniform(size=500) ** 3
    np.testing.assert_allclose(pe.benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], atol=1e-15)


# ---- bad input ----------------------------------------------------------------------------

@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"Metadata_cpd": ["a", "a", "b", "b", "c", "c", "d"], "Metadata_plate": [1, 2, 1, 2, 1, 2, 1]})
    return meta, rng.normal(size=(7, 5))


REP = dict(pos_sameby=["Metadata_cpd"], pos_diffby=[], neg_sameby=[], neg_diffby=["Metadata_cpd"])


def test_nan_feature_names_row_and_column(small):
    meta, x = small
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"row 3, feature column 2"):
        pe.average_precision(meta, x, **REP)
    x[3, 2] = np.inf
    with pytest.raises(ValueError, match=r"non-finite.*row 3"):
        pe.average_precision(meta, x, **REP)


def test_zero_variance_row_under_pearson(small):
    meta, x = small
    x[5] = 2.0
    with pytest.raises(ValueError, match=r"row 5 is constant"):
        pe.average_precision(meta, x, distance="correlation", **REP)
    x[5] = 0.0
    with pytest.raises(ValueError, match=r"row 5 has zero norm"):
        pe.average_precision(meta, x, distance="cosine", **REP)


def test_unknown_column_and_lengths(small):
    meta, x = small
    with pytest.raises(KeyError, match="Metadata_nope"):
        pe.average_precision(meta, x, pos_sameby=["Metadata_nope"], pos_diffby=[], neg_sameby=[], neg_diffby=["Metadata_cpd"])
    with pytest.raises(ValueError, match="7 rows but feats has 6"):
        pe.average_precision(meta, x[:6], **REP)
    with pytest.raises(ValueError, match="must be disjoint"):
        pe.average_precision(meta, x, pos_sameby=["Metadata_cpd"], pos_diffby=["Metadata_cpd"], neg_sameby=[], neg_diffby=["Metadata_cpd"])
    with pytest.raises(ValueError, match="unknown similarity metric"):
        pe.average_precision(meta, x, distance="hamming", **REP)


def test_missing_metadata_and_non_numeric_features(small):
    meta, x = small
    m2 = meta.copy()
    m2.loc[4, "Metadata_cpd"] = None
    with pytest.raises(ValueError, match=r"'Metadata_cpd' has a missing value at row 4"):
        pe.average_precision(m2, x, **REP)
    with pytest.raises(ValueError, match="numeric"):
        pe.average_precision(meta, np.array([["x"] * 5] * 7), **REP)


def test_single_member_groups_and_no_pairs(small):
    meta, x = small
    ap = pe.average_precision(meta, x, **REP)
    # 'd' has one member: AP undefined (NaN), n_pos_pairs 0; it is left out of mAP, never a NaN summary
    assert np.isnan(ap.loc[6, "average_precision"]) and ap.loc[6, "n_pos_pairs"] == 0
    m = pe.mean_average_precision(ap, ["Metadata_cpd"], null_size=100, threshold=0.05, seed=0, progress_bar=False)
    assert list(m["Metadata_cpd"]) == ["a", "b", "c"] and m["mean_average_precision"].notna().all()
    with pytest.raises(pe.UnpairedError, match="positive"):
        pe.average_precision(meta.assign(Metadata_cpd=list("abcdefg")), x, **REP)
    with pytest.raises(pe.UnpairedError, match="negative"):
        pe.average_precision(meta.assign(Metadata_cpd=["a"] * 7), x, **REP)


def test_ties_rank_positive_first():
    # query 0 has one positive (row 1) and one negative (row 2) at exactly the same similarity
    meta = pd.DataFrame({"Metadata_cpd": ["a", "a", "b"]})
    x = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    ap = pe.average_precision(meta, x, **REP)
    assert ap.loc[0, "average_precision"] == 1.0
    theirs = cp_ap(meta, x, progress_bar=False, **REP)
    assert theirs.loc[0, "average_precision"] == 1.0


def test_profile_table_and_arrow_inputs(lincs_plate):
    import pyarrow as pa

    meta, feats = split(lincs_plate)
    args = dict(pos_sameby=["Metadata_broad_sample"], pos_diffby=[], neg_sameby=[], neg_diffby=["Metadata_broad_sample"])
    ref = pe.average_precision(meta, feats, **args)["average_precision"].to_numpy()
    for table in (lincs_plate, pa.Table.from_pandas(lincs_plate)):
        got = pe.average_precision(table, None, **args)["average_precision"].to_numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got[~np.isnan(got)], ref[~np.isnan(ref)], atol=1e-12)
