"""The benchmark's well table (phenovec.activity.wells): metadata joins, a dropped missing feature, normalisation
before the consensus, and multi-label one-vs-rest classes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phenovec.activity.benchmark import BenchmarkConfig, load_tasks
from phenovec.activity.wells import check_joins, join_table, read_wells, resolver
from phenovec.io.activity_labels import one_vs_rest_labels
from phenovec.io.config_schema import ConfigError


def plate(tmp_path):
    """8 wells on 2 plates (4 compounds x 2), a per-site image table (2 sites per well) naming the compound and its
    concentration, a compound table giving the class; feature Cells_b is missing in both wells of c1."""
    rng = np.random.default_rng(0)
    wells = pd.DataFrame({"Plate": np.repeat(["P1", "P2"], 4), "Well": ["A1", "A2", "A3", "A4"] * 2,
                          "Cells_a": rng.normal(size=8) + np.repeat([10.0, 20.0], 4), "Cells_b": rng.normal(size=8)})
    wells.loc[[1, 5], "Cells_b"] = np.nan  # both wells of c1
    cpd = ["dmso", "c1", "c2", "c3"] * 2
    sites = pd.DataFrame({"Plate_DAPI": np.repeat(wells.Plate, 2), "Well_DAPI": np.repeat(wells.Well, 2),
                          "Compound": np.repeat(cpd, 2), "Conc": np.repeat([0, 1, 3, 3] * 2, 2),
                          "Site": [1, 2] * 8})
    classes = pd.DataFrame({"compound": ["dmso", "c1", "c2", "c3"], "concentration": [0.0, 1.0, 3.0, 3.0],
                            "moa": ["DMSO", "A|B", "B", "A"]})
    for name, df in (("wells", wells), ("sites", sites), ("classes", classes)):
        df.to_csv(tmp_path / f"{name}.csv", index=False)
    return {"path": "wells.csv", "compound_column": ["Compound", "Conc"], "features": "infer",
            "consensus": "median", "samples": "all", "nan_features": "error", "normalize": None,
            "joins": check_joins([
                {"path": "sites.csv", "left_on": ["Plate", "Well"], "right_on": ["Plate_DAPI", "Well_DAPI"],
                 "columns": ["Compound", "Conc"]},
                {"path": "classes.csv", "left_on": ["Compound", "Conc"], "right_on": ["compound", "concentration"],
                 "columns": ["moa"]}], "cfg")}


def test_joins_keep_every_well_and_match_numbers_written_differently(tmp_path):
    prof = plate(tmp_path)
    prof["nan_features"] = "drop"
    wells, feats, _ = read_wells(prof, resolver(tmp_path), "cfg")
    assert len(wells) == 8 and feats == ["Cells_a"]  # Cells_b has a missing value
    # Conc 3 (int) in the site table matched concentration 3.0 in the class table
    assert wells["moa"].tolist() == ["DMSO", "A|B", "B", "A"] * 2
    assert "Cells_b" not in wells.columns


def test_missing_feature_is_an_error_unless_dropped(tmp_path):
    prof = plate(tmp_path)
    cfg = BenchmarkConfig.from_dict({"labels": {"one_vs_rest": "moa"}, "profiles": {**prof, "joins": prof["joins"]},
                                     "learners": ["logreg"]}, base=tmp_path)
    with pytest.raises(ValueError, match="non-finite consensus value in feature 'Cells_b'"):
        load_tasks(cfg)


def test_normalize_by_plate_on_controls(tmp_path):
    prof = plate(tmp_path)
    prof.update(nan_features="drop", normalize={"method": "standardize", "by": ["Plate"],
                                                "samples": "moa == 'DMSO' or Compound == 'c3'"})
    wells, feats, _ = read_wells(prof, resolver(tmp_path), "cfg")
    ctrl = wells[wells.Compound.isin(["dmso", "c3"])]
    means = ctrl.groupby("Plate")["Cells_a"].mean()
    np.testing.assert_allclose(means.to_numpy(), 0.0, atol=1e-9)  # the plate offsets (10, 20) are gone
    assert wells["moa"].tolist() == ["DMSO", "A|B", "B", "A"] * 2  # metadata survive normalisation


def test_join_conflicts_and_missing_columns_are_named(tmp_path):
    wells = pd.DataFrame({"k": [1, 2], "Cells_a": [0.0, 1.0]})
    right = pd.DataFrame({"k": [1, 1, 2], "v": ["x", "y", "z"]})
    join = check_joins([{"path": "r.csv", "left_on": "k", "columns": ["v"]}], "cfg")[0]
    with pytest.raises(ValueError, match=r"r.csv: key \{'k': 1\} has more than one row of v"):
        join_table(wells, right, join, "r.csv")
    join = check_joins([{"path": "r.csv", "left_on": "k", "columns": ["w"]}], "cfg")[0]
    with pytest.raises(ValueError, match="r.csv: no column 'w'"):
        join_table(wells, right.drop_duplicates("k"), join, "r.csv")
    with pytest.raises(ConfigError, match=r"profiles.joins\[0\].left_on"):
        check_joins([{"path": "r.csv"}], "cfg")
    with pytest.raises(ConfigError, match=r"profiles.joins\[0\]: unknown key 'on'"):
        check_joins([{"path": "r.csv", "on": "k"}], "cfg")
    with pytest.raises(ConfigError, match="profiles.normalize.method"):
        BenchmarkConfig.from_dict({"labels": {"one_vs_rest": "moa"},
                                   "profiles": {"path": "w.csv", "normalize": {"method": "zca"}},
                                   "learners": ["logreg"]})


def test_multi_label_classes_split_on_the_separator(tmp_path):
    df = pd.DataFrame({"c": ["x", "y", "z", "w"], "moa": ["A|B", "B", "A", "C"]})
    lab = one_vs_rest_labels(df, compound_column="c", class_column="moa", separator="|")
    act = lab[lab.label == 1].groupby("assay").compound.apply(sorted).to_dict()
    assert act == {"A": ["x", "z"], "B": ["x", "y"], "C": ["w"]}
    assert len(lab) == 12  # every compound in every task
    plain = one_vs_rest_labels(df, compound_column="c", class_column="moa")
    assert sorted(plain.assay.unique()) == ["A", "A|B", "B", "C"]
    with pytest.raises(ValueError, match="empty part"):
        one_vs_rest_labels(df.assign(moa=["A||B", "B", "A", "C"]), compound_column="c", class_column="moa",
                           separator="|")
    with pytest.raises(ConfigError, match="class_separator needs labels.one_vs_rest"):
        BenchmarkConfig.from_dict({"labels": {"path": "l.csv", "class_separator": "|"},
                                   "profiles": {"path": "w.csv"}, "learners": ["logreg"]})


@pytest.mark.parametrize("name, tasks, features", [("bbbc021", 12, 516), ("lincs", 7, 454)])
def test_real_benchmark_configs_build_their_tasks(name, tasks, features):
    """bench/activity_bbbc021.yaml (joins + DMSO normalisation) and bench/activity_lincs.yaml (multi-label MOAs)."""
    from pathlib import Path

    from conftest import shared

    shared("bbbc021-cytominergallery", "BBBC021_v1_moa.csv")  # missing shared data fails
    ts = load_tasks(BenchmarkConfig.from_file(Path(__file__).parents[1] / "bench" / f"activity_{name}.yaml"))
    summary = ts.summary()
    assert len(summary) == tasks and len(ts.features) == features
    assert (summary.actives >= 5).all()
    if name == "bbbc021":  # 104 compound-concentrations (103 annotated + DMSO), plate-wise z-scores to DMSO
        assert set(summary.n) == {104}
        x = ts.train[0].x
        assert np.isfinite(x).all() and np.abs(np.median(x)) < 5  # z-scores, not raw means (areas in the 1000s)


def test_separate_compounds_keeps_test_compounds_out_of_pretraining():
    from phenovec.activity.tasks import build_tasks, compound_profiles, separate_compounds
    from phenovec.activity.synthetic import synthetic_activity

    _, wells = synthetic_activity(n_moas=6, compounds_per_moa=10, n_features=4, seed=2)
    wells["dose"] = np.tile([1.0, 10.0, 100.0], len(wells) // 3)  # each compound at 3 doses: ids 'cpd|dose'
    labels = one_vs_rest_labels(wells.assign(unit=wells.Metadata_compound + "|" + wells.dose.astype(str)),
                                compound_column="unit", class_column="Metadata_MOA")
    profiles = compound_profiles(wells, ["Metadata_compound", "dose"])
    ts = build_tasks(labels, profiles, min_actives=5, min_inactives=5, test=2, validation=1, seed=0)
    sep = separate_compounds(ts, pretrain_fraction=0.5, seed=0, min_actives=2, min_inactives=2)
    names = {t.name for t in ts.train + ts.validation + ts.test}
    assert {t.name for t in sep.train + sep.validation + sep.test} | set(sep.dropped) >= names

    def compounds(tasks):
        return {c.split("|")[0] for t in tasks for c in t.compounds}
    pre, test = compounds(sep.train + sep.validation), compounds(sep.test)
    assert pre and test and not pre & test  # no compound, at any dose, on both sides
    assert len(pre) == 30 and len(test) == 30
    by_id = separate_compounds(ts, pretrain_fraction=0.5, seed=0, min_actives=2, min_inactives=2, group_by="id")
    assert compounds(by_id.train) & compounds(by_id.test)  # doses of one compound may then fall on both sides
    with pytest.raises(ValueError, match="pretrain_fraction"):
        separate_compounds(ts, pretrain_fraction=1.0)
    with pytest.raises(ValueError, match="no test task"):
        separate_compounds(ts, pretrain_fraction=0.5, min_actives=100)
