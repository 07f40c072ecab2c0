"""evaluate_many: several rule sets from one pass of similarity blocks, each equal to the single-rule call.

AP values are compared with assert_array_equal (bit-identical), on real data (nELISA with copairs'
reference index; BBBC021 MOA consistency) and on seeded synthetic data where the reduced (control-only
columns) path and the full path must both run and agree.
"""
import numpy as np
import pandas as pd
import pytest
from copairs.matching import assign_reference_index

import phenovec.evaluate as pe
from phenovec.evaluate.evaluate_many import evaluate_many


def split(df):
    meta = df.filter(regex="^Metadata_").reset_index(drop=True)
    feats = df.drop(columns=meta.columns).to_numpy(dtype=np.float64)
    return meta, feats


def assert_same(ours: pd.DataFrame, single: pd.DataFrame):
    assert list(ours.columns) == list(single.columns)
    assert len(ours) == len(single)
    for c in ("n_pos_pairs", "n_total_pairs", "average_precision", "normalized_average_precision"):
        np.testing.assert_array_equal(ours[c].to_numpy(), single[c].to_numpy(), err_msg=c)
    meta_cols = [c for c in single.columns if c.startswith("Metadata_")]
    pd.testing.assert_frame_equal(ours[meta_cols], single[meta_cols])


REF = "Metadata_Reference_Index"
VS_DMSO = dict(pos_sameby=["Metadata_broad_sample", REF], pos_diffby=[], neg_sameby=[],
               neg_diffby=["Metadata_broad_sample", REF])
VS_ALL = dict(pos_sameby=["Metadata_broad_sample"], pos_diffby=[], neg_sameby=[], neg_diffby=["Metadata_broad_sample"])


@pytest.fixture(scope="module")
def nelisa_ref(nelisa):
    meta, feats = split(nelisa)
    return assign_reference_index(meta, "Metadata_control_type == 'negcon'"), feats


@pytest.mark.parametrize("columns", ["auto", "all"])
def test_many_rule_sets_equal_single_calls(nelisa_ref, columns):
    meta, feats = nelisa_ref
    has_target = meta["Metadata_target"].notna().to_numpy()
    rule_sets = {
        "replicate_vs_dmso": VS_DMSO,
        "replicate_vs_all": VS_ALL,
        # target consistency: same annotated target, different compound (copairs' MOA-style question)
        "target": dict(pos_sameby=["Metadata_target"], pos_diffby=["Metadata_broad_sample"], neg_sameby=[],
                       neg_diffby=["Metadata_target"], rows=has_target),
    }
    stats = {}
    # small blocks: several blocks, so the reduced path is taken for some (auto)
    out = evaluate_many(meta, feats, rule_sets, block_bytes=200 * len(meta) * 8, columns=columns, stats=stats)
    assert set(out) == set(rule_sets)
    for name, spec in rule_sets.items():
        spec = dict(spec)
        rows = spec.pop("rows", None)
        m, f = (meta, feats) if rows is None else (meta[rows].reset_index(drop=True), feats[rows])
        assert_same(out[name], pe.average_precision(m, f, progress_bar=False, **spec))
    assert out["replicate_vs_dmso"]["average_precision"].notna().sum() > 1000
    assert out["target"]["average_precision"].notna().sum() > 100
    assert stats["full_blocks"] > 0 or stats["reduced_blocks"] > 0
    if columns == "all":
        assert stats["reduced_blocks"] == 0


def test_moa_consistency_bbbc021_with_filter_string(bbbc021):
    meta, feats = split(bbbc021)
    rule_sets = {
        "moa": dict(pos_sameby=["Metadata_moa"], pos_diffby=["Metadata_compound"], neg_sameby=[],
                    neg_diffby=["Metadata_moa"], rows="Metadata_moa != 'DMSO'"),
        "replicate": dict(pos_sameby=["Metadata_compound"], pos_diffby=[], neg_sameby=[], neg_diffby=["Metadata_compound"]),
    }
    for distance in ("cosine", "euclidean"):
        out = evaluate_many(meta, feats, rule_sets, distance=distance)
        keep = (meta["Metadata_moa"] != "DMSO").to_numpy()
        moa = {k: v for k, v in rule_sets["moa"].items() if k != "rows"}
        assert_same(out["moa"], pe.average_precision(meta[keep].reset_index(drop=True), feats[keep], distance=distance, **moa))
        assert_same(out["replicate"], pe.average_precision(meta, feats, distance=distance, **rule_sets["replicate"]))


