"""phenovec.activity: label reading, tasks, episodes, metrics, the paired Wilcoxon and the single-task baselines.

The learning tests use :func:`phenovec.activity.synthetic.synthetic_activity` (actives = compounds of one MOA,
profiles = MOA centroid + noise): the baselines beat chance on held-out tasks and sit at chance once the wells are
shuffled across compounds.
"""
from __future__ import annotations

import itertools
import zlib

import numpy as np
import pandas as pd
import pytest

from phenovec.activity.episodes import episode, episode_rng, episodes, usable_sizes
from phenovec.activity.learner import TaskData
from phenovec.activity.metrics import METRICS, score
from phenovec.activity.synthetic import synthetic_activity
from phenovec.activity.tasks import build_tasks, compound_profiles
from phenovec.activity.wilcoxon import paired_wilcoxon, wilcoxon_matrix
from phenovec.io.activity_labels import labels_from_wide, one_vs_rest_labels, read_activity_labels

# ---------------------------------------------------------------- labels


def test_long_and_wide_csv_give_the_same_table(tmp_path):
    long = pd.DataFrame({"compound": ["c1", "c2", "c3", "c1", "c3"], "assay": ["A", "A", "A", "B", "B"],
                         "label": [1, 0, 1, 0, 0]})
    long.to_csv(tmp_path / "long.csv", index=False)
    wide = pd.DataFrame({"compound": ["c1", "c2", "c3"], "A": [1, 0, 1], "B": [0, np.nan, 0]})
    wide.to_csv(tmp_path / "wide.csv", index=False)
    wide.to_parquet(tmp_path / "wide.parquet")
    a = read_activity_labels(tmp_path / "long.csv")
    b = read_activity_labels(tmp_path / "wide.csv")
    c = read_activity_labels(tmp_path / "wide.parquet")
    expect = long.sort_values(["assay", "compound"]).reset_index(drop=True)
    for got in (a, b, c):
        assert got["compound"].tolist() == expect["compound"].tolist()
        assert got["assay"].tolist() == expect["assay"].tolist()
        assert got["label"].tolist() == expect["label"].tolist()


def test_signed_wide_with_repeated_assays_and_an_id_column(tmp_path):
    # GapNet's overlap files: +1 / -1 / 0 = unmeasured, a text id column, an assay id repeated
    p = tmp_path / "overlap.csv"
    p.write_text("INCHIKEY,InChIKey14,688422,700,688422\nK1-X,K1,1,0,-1\nK2-X,K2,0,-1,1\n")
    got = read_activity_labels(p)
    assert sorted(got.assay.unique()) == ["688422", "688422#2", "700"]
    rows = {(r.compound, r.assay): r.label for r in got.itertuples()}
    assert rows == {("K1-X", "688422"): 1, ("K1-X", "688422#2"): 0, ("K2-X", "700"): 0, ("K2-X", "688422#2"): 1}


def test_matrix_market_with_its_index_files(tmp_path):
    from scipy.io import mmwrite
    from scipy.sparse import coo_matrix

    m = coo_matrix((np.array([1, -1, 1]), (np.array([0, 1, 2]), np.array([1, 1, 0]))), shape=(3, 2))
    mmwrite(tmp_path / "label-matrix.mtx", m)
    (tmp_path / "row-compound-index.csv").write_text("INDEX,INCHIKEY\n0,K0\n1,K1\n2,K2\n")
    (tmp_path / "column-assay-index.csv").write_text("ASSAY_ID\n11\n22\n")
    got = read_activity_labels(tmp_path / "label-matrix.mtx")
    assert [(r.compound, r.assay, r.label) for r in got.itertuples()] == [("K2", "11", 1), ("K0", "22", 1),
                                                                          ("K1", "22", 0)]
    (tmp_path / "column-assay-index.csv").write_text("ASSAY_ID\n11\n")
    with pytest.raises(ValueError, match="3 x 2 but row-compound-index.csv lists 3 compounds and "
                                         "column-assay-index.csv 1 assays"):
        read_activity_labels(tmp_path / "label-matrix.mtx")


@pytest.mark.parametrize("text, match", [
    ("compound,assay,label\nc1,A,1\nc1,A,0\n", r"compound 'c1' has conflicting labels for assay 'A' \(data rows 1, 2\)"),
    ("compound,assay,label\nc1,A,1\nc2,A,maybe\n", r"column 'label', data row 2: label 'maybe' is not a number"),
    ("compound,assay,label\nc1,A,1\nc2,A,2\n", r"column 'label', data row 2: label 2 is not one of 0, 1"),
    ("compound,assay,label\nc1,A,1\n,A,0\n", r"column 'compound', data row 2: empty id"),
    ("compound,A,B\nc1,1,0\nc1,0,1\n", r"compound 'c1' appears in more than one row \(data rows 1, 2\)"),
    ("compound,A\nc1,1\nc2,oops\nc3,0\n", r"column 'A', data row 2: label 'oops'"),
    ("name,A\nc1,1\n", r"no compound column"),
])
def test_bad_label_files_name_the_row_or_column(tmp_path, text, match):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        read_activity_labels(p)
    assert str(p) in str(e.value)


