"""MOAProfiler's evaluation protocol (Wong et al. 2023, digest B5): each metric against a brute-force
reference written here (explicit loops over well pairs / wells on small seeded data), the bad inputs
refused with the column named, the CLI, and every metric on the real BBBC021 and LINCS profiles."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact
from sklearn.metrics import f1_score, precision_score, recall_score
from statsmodels.stats.weightstats import ztest

import phenovec.evaluate as pe
from phenovec.cli import main
from phenovec.evaluate.moa_labels import leave_one_out_medians
from phenovec.evaluate.reference_similarity import paired_similarity, similarity_to

MC = dict(moa_col="moa", compound_col="compound")


def small(seed=0, n_moa=4, n_cpd=(2, 3), wells=3, n_plates=3, f=12, dmso=0, signal=1.0):
    """Wells of n_moa MOAs with 2-3 compounds each, `wells` wells per compound, a plate effect and DMSO wells."""
    rng = np.random.default_rng(seed)
    rows, x = [], []
    plate_fx = rng.normal(0, 0.3, (n_plates, f))
    for m in range(n_moa):
        centre = rng.normal(0, signal, f)
        for c in range(rng.integers(n_cpd[0], n_cpd[1] + 1)):
            cc = centre + rng.normal(0, 0.5, f)
            for w in range(wells):
                p = int(rng.integers(n_plates))
                rows.append({"moa": f"M{m}", "compound": f"M{m}c{c}", "plate": f"P{p}", "batch": f"B{p % 2}"})
                x.append(cc + plate_fx[p] + rng.normal(0, 1.0, f))
    for i in range(dmso):
        p = i % n_plates
        rows.append({"moa": "DMSO", "compound": "DMSO", "plate": f"P{p}", "batch": f"B{p % 2}"})
        x.append(plate_fx[p] + rng.normal(0, 1.0, f))
    return pd.DataFrame(rows), np.asarray(x)


def sim(a, b, metric="pearson"):
    if metric == "pearson":
        return float(np.corrcoef(a, b)[0, 1])
    if metric == "cosine":
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    raise AssertionError(metric)


def pairs(n):
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


# ---------------------------------------------------------------------------------------------
# building blocks

@pytest.mark.parametrize("n", [2, 3, 6, 7])
def test_leave_one_out_medians_equal_numpy(n):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 4, size=(n, 9)).astype(float)  # many ties
    got = leave_one_out_medians(x)
    for i in range(n):
        np.testing.assert_array_equal(got[i], np.median(np.delete(x, i, axis=0), axis=0))


@pytest.mark.parametrize("metric", ["pearson", "cosine", "spearman", "euclidean"])
def test_reference_similarity_equals_the_core(metric):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 11)), rng.normal(size=(3, 11))
    full = pe.similarity_matrix(np.vstack([a, b]), metric)
    np.testing.assert_allclose(similarity_to(a, b, metric), full[:7, 7:], atol=1e-12)
    c = rng.normal(size=(7, 11))
    full = pe.similarity_matrix(np.vstack([a, c]), metric)
    np.testing.assert_allclose(paired_similarity(a, c, metric), full[np.arange(7), 7 + np.arange(7)], atol=1e-12)


# ---------------------------------------------------------------------------------------------
# each metric against its brute-force reference

@pytest.mark.parametrize("metric,block_bytes", [("pearson", 1 << 28), ("pearson", 800), ("cosine", 1 << 28)])
def test_moa_similarity_delta_equals_bruteforce(metric, block_bytes):
    meta, x = small(seed=2)
    summary, table = pe.moa_similarity_delta(meta, x, **MC, similarity_metric=metric, block_bytes=block_bytes)
    moa = meta["moa"].to_numpy()
    same = [sim(x[i], x[j], metric) for i, j in pairs(len(x)) if moa[i] == moa[j]]
    diff = [sim(x[i], x[j], metric) for i, j in pairs(len(x)) if moa[i] != moa[j]]
    s = summary.iloc[0]
    assert s["n_intra_pairs"] == len(same) and s["n_inter_pairs"] == len(diff)
    assert s["intra"] == pytest.approx(np.mean(same), abs=1e-12)
    assert s["inter"] == pytest.approx(np.mean(diff), abs=1e-12)
    assert s["intra_sd"] == pytest.approx(np.std(same, ddof=1), abs=1e-10)
    assert s["inter_sd"] == pytest.approx(np.std(diff, ddof=1), abs=1e-10)
    assert s["delta"] == pytest.approx(np.mean(same) - np.mean(diff), abs=1e-12)
    z, p = ztest(same, diff, usevar="unequal")
    assert s["z"] == pytest.approx(z, rel=1e-9) and s["p_value"] == pytest.approx(p, rel=1e-6, abs=1e-300)
    assert s["delta"] > 0.1  # the data have a MOA signal
    for r in table.itertuples():
        mine = np.flatnonzero(moa == r.moa)
        own = [sim(x[i], x[j], metric) for i, j in pairs(len(x)) if i in mine and j in mine]
        cross = [sim(x[i], x[j], metric) for i in mine for j in range(len(x)) if moa[j] != r.moa]
        assert (r.n_wells, r.n_intra_pairs, r.n_inter_pairs) == (len(mine), len(own), len(cross))
        assert r.intra == pytest.approx(np.mean(own), abs=1e-12)
        assert r.inter == pytest.approx(np.mean(cross), abs=1e-12)


def test_three_group_pcc_equals_bruteforce():
    meta, x = small(seed=3, wells=4)
    summary, groups = pe.three_group_pcc(meta, x, **MC, block_bytes=1000)
    moa, cpd = meta["moa"].to_numpy(), meta["compound"].to_numpy()
    ref = {"same_compound": [], "same_moa": [], "different_moa": []}
    for i, j in pairs(len(x)):
        g = "same_compound" if cpd[i] == cpd[j] else "same_moa" if moa[i] == moa[j] else "different_moa"
        ref[g].append(sim(x[i], x[j]))
    s = summary.iloc[0]
    for g, v in ref.items():
        assert s[g] == pytest.approx(np.mean(v), abs=1e-12)
        row = groups.set_index("group").loc[g]
        assert row["n_pairs"] == len(v) and row["sd"] == pytest.approx(np.std(v, ddof=1), abs=1e-10)
    for a, b in [("same_compound", "same_moa"), ("same_moa", "different_moa"), ("same_compound", "different_moa")]:
        z, p = ztest(ref[a], ref[b], usevar="unequal")
        assert s[f"z_{a}_vs_{b}"] == pytest.approx(z, rel=1e-9)
        assert s[f"p_{a}_vs_{b}"] == pytest.approx(p, rel=1e-6, abs=1e-300)
    assert s["same_compound"] > s["same_moa"] > s["different_moa"]
    assert s["n_compounds"] == meta["compound"].nunique()


@pytest.mark.parametrize("metric", ["pearson", "cosine"])
def test_class_latent_assignment_equals_bruteforce(metric):
    meta, x = small(seed=4, signal=0.6)
    summary, pred = pe.class_latent_assignment(meta, x, **MC, similarity_metric=metric)
    moa = meta["moa"].to_numpy()
    moas = sorted(set(moa))
    expected = []
    for q in range(len(x)):
        best, best_s = None, -np.inf
        for m in moas:  # sorted order: the first MOA wins a tie
            rows = [i for i in range(len(x)) if moa[i] == m and i != q]
            s = sim(x[q], np.median(x[rows], axis=0), metric)
            if s > best_s:
                best, best_s = m, s
        expected.append(best)
    assert pred["predicted"].tolist() == expected
    assert pred["row"].tolist() == list(range(len(x)))
    assert pred["correct"].tolist() == [e == t for e, t in zip(expected, moa)]
    s = summary.iloc[0]
    assert s["f1"] == pytest.approx(f1_score(moa, expected, average="weighted", zero_division=0), abs=1e-12)
    assert s["precision"] == pytest.approx(precision_score(moa, expected, average="weighted", zero_division=0), abs=1e-12)
    assert s["recall"] == pytest.approx(recall_score(moa, expected, average="weighted", zero_division=0), abs=1e-12)
    assert 0 < s["accuracy"] < 1  # neither trivial: the query left out matters
    # the query left out: with its own well in the MLE, accuracy could only rise
    own = [sim(x[q], np.median(x[moa == moa[q]], axis=0), metric) for q in range(len(x))]
    assert not np.allclose(own, pred["similarity_own"])


def _holdout_reference(meta, x, split):
    moa, cpd = meta["moa"].to_numpy(), meta["compound"].to_numpy()
    train = split == "train"
    moas = sorted(set(moa[train]))
    mle = {m: np.median(x[train & (moa == m)], axis=0) for m in moas}
    out = {}
    for c in sorted(set(cpd[~train])):
        rows = np.flatnonzero(~train & (cpd == c))
        votes, best = [], []
        for r in rows:
            s = {m: sim(x[r], mle[m]) for m in moas}
            v = max(moas, key=lambda m: (s[m], -moas.index(m)))
            votes.append(v)
            best.append(s[v])
        cnt = Counter(votes)
        top = max(cnt.values())
        tied = sorted(m for m in cnt if cnt[m] == top)
        ind = max(tied, key=lambda m: (max(b for v, b in zip(votes, best) if v == m), -tied.index(m)))
        cle = np.median(x[rows], axis=0)
        agg = max(moas, key=lambda m: (sim(cle, mle[m]), -moas.index(m)))
        out[c] = (moa[rows[0]], ind, agg)
    return out


def test_holdout_moa_identification_equals_bruteforce():
    meta, x = small(seed=5, n_moa=5, wells=4, signal=0.5)
    rng = np.random.default_rng(0)
    held = meta.groupby("moa")["compound"].agg(lambda s: rng.choice(sorted(s.unique())))
    split = np.where(meta["compound"].isin(held), "test", "train")
    summary, table = pe.holdout_moa_identification(meta.assign(split=split), x, **MC, split_col="split")
    ref = _holdout_reference(meta, x, split)
    t = table.set_index("compound")
    assert sorted(t.index) == sorted(ref)
    for c, (truth, ind, agg) in ref.items():
        assert (t.loc[c, "moa"], t.loc[c, "individual_prediction"], t.loc[c, "aggregated_prediction"]) == (truth, ind, agg)
    s = summary.iloc[0]
    assert s["individual_vote"] == pytest.approx(np.mean([v[0] == v[1] for v in ref.values()]))
    assert s["aggregated_vote"] == pytest.approx(np.mean([v[0] == v[2] for v in ref.values()]))
    assert s["baseline"] == pytest.approx(1 / 5) and s["n_compounds"] == 5 and s["n_candidate_moas"] == 5
    assert s["n_test_wells"] == (split == "test").sum()


def test_holdout_individual_vote_tie_rule():
    # MLEs: A = e0, B = e1 (training); compound q has two wells, one nearer A (0.9) and one nearer B (0.99)
    e = np.eye(6)
    x = np.array([e[0], e[0] + 0.01 * e[3], e[1], e[1] + 0.01 * e[4],
                  e[0] + 0.3 * e[2], e[1] + 0.1 * e[2]])
    meta = pd.DataFrame({"moa": ["A", "A", "B", "B", "A", "A"], "compound": ["a", "a2", "b", "b2", "q", "q"],
                         "split": ["train"] * 4 + ["test"] * 2})
    _, t = pe.holdout_moa_identification(meta, x, **MC, split_col="split")
    # one vote each: the tie goes to B, whose voter is the more similar (wrong here: q is an A compound)
    assert t["individual_prediction"].item() == "B" and t["individual_votes"].item() == 1
    assert not t["individual_correct"].item()


def test_batch_diagnostic_equals_bruteforce():
    meta, x = small(seed=6, wells=5, dmso=40)
    summary, table = pe.batch_diagnostic(meta, x, **MC, plate_col="plate", batch_col="batch", bes_percentile=0.9,
                                         block_bytes=2000)
    trt = np.flatnonzero(meta["compound"].to_numpy() != "DMSO")
    moa, plate = meta["moa"].to_numpy(), meta["plate"].to_numpy()
    within = [sim(x[i], x[j]) for a, b in pairs(len(trt)) for i, j in [(trt[a], trt[b])]
              if moa[i] == moa[j] and plate[i] == plate[j]]
    across = [sim(x[i], x[j]) for a, b in pairs(len(trt)) for i, j in [(trt[a], trt[b])]
              if moa[i] == moa[j] and plate[i] != plate[j]]
    s = summary.iloc[0]
    assert (s["n_within_pairs"], s["n_across_pairs"]) == (len(within), len(across))
    assert s["same_moa_within_plate"] == pytest.approx(np.mean(within), abs=1e-12)
    assert s["same_moa_across_plates"] == pytest.approx(np.mean(across), abs=1e-12)
    assert s["p_value"] == pytest.approx(ztest(within, across, usevar="unequal")[1], rel=1e-6, abs=1e-300)
    assert s["difference"] > 0  # the plate effect makes same-plate pairs more alike
    # DMSO batch enrichment: ordered pairs, threshold the pandas quantile, 2 x 2 Fisher table (Bornholdt)
    d = np.flatnonzero(meta["compound"].to_numpy() == "DMSO")
    bt = meta["batch"].to_numpy()
    od = [(i, j) for i in d for j in d if i != j]
    v = np.array([sim(x[i], x[j]) for i, j in od])
    rep = np.array([bt[i] == bt[j] for i, j in od])
    hi = v > pd.Series(v).quantile(0.9)
    tab = [[(hi & rep).sum(), (hi & ~rep).sum()], [(~hi & rep).sum(), (~hi & ~rep).sum()]]
    assert s["batch_enrichment"] == pytest.approx(fisher_exact(tab, alternative="greater")[0], rel=1e-12)
    assert s["n_control_wells"] == 40 and s["n_batches"] == 2
    assert table["n_within_pairs"].sum() == len(within)


def test_moa_test_wells_filter():
    meta, x = small(seed=7, dmso=5)
    meta.loc[meta["compound"].str.startswith("M0"), "compound"] = "M0only"  # M0: a single-compound MOA
    meta.loc[3, "moa"] = np.nan
    with pytest.raises(ValueError, match=r"moa_col: column 'moa' has a missing MOA at row 3"):
        pe.moa_test_wells(meta, x, **MC)
    m, f = pe.moa_test_wells(meta, x, **MC, missing="drop")
    assert "DMSO" not in set(m["compound"]) and "M0" not in set(m["moa"]) and m["moa"].notna().all()
    keep = (meta["compound"] != "DMSO") & meta["moa"].notna() & (meta["moa"] != "M0")
    np.testing.assert_array_equal(f, x[keep.to_numpy()])
    m2, _ = pe.moa_test_wells(meta, x, **MC, missing="drop", keep_controls=True)
    assert (m2["compound"] == "DMSO").sum() == 5
    m3, _ = pe.moa_test_wells(meta, x, **MC, missing="drop", min_compounds=1)
    assert "M0" in set(m3["moa"])
    with pytest.raises(ValueError, match=r"no row has the control 'dmso'"):
        pe.moa_test_wells(meta, x, **MC, control="dmso", missing="drop")
    nodmso = (meta["compound"] != "DMSO").to_numpy()
    m4, _ = pe.moa_test_wells(meta[nodmso], x[nodmso], **MC, control=None, missing="drop")
    assert len(m4) == len(m)


# ---------------------------------------------------------------------------------------------
# bad input: one clear error naming the column

METRICS = [pe.moa_similarity_delta, pe.three_group_pcc, pe.class_latent_assignment]


@pytest.mark.parametrize("fn", METRICS, ids=lambda f: f.__name__)
def test_bad_labels_are_refused_naming_the_column(fn):
    meta, x = small(seed=8)
    with pytest.raises(ValueError, match=r"moa_col: column 'moa' has 1 MOA \('M0'\)"):
        fn(meta.assign(moa="M0"), x, **MC)
    m = meta.copy()
    m.loc[len(m) - 1, "moa"] = "lonely"
    m.loc[len(m) - 1, "compound"] = "lonely_c"
    with pytest.raises(ValueError, match=rf"moa_col: MOA 'lonely' of column 'moa' has 1 well \(row {len(m) - 1}\)"):
        fn(m, x, **MC)
    m = meta.copy()
    m.loc[2, "moa"] = None
    with pytest.raises(ValueError, match=r"moa_col: metadata column 'moa' has a missing value at row 2"):
        fn(m, x, **MC)
    m = meta.copy()
    m.loc[0, "moa"] = "M1"  # compound M0c0 now has two MOAs
    with pytest.raises(ValueError, match=r"compound_col: compound 'M0c0' of column 'compound' has 2 MOAs"):
        fn(m, x, **MC)
    with pytest.raises(KeyError, match="moa_col: unknown metadata column 'Metadata_moa'"):
        fn(meta, x, moa_col="Metadata_moa", compound_col="compound")
    with pytest.raises(ValueError, match="unknown similarity metric"):
        fn(meta, x, **MC, similarity_metric="kendall")
    y = x.copy()
    y[4, 1] = np.nan
    with pytest.raises(ValueError, match="row 4"):
        fn(meta, y, **MC)


def test_three_group_needs_both_kinds_of_same_moa_pair():
    meta, x = small(seed=9)
    with pytest.raises(ValueError, match="compound_col: no compound of column 'compound' has two wells"):
        pe.three_group_pcc(meta.assign(compound=[f"w{i}" for i in range(len(meta))]), x, **MC)
    with pytest.raises(ValueError, match="moa_col: no MOA of column 'moa' has two compounds"):
        pe.three_group_pcc(meta.assign(compound=meta["moa"]), x, **MC)


def test_holdout_bad_input():
    meta, x = small(seed=10)
    split = np.where(meta["compound"].str.endswith("c0"), "test", "train")
    ok = meta.assign(split=split)
    with pytest.raises(ValueError, match=r"split_col: column 'split' has the value 'valid' at row 0"):
        pe.holdout_moa_identification(ok.assign(split=["valid"] + list(split[1:])), x, **MC, split_col="split")
    with pytest.raises(ValueError, match=r"split_col: no held-out row"):
        pe.holdout_moa_identification(ok.assign(split="train"), x, **MC, split_col="split")
    with pytest.raises(KeyError, match="split_col: unknown metadata column 'fold'"):
        pe.holdout_moa_identification(ok, x, **MC, split_col="fold")
    m = ok.copy()
    m.loc[m["moa"] == "M1", "split"] = "test"  # every M1 well held out: no MLE for M1
    with pytest.raises(ValueError, match=r"moa_col: held-out compound 'M1c0' \('compound'\) has MOA 'M1', which has no "
                                         "training well"):
        pe.holdout_moa_identification(m, x, **MC, split_col="split")
    m = ok.copy()
    m.loc[5, "moa"] = np.nan
    with pytest.raises(ValueError, match="moa_col: metadata column 'moa' has a missing value at row 5"):
        pe.holdout_moa_identification(m, x, **MC, split_col="split")
    y = x.copy()
    y[7, 0] = np.inf
    with pytest.raises(ValueError, match="row 7"):
        pe.holdout_moa_identification(ok, y, **MC, split_col="split")


def test_batch_diagnostic_bad_input():
    meta, x = small(seed=11, dmso=6)
    kw = dict(**MC, plate_col="plate")
    trt = (meta["compound"] != "DMSO").to_numpy()
    with pytest.raises(ValueError, match=r"compound_col: no row of column 'compound' is the control 'DMSO'"):
        pe.batch_diagnostic(meta[trt], x[trt], **kw)
    with pytest.raises(ValueError, match=r"plate_col: no same-MOA pair of wells is on two plates of column 'plate'"):
        pe.batch_diagnostic(meta.assign(plate="P0"), x, **kw)
    with pytest.raises(ValueError, match=r"batch_col: batch-enrichment score of the 6 'DMSO' wells by 'one'.*no non-replicate"):
        pe.batch_diagnostic(meta.assign(one=1), x, **kw, batch_col="one")
    with pytest.raises(KeyError, match="plate_col: unknown metadata column 'Plate'"):
        pe.batch_diagnostic(meta, x, **MC, plate_col="Plate")
    m = meta.copy()
    m.loc[1, "plate"] = None
    with pytest.raises(ValueError, match="plate_col: metadata column 'plate' has a missing value at row 1"):
        pe.batch_diagnostic(m, x, **kw)
    s, _ = pe.batch_diagnostic(meta[trt], x[trt], **kw, control=None)  # no control: no score
    assert "batch_enrichment" not in s.columns


# ---------------------------------------------------------------------------------------------
# the command line

@pytest.mark.parametrize("cmd,extra", [
    ("moa-similarity-delta", []), ("three-group-pcc", []), ("class-latent-assignment", []),
    ("holdout-moa-identification", ["--split-column", "split"]),
    ("batch-diagnostic", ["--plate-column", "plate", "--batch-column", "batch", "--bes-percentile", "0.9"]),
])
def test_cli_equals_python(tmp_path, cmd, extra):
    import json

    meta, x = small(seed=12, dmso=12, wells=4)
    meta["split"] = np.where(meta["compound"].str.endswith("c1"), "test", "train")
    table = pd.concat([meta.add_prefix("Metadata_"), pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])],
                      axis=1)
    src = tmp_path / "p.csv"
    table.to_csv(src, index=False)
    out = tmp_path / "t.csv"
    args = [a if not a in ("split", "plate", "batch") else "Metadata_" + a for a in extra]
    assert main(["evaluate", cmd, str(src), "--moa-column", "Metadata_moa", "--compound-column", "Metadata_compound",
                 "--test-wells", "-o", str(out), "--quiet", *args]) == 0
    summary = json.loads((tmp_path / "t.json").read_text())
    name = cmd.replace("-", "_")
    keep = name == "batch_diagnostic"
    m, f = pe.moa_test_wells(table, moa_col="Metadata_moa", compound_col="Metadata_compound", keep_controls=keep)
    kw = dict(moa_col="Metadata_moa", compound_col="Metadata_compound")
    if name == "holdout_moa_identification":
        kw["split_col"] = "Metadata_split"
    if keep:
        kw.update(plate_col="Metadata_plate", batch_col="Metadata_batch", bes_percentile=0.9)
    ref, ref_table = getattr(pe, name)(m, f, **kw)
    assert summary["metric"] == name
    for k, v in ref.iloc[0].items():
        if isinstance(v, str):
            assert summary[k] == v
        else:
            assert summary[k] == pytest.approx(float(v), abs=1e-12, nan_ok=True), k
    assert len(pd.read_csv(out)) == len(ref_table)


def test_cli_errors_are_one_line(tmp_path, capsys):
    meta, x = small(seed=13)
    table = pd.concat([meta.add_prefix("Metadata_"), pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])],
                      axis=1)
    src = tmp_path / "p.csv"
    table.assign(Metadata_moa="one").to_csv(src, index=False)
    assert main(["evaluate", "three-group-pcc", str(src), "--moa-column", "Metadata_moa", "--compound-column",
                 "Metadata_compound", "-o", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "moa_col: column 'Metadata_moa' has 1 MOA" in err
    assert main(["evaluate", "batch-diagnostic", str(src), "--moa-column", "Metadata_moa", "--compound-column",
                 "Metadata_compound", "--test-wells", "-o", str(tmp_path / "o.csv")]) == 2
    assert "no row has the control 'DMSO'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the real profiles: BBBC021 (CellProfiler per-well means, DMSO-standardised per plate) and a LINCS plate

def dmso_standardise(df: pd.DataFrame, feats, plate_col: str, is_dmso: np.ndarray) -> np.ndarray:
    """The paper's B4: per plate and feature, (x - mean of DMSO) / SD of DMSO (features with SD 0 left centred)."""
    x = df[feats].to_numpy(float)
    for p in df[plate_col].unique():
        rows = (df[plate_col] == p).to_numpy()
        d = x[rows & is_dmso]
        sd = d.std(axis=0)
        x[rows] = (x[rows] - d.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return x


@pytest.fixture(scope="module")
def bbbc021_std(bbbc021):
    feats = [c for c in bbbc021.columns if not c.startswith("Metadata_")]
    x = dmso_standardise(bbbc021, feats, "Metadata_Plate", (bbbc021["Metadata_compound"] == "DMSO").to_numpy())
    meta = bbbc021[[c for c in bbbc021.columns if c.startswith("Metadata_")]].copy()
    meta["Metadata_Week"] = meta["Metadata_Plate"].str.split("_").str[0]
    return meta, x


@pytest.fixture(scope="module")
def lincs_wells(lincs_plate):
    return pe.moa_test_wells(lincs_plate, moa_col="Metadata_moa", compound_col="Metadata_broad_sample",
                             missing="drop")


BB = dict(moa_col="Metadata_moa", compound_col="Metadata_compound")
LI = dict(moa_col="Metadata_moa", compound_col="Metadata_broad_sample")


def record(dataset, **numbers):
    """One line per dataset for bench/RESULTS.md (run with -s to see it)."""
    print(f"\n[{dataset}] " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in numbers.items()))


