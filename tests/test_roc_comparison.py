"""Comparing assay-prediction runs (phenovec.evaluate.roc_comparison): paired one-sided Wilcoxon over per-task AUCs
against scipy, the Table A1 matrix, Pearson against scipy, Venkatraman's paired ROC permutation test against a
literal loop transcription of its statistic plus its calibration, the ``compare-assays`` command and bad input."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, wilcoxon
from test_assay_prediction import _cli  # the evaluate assay subcommands on their own parser

from phenovec.evaluate.roc_comparison import (auc_correlation, paired_auc_test, venkatraman_per_task,
                                              venkatraman_test, wilcoxon_table)


def _aucs(n, seed, shift=0.02):
    rng = np.random.default_rng(seed)
    a = np.clip(rng.uniform(0.5, 0.95, n), 0, 1)
    b = np.clip(a - shift + rng.normal(0, 0.05, n), 0, 1)
    return a, b


@pytest.mark.parametrize("n", [12, 60])
def test_wilcoxon_exact_equals_scipy(n):
    a, b = _aucs(n, seed=n)
    res = paired_auc_test(a, b)
    ref = wilcoxon(a, b, alternative="greater", method="exact")
    assert res["statistic"] == pytest.approx(ref.statistic) and res["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    rev = paired_auc_test(b, a)
    assert rev["p_value"] == pytest.approx(wilcoxon(b, a, alternative="greater", method="exact").pvalue, rel=1e-9)
    assert res["wins"] + res["losses"] == n and res["mean_difference"] == pytest.approx(np.mean(a - b))


def test_wilcoxon_209_tasks_with_ties_and_nan_equals_scipy_approx():
    a, b = _aucs(209, seed=1)
    a, b = np.round(a, 2), np.round(b, 2)  # ties and zero differences, as AUCs of small test sets have
    a[[5, 17]] = np.nan  # tasks one run could not score
    res = paired_auc_test(a, b)
    keep = ~np.isnan(a)
    ref = wilcoxon(a[keep], b[keep], alternative="greater", method="approx", correction=False,
                   zero_method="wilcox")
    assert res["n_tasks"] == 207 and res["n_dropped"] == 2
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert res["statistic"] == pytest.approx(ref.statistic)


def test_table_a1_shape_and_values():
    rng = np.random.default_rng(5)
    base = rng.uniform(0.55, 0.9, 40)
    runs = {name: pd.DataFrame({"task": [f"t{i}" for i in range(40)],
                                "auc": np.clip(base + off + rng.normal(0, 0.03, 40), 0, 1)})
            for name, off in (("fnn", -0.05), ("gapnet", 0.03), ("resnet", 0.0))}
    table = wilcoxon_table(runs)
    assert list(table.index) == ["gapnet", "resnet", "fnn"] == list(table.columns)  # best mean first
    for row in table.index:
        for col in table.columns:
            if row == col:
                assert np.isnan(table.loc[row, col])
                continue
            ref = wilcoxon(runs[col]["auc"], runs[row]["auc"], alternative="greater", method="exact").pvalue
            assert table.loc[row, col] == pytest.approx(ref, rel=1e-9), (row, col)
    assert table.loc["fnn", "gapnet"] < 0.01 < table.loc["gapnet", "fnn"]  # gapnet outperformed fnn
    low = wilcoxon_table(runs, triangle=True)
    assert np.isnan(low.loc["gapnet", "fnn"]) and low.loc["fnn", "gapnet"] == table.loc["fnn", "gapnet"]
    assert int(low.notna().sum().sum()) == 3


def test_pearson_equals_scipy():
    a, b = _aucs(50, seed=3)
    a[4] = np.nan
    res = auc_correlation(a, b)
    keep = ~np.isnan(a)
    r, p = pearsonr(a[keep], b[keep])
    assert res["r"] == pytest.approx(r) and res["p_value"] == pytest.approx(p)
    assert (res["n_tasks"], res["n_dropped"]) == (49, 1)


def _venkatraman_statistic_loops(y, a, b):
    """Literal transcription of the statistic: ranks with ties by first appearance; for each cut-off x in 1..n,
    fn = #cases with rank <= x, fp = #controls with rank > x; E = sum |(fn_b + fp_b) - (fn_a + fp_a)|."""
    n = len(y)

    def rank_first(v):
        order = sorted(range(n), key=lambda i: (v[i], i))
        r = [0] * n
        for k, i in enumerate(order):
            r[i] = k + 1
        return r

    ra, rb = rank_first(a), rank_first(b)
    e = 0
    for x in range(1, n + 1):
        fn_a = sum(1 for i in range(n) if y[i] == 1 and ra[i] <= x)
        fp_a = sum(1 for i in range(n) if y[i] == 0 and ra[i] > x)
        fn_b = sum(1 for i in range(n) if y[i] == 1 and rb[i] <= x)
        fp_b = sum(1 for i in range(n) if y[i] == 0 and rb[i] > x)
        e += abs((fn_b + fp_b) - (fn_a + fp_a))
    return e