def test_one_vs_rest_labels():
    df = pd.DataFrame({"cpd": ["a", "a", "b", "c", "d"], "cls": ["X", "X", "Y", "X", "Ctl"]})
    got = one_vs_rest_labels(df, compound_column="cpd", class_column="cls", exclude=["Ctl"])
    assert set(got.assay) == {"X", "Y"}
    x = got[got.assay == "X"].set_index("compound").label.to_dict()
    assert x == {"a": 1, "b": 0, "c": 1, "d": 0}
    bad = pd.DataFrame({"cpd": ["a", "a"], "cls": ["X", "Y"]})
    with pytest.raises(ValueError, match="compound 'a' has more than one 'cls'"):
        one_vs_rest_labels(bad, compound_column="cpd", class_column="cls")


def test_wide_frame_with_named_assays_only():
    df = pd.DataFrame({"compound": ["c1", "c2"], "A": [1.0, 0.0], "B": [0.0, 1.0]})
    got = labels_from_wide(df, assays=["B"])
    assert got.assay.unique().tolist() == ["B"]
    with pytest.raises(ValueError, match="no assay column 'Z'"):
        labels_from_wide(df, assays=["Z"])


# ---------------------------------------------------------------- tasks

@pytest.fixture(scope="module")
def synthetic():
    labels, wells = synthetic_activity(seed=3)
    return labels, wells, compound_profiles(wells, "Metadata_compound", features="infer")


def test_compound_profiles_are_replicate_medians(synthetic):
    _, wells, prof = synthetic
    feats = [c for c in wells.columns if c.startswith("Cells_")]
    expect = wells.groupby("Metadata_compound")[feats].median()
    assert prof.index.tolist() == expect.index.tolist()
    np.testing.assert_allclose(prof.to_numpy(), expect.to_numpy(dtype=np.float32), rtol=1e-6)


def test_tasks_filter_and_split_by_seed(synthetic):
    labels, _, prof = synthetic
    ts = build_tasks(labels, prof, test=4, validation=2, seed=1)
    names = [t.name for t in ts.train + ts.validation + ts.test]
    assert sorted(names) == sorted(labels.assay.unique()) and len(set(names)) == len(names)
    assert (len(ts.train), len(ts.validation), len(ts.test)) == (6, 2, 4)
    again = build_tasks(labels, prof, test=4, validation=2, seed=1)
    assert [t.name for t in again.test] == [t.name for t in ts.test]
    other = {tuple(t.name for t in build_tasks(labels, prof, test=4, validation=2, seed=s).test) for s in range(6)}
    assert len(other) > 1  # the seed moves the split
    t = ts.test[0]
    assert list(t.compounds) == sorted(t.compounds)
    rows = prof.index.get_indexer(t.compounds)
    np.testing.assert_array_equal(t.x, prof.to_numpy()[rows])
    lab = labels[labels.assay == t.name].set_index("compound").label
    np.testing.assert_array_equal(t.y, lab.loc[t.compounds].to_numpy())
    # the thresholds: 20 actives, 40 inactives per task
    with pytest.raises(ValueError, match=r"no task has at least 21 actives .*the most balanced, 'moa-0', has 20 "
                                         r"actives and 40 inactives"):
        build_tasks(labels, prof, min_actives=21)


def test_task_errors_name_the_task_or_compound(synthetic):
    labels, _, prof = synthetic
    with pytest.raises(ValueError, match="no profile for labelled compound 'cpd-0003'"):
        build_tasks(labels, prof.drop(index=["cpd-0003"]))
    kept = build_tasks(labels, prof.drop(index=["cpd-0003"]), missing_profiles="drop", test=2)
    assert "cpd-0003" not in set(np.concatenate([t.compounds for t in kept.train + kept.test]))
    one_class = pd.concat([labels, pd.DataFrame({"compound": ["cpd-0001", "cpd-0002"], "assay": ["solo", "solo"],
                                                 "label": np.array([1, 1], dtype=np.int8)})])
    ts = build_tasks(one_class, prof, test=2)
    assert "one class only (2 actives, 0 inactives)" in ts.dropped["solo"]
    with pytest.raises(ValueError, match=r"task 'solo': one class only \(2 actives, 0 inactives\)"):
        build_tasks(one_class, prof, tasks=["solo", "moa-1"])
    with pytest.raises(ValueError, match="test_tasks: task 'solo' was dropped: one class only"):
        build_tasks(one_class, prof, test_tasks=["solo"])


