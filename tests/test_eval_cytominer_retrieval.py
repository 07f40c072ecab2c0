"""cytominer-eval's retrieval metrics: enrichment, precision/recall (+ precision@R), hit@k, replicate
reproducibility.

1. Equivalence with cytominer-eval itself: ``../shared/data/reference-values/cytominer-eval-lincs-plate.json``
   holds cytominer-eval's outputs (git 643d3e7, pandas 1.5.3, numpy 1.26.4) on the LINCS plate
   SQ00015054 (features = every non-``Metadata_`` column, meta = every ``Metadata_`` column; the MOA
   cases use the rows with a non-null ``Metadata_moa``). cytominer-eval cannot be installed in a
   working state (PyPI 0.1 lacks enrichment/hitk and fails on numpy >= 1.24; master fails on
   pandas >= 2), hence stored outputs.

   NaN cells: the data README says "a few feature cells are NaN (drop rows/columns with NaN before
   similarity)". The file actually has **no** NaN feature cell (asserted below: 0 of 384 x 454), so
   the reference used all 384 rows and 454 features and no row or column is dropped here. (Had
   there been NaNs, cytominer-eval's ``DataFrame.T.corr`` would have used pairwise-complete
   features; phenovec refuses non-finite features with the row and column named.)

   Tolerances: the reference stores floats rounded to 10 decimals, so per-group precision/recall
   and medians are compared to 1e-9 absolute, thresholds and odds ratios to 1e-6 relative;
   replicate reproducibility, hits list and percent scores are compared exactly. The hits list is
   equal element by element, in order: on this data no hit and non-hit of one group have equal
   similarity (cytominer-eval's unstable sort would make such ties order-ambiguous; the only exact
   ties are the symmetric entries (i, j) / (j, i), which are both hits or both not), so no multiset
   comparison is needed; the test also checks it per group as a multiset, which is what would
   still hold with such ties.

2. An oracle that transcribes cytominer-eval's pandas code (melt of the full off-diagonal or upper
   triangle, ``str`` metadata, ``groupby``, sort, ``quantile``) on small random data, including
   numeric group columns (string group order), exact similarity ties, several blocks.

3. Bad input.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact

import phenovec.evaluate as pe
from phenovec.evaluate import pair_quantile as pq
from phenovec.evaluate import similarity as sim_mod

from conftest import shared

MOA = dict(replicate_groups=["Metadata_moa"], groupby_columns=["Metadata_broad_sample"], similarity_metric="pearson")


@pytest.fixture(scope="module")
def plate() -> pd.DataFrame:
    return pd.read_csv(shared("cytominer-eval-lincs-plate", "SQ00015054_normalized_feature_select.csv.gz"))


@pytest.fixture(scope="module")
def moa_rows(plate) -> pd.DataFrame:
    return plate[plate["Metadata_moa"].notna()].reset_index(drop=True)


@pytest.fixture(scope="module")
def ref() -> dict:
    cases = json.loads(shared("reference-values", "cytominer-eval-lincs-plate.json").read_text())["cases"]
    return {c["name"]: c for c in cases}


# ---------------------------------------------------------------------------------------------
# 1. cytominer-eval's own outputs


def test_plate_has_no_nan_features(plate):
    feats = plate.drop(columns=[c for c in plate.columns if c.startswith("Metadata_")])
    assert feats.shape == (384, 454)
    assert int(feats.isna().sum().sum()) == 0


def test_replicate_reproducibility_matches_cytominer_eval(plate, ref):
    case = ref["replicate_reproducibility_pearson"]
    c = case["call"]
    got = pe.replicate_reproducibility(plate, replicate_groups=c["replicate_groups"],
                                       quantile_over_null=c["replicate_reproducibility_quantile"],
                                       similarity_metric=c["similarity_metric"])
    assert got == case["result"]


def test_replicate_median_correlations_match_cytominer_eval(plate, ref):
    case = ref["replicate_reproducibility_median_cor"]
    score, table = pe.replicate_reproducibility(plate, replicate_groups=case["call"]["replicate_groups"],
                                                quantile_over_null=0.95, return_median_correlations=True)
    want_score, want_rows = case["result"]
    assert score == want_score
    want = pd.DataFrame(want_rows)
    assert list(table.columns) == list(want.columns)
    for col in case["call"]["replicate_groups"]:  # cytominer-eval's keys are the str form
        assert table[col].astype(str).tolist() == want[col].tolist()
    np.testing.assert_allclose(table["similarity_metric"], want["similarity_metric"], rtol=0, atol=1e-9)


def test_enrichment_matches_cytominer_eval(moa_rows, ref):
    case = ref["enrichment_moa"]
    ps = case["call"]["enrichment_percentile"]
    got = pe.enrichment(moa_rows, replicate_groups=["Metadata_moa"], percentile=ps, similarity_metric="pearson")
    want = pd.DataFrame(case["result"])
    np.testing.assert_array_equal(got["enrichment_percentile"], want["enrichment_percentile"])
    np.testing.assert_allclose(got["threshold"], want["threshold"], rtol=1e-6)
    np.testing.assert_allclose(got["ods_ratio"], want["ods_ratio"], rtol=1e-6)
    np.testing.assert_array_equal(got["odds_ratio"], got["ods_ratio"])
    np.testing.assert_allclose(got["p-value"], want["p-value"], rtol=1e-6, atol=0)


def test_enrichment_threshold_is_pandas_quantile_of_all_offdiagonal_pairs(moa_rows):
    """The exact two-pass selection equals pandas on the materialised N(N-1) ordered pairs."""
    p = sim_mod.as_profiles(moa_rows)
    s = pe.similarity_matrix(p.feats, "pearson")
    off = ~np.eye(len(s), dtype=bool)
    series = pd.Series(s[off])
    ps = [0.9, 0.95, 0.97, 0.99, 0.995, 0.5, 0.123]
    got = pe.enrichment(moa_rows, replicate_groups=["Metadata_moa"], percentile=ps)
    moa = moa_rows["Metadata_moa"].to_numpy()
    rep = (moa[:, None] == moa[None, :])[off]
    for row, q in zip(got.itertuples(), ps):
        t = series.quantile(q)
        assert row.threshold == t
        above = s[off] > t
        assert (row.replicate_above, row.nonreplicate_above) == (int((above & rep).sum()), int((above & ~rep).sum()))
        assert (row.replicate_below, row.nonreplicate_below) == (int((~above & rep).sum()), int((~above & ~rep).sum()))


def test_enrichment_moaprofiler_percentiles(moa_rows):
    """percentile="moaprofiler": the paper's 98th..99.8th percentiles in 0.2 steps, each equal to its own call."""
    got = pe.enrichment(moa_rows, replicate_groups=["Metadata_moa"], percentile="moaprofiler")
    want = [0.98, 0.982, 0.984, 0.986, 0.988, 0.99, 0.992, 0.994, 0.996, 0.998]
    assert got["enrichment_percentile"].tolist() == want
    one = pe.enrichment(moa_rows, replicate_groups=["Metadata_moa"], percentile=0.99)
    pd.testing.assert_frame_equal(got[got["enrichment_percentile"] == 0.99].reset_index(drop=True), one)
    assert (np.diff(got["threshold"]) >= 0).all()
    with pytest.raises(ValueError, match="'moaprofiler'"):
        pe.enrichment(moa_rows, replicate_groups=["Metadata_moa"], percentile="paper")