def synthetic(n_cpd=300, reps=4, n_ctrl=120, d=32, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    cpd = np.repeat([f"c{k}" for k in range(n_cpd)], reps)
    moa = np.repeat(rng.integers(0, 12, n_cpd).astype(str), reps)
    centers = rng.normal(size=(n_cpd, d))
    x = np.repeat(centers, reps, axis=0) * rng.uniform(0, 1, (n_cpd * reps, 1)) + rng.normal(size=(n_cpd * reps, d))
    meta = pd.DataFrame({"Metadata_cpd": list(cpd) + ["DMSO"] * n_ctrl, "Metadata_moa": list(moa) + ["ctrl"] * n_ctrl})
    x = np.vstack([x, rng.normal(size=(n_ctrl, d))]).astype(dtype)
    # shuffle rows as plates are laid out, then the reference index as copairs assigns it
    perm = rng.permutation(len(meta))
    meta, x = meta.iloc[perm].reset_index(drop=True), x[perm]
    meta = assign_reference_index(meta, "Metadata_cpd == 'DMSO'", reference_col=REF)
    return meta, x


ACT = dict(pos_sameby=["Metadata_cpd", REF], pos_diffby=[], neg_sameby=[], neg_diffby=["Metadata_cpd", REF])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("distance", ["cosine", "pearson", "spearman", "euclidean"])
def test_control_only_columns_identical_to_full(distance, dtype):
    meta, x = synthetic(dtype=dtype)
    full_stats, red_stats = {}, {}
    bb = 128 * len(meta) * x.itemsize
    full = evaluate_many(meta, x, {"act": ACT}, distance=distance, block_bytes=bb, columns="all", stats=full_stats)
    red = evaluate_many(meta, x, {"act": ACT}, distance=distance, block_bytes=bb, columns="auto", stats=red_stats)
    assert red_stats["reduced_blocks"] > 0 and red_stats["full_blocks"] == 0
    assert red_stats["similarities"] < 0.5 * full_stats["similarities"]
    single = pe.average_precision(meta, x, distance=distance, **ACT)
    assert_same(full["act"], single)
    assert_same(red["act"], single)
    assert single["average_precision"].notna().sum() == 1200


def test_mixed_rule_sets_share_full_blocks():
    meta, x = synthetic(seed=1)
    rule_sets = {"act": ACT, "moa": dict(pos_sameby=["Metadata_moa"], pos_diffby=["Metadata_cpd"], neg_sameby=[],
                                         neg_diffby=["Metadata_moa"], rows=(meta["Metadata_cpd"] != "DMSO").to_numpy())}
    stats = {}
    out = evaluate_many(meta, x, rule_sets, stats=stats)
    assert stats["reduced_blocks"] == 0  # the MOA question needs every column; the activity one rides along
    assert_same(out["act"], pe.average_precision(meta, x, **ACT))
    keep = rule_sets["moa"]["rows"]
    moa = {k: v for k, v in rule_sets["moa"].items() if k != "rows"}
    assert_same(out["moa"], pe.average_precision(meta[keep].reset_index(drop=True), x[keep], **moa))


def test_both_tie_modes_equal_single_calls():
    meta, x = synthetic(seed=2)
    for ties in ("exact", "copairs"):
        out = evaluate_many(meta, x, {"act": ACT}, ties=ties)["act"]
        assert_same(out, pe.average_precision(meta, x, ties=ties, **ACT))


def test_bad_rule_sets_are_named():
    meta, x = synthetic(n_cpd=5, n_ctrl=4)
    with pytest.raises(ValueError, match="rule set 'a': missing key"):
        evaluate_many(meta, x, {"a": dict(pos_sameby=["Metadata_cpd"])})
    with pytest.raises(ValueError, match="rule set 'a': unknown key"):
        evaluate_many(meta, x, {"a": {**ACT, "query": "x"}})
    with pytest.raises(KeyError, match="rule set 'a'.*Metadata_nope"):
        evaluate_many(meta, x, {"a": {**ACT, "pos_sameby": ["Metadata_nope"]}})
    with pytest.raises(ValueError, match="rule set 'a': rows"):
        evaluate_many(meta, x, {"a": {**ACT, "rows": "Metadata_nope == 1"}})
    with pytest.raises(pe.UnpairedError, match="rule set 'a'"):
        evaluate_many(meta, x, {"a": {**ACT, "rows": "Metadata_cpd == 'DMSO'"}})  # controls: unique reference index
    with pytest.raises(ValueError, match="columns"):
        evaluate_many(meta, x, {"a": ACT}, columns="some")


# ---- phenovec evaluate suite CONFIG.yaml ----------------------------------------------------------

def suite_parser():
    import argparse

    from phenovec.evaluate.suite_command import add_suite_parser

    parser = argparse.ArgumentParser()
    add_suite_parser(parser.add_subparsers(dest="metric"))
    return parser


SUITE_YAML = """
profiles: profiles.parquet
reference: "Metadata_cpd == 'DMSO'"
map: {null_size: 500, seed: 3}
rule_sets:
  replicate_vs_dmso:
    pos_sameby: [Metadata_cpd, Metadata_Reference_Index]
    pos_diffby: []
    neg_sameby: []
    neg_diffby: [Metadata_cpd, Metadata_Reference_Index]
    map_sameby: [Metadata_cpd]
  moa:
    pos_sameby: [Metadata_moa]
    pos_diffby: [Metadata_cpd]
    neg_sameby: []
    neg_diffby: [Metadata_moa]
    rows: "Metadata_cpd != 'DMSO'"
    map_sameby: [Metadata_moa, Metadata_cpd]
    hierarchical_by: [Metadata_moa]
"""


def test_suite_command_writes_what_single_calls_give(tmp_path):
    meta, x = synthetic(n_cpd=60, n_ctrl=30, d=16, seed=4)
    meta = meta.drop(columns=[REF])
    table = pd.concat([meta, pd.DataFrame(x, columns=[f"f{k}" for k in range(x.shape[1])])], axis=1)
    table.to_parquet(tmp_path / "profiles.parquet", index=False)
    (tmp_path / "suite.yaml").write_text(SUITE_YAML)
    args = suite_parser().parse_args(["suite", str(tmp_path / "suite.yaml"), "-o", str(tmp_path / "out"), "--quiet"])
    summary = args.run(args)
    assert set(summary["rule_sets"]) == {"replicate_vs_dmso", "moa"}
    m = meta.copy()
    m[REF] = np.where(m["Metadata_cpd"] == "DMSO", np.arange(len(m)), -1)
    act = pd.read_parquet(tmp_path / "out" / "replicate_vs_dmso_ap.parquet")
    assert_same(act, pe.average_precision(m, x, **ACT))
    keep = (m["Metadata_cpd"] != "DMSO").to_numpy()
    moa_rules = dict(pos_sameby=["Metadata_moa"], pos_diffby=["Metadata_cpd"], neg_sameby=[], neg_diffby=["Metadata_moa"])
    moa_ap = pe.average_precision(m[keep].reset_index(drop=True), x[keep], **moa_rules)
    assert_same(pd.read_parquet(tmp_path / "out" / "moa_ap.parquet"), moa_ap)
    want = pe.mean_average_precision_hierarchical(moa_ap, ["Metadata_moa", "Metadata_cpd"], null_size=500, threshold=0.05,
                                                  seed=3, hierarchical_by=["Metadata_moa"], progress_bar=False)
    got = pd.read_parquet(tmp_path / "out" / "moa_map.parquet")
    np.testing.assert_array_equal(got["corrected_p_value"], want["corrected_p_value"])
    assert "stage1_p_value" in got.columns
    assert (tmp_path / "out" / "suite.json").is_file()
    # roc_auc: true adds the per-query ROC-AUC and its Mann-Whitney p beside the APs, which stay the same
    (tmp_path / "auc.yaml").write_text("roc_auc: true\n" + SUITE_YAML)
    args = suite_parser().parse_args(["suite", str(tmp_path / "auc.yaml"), "-o", str(tmp_path / "auc"), "--quiet"])
    args.run(args)
    auc = pd.read_parquet(tmp_path / "auc" / "replicate_vs_dmso_ap.parquet")
    assert {"roc_auc", "roc_auc_p_value"} <= set(auc.columns)
    scored = auc["average_precision"].notna()  # queries without positives (the controls) have neither
    assert auc.loc[scored, "roc_auc"].between(0, 1).all() and auc.loc[~scored, "roc_auc"].isna().all()
    np.testing.assert_array_equal(auc["average_precision"], act["average_precision"])


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("rule_sets:", "rulesets:"), "unknown key"),
    (lambda s: s.replace("    map_sameby: [Metadata_cpd]\n", "    map_sameby: [Metadata_cpd]\n    query: x\n"),
     "rule_sets.replicate_vs_dmso: unknown key"),
    (lambda s: s.replace('rows: "Metadata_cpd != \'DMSO\'"', "rows: [1, 2]"), "rule_sets.moa.rows"),
    (lambda s: s.replace("null_size: 500", "null_size: many"), "map.null_size"),
    (lambda s: s.replace("rows: \"Metadata_cpd != 'DMSO'\"", "rows: \"__import__('os')\""), "rule_sets.moa.rows"),
    (lambda s: "precision: tf32\n" + s, "tf32"),
    (lambda s: "roc_auc: maybe\n" + s, "roc_auc must be true or false"),
])
def test_suite_config_errors_name_the_key(tmp_path, edit, message):
    from phenovec.evaluate.suite_command import read_suite, run_suite

    if message == "tf32":
        import torch

        if torch.cuda.is_available():
            pytest.skip("tf32 runs on this machine's CUDA GPU: the CPU-only refusal cannot be shown here")

    meta, x = synthetic(n_cpd=10, n_ctrl=4, d=8)
    table = pd.concat([meta.drop(columns=[REF]), pd.DataFrame(x, columns=[f"f{k}" for k in range(8)])], axis=1)
    table.to_parquet(tmp_path / "profiles.parquet", index=False)
    cfg = tmp_path / "suite.yaml"
    cfg.write_text(edit(SUITE_YAML))
    with pytest.raises(ValueError, match=message) as e:
        run_suite(read_suite(cfg), tmp_path / "out")
    assert "suite.yaml" in str(e.value)