def protocol_extras(m, f, cols):
    """The two metrics that already existed, on the paper's settings: enrichment at the 98..99.8th percentiles
    (headline 99th) and k-NN over every k with only the query left out."""
    e = pe.enrichment(m, f, replicate_groups=[cols["moa_col"]], percentile="moaprofiler")
    assert (e["odds_ratio"] > 1).all()
    knn, _ = pe.knn_accuracy(m, f, **cols, k="all", leave_out="well")
    assert knn["k"].tolist() == list(range(1, len(m)))
    best = knn.loc[knn["f1_weighted"].idxmax()]
    return dict(enrichment_99=float(e.set_index("enrichment_percentile").loc[0.99, "odds_ratio"]),
                knn_best_f1=float(best["f1_weighted"]), knn_best_k=int(best["k"]),
                knn_best_precision=float(best["precision_weighted"]), knn_best_recall=float(best["recall_weighted"]))


def one_per_moa_held_out(meta, moa_col, compound_col, seed=0):
    rng = np.random.default_rng(seed)
    held = meta.groupby(moa_col)[compound_col].agg(lambda s: rng.choice(sorted(s.unique())))
    return np.where(meta[compound_col].isin(held), "test", "train")


def test_real_bbbc021(bbbc021_std):
    meta, x = bbbc021_std
    m, f = pe.moa_test_wells(meta, x, **BB)
    assert len(m) == 302 and m["Metadata_moa"].nunique() == 12
    d = pe.moa_similarity_delta(m, f, **BB)[0].iloc[0]
    assert 0.2 < d["delta"] < 0.8 and d["intra"] > d["inter"] and d["p_value"] < 1e-10
    t = pe.three_group_pcc(m, f, **BB)[0].iloc[0]
    assert t["same_compound"] > t["same_moa"] > t["different_moa"]
    assert max(t["p_same_compound_vs_same_moa"], t["p_same_moa_vs_different_moa"]) < 1e-4
    c = pe.class_latent_assignment(m, f, **BB)[0].iloc[0]
    assert 0.6 < c["f1"] <= 1 and 0.6 < c["precision"] <= 1 and 0.6 < c["recall"] <= 1  # chance: 1/12
    h = pe.holdout_moa_identification(m.assign(split=one_per_moa_held_out(m, **BB)), f, **BB, split_col="split")[0].iloc[0]
    assert h["n_compounds"] == 12 and h["baseline"] == pytest.approx(1 / 12)
    assert h["individual_vote"] > 3 * h["baseline"] and h["aggregated_vote"] > 3 * h["baseline"]
    mb, fb = pe.moa_test_wells(meta, x, **BB, keep_controls=True)
    b = pe.batch_diagnostic(mb, fb, **BB, plate_col="Metadata_Plate", batch_col="Metadata_Week")[0].iloc[0]
    assert b["n_control_wells"] == 330 and b["n_batches"] == 10
    assert -0.2 < b["difference"] < 0.5 and b["batch_enrichment"] > 1
    extra = protocol_extras(m, f, BB)
    assert extra["knn_best_f1"] > 0.6
    record("BBBC021", n_wells=len(m), n_moas=12, intra=d["intra"], inter=d["inter"], delta=d["delta"],
           same_compound=t["same_compound"], same_moa=t["same_moa"], different_moa=t["different_moa"],
           cla_f1=c["f1"], cla_precision=c["precision"], cla_recall=c["recall"],
           holdout_individual=h["individual_vote"], holdout_aggregated=h["aggregated_vote"], holdout_baseline=h["baseline"],
           same_moa_within_plate=b["same_moa_within_plate"], same_moa_across_plates=b["same_moa_across_plates"],
           plate_difference=b["difference"], dmso_batch_enrichment_99_5=b["batch_enrichment"], **extra)