# ---------------------------------------------------------------- episodes

def _task(n_act=30, n_inact=70, name="T"):
    y = np.r_[np.ones(n_act), np.zeros(n_inact)].astype(np.int8)
    return TaskData(name, np.arange(len(y), dtype=np.float32)[:, None], y, np.arange(len(y)).astype(str))


def test_episodes_are_stratified_and_disjoint():
    t = _task()
    for m in (8, 16, 32, 64):
        e = episode(t, m, 0, seed=5)
        assert len(e.support) == m and len(e.query) == 32
        assert not set(e.support) & set(e.query)
        assert t.y[e.support].sum() == round(m * 0.3)
        assert 1 <= t.y[e.query].sum() < 32
    e = episode(t, 96, 0)  # 4 left for the query
    assert len(e.query) == 4 and set(t.y[e.query]) == {0, 1}


def test_episodes_reproducible_from_seed_task_m_number_alone():
    t = _task()
    first = list(episodes(t, 16, 5, seed=7))
    again = episode(t, 16, 3, seed=7)  # drawn alone
    np.testing.assert_array_equal(first[3].support, again.support)
    np.testing.assert_array_equal(first[3].query, again.query)
    later = list(episodes(t, 16, 3, seed=7, start=2))
    np.testing.assert_array_equal(later[1].support, first[3].support)
    # the generator is the documented one
    rng = episode_rng(7, "T", 16, 3)
    ref = np.random.default_rng([7, zlib.crc32(b"T"), 16, 3])
    assert rng.integers(1 << 30) == ref.integers(1 << 30)
    # other seeds / tasks / numbers move it
    assert not np.array_equal(episode(t, 16, 3, seed=8).support, again.support)
    assert not np.array_equal(episode(_task(name="U"), 16, 3, seed=7).support, again.support)
    assert not np.array_equal(episode(t, 16, 4, seed=7).support, again.support)


def test_episode_errors_name_the_task():
    t = _task(5, 15, name="small")
    with pytest.raises(ValueError, match=r"task 'small': support size M = 32 is larger than its 20 labelled"):
        episode(t, 32, 0)
    with pytest.raises(ValueError, match="task 'small': support size M = 19 leaves no query set"):
        episode(t, 19, 0)
    with pytest.raises(ValueError, match=r"task 'solo' has one class only \(0 actives, 20 inactives\)"):
        episode(_task(0, 20, name="solo"), 8, 0)
    assert usable_sizes(t, [8, 16, 32]) == [8, 16]


# ---------------------------------------------------------------- metrics

