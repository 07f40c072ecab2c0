"""ROC-AUC per query and one-sided Mann-Whitney p-values, against scipy.stats.mannwhitneyu and copairs' public numbers.

copairs' development branch (PR #103, tests/test_auc_pvalues.py) states: exact p-values for perfect separation are
1 / C(n_total, n_pos); (4 positives, 20 negatives, U = 70) gives 0.008846226237530584; exact where
n_pos * n_neg <= 10,000 and max(n_pos, n_neg) <= 50, asymptotic (continuity-corrected normal) otherwise.
"""
from math import comb

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from phenovec.evaluate.evaluate_many import evaluate_many
from phenovec.evaluate.roc_auc import mann_whitney_p_values, roc_auc, u_counts
from phenovec.evaluate.similarity import similarity_matrix
from test_evaluate_many import ACT, synthetic


@pytest.mark.parametrize("n_pos, n_total, u, expected", [
    (4, 9, 20, 1 / comb(9, 4)), (3, 7, 12, 1 / comb(7, 3)), (4, 24, 80, 1 / comb(24, 4)),
    (4, 24, 70, 0.008846226237530584)])
def test_copairs_published_values(n_pos, n_total, u, expected):
    np.testing.assert_allclose(mann_whitney_p_values([u], [n_pos], [n_total])[0], expected, rtol=1e-12)


def test_exact_and_asymptotic_equal_scipy():
    rng = np.random.default_rng(0)
    for n1, n2 in [(1, 1), (1, 9), (3, 7), (10, 10), (50, 50), (20, 50), (5, 51), (100, 100), (50, 2000), (7, 300)]:
        for shift in (0.0, 0.5, 1.5):
            x, y = rng.normal(size=n1) + shift, rng.normal(size=n2)
            small = n1 * n2 <= 10_000 and max(n1, n2) <= 50
            ref = st.mannwhitneyu(x, y, alternative="greater", method="exact" if small else "asymptotic")
            got = mann_whitney_p_values([ref.statistic], [n1], [n1 + n2])[0]
            np.testing.assert_allclose(got, ref.pvalue, rtol=1e-9, atol=1e-15, err_msg=f"{n1}, {n2}")
            for method in ("exact", "asymptotic"):
                if method == "exact" and n1 * n2 > 20_000:
                    continue
                ref = st.mannwhitneyu(x, y, alternative="greater", method=method)
                got = mann_whitney_p_values([ref.statistic], [n1], [n1 + n2], method=method)[0]
                np.testing.assert_allclose(got, ref.pvalue, rtol=1e-9, atol=1e-15, err_msg=f"{method} {n1}, {n2}")


def test_null_distribution_counts_every_ordering():
    for n1, n2 in [(1, 4), (3, 3), (4, 6)]:
        counts = np.array(u_counts(n1, n2), dtype=float)
        assert counts.sum() == comb(n1 + n2, n1)
        # brute force: every choice of positive positions among n1 + n2 ranks
        from itertools import combinations
        brute = np.zeros(n1 * n2 + 1)
        for pos in combinations(range(n1 + n2), n1):
            # U = pairs (positive, negative) with the positive first = sum over positives of the negatives after them
            brute[sum(n2 - (p - k) for k, p in enumerate(pos))] += 1
        np.testing.assert_array_equal(counts, brute)


def test_edges():
    p = mann_whitney_p_values([30, -1, 12.5, 13, 0, 0, np.nan], [5, 5, 5, 5, 0, 10, 5], [10, 10, 10, 10, 10, 10, 10])
    assert p[0] == 0.0 and p[1] == 1.0 and p[2] == p[3] and p[4] == 1.0 and p[5] == 1.0 and np.isnan(p[6])
    assert mann_whitney_p_values([50], [10], [20])[0] == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="method must be one of"):
        mann_whitney_p_values([1], [1], [2], method="permutation")
    with pytest.raises(ValueError, match="row 0: need 0 <= n_pos <= n_total"):
        mann_whitney_p_values([1], [3], [2])


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_per_query_auc_and_p_value_equal_scipy_on_the_ranked_lists(device):
    meta, x = synthetic(n_cpd=40, n_ctrl=30, d=16, seed=7)
    moa = dict(pos_sameby=["Metadata_moa"], pos_diffby=["Metadata_cpd"], neg_sameby=[], neg_diffby=["Metadata_moa"])
    out = evaluate_many(meta, x, {"act": ACT, "moa": moa}, ties="exact", roc_auc=True, device=device)
    sim = similarity_matrix(x, "cosine")
    cpd, ref, moa_col = (meta[c].to_numpy() for c in ("Metadata_cpd", "Metadata_Reference_Index", "Metadata_moa"))
    checked = 0
    for name, frame in out.items():
        for i in range(len(meta)):
            others = np.arange(len(meta)) != i
            if name == "act":
                pos = others & (cpd == cpd[i]) & (ref == ref[i])
                neg = others & (cpd != cpd[i]) & (ref != ref[i])
            else:
                pos = others & (moa_col == moa_col[i]) & (cpd != cpd[i])
                neg = others & (moa_col != moa_col[i])
            row = frame.iloc[i]
            if not pos.any():
                assert np.isnan(row["roc_auc"]) and np.isnan(row["roc_auc_p_value"])
                continue
            res = st.mannwhitneyu(sim[i, pos], sim[i, neg], alternative="greater",
                                  method="exact" if pos.sum() * neg.sum() <= 10_000 and max(pos.sum(), neg.sum()) <= 50
                                  else "asymptotic")
            assert row["mann_whitney_u"] == res.statistic
            np.testing.assert_allclose(row["roc_auc"], res.statistic / (pos.sum() * neg.sum()), rtol=1e-15)
            np.testing.assert_allclose(row["roc_auc_p_value"], res.pvalue, rtol=1e-9)
            checked += 1
    assert checked > 300


def test_ties_rank_the_positive_first_as_average_precision_does():
    # query row 0; row 1 (positive) and row 2 (negative) have the same similarity to it: U counts that pair
    meta = pd.DataFrame({"g": ["a", "a", "b", "c"]})
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.1]])
    out = roc_auc(meta, x, ["g"], [], [], ["g"], ties="exact")
    assert out["mann_whitney_u"].iloc[0] == 2 and out["roc_auc"].iloc[0] == 1.0
    assert out["average_precision"].iloc[0] == 1.0