def test_venkatraman_statistic_equals_loop_reference():
    rng = np.random.default_rng(11)
    for trial in range(5):
        n = 40
        y = (rng.random(n) < 0.4).astype(int)
        y[:2] = [0, 1]
        a = np.round(y + rng.normal(0, 1, n), 1)  # ties, broken by first appearance
        b = np.round(rng.normal(0, 1, n), 1)
        res = venkatraman_test(y, a, b, n_permutations=10, seed=trial)
        assert res["statistic"] == _venkatraman_statistic_loops(y, a, b)


def test_venkatraman_behaviour():
    rng = np.random.default_rng(2)
    n = 80
    y = (rng.random(n) < 0.35).astype(int)
    good = y + rng.normal(0, 0.7, n)
    res = venkatraman_test(y, good, rng.normal(0, 1, n), n_permutations=500, seed=0)
    assert res["p_value"] < 0.01 and res["auc_a"] > 0.75
    same = venkatraman_test(y, good, good, n_permutations=200)
    assert same["statistic"] == 0 and same["p_value"] == 1.0
    # ranks only: a monotone transform of the scores changes nothing; the seed fixes the p-value
    other = good + rng.normal(0, 0.5, n)
    r1 = venkatraman_test(y, good, other, n_permutations=300, seed=4)
    r2 = venkatraman_test(y, np.exp(good), 3 * other - 1, n_permutations=300, seed=4)
    assert r1["statistic"] == r2["statistic"] > 0 and r1["p_value"] == r2["p_value"]
    close = good + rng.normal(0, 0.1, n)  # a p-value away from 0 and 1 moves with the seed
    p4, p5 = (venkatraman_test(y, good, close, n_permutations=300, seed=k)["p_value"] for k in (4, 5))
    assert 0.02 < p4 < 0.98 and p4 != p5


def test_venkatraman_is_calibrated_under_the_null():
    """Two exchangeable scorers (same signal, independent noise): p-values roughly uniform."""
    rng = np.random.default_rng(7)
    ps = []
    for k in range(60):
        n = 50
        y = (rng.random(n) < 0.4).astype(int)
        y[:2] = [0, 1]
        s = y * 0.8
        ps.append(venkatraman_test(y, s + rng.normal(0, 1, n), s + rng.normal(0, 1, n), n_permutations=200,
                                   seed=k)["p_value"])
    ps = np.asarray(ps)
    assert 0.3 < ps.mean() < 0.7
    assert np.mean(ps < 0.1) < 0.25


