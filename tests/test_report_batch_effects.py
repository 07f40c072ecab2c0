"""The report's batch-effect section: the integration metrics of the treated wells, batch = plate, label = MOA."""
import numpy as np
import pandas as pd
import pytest

from phenovec.evaluate.integration import integration_table
from phenovec.report import build_report
from test_report import NULL, _strict_json, synthetic


def _treated(df):
    return df[~df["Metadata_Control"]].reset_index(drop=True)


def _with_wells(df):
    df = df.copy()
    df.insert(1, "Metadata_Well", [f"W{i:03d}" for i in range(len(df))])
    return df


def test_section_equals_integration_table_on_the_treated_wells(tmp_path):
    df = synthetic()
    paths = build_report(df, tmp_path / "rep", null_size=NULL)
    doc = _strict_json(paths.json)
    be = doc["batch_effects"]
    t = _treated(df)
    feats = [c for c in df.columns if c.startswith("feat_")]
    ref = integration_table({"profiles": t[feats].to_numpy(float)}, "Metadata_Plate", "Metadata_MOA",
                            metadata=t, min_max=False, pcr=False)
    assert be["wells"] == len(t) == 36 and be["plates"] == 2 and be["labels"] == 3 and not be["scaled"]
    # one table: pcr_comparison has no baseline (against itself it is 0 and would cap batch correction at 0.8)
    assert be["baseline"] is None and "pcr_comparison" not in {r["metric"] for r in be["metrics"]}
    # 12 wells per MOA: kBET's neighbourhoods of 11 see most of each, which the notes say
    assert any("kbet_per_label is weak here: the MOAs it scores have a median of 12 wells" in n for n in doc["notes"])
    assert "pcr_comparison is left out: no baseline table" in paths.html.read_text()
    got = {r["metric"]: r["value"] for r in be["metrics"]}
    want = dict(zip(ref.table["metric"], ref.table["value"]))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12, nan_ok=True), k
    assert be["scores"][0]["total"] == pytest.approx(float(ref.scores["total"].iloc[0]), abs=1e-12)
    page = paths.html.read_text()
    assert "Batch effects (integration metrics)" in page and "batch_effects" in doc["figures"]


def test_compare_tables_are_matched_by_well_and_ranked(tmp_path):
    df = _with_wells(synthetic(seed=1))
    feats = [c for c in df.columns if c.startswith("feat_")]
    # the same wells with a strong plate offset added: more batch effect, so a lower batch-correction score
    shifted = df.copy()
    shifted.loc[shifted["Metadata_Plate"] == "P2", feats] += 25.0
    shuffled = shifted.sample(frac=1.0, random_state=0)  # any row order: matched by plate and well
    paths = build_report(df, tmp_path / "rep", null_size=NULL, compare={"plate offset": shuffled})
    be = _strict_json(paths.json)["batch_effects"]
    assert be["methods"] == ["profiles", "plate offset"] and be["scaled"] and be["baseline"] == "plate offset"
    pcr = {r["method"]: r["value"] for r in be["metrics"] if r["metric"] == "pcr_comparison"}
    assert pcr["plate offset"] == 0 and pcr["profiles"] > 0.5  # the offset's plate variance, removed
    scores = {r["method"]: r for r in be["scores"]}
    assert scores["profiles"]["batch correction"] > scores["plate offset"]["batch correction"]
    ilisi = {r["method"]: r["value"] for r in be["metrics"] if r["metric"] == "ilisi_knn"}
    assert ilisi["profiles"] > ilisi["plate offset"]


