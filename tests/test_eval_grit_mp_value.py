"""grit and mp_value against cytominer-eval 0.1 run in its own venv, plus bad-input policies.

Data: the LINCS plate of cytominer-eval's own test-suite (no NaN feature cells in it, so no row
or column is dropped; the tests assert that). Settings are those of cytominer-eval's
tests/test_evaluate.py (compound part): grit with profile_col Metadata_broad_sample,
replicate_group_col Metadata_moa, control DMSO; mp_value with replicate_id Metadata_broad_sample,
control DMSO, np.random.seed(2020). Metadata_moa is NaN for DMSO and some compounds: the peer
turns NaN into the string "nan" (one group); we refuse missing values, so both sides get it
filled with the label "unannotated" (the same grouping).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peer_venv import PeerVenvError, peer_python, run_peer
from phenovec.evaluate import grit, mp_value

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LINCS = DATA / "cytominer-eval-lincs-plate" / "SQ00015054_normalized_feature_select.csv.gz"
GRIT_KW = dict(control_perts=["DMSO"], profile_col="Metadata_broad_sample", replicate_group_col="Metadata_moa")


@pytest.fixture(scope="session")
def peer():
    try:
        return peer_python("cytominer-eval-0.1")
    except PeerVenvError as e:
        pytest.fail(f"cytominer-eval 0.1 peer venv unavailable, equivalence cannot be tested: {e}")


@pytest.fixture(scope="module")
def lincs_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lincs")
    df = pd.read_csv(LINCS)
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    assert not df[feats].isna().any().any()  # nothing to drop on this plate
    df["Metadata_moa"] = df["Metadata_moa"].fillna("unannotated")
    df.to_csv(d / "plate.csv", index=False)
    # a one-row replicate group and a two-row one, on a smaller stack
    keep = ~df["Metadata_broad_sample"].duplicated() | df["Metadata_broad_sample"].isin(["DMSO", "BRD-K50691590-001-02-2"])
    small = df[keep | (df["Metadata_broad_sample"] == "BRD-A92630576-050-24-1")].iloc[::2]
    assert (small["Metadata_broad_sample"].value_counts() == 1).any()
    small.to_csv(d / "small.csv", index=False)
    return d


@pytest.fixture(scope="module")
def peer_out(peer, lincs_files):
    run_peer(peer, """
        import numpy as np, pandas as pd
        from cytominer_eval import evaluate
        def load(name):
            df = pd.read_csv(name)
            meta = [c for c in df.columns if c.startswith("Metadata_")]
            return df, [c for c in df.columns if c not in meta], meta
        df, feats, meta = load("plate.csv")
        groups = {"profile_col": "Metadata_broad_sample", "replicate_group_col": "Metadata_moa"}
        for method, metric in [("mean", "pearson"), ("median", "pearson"), ("mean", "spearman")]:
            evaluate(profiles=df, features=feats, meta_features=meta, replicate_groups=groups, operation="grit",
                     similarity_metric=metric, grit_control_perts=["DMSO"], grit_replicate_summary_method=method,
                     ).to_csv(f"grit_{method}_{metric}.csv", index=False)
        np.random.seed(2020)
        evaluate(profiles=df, features=feats, meta_features=meta, replicate_groups="Metadata_broad_sample",
                 operation="mp_value", grit_control_perts=["DMSO"]).to_csv("mp.csv", index=False)
        small, feats, meta = load("small.csv")
        np.random.seed(7)
        evaluate(profiles=small, features=feats, meta_features=meta, replicate_groups="Metadata_broad_sample",
                 operation="mp_value", grit_control_perts=["DMSO"],
                 mp_value_params={"rescale_pca": False, "nb_permutations": 300}).to_csv("mp_small.csv", index=False)
    """, cwd=lincs_files)
    return lincs_files


def read_peer(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


@pytest.mark.parametrize("method,metric", [("mean", "pearson"), ("median", "pearson"), ("mean", "spearman")])
def test_grit_matches_cytominer_eval(peer_out, method, metric):
    df = pd.read_csv(peer_out / "plate.csv")
    ours = grit(df, **GRIT_KW, similarity_metric=metric, grit_replicate_summary_method=method)
    theirs = read_peer(peer_out / f"grit_{method}_{metric}.csv")
    assert list(ours.columns) == ["perturbation", "group", "grit"]
    assert ours["perturbation"].astype(str).tolist() == theirs["perturbation"].tolist()
    assert ours["group"].astype(str).tolist() == theirs["group"].tolist()
    assert (ours["grit"].isna() == theirs["grit"].isna()).all()
    assert ours["grit"].notna().sum() > 10
    np.testing.assert_allclose(ours["grit"], theirs["grit"], rtol=0, atol=1e-6)


def test_grit_top_value_of_cytominer_eval_suite():
    # cytominer-eval tests/test_evaluate.py::test_evaluate_grit (compound part)
    df = pd.read_csv(LINCS)
    df["Metadata_moa"] = df["Metadata_moa"].fillna("unannotated")
    top = grit(df, **GRIT_KW).sort_values("grit", ascending=False).iloc[0]
    assert round(top["grit"], 4) == 0.9990
    assert top["perturbation"] == "BRD-A94756469-001-04-7" and top["group"] == "ATPase inhibitor"


def test_grit_blocked_equals_one_block(peer_out):
    df = pd.read_csv(peer_out / "plate.csv")
    for method in ("mean", "median"):
        a = grit(df, **GRIT_KW, grit_replicate_summary_method=method)
        b = grit(df, **GRIT_KW, grit_replicate_summary_method=method, block_bytes=7 * 384 * 8)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)


def test_mp_value_identical_to_seeded_cytominer_eval(peer_out):
    df = pd.read_csv(peer_out / "plate.csv")
    state = np.random.get_state()
    ours = mp_value(df, control_perts=["DMSO"], replicate_id="Metadata_broad_sample", seed=2020)
    assert np.array_equal(np.random.get_state()[1], state[1])  # global stream untouched
    theirs = pd.read_csv(peer_out / "mp.csv")
    assert list(ours.columns) == ["Metadata_broad_sample", "mp_value"]
    assert ours["Metadata_broad_sample"].tolist() == theirs["Metadata_broad_sample"].tolist()
    assert 0 < ours["mp_value"].mean() < 1
    np.testing.assert_array_equal(ours["mp_value"].to_numpy(), theirs["mp_value"].to_numpy())


def test_mp_value_one_row_groups_no_rescale(peer_out):
    """Small groups: a permutation can reproduce the observed split. That is an exact tie, which we
    count as ``null >= obs``; the peer recomputes it from a differently laid-out copy, so its
    outcome depends on the last bit. Elsewhere the p-values are identical."""
    df = pd.read_csv(peer_out / "small.csv")
    nb = 300
    ours = mp_value(df, control_perts=["DMSO"], replicate_id="Metadata_broad_sample", seed=7,
                    rescale_pca=False, nb_permutations=nb)
    theirs = pd.read_csv(peer_out / "mp_small.csv")
    assert ours["Metadata_broad_sample"].tolist() == theirs["Metadata_broad_sample"].tolist()
    # replay the stream: how many permutations of each group reproduce its observed split
    rng = np.random.RandomState(7)
    n_ctrl = int((df["Metadata_broad_sample"] == "DMSO").sum())
    same = []
    for size in df.groupby("Metadata_broad_sample").size().sort_index():
        mask = np.zeros(size + n_ctrl, dtype=bool)
        mask[:size] = True
        same.append(sum(bool((rng.permutation(mask) == mask).all()) for _ in range(nb)) / nb)
    same = np.array(same)
    diff = ours["mp_value"].to_numpy() - theirs["mp_value"].to_numpy()
    assert (same == 0).sum() >= 2 and (same > 0).sum() >= 10
    np.testing.assert_array_equal(diff[same == 0], 0.0)
    assert (diff >= -1e-12).all() and (diff <= same + 1e-12).all()


def test_mp_value_seeded():
    df = pd.read_csv(LINCS).iloc[:120]
    kw = dict(control_perts=["DMSO"], replicate_id="Metadata_broad_sample", nb_permutations=40)
    a, b, c = mp_value(df, **kw, seed=1), mp_value(df, **kw, seed=1), mp_value(df, **kw, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a["mp_value"].equals(c["mp_value"])


# ---------------------------------------------------------------- bad input and policies


def toy(n_feat=6, seed=0):
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({
        "Metadata_pert": ["c", "c", "c", "a1", "a1", "a2", "a2", "b1", "b1"],
        "Metadata_gene": ["ctl", "ctl", "ctl", "A", "A", "A", "A", "B", "B"],
    })
    return meta, rng.normal(size=(len(meta), n_feat))


def test_grit_group_with_one_member_is_nan_and_matches_definition():
    meta, x = toy()
    out = grit(meta, x, control_perts=["c"], profile_col="Metadata_pert", replicate_group_col="Metadata_gene")
    assert out["perturbation"].tolist() == ["a1", "a2", "b1", "c"]
    got = dict(zip(out["perturbation"], out["grit"]))
    assert np.isnan(got["b1"]) and np.isnan(got["c"])  # no other perturbation in its group
    # a1 by the definition, from a dense Pearson matrix
    s = np.corrcoef(x)
    ctrl = np.concatenate([s[i, [0, 1, 2]] for i in (3, 4)])
    target = s[np.ix_([3, 4], [5, 6])].ravel()
    assert got["a1"] == pytest.approx(np.mean((target - ctrl.mean()) / ctrl.std()), abs=1e-12)


def test_grit_control_excludes_self_pairs():
    meta, x = toy()
    meta.loc[2, "Metadata_pert"] = "c2"  # c (rows 0, 1) and c2 (row 2): two controls in one group
    out = grit(meta, x, control_perts=["c", "c2"], profile_col="Metadata_pert", replicate_group_col="Metadata_gene",
               grit_replicate_summary_method="median").set_index("perturbation")["grit"]
    s = np.corrcoef(x)
    ctrl = np.array([s[0, 1], s[0, 2], s[1, 0], s[1, 2]])  # rows of c against control rows, self pairs left out
    target = np.array([s[0, 2], s[1, 2]])
    assert out["c"] == pytest.approx((np.median(target) - ctrl.mean()) / ctrl.std(), abs=1e-12)
    ctrl2 = np.array([s[2, 0], s[2, 1]])
    assert out["c2"] == pytest.approx((np.median(ctrl2) - ctrl2.mean()) / ctrl2.std(), abs=1e-12)


@pytest.mark.parametrize("change,err,match", [
    (dict(control_perts=["nope"]), ValueError, "'nope' does not occur in column 'Metadata_pert'"),
    (dict(control_perts=["c", "nope"]), ValueError, "'nope' does not occur"),
    (dict(profile_col="Metadata_x"), KeyError, "profile_col: unknown metadata column 'Metadata_x'"),
    (dict(replicate_group_col="Metadata_x"), KeyError, "replicate_group_col"),
    (dict(grit_replicate_summary_method="fail"), ValueError, "method not supported, use one of"),
    (dict(similarity_metric="kendall"), ValueError, "unknown similarity metric 'kendall'"),
])
def test_grit_bad_arguments(change, err, match):
    meta, x = toy()
    kw = dict(control_perts=["c"], profile_col="Metadata_pert", replicate_group_col="Metadata_gene") | change
    with pytest.raises(err, match=match):
        grit(meta, x, **kw)


def test_grit_bad_data():
    meta, x = toy()
    kw = dict(control_perts=["c"], profile_col="Metadata_pert", replicate_group_col="Metadata_gene")
    y = x.copy()
    y[4, 2] = np.nan
    with pytest.raises(ValueError, match="row 4"):
        grit(meta, y, **kw)
    m = meta.copy()
    m.loc[4, "Metadata_gene"] = "B"
    with pytest.raises(ValueError, match="'a1'.*several groups"):
        grit(m, x, **kw)
    m = meta.copy()
    m.loc[5, "Metadata_gene"] = None
    with pytest.raises(ValueError, match="'Metadata_gene' has a missing value at row 5"):
        grit(m, x, **kw)
    m = meta.copy()
    m.loc[1:2, "Metadata_pert"] = "d"  # one control row: c has no control pair at all
    with pytest.raises(ValueError, match="perturbation 'c' has 0 similarities to control"):
        grit(m, x, **kw)
    y = x.copy()
    y[1] = y[0]  # two identical control rows: every row has equal similarities to both
    m = meta.copy()
    m.loc[2, "Metadata_pert"] = "d"
    with pytest.raises(ValueError, match="all equal"):
        grit(m, y, **kw)


def test_mp_value_bad_input():
    meta, x = toy()
    kw = dict(control_perts=["c"], replicate_id="Metadata_pert", nb_permutations=10)
    with pytest.raises(ValueError, match="'nope' does not occur"):
        mp_value(meta, x, **(kw | dict(control_perts=["nope"])))
    with pytest.raises(KeyError, match="replicate_id"):
        mp_value(meta, x, **(kw | dict(replicate_id="Metadata_x")))
    with pytest.raises(ValueError, match="nb_permutations"):
        mp_value(meta, x, **(kw | dict(nb_permutations=0)))
    y = x.copy()
    y[3, 1] = np.inf
    with pytest.raises(ValueError, match="row 3, feature column 'feature_1'"):
        mp_value(meta, y, **kw)
    m = meta.copy()
    m.loc[1:2, "Metadata_pert"] = "d"
    with pytest.raises(ValueError, match="at least 2 control rows"):
        mp_value(m, x, **kw)
    m = meta.copy()
    m.loc[0, "Metadata_pert"] = np.nan
    with pytest.raises(ValueError, match="missing value at row 0"):
        mp_value(m, x, **kw)