def test_venkatraman_per_task():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 3)) < 0.4).astype(float)
    y[:, 2] = 1.0
    y[rng.random((40, 3)) < 0.2] = np.nan
    y[0, :2], y[1, :2] = 1, 0
    pa, pb = rng.random((40, 3)), rng.random((40, 3))
    t = venkatraman_per_task(y, pa, pb, ["x", "y", "z"], n_permutations=50)
    assert t["task"].tolist() == ["x", "y", "z"] and t.loc[2, "reason"].startswith("one class")
    assert np.isnan(t.loc[2, "p_value"]) and t.loc[:1, "p_value"].notna().all()
    m = ~np.isnan(y[:, 0])
    assert t.loc[0, "statistic"] == venkatraman_test(y[m, 0], pa[m, 0], pb[m, 0], n_permutations=5)["statistic"]


def test_compare_assays_command(tmp_path, capsys):
    a, b = _aucs(30, seed=8, shift=0.05)
    tasks = [f"t{i}" for i in range(30)]
    pd.DataFrame({"task": tasks, "auc": a}).to_csv(tmp_path / "gapnet.csv", index=False)
    pd.DataFrame({"task": tasks[::-1], "auc": b[::-1]}).to_parquet(tmp_path / "fnn.parquet")  # other order
    summary = _cli(["compare-assays", str(tmp_path / "gapnet.csv"), str(tmp_path / "fnn.parquet"),
                    "-o", str(tmp_path / "a1.csv")])
    table = pd.read_csv(tmp_path / "a1.csv").set_index("model")
    ref = wilcoxon(a, b, alternative="greater", method="exact").pvalue
    assert table.loc["fnn", "gapnet"] == pytest.approx(ref, rel=1e-9)
    assert summary["pearson"]["gapnet vs fnn"]["r"] == pytest.approx(pearsonr(a, b)[0])
    assert summary["wilcoxon"]["gapnet > fnn"]["p_value"] == pytest.approx(ref, rel=1e-9)
    assert json.loads((tmp_path / "a1.json").read_text())["mean"]["gapnet"] == pytest.approx(a.mean())
    with pytest.raises(ValueError, match="run names must differ"):
        _cli(["compare-assays", str(tmp_path / "gapnet.csv"), str(tmp_path / "gapnet.csv"), "-o",
              str(tmp_path / "x.csv")])
    pd.DataFrame({"task": tasks}).to_csv(tmp_path / "noauc.csv", index=False)
    with pytest.raises(ValueError, match="noauc.csv: no column 'auc'"):
        _cli(["compare-assays", str(tmp_path / "gapnet.csv"), str(tmp_path / "noauc.csv"), "-o",
              str(tmp_path / "x.csv")])
    capsys.readouterr()


def test_bad_inputs():
    with pytest.raises(ValueError, match="the two runs have 3 and 2 tasks"):
        paired_auc_test([0.5, 0.6, 0.7], [0.5, 0.6])
    with pytest.raises(ValueError, match="no task has a value in both runs"):
        paired_auc_test([np.nan, 0.6], [0.5, np.nan])
    with pytest.raises(ValueError, match="needs at least 3 tasks"):
        auc_correlation([0.5, 0.6], [0.5, 0.7])
    with pytest.raises(ValueError, match="same value on every task"):
        auc_correlation([0.5, 0.5, 0.5], [0.5, 0.6, 0.7])
    with pytest.raises(ValueError, match="needs both classes"):
        venkatraman_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="labels must be 1 .* or 0"):
        venkatraman_test([1, np.nan, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="must be paired"):
        venkatraman_test([1, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2])
    with pytest.raises(ValueError, match="n_permutations must be a positive integer"):
        venkatraman_test([1, 0], [0.1, 0.2], [0.2, 0.1], n_permutations=0)
    with pytest.raises(ValueError, match="comparing runs needs at least two"):
        wilcoxon_table({"a": pd.DataFrame({"task": ["t"], "auc": [0.5]})})
    with pytest.raises(ValueError, match="task 't' appears twice"):
        wilcoxon_table({"a": pd.DataFrame({"task": ["t", "t"], "auc": [0.5, 0.6]}),
                        "b": pd.DataFrame({"task": ["t"], "auc": [0.5]})})
