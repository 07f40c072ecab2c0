"""Exact AP nulls for small (M, L): enumeration checked against brute force over every ranking, and against the
sampled nulls (copairs' stream and the fast one) they must approach."""
from itertools import permutations
from math import comb

import numpy as np
import pandas as pd
import pytest

import phenovec.evaluate as pe
from phenovec.evaluate import exact_null
from phenovec.evaluate.exact_null import ap_distribution, exact_group_p_value, exact_p_values


def brute_force_aps(m: int, l: int) -> np.ndarray:
    """AP of every ordering of m positives and l - m negatives (all l! permutations of labelled items)."""
    labels = [1] * m + [0] * (l - m)
    out = []
    for perm in permutations(range(l)):
        rel = np.array([labels[i] for i in perm])
        tp = np.cumsum(rel)
        out.append(float((tp / np.arange(1, l + 1) * rel).sum() / m))
    return np.array(out)


def distribution(aps: np.ndarray):
    v, c = np.unique(np.round(aps, 12), return_counts=True)
    return v, c / c.sum()


@pytest.mark.parametrize("m, l", [(1, 1), (1, 4), (2, 5), (3, 6), (2, 7), (4, 7)])
def test_distribution_equals_brute_force(m, l):
    v, p = ap_distribution(m, l)
    bv, bp = distribution(brute_force_aps(m, l))
    np.testing.assert_allclose(v, bv, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p, bp, rtol=1e-12)
    assert p.sum() == pytest.approx(1.0)


def test_query_p_values_equal_brute_force():
    aps = brute_force_aps(3, 7)
    observed = np.unique(np.round(aps, 12))
    got = exact_p_values(observed, np.full(len(observed), 3), np.full(len(observed), 7))
    want = [(aps >= a - 1e-12).mean() for a in observed]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[-1] == pytest.approx(1 / comb(7, 3))  # the perfect ranking


def test_group_mean_equals_brute_force():
    a, b = brute_force_aps(2, 5), brute_force_aps(3, 6)
    # every pair of member orderings is equally likely: weight each distinct AP by its frequency
    va, pa = distribution(a)
    vb, pb = distribution(b)
    mv = (va[:, None] + vb[None, :]).ravel() / 2
    mp = (pa[:, None] * pb[None, :]).ravel()
    for score in (0.3, 0.5, 0.7, 0.85, 1.0):
        want = mp[mv >= score - 1e-12].sum()
        assert exact_group_p_value(score, [(2, 5), (3, 6)]) == pytest.approx(want, rel=1e-12)


def test_sampled_nulls_converge_to_the_exact_p_values():
    rng = np.random.default_rng(0)
    m = np.array([2, 3, 3, 4])
    l = np.array([12, 15, 15, 20])
    ap = np.array([0.6, 0.35, 0.9, 0.5])
    scores = pd.DataFrame({"average_precision": ap, "n_pos_pairs": m, "n_total_pairs": l})
    exact = pe.p_values(scores, 20000, 0, null_method="exact")
    for method in ("copairs", "fast"):
        sampled = pe.p_values(scores, 20000, int(rng.integers(1000)), null_method=method)
        np.testing.assert_allclose(sampled, exact, atol=0.01)
    assert exact.dtype == np.float64 and (exact > 0).all() and (exact < 1).all()


def test_map_exact_groups_and_fallback():
    # group "a": two small members (exact); "b": a member with C(200, 5) arrangements; "c": four members of
    # (3, 40), whose mean has more than MAX_SUPPORT values (both sampled)
    scores = pd.DataFrame({"g": ["a", "a", "b"] + ["c"] * 4, "average_precision": [0.8, 0.6, 0.5, 0.2, 0.3, 0.4, 0.5],
                           "n_pos_pairs": [2, 3, 5, 3, 3, 3, 3], "n_total_pairs": [10, 12, 200, 40, 40, 40, 40]})
    out = pe.mean_average_precision(scores, ["g"], 2000, 0.05, 0, progress_bar=False, null_method="exact")
    assert out["p_value_exact"].tolist() == [True, False, False]
    assert out["p_value"].iloc[0] == pytest.approx(exact_group_p_value(0.7, [(2, 10), (3, 12)]), rel=1e-12)
    fast = pe.mean_average_precision(scores, ["g"], 2000, 0.05, 0, progress_bar=False, null_method="fast")
    np.testing.assert_array_equal(out["p_value"].iloc[1:], fast["p_value"].iloc[1:])
    assert "p_value_exact" not in fast.columns
    assert exact_null.mean_distribution([(3, 40)] * 4) is None


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match=r"0 < n_pos_pairs <= n_total_pairs, got \(5, 3\)"):
        ap_distribution(5, 3)
    with pytest.raises(ValueError, match="arrangements > max_arrangements"):
        ap_distribution(10, 100)
    with pytest.raises(ValueError, match="null_method must be one of"):
        pe.mean_average_precision(pd.DataFrame({"g": ["a"], "average_precision": [0.5], "n_pos_pairs": [1],
                                                "n_total_pairs": [3]}), ["g"], 10, 0.05, 0, null_method="enumerate")
    assert np.isnan(exact_p_values([0.5], [10], [100])[0])  # not enumerable: left to the sampled null