def test_real_lincs(lincs_wells, lincs_plate):
    m, f = lincs_wells
    assert m["Metadata_moa"].nunique() == 5 and len(m) == 60
    d = pe.moa_similarity_delta(m, f, **LI)[0].iloc[0]
    assert 0 < d["delta"] < 1
    t = pe.three_group_pcc(m, f, **LI)[0].iloc[0]
    assert t["same_compound"] > t["different_moa"]
    assert -1 <= t["same_moa"] <= 1
    c = pe.class_latent_assignment(m, f, **LI)[0].iloc[0]
    assert c["f1"] > 0.2  # chance: 1/5
    h = pe.holdout_moa_identification(m.assign(split=one_per_moa_held_out(m, **LI)), f, **LI, split_col="split")[0].iloc[0]
    assert h["n_compounds"] == 5 and 0 <= h["individual_vote"] <= 1 and h["baseline"] == pytest.approx(0.2)
    extra = protocol_extras(m, f, LI)
    record("LINCS SQ00015054", n_wells=len(m), n_moas=5, intra=d["intra"], inter=d["inter"], delta=d["delta"],
           same_compound=t["same_compound"], same_moa=t["same_moa"], different_moa=t["different_moa"],
           p_same_moa_vs_different_moa=t["p_same_moa_vs_different_moa"],
           cla_f1=c["f1"], cla_precision=c["precision"], cla_recall=c["recall"],
           holdout_individual=h["individual_vote"], holdout_aggregated=h["aggregated_vote"], holdout_baseline=h["baseline"],
           **extra)
    # one plate: the within- vs across-plate comparison is refused, naming the column
    mb, fb = pe.moa_test_wells(lincs_plate, **LI, missing="drop", keep_controls=True)
    with pytest.raises(ValueError, match="plate_col: no same-MOA pair of wells is on two plates of column 'Metadata_Plate'"):
        pe.batch_diagnostic(mb, fb, **LI, plate_col="Metadata_Plate")