def test_precision_recall_matches_cytominer_eval(moa_rows, ref):
    case = ref["precision_recall_moa"]
    got = pe.precision_recall(moa_rows, k=case["call"]["precision_recall_k"], **MOA)
    want = pd.DataFrame(case["result"])
    assert list(got.columns) == ["Metadata_broad_sample", "k", "precision", "recall"]
    assert got["Metadata_broad_sample"].tolist() == want["Metadata_broad_sample"].tolist()
    np.testing.assert_array_equal(got["k"].to_numpy(float), want["k"].to_numpy(float))
    np.testing.assert_allclose(got["precision"], want["precision"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(got["recall"], want["recall"], rtol=0, atol=1e-9)


def test_hit_at_k_matches_cytominer_eval(moa_rows, ref):
    case = ref["hitk_moa"]
    result = pe.hit_at_k(moa_rows, percent_list=case["call"]["hitk_percent_list"], **MOA)
    hits_list, scores = result  # unpacks like cytominer-eval's return value
    want_hits, want_scores = case["result"]
    assert hits_list == want_hits
    assert {str(k): v for k, v in scores.items()} == want_scores
    # per group as a multiset (what would survive similarity ties): segment the reference by our group sizes
    sizes = result.hits.groupby("Metadata_broad_sample", sort=False).size().to_numpy()
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    assert bounds[-1] == len(want_hits)
    for a, b in zip(bounds[:-1], bounds[1:]):
        assert sorted(want_hits[a:b]) == sorted(hits_list[a:b])


def test_precision_at_r_on_plate_equals_precision_at_k_equal_r(moa_rows):
    table, mean = pe.precision_at_r(moa_rows, **MOA)
    assert mean == pytest.approx(table["precision_at_r"].mean())
    # precision@R of each group equals precision_recall's precision at k = that group's R
    for r in sorted(table["R"].unique())[:3]:
        pr = pe.precision_recall(moa_rows, k=int(r), **MOA)
        sel = table["R"] == r
        np.testing.assert_allclose(table.loc[sel, "precision_at_r"].to_numpy(), pr.loc[sel.to_numpy(), "precision"].to_numpy())
        np.testing.assert_allclose(table.loc[sel, "precision_at_r"].to_numpy(), pr.loc[sel.to_numpy(), "recall"].to_numpy())


# ---------------------------------------------------------------------------------------------
# 2. oracle: cytominer-eval's pandas code, transcribed, on small data


def melt(meta: pd.DataFrame, s: np.ndarray, upper: bool) -> pd.DataFrame:
    """cytominer-eval's ``metric_melt``: str metadata of both members + similarity."""
    n = len(s)
    if upper:
        i, j = np.triu_indices(n, 1)
    else:
        j, i = np.nonzero(~np.eye(n, dtype=bool))  # pd.melt order: column b outer, row a inner
    m = meta.astype(str)
    out = pd.DataFrame({"similarity_metric": s[i, j]})
    for c in m.columns:
        out[f"{c}_pair_a"] = m[c].to_numpy()[i]
        out[f"{c}_pair_b"] = m[c].to_numpy()[j]
    return out


def assign_replicates(df: pd.DataFrame, cols) -> pd.DataFrame:
    rep = np.ones(len(df), bool)
    for c in cols:
        rep &= (df[f"{c}_pair_a"] == df[f"{c}_pair_b"]).to_numpy()
    return df.assign(group_replicate=rep)


def oracle_ranked_groups(meta, s, rep_cols, group_cols):
    df = assign_replicates(melt(meta, s, upper=False), rep_cols)
    # cytominer-eval: sort by similarity desc (unstable); ties here: replicate first (phenovec's rule)
    df = df.sort_values(["similarity_metric", "group_replicate"], ascending=False, kind="stable")
    return df.groupby([f"{c}_pair_a" for c in group_cols], sort=True)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(7)
    n = 60
    meta = pd.DataFrame({
        "Metadata_cpd": rng.choice([f"c{k}" for k in range(12)], n),
        "Metadata_dose": rng.choice([10.0, 2.5, 0.37, 1.11], n),
        "Metadata_moa": rng.choice(["a", "b", "c", "d"], n),
    })
    x = rng.normal(size=(n, 16))
    # integer-valued features: many exact similarity ties between different pairs
    xt = rng.integers(0, 3, size=(n, 6)).astype(float)
    xt[np.ptp(xt, axis=1) == 0, 0] += 1  # no constant row (pearson undefined)
    return meta, x, xt


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("group_cols", [["Metadata_cpd"], ["Metadata_dose"], ["Metadata_cpd", "Metadata_dose"]])
def test_precision_recall_and_hit_at_k_equal_oracle(small, tied, group_cols):
    meta, x, xt = small
    x = xt if tied else x
    s = pe.similarity_matrix(x, "pearson")
    rep_cols = ["Metadata_moa"]
    groups = oracle_ranked_groups(meta, s, rep_cols, group_cols)
    if tied:  # the tie case must really have hit / non-hit ties inside groups (where the tie rule matters)
        n_mixed = sum(int(((np.diff(g["similarity_metric"].to_numpy()) == 0)
                           & (np.diff(g["group_replicate"].to_numpy().astype(int)) != 0)).sum()) for _, g in groups)
        assert n_mixed > 50
    ks = [1, 3, 10, 5000]  # 5000 > every list length (policy: precision = hits / k)
    got = pe.precision_recall(meta, x, replicate_groups=rep_cols, groupby_columns=group_cols, k=ks,
                              block_bytes=4096)
    rows, hits_list, lengths = [], [], []
    for _, g in groups:
        hits_list += np.flatnonzero(g["group_replicate"].to_numpy()).tolist()
        lengths.append(len(g))
    for k in ks:
        for _, g in groups:
            top = g["group_replicate"].to_numpy()[:k].sum()
            rows.append((k, top / k, top / g["group_replicate"].sum()))
    want = pd.DataFrame(rows, columns=["k", "precision", "recall"])
    assert max(lengths) < 5000
    np.testing.assert_array_equal(got["k"], want["k"])
    np.testing.assert_allclose(got["precision"], want["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["recall"], want["recall"], rtol=0, atol=1e-12)
    # group order and key values: the str order of cytominer-eval's groupby, original values kept
    keys = [k if isinstance(k, tuple) else (k,) for k in groups.indices.keys()]
    got_keys = list(got.loc[got["k"] == 1, group_cols].astype(str).itertuples(index=False, name=None))
    assert got_keys == keys
    assert got[group_cols].dtypes.tolist() == meta[group_cols].dtypes.tolist()

    res = pe.hit_at_k(meta, x, replicate_groups=rep_cols, groupby_columns=group_cols, percent_list=[0, 2, 5, 10, 50, 100],
                      block_bytes=4096)
    assert res.hits_list == hits_list
    G, H = len(lengths), len(hits_list)
    assert res.percent_scores == {p: sum(h <= p * G / 100 for h in hits_list) - int(p * H / 100) for p in [0, 2, 5, 10, 50, 100]}
    all_scores = pe.hit_at_k(meta, x, replicate_groups=rep_cols, groupby_columns=group_cols, percent_list="all").percent_scores
    diff, want_all = 0, {}
    for n in range(G):
        diff += hits_list.count(n) - H / G
        want_all[n] = diff
    assert all_scores == want_all
    # normalised accumulated score, against its definition (each hit against its group's list length)
    ln = np.repeat(lengths, [int(g["group_replicate"].sum()) for _, g in groups])
    acc = res.accumulated
    assert acc["percent"].tolist() == list(range(1, 101))
    for p in (1, 7, 50, 100):
        cnt = sum(r < p / 100 * L for r, L in zip(hits_list, ln))
        assert acc.loc[p - 1, "hits"] == cnt
        assert acc.loc[p - 1, "normalised_score"] == pytest.approx((cnt - H * p / 100) / H)
    assert acc.loc[99, "normalised_score"] == 0

    table, mean = pe.precision_at_r(meta, x, replicate_groups=rep_cols, groupby_columns=group_cols)
    want_r = [g["group_replicate"].to_numpy()[: g["group_replicate"].sum()].mean() for _, g in groups]
    np.testing.assert_allclose(table["precision_at_r"], want_r, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(table["R"], [g["group_replicate"].sum() for _, g in groups])
    assert mean == pytest.approx(np.mean(want_r))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("metric", ["pearson", "cosine", "euclidean"])
def test_enrichment_and_replicate_reproducibility_equal_oracle(small, tied, metric):
    meta, x, xt = small
    x = xt if tied else x
    s = pe.similarity_matrix(x, metric)
    rep_cols = ["Metadata_cpd", "Metadata_dose"]
    full = assign_replicates(melt(meta, s, upper=False), ["Metadata_moa"])
    ps = [0.0, 0.5, 0.9, 0.99, 0.995]
    got = pe.enrichment(meta, x, replicate_groups=["Metadata_moa"], percentile=ps, similarity_metric=metric,
                        block_bytes=2048)
    for row, pval_got, q in zip(got.itertuples(), got["p-value"], ps):
        t = full.similarity_metric.quantile(q)
        assert row.threshold == t
        v11 = len(full.query("group_replicate==True and similarity_metric>@t"))
        v12 = len(full.query("group_replicate==False and similarity_metric>@t"))
        v21 = len(full.query("group_replicate==True and similarity_metric<=@t"))
        v22 = len(full.query("group_replicate==False and similarity_metric<=@t"))
        assert (row.replicate_above, row.nonreplicate_above, row.replicate_below, row.nonreplicate_below) == (v11, v12, v21, v22)
        odds, pval = fisher_exact(np.array([[v11, v12], [v21, v22]]), alternative="greater")
        assert row.ods_ratio == odds and pval_got == pval

    up = assign_replicates(melt(meta, s, upper=True), rep_cols)
    for q in (0.5, 0.95, 1.0):
        t = up.query("not group_replicate").similarity_metric.quantile(q)
        rp = up.query("group_replicate")
        want = (rp.similarity_metric > t).sum() / len(rp)
        got_rr = pe.replicate_reproducibility(meta, x, replicate_groups=rep_cols, quantile_over_null=q,
                                              similarity_metric=metric, block_bytes=2048)
        assert got_rr == want
    score, med = pe.replicate_reproducibility(meta, x, replicate_groups=rep_cols, similarity_metric=metric,
                                              return_median_correlations=True, block_bytes=2048)
    want_med = (rp.groupby([f"{c}_pair_a" for c in rep_cols])["similarity_metric"].median().reset_index())
    assert med[rep_cols].astype(str).to_numpy().tolist() == want_med.iloc[:, :2].to_numpy().tolist()
    np.testing.assert_array_equal(med["similarity_metric"], want_med["similarity_metric"])
    assert med["Metadata_dose"].dtype == np.float64


def test_pair_quantile_equals_pandas_with_ties_blocks_and_doubling():
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(45, 4)).astype(float)
    x[np.ptp(x, axis=1) == 0, 0] += 1
    codes = rng.integers(0, 5, 45)
    s = pe.similarity_matrix(x, "euclidean")  # negative distances: negative values, many ties
    iu = np.triu_indices(45, 1)
    vals = s[iu]
    rep = codes[iu[0]] == codes[iu[1]]
    qs = list(np.linspace(0, 1, 41)) + [0.95, 0.99, 0.995, 1e-9, 1 - 1e-9]
    for over, doubled, pool in [("all", False, vals), ("all", True, np.repeat(vals, 2)), ("nonreplicate", False, vals[~rep])]:
        for bb in (512, 1 << 20):
            res = pq.pair_thresholds(x, "euclidean", codes, qs, over=over, doubled=doubled, block_bytes=bb)
            for r, q in zip(res, qs):
                t = pd.Series(pool).quantile(q)
                assert r.threshold == t, (over, doubled, q)
                assert r.above == (int((vals[~rep] > t).sum()), int((vals[rep] > t).sum()))
                assert r.total == (int((~rep).sum()), int(rep.sum()))
    assert len(np.unique(vals)) < len(vals) / 5  # ties really present


def test_linear_quantile_rule_is_numpys_bit_for_bit():
    rng = np.random.default_rng(5)
    for _ in range(3000):
        n = int(rng.integers(1, 12))
        v = np.sort(rng.normal(size=n) * 10.0 ** rng.integers(-3, 4))
        q = float(rng.random())
        ours = pq.pandas_linear_quantile(v, q)
        assert ours == np.quantile(v, q)
        # pandas 3 calls numpy's rule directly; pandas 2 goes through percentiles (q * 100), which can
        # land a few ulps away. Both are the "pandas linear quantile" cytominer-eval uses.
        assert abs(ours - pd.Series(v).quantile(q)) <= 1e-12 * np.abs(v).max()


def test_sortable_keys_preserve_order():
    v = np.array([-np.inf, -1e300, -2.0, -1.0, -1e-300, 0.0, 1e-300, 0.5, 1.0, 3.0, 1e300, np.inf])
    k = pq.sortable_keys(v)
    assert (np.diff(k.astype(object)) > 0).all()
    assert pq.sortable_keys(np.array([-0.0 + 0.0]))[0] == pq.sortable_keys(np.array([0.0]))[0]
    rng = np.random.default_rng(1)
    w = rng.normal(size=1000) * 10.0 ** rng.integers(-5, 5, 1000)
    assert (np.argsort(pq.sortable_keys(w), kind="stable") == np.argsort(w, kind="stable")).all()


def test_pair_metrics_never_build_the_full_matrix(small, monkeypatch):
    meta, x, _ = small
    calls = []
    real = sim_mod._core.Prepared

    class Spy:  # records the rows of every similarity block asked of the prepared rows
        def __init__(self, feats, metric):
            self.prepared = real(feats, metric)

        def block(self, rows, *cols):
            calls.append(len(rows))
            return self.prepared.block(rows, *cols)

    monkeypatch.setattr(sim_mod._core, "Prepared", Spy)
    pe.enrichment(meta, x, replicate_groups=["Metadata_moa"], percentile=[0.9], block_bytes=8 * 60 * 5)
    pe.replicate_reproducibility(meta, x, replicate_groups=["Metadata_moa"], return_median_correlations=True,
                                 block_bytes=8 * 60 * 5)
    assert calls and max(calls) <= 5


def test_precision_recall_independent_of_block_size(moa_rows):
    a = pe.precision_recall(moa_rows, k=[5, 20], block_bytes=8 * 342 * 7, **MOA)
    b = pe.precision_recall(moa_rows, k=[5, 20], **MOA)
    pd.testing.assert_frame_equal(a, b)
    h1 = pe.hit_at_k(moa_rows, block_bytes=8 * 342 * 3, **MOA)
    h2 = pe.hit_at_k(moa_rows, **MOA)
    assert h1.hits_list == h2.hits_list


def test_k_larger_than_the_list_divides_by_k():
    """Policy (cytominer-eval's): precision@k = hits in the whole list / k even when k > list length."""
    meta = pd.DataFrame({"Metadata_g": ["a", "a", "b", "b"]})
    x = np.array([[1.0, 2, 3], [1, 2, 3.5], [3, 1, 0], [3, 1.2, 0]])
    got = pe.precision_recall(meta, x, replicate_groups=["Metadata_g"], groupby_columns=["Metadata_g"], k=[2, 100])
    # each group's list: 2 members x 3 others = 6 entries, 2 of them hits, ranked first
    assert got["precision"].tolist() == [1.0, 1.0, 0.02, 0.02]
    assert got["recall"].tolist() == [1.0, 1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# 3. bad input


@pytest.fixture()
def tiny():
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"Metadata_g": list("aabbccdd"), "Metadata_id": list("abcdefgh")})
    return meta, rng.normal(size=(8, 5))


ALL = {
    "enrichment": lambda m, x, **kw: pe.enrichment(m, x, replicate_groups=["Metadata_g"], percentile=0.5, **kw),
    "precision_recall": lambda m, x, **kw: pe.precision_recall(m, x, replicate_groups=["Metadata_g"], groupby_columns=["Metadata_id"], k=2, **kw),
    "precision_at_r": lambda m, x, **kw: pe.precision_at_r(m, x, replicate_groups=["Metadata_g"], groupby_columns=["Metadata_id"], **kw),
    "hit_at_k": lambda m, x, **kw: pe.hit_at_k(m, x, replicate_groups=["Metadata_g"], groupby_columns=["Metadata_id"], **kw),
    "replicate_reproducibility": lambda m, x, **kw: pe.replicate_reproducibility(m, x, replicate_groups=["Metadata_g"], **kw),
}


@pytest.mark.parametrize("name", list(ALL))
def test_bad_features_are_refused(tiny, name):
    meta, x = tiny
    f = ALL[name]
    f(meta, x)  # valid input works
    y = x.copy()
    y[3, 1] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        f(meta, y)
    y = x.copy()
    y[5] = 2.0
    with pytest.raises(ValueError, match="row 5.*zero variance"):
        f(meta, y)
    with pytest.raises(ValueError, match="rows"):
        f(meta, x[:7])
    with pytest.raises(ValueError, match="numeric"):
        f(meta, np.array([["a"] * 5] * 8))
    with pytest.raises(ValueError, match="unknown similarity metric"):
        f(meta, x, similarity_metric="kendall")


@pytest.mark.parametrize("name", list(ALL))
def test_bad_metadata_is_refused(tiny, name):
    meta, x = tiny
    f = ALL[name]
    with pytest.raises(KeyError, match="Metadata_nope"):
        {
            "enrichment": lambda: pe.enrichment(meta, x, replicate_groups=["Metadata_nope"]),
            "precision_recall": lambda: pe.precision_recall(meta, x, replicate_groups=["Metadata_g"], groupby_columns=["Metadata_nope"]),
            "precision_at_r": lambda: pe.precision_at_r(meta, x, replicate_groups=["Metadata_nope"], groupby_columns=["Metadata_id"]),
            "hit_at_k": lambda: pe.hit_at_k(meta, x, replicate_groups=["Metadata_g"], groupby_columns=["Metadata_nope"]),
            "replicate_reproducibility": lambda: pe.replicate_reproducibility(meta, x, replicate_groups=["Metadata_nope"]),
        }[name]()
    m2 = meta.copy()
    m2.loc[4, "Metadata_g"] = None
    with pytest.raises(ValueError, match="Metadata_g.*row 4"):
        f(m2, x)


def test_whole_table_input_with_non_numeric_feature_is_refused(tiny):
    meta, x = tiny
    df = pd.concat([meta, pd.DataFrame(x, columns=[f"f{i}" for i in range(5)])], axis=1)
    df["f2"] = df["f2"].astype(str)
    with pytest.raises(ValueError, match="'f2' is not numeric"):
        pe.enrichment(df, replicate_groups=["Metadata_g"])


def test_groups_without_replicates_are_an_error(tiny):
    meta, x = tiny
    m2 = meta.copy()
    m2.loc[7, "Metadata_g"] = "z"  # rows 6 and 7 (ids g, h) now have no replicate
    for f in (pe.precision_recall, pe.precision_at_r, pe.hit_at_k):
        with pytest.raises(ValueError, match="2 group.*no replicate pair.*'Metadata_id': 'g'"):
            f(m2, x, replicate_groups=["Metadata_g"], groupby_columns=["Metadata_id"])


def test_no_replicate_pairs_at_all(tiny):
    meta, x = tiny
    with pytest.raises(ValueError, match="no replicate pairs"):
        pe.enrichment(meta, x, replicate_groups=["Metadata_id"])
    with pytest.raises(ValueError, match="no replicate pairs"):
        pe.replicate_reproducibility(meta, x, replicate_groups=["Metadata_id"])
    one = meta.assign(Metadata_g="a")
    with pytest.raises(ValueError, match="no non-replicate pairs"):
        pe.enrichment(one, x, replicate_groups=["Metadata_g"])
    with pytest.raises(ValueError, match="no non-replicate pairs"):
        pe.replicate_reproducibility(one, x, replicate_groups=["Metadata_g"])


def test_bad_parameters(tiny):
    meta, x = tiny
    for p in (1.5, -0.1, "0.9", True, []):
        with pytest.raises(ValueError, match="percentile"):
            pe.enrichment(meta, x, replicate_groups=["Metadata_g"], percentile=p)
    with pytest.raises(ValueError, match="no pair above"):
        pe.enrichment(meta, x, replicate_groups=["Metadata_g"], percentile=1.0)
    for k in (0, -1, 2.5, True, []):
        with pytest.raises(ValueError, match="k"):
            pe.precision_recall(meta, x, replicate_groups=["Metadata_g"], groupby_columns=["Metadata_id"], k=k)
    for pl in (101, [5, 120], [-1], "some", [], ["5"], [float("nan")]):
        with pytest.raises(ValueError, match="percent"):
            pe.hit_at_k(meta, x, replicate_groups=["Metadata_g"], groupby_columns=["Metadata_id"], percent_list=pl)
    for q in (0, 1.2, -0.5, None):
        with pytest.raises(ValueError, match="quantile_over_null"):
            pe.replicate_reproducibility(meta, x, replicate_groups=["Metadata_g"], quantile_over_null=q)
    with pytest.raises(ValueError, match="groupby_columns"):
        pe.precision_recall(meta, x, replicate_groups=["Metadata_g"], groupby_columns=[])
    with pytest.raises(ValueError, match="replicate_groups"):
        pe.enrichment(meta, x, replicate_groups=None)