def test_left_out_with_a_note_and_bad_compare_named(tmp_path):
    df = synthetic()
    one = df[df["Metadata_Plate"] == "P1"].reset_index(drop=True)
    doc = _strict_json(build_report(one, tmp_path / "one", null_size=NULL).json)
    assert doc["batch_effects"] is None
    assert any("batch effects" in n and "single plate" in n for n in doc["notes"])
    wells = _with_wells(df)
    with pytest.raises(ValueError, match="compare 'other'.*missing"):
        build_report(wells, tmp_path / "bad", null_size=NULL, compare={"other": wells.iloc[5:]})
    with pytest.raises(KeyError, match="compare 'nowell'.*Metadata_Well"):
        build_report(wells, tmp_path / "bad2", null_size=NULL, compare={"nowell": df})
    # profiles that are not per well (no well column): the compare tables are left out with a note, not an error
    doc = _strict_json(build_report(df, tmp_path / "perplate", null_size=NULL, compare={"other": wells}).json)
    assert doc["batch_effects"]["methods"] == ["profiles"]
    assert any("compare tables (other) left out" in n for n in doc["notes"])
    off = _strict_json(build_report(df, tmp_path / "off", null_size=NULL, batch_effects=False).json)
    assert off["batch_effects"] is None and "batch_effects" not in off["figures"]


def test_cli_compare_name_equals_path(tmp_path, capsys):
    from phenovec.cli import main

    df = _with_wells(synthetic(seed=2))
    a, b = tmp_path / "a.parquet", tmp_path / "b.csv"
    df.to_parquet(a)
    df.sample(frac=1.0, random_state=1).to_csv(b, index=False)
    assert main(["report", str(a), "--out", str(tmp_path / "o"), "--null-size", str(NULL),
                 "--compare", f"again={b}"]) == 0
    be = _strict_json(tmp_path / "o" / "report.json")["batch_effects"]
    vals = pd.DataFrame(be["metrics"]).pivot(index="metric", columns="method", values="value")
    # the same profiles in another file and row order: every metric equal (kmeans seeded alike)
    np.testing.assert_allclose(vals["again"].to_numpy(float), vals["profiles"].to_numpy(float), atol=1e-9)
    capsys.readouterr()
    assert main(["report", str(a), "--out", str(tmp_path / "o2"), "--compare", str(b)]) == 2
    assert "NAME=PATH" in capsys.readouterr().err


def test_layouts_where_a_metric_is_undefined_or_labels_are_missing(tmp_path):
    """Each MOA on one plate only (a library split over plates): silhouette_batch is undefined; the report leaves it
    blank with the reason instead of failing (the whole report crashed). A well without a plate label is left out
    of the section, noted, not made a plate called 'nan'."""
    df = synthetic(seed=3)
    split = df[(df["Metadata_Control"]) | ((df["Metadata_Plate"] == "P1") == (df["Metadata_MOA"] != "moa2"))]
    doc = _strict_json(build_report(split.reset_index(drop=True), tmp_path / "split", null_size=NULL).json)
    be = doc["batch_effects"]
    assert "silhouette_batch" in be["undefined"]
    values = {r["metric"]: r["value"] for r in be["metrics"]}
    assert values["silhouette_batch"] is None and values["ilisi_knn"] is not None
    assert any("silhouette_batch left blank" in n for n in doc["notes"])
    nan = df.copy()
    nan["Metadata_Plate"] = nan["Metadata_Plate"].astype(object)
    nan.loc[2, "Metadata_Plate"] = None
    doc = _strict_json(build_report(nan, tmp_path / "nan", null_size=NULL).json)
    assert doc["batch_effects"]["wells"] == 35 and doc["batch_effects"]["plates"] == 2
    assert any("1 treated well(s) without a plate label" in n for n in doc["notes"])


def test_compare_from_csv_matches_numeric_looking_plates(tmp_path):
    """Plate "001" written to CSV comes back as the number 1: the compare table's wells still match."""
    df = _with_wells(synthetic(seed=4))
    df["Metadata_Plate"] = df["Metadata_Plate"].map({"P1": "001", "P2": "002"})
    df.to_csv(tmp_path / "again.csv", index=False)
    be = _strict_json(build_report(df, tmp_path / "rep", null_size=NULL,
                                   compare={"again": tmp_path / "again.csv"}).json)["batch_effects"]
    vals = pd.DataFrame(be["metrics"]).pivot(index="metric", columns="method", values="value")
    np.testing.assert_allclose(vals["again"].to_numpy(float), vals["profiles"].to_numpy(float), atol=1e-9)