def test_metrics_against_hand_computed_values():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    got = score(y, p)
    assert set(got) == set(METRICS)
    # AUROC: of the 6 (active, inactive) pairs, 0.4 < 0.6 is the one wrong order
    assert got["auroc"] == pytest.approx(5 / 6)
    # average precision: ranks 0.9 (hit, P=1), 0.6 (miss), 0.4 (hit, P=2/3) -> (1 + 2/3) / 2
    assert got["auprc"] == pytest.approx(5 / 6)
    assert got["dauprc"] == pytest.approx(5 / 6 - 0.4)
    assert got["riptop_auprc"] == pytest.approx((5 / 6 - 0.4) / 0.6)
    # at 0.5: predicted active = {0.9, 0.6}: TP 1, FP 1, FN 1, TN 2
    assert got["f1"] == pytest.approx(2 * 0.5 * 0.5 / (0.5 + 0.5))
    assert got["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    tp, tn, fp, fn = 1, 2, 1, 1
    kappa = 2 * (tp * tn - fn * fp) / ((tp + fp) * (fp + tn) + (tp + fn) * (fn + tn))
    assert got["kappa"] == pytest.approx(kappa)
    perfect = score(y, np.array([0.8, 0.7, 0.3, 0.2, 0.1]))
    assert perfect["auroc"] == perfect["auprc"] == perfect["riptop_auprc"] == perfect["kappa"] == 1.0
    with pytest.raises(ValueError, match="both classes"):
        score([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="finite probabilities"):
        score([1, 0], [np.nan, 0.3])


# ---------------------------------------------------------------- Wilcoxon

def test_wilcoxon_eighteen_tasks_all_one_side():
    a = np.linspace(0.7, 0.9, 18)
    w, p = paired_wilcoxon(a, a - 0.05)
    assert w == 18 * 19 / 2 and p == pytest.approx(1 / 2 ** 18) and f"{p:.2e}" == "3.81e-06"
    assert paired_wilcoxon(a - 0.05, a)[1] == pytest.approx(1.0)


def test_wilcoxon_matches_scipy():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(11)
    for n in (5, 9, 18, 30):
        for shift in (0.0, 0.3):
            a, b = rng.normal(size=n) + shift, rng.normal(size=n)
            ref = wilcoxon(a, b, alternative="greater", method="exact")
            w, p = paired_wilcoxon(a, b)
            assert w == ref.statistic and p == pytest.approx(ref.pvalue, rel=1e-12)
    a, b = rng.normal(size=150) + 0.1, rng.normal(size=150)
    ref = wilcoxon(a, b, alternative="greater", method="approx")
    assert paired_wilcoxon(a, b)[1] == pytest.approx(ref.pvalue, rel=1e-9)


def test_wilcoxon_exact_with_ties_and_zeros_by_enumeration():
    d = np.array([0.2, -0.1, 0.1, 0.3, 0.0, 0.2, -0.3])
    w, p = paired_wilcoxon(d, np.zeros_like(d))
    nz = d[d != 0]
    from scipy.stats import rankdata

    r = rankdata(np.abs(nz))
    assert w == r[nz > 0].sum()
    sums = [sum(ri for ri, s in zip(r, signs) if s) for signs in itertools.product([0, 1], repeat=len(r))]
    assert p == pytest.approx(np.mean(np.array(sums) >= w - 1e-12))
    assert np.isnan(paired_wilcoxon(np.ones(4), np.ones(4))[1])


def test_wilcoxon_matrix_is_row_beats_column():
    scores = pd.DataFrame({"good": np.linspace(0.8, 0.9, 10), "bad": np.linspace(0.5, 0.6, 10)})
    m = wilcoxon_matrix(scores)
    assert m.loc["good", "bad"] == pytest.approx(1 / 2 ** 10) and m.loc["bad", "good"] == pytest.approx(1.0)
    assert np.isnan(m.loc["good", "good"])


# ---------------------------------------------------------------- baselines

def _mean_auroc(learner, tasks, m=16, n_episodes=3):
    aurocs = []
    for t in tasks:
        for e in episodes(t, m, n_episodes, seed=0):
            learner.fit(t.x[e.support], t.y[e.support], seed=e.episode)
            aurocs.append(score(t.y[e.query], learner.predict_proba(t.x[e.query]))["auroc"])
    return float(np.mean(aurocs))


@pytest.mark.parametrize("name", ["logreg", "fnn", "gbm"])
def test_baselines_learn_and_sit_at_chance_without_signal(name):
    from phenovec.activity.learners import learner_class

    opts = {"n_configs": 3}
    labels, wells = synthetic_activity(n_moas=6, n_features=16, seed=2)
    ts = build_tasks(labels, compound_profiles(wells, "Metadata_compound"), test=3, validation=0, seed=0)
    assert _mean_auroc(learner_class(name)(**opts), ts.test) > 0.75
    labels, wells = synthetic_activity(n_moas=6, n_features=16, seed=2, shuffle=True)
    ts = build_tasks(labels, compound_profiles(wells, "Metadata_compound"), test=3, validation=0, seed=0)
    assert abs(_mean_auroc(learner_class(name)(**opts), ts.test, n_episodes=6) - 0.5) < 0.12


def test_baseline_deterministic_and_refuses_bad_support():
    from phenovec.activity.learners import learner_class

    t = build_tasks(*_synthetic_small(), test=1, validation=0).test[0]
    e = episode(t, 16, 0)
    p = [learner_class("gbm")(n_configs=3).fit(t.x[e.support], t.y[e.support], seed=4).predict_proba(t.x[e.query])
         for _ in range(2)]
    np.testing.assert_array_equal(p[0], p[1])
    with pytest.raises(ValueError, match="support set holds one class only"):
        learner_class("logreg")().fit(t.x[:4], np.zeros(4))
    with pytest.raises(ValueError, match="n_configs must be an integer >= 1"):
        learner_class("fnn")(n_configs=0)
    with pytest.raises(KeyError, match="unknown learner 'svm'"):
        learner_class("svm")


def _synthetic_small():
    labels, wells = synthetic_activity(n_moas=4, n_features=8, seed=1)
    return labels, compound_profiles(wells, "Metadata_compound")


def test_package_exports_resolve():
    import phenovec.activity as activity

    for name in activity.__all__:
        assert getattr(activity, name) is not None, name