def test_real_moa_profiles_bbbc021(bbbc021, bbbc021_std):
    """process.moa_profiles on the real BBBC021 wells: its well level is the paper's DMSO standardisation (the
    hand-written one above), both orders agree on well rows, and its compound (CLE) and MOA (MLE) medians place
    each held-out compound near its own MOA."""
    from phenovec.process.moa_profiles import moa_profiles

    meta, x = bbbc021_std
    feats = [c for c in bbbc021.columns if not c.startswith("Metadata_")]
    kw = dict(control="DMSO", compound_col="Metadata_compound", moa_col="Metadata_moa", features=feats)
    wells = moa_profiles(bbbc021, level="well", **kw)
    key = ["Metadata_Plate", "Metadata_Well"]
    ref = pd.concat([meta[key].reset_index(drop=True), pd.DataFrame(x, columns=feats)], axis=1)
    ref = ref.sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(wells[feats].to_numpy(float), ref[feats].to_numpy(float), atol=1e-9)
    other = moa_profiles(bbbc021, level="well", order="median_then_standardize", **kw)
    np.testing.assert_allclose(other[feats].to_numpy(float), wells[feats].to_numpy(float), atol=1e-9)
    # compound hold-out on the profiles: MLEs from the training compounds' wells (with the DMSO wells that
    # standardise them), each held-out compound's CLE from all its wells
    treated = wells[wells["Metadata_compound"] != "DMSO"]
    multi = treated.groupby("Metadata_moa")["Metadata_compound"].nunique()
    treated = treated[treated["Metadata_moa"].isin(multi[multi > 1].index)].reset_index(drop=True)
    held = set(treated.loc[one_per_moa_held_out(treated, **BB) == "test", "Metadata_compound"])
    training = bbbc021[~bbbc021["Metadata_compound"].isin(held)]
    mle = moa_profiles(training, level="moa", **kw)
    mle = mle[mle["Metadata_moa"].isin(multi[multi > 1].index)]
    cle = moa_profiles(bbbc021, level="compound", **kw)
    cle = cle[cle["Metadata_compound"].isin(held)]
    r = np.corrcoef(np.vstack([cle[feats].to_numpy(float), mle[feats].to_numpy(float)]))[: len(cle), len(cle):]
    predicted = mle["Metadata_moa"].to_numpy()[r.argmax(axis=1)]
    accuracy = float(np.mean(predicted == cle["Metadata_moa"].to_numpy()))
    assert len(cle) == 12 and len(mle) == 12 and accuracy > 3 / 12  # chance: 1/12
    record("BBBC021 moa_profiles", held_out_compounds=len(cle), cle_to_mle_accuracy=accuracy)
