"""Assay label tables (phenovec.io.assay_labels) and the synthetic assay labels (phenovec.ingest.synth_assay_labels):
GapNet's real matrix as shipped, its overlaps with the real LINCS and cell-injury profiles, conventions, joins and
every bad input."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.io
from conftest import shared

from phenovec.io.assay_labels import (AssayLabelError, AssayLabels, AssayTaskWarning, labels_from_frame,
                                      read_assay_labels)

HTI = ("hti-cnn-chembl-assay-labels",)


@pytest.fixture(scope="module")
def gapnet():
    return read_assay_labels(shared(*HTI, "label-matrix.mtx"))


# ---- the real matrix -----------------------------------------------------------------------------------------
def test_real_matrix_as_shipped(gapnet):
    assert gapnet.shape == (10574, 209)
    assert gapnet.values.dtype == np.float32
    assert gapnet.compounds.name == "INCHIKEY" and gapnet.compounds.is_unique
    assert gapnet.compounds[0] == "IENZQIKPVFGBNW-UHFFFAOYSA-N"
    # the raw file, read independently: +1 -> 1, -1 -> 0, absent -> NaN, at the same coordinates
    m = scipy.io.mmread(str(shared(*HTI, "label-matrix.mtx"))).tocoo()
    ref = np.full(m.shape, np.nan, dtype=np.float32)
    ref[m.row, m.col] = (m.data > 0).astype(np.float32)
    np.testing.assert_array_equal(gapnet.values, ref)
    assert int(np.sum(gapnet.values == 1)) == 19274 and int(np.sum(gapnet.values == 0)) == 36268
    s = gapnet.summary()
    assert s["n_measured"].sum() == 55542
    assert s["n_active"].min() >= 10 and s["n_inactive"].min() >= 10  # GapNet's own 10 / 10 filter
    assert (s["n_measured"].min(), s["n_measured"].median(), s["n_measured"].max()) == (22, 142, 2790)
    # repeated ChEMBL ids are kept by position: 202 distinct ids over 209 columns
    ids = pd.read_csv(shared(*HTI, "column-assay-index.csv"), dtype=str)["ASSAY_ID"]
    assert ids.nunique() == 202 and len(set(gapnet.tasks)) == 209
    assert [t.split("#")[0] for t in gapnet.tasks] == ids.tolist()


def test_real_matrix_min_filters_warn_and_name(gapnet):
    with pytest.warns(AssayTaskWarning, match=r"dropped \d+ of 209 tasks") as rec:
        kept = gapnet.select_tasks(min_actives=50, min_inactives=50)
    act, inact = gapnet.counts()
    assert kept.shape == (10574, int(np.sum((act >= 50) & (inact >= 50))))
    dropped = [t for t, a, i in zip(gapnet.tasks, act, inact) if a < 50 or i < 50]
    assert f"{dropped[0]!r} ({act[gapnet.tasks.index(dropped[0])]} active" in str(rec[0].message)


def _lincs_inchikey14():
    return pd.read_csv(shared("cytominer-eval-lincs-plate", "SQ00015054_normalized_feature_select.csv.gz"),
                       usecols=["Metadata_broad_sample", "Metadata_InChIKey14", "Metadata_Well"])


def test_overlap_with_the_lincs_plate(gapnet):
    """LINCS plate SQ00015054 carries only the 14-character InChIKey: 15 compounds have labels, in 105 assays
    (217 labels, 43 active). The issue's "106" is the overlap file's 107 columns less INCHIKEY: its InChIKey14
    column is an id, not an assay."""
    plate = _lincs_inchikey14()
    j = gapnet.join(plate, "Metadata_InChIKey14", match="inchikey14", table_name="LINCS plate")
    over = j.labels.measured_tasks()
    assert j.report.matched_compounds == 15 and over.shape == (15, 105)
    assert int(np.sum(~np.isnan(over.values))) == 217 and int(np.sum(over.values == 1)) == 43
    assert j.report.table_compounds == plate["Metadata_InChIKey14"].nunique() == 57
    assert j.report.n_rows_without_compound == int(plate["Metadata_InChIKey14"].isna().sum()) > 0  # DMSO wells
    assert j.report.labels_not_in_table == 10574 - 15
    # wells of unlabelled compounds are NaN rows; wells of labelled ones carry their compound's labels
    assert j.values.shape == (len(plate), 209)
    lab = j.compound != None  # noqa: E711
    assert np.isnan(j.values[~lab]).all()
    i = int(np.flatnonzero(lab)[0])
    np.testing.assert_array_equal(j.values[i], gapnet.values[gapnet.compounds.get_loc(j.compound[i])])
    # the shipped overlap file holds the same compounds, the same 105 assay ids and the same labels
    ov = labels_from_frame(pd.read_csv(shared(*HTI, "overlap_lincs_SQ00015054_labels.csv"), dtype=str),
                           compound_column="INCHIKEY")
    assert ov.shape == (15, 105) and "InChIKey14" not in ov.tasks
    assert set(ov.compounds) == set(over.compounds)
    assert sorted(ov.tasks) == sorted(t.split("#")[0] for t in over.tasks)
    assert int(np.sum(~np.isnan(ov.values))) == 217 and int(np.sum(ov.values == 1)) == 43


def test_overlap_with_the_cell_injury_set(gapnet):
    """Cell-injury (Dahlin) wells by full InChIKey: 22 labelled compounds x 149 assays (1,099 labels, 588 active)
    over the set's 138 compounds (the metadata table of every well); the two feature tables here hold 15 and 12 of
    them (17 together). By the 14-character block 26 compounds (27 label rows) would match, so that join is refused."""
    d = ("cell-injury-dahlin-dose",)
    meta = pd.read_csv(shared(*d, "aligned_cell_injury_metadata_after_holdout.csv.gz"),
                       usecols=["Compound InChIKey"])
    j = gapnet.join(meta, "Compound InChIKey", table_name="cell injury")
    over = j.labels.measured_tasks()
    assert (j.report.table_compounds, j.report.matched_compounds) == (138, 22)
    assert over.shape == (22, 149)
    assert int(np.sum(~np.isnan(over.values))) == 1099 and int(np.sum(over.values == 1)) == 588
    # by the 14-character block 26 of the set's compounds (27 label rows) would match: stereo / protonation
    # variants of different full keys, one block on two label rows -- so the prefix join refuses
    blocks = set(meta["Compound InChIKey"].dropna().str[:14])
    block_rows = gapnet.compounds.str[:14].isin(blocks)
    assert (int(block_rows.sum()), len(set(gapnet.compounds[block_rows].str[:14]))) == (27, 26)
    with pytest.raises(AssayLabelError, match="matches label rows .* by inchikey14"):
        gapnet.join(meta, "Compound InChIKey", match="inchikey14")
    feature_tables = []
    for name, n in (("aligned_plate_holdout.csv.gz", 15), ("aligned_wells_holdout.csv.gz", 12)):
        t = pd.read_csv(shared(*d, name), usecols=["Compound InChIKey"])
        assert gapnet.join(t, "Compound InChIKey").report.matched_compounds == n, name
        feature_tables.append(t)
    both = pd.concat(feature_tables)  # the files with features hold 17 of the 22 together
    assert gapnet.join(both, "Compound InChIKey").report.matched_compounds == 17
    ship = labels_from_frame(pd.read_csv(shared(*HTI, "overlap_cell_injury_compounds_labels.csv"), dtype=str))
    assert ship.shape == (22, 149) and set(ship.compounds) == set(over.compounds)
    assert int(np.sum(ship.values == 1)) == 588


# ---- conventions and formats -----------------------------------------------------------------------------------
def _write(tmp_path, text, name="labels.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_binary_and_signed_conventions_read_alike(tmp_path):
    binary = _write(tmp_path, "compound,a1,a2,note\nc1,1,,x\nc2,0,1,y\nc3,,0,z\nc4,1,0,\n", "b.csv")
    signed = _write(tmp_path, "compound,a1,a2\nc1,1,0\nc2,-1,1\nc3,0,-1\nc4,1,-1\n", "s.csv")
    b = read_assay_labels(binary)
    s = read_assay_labels(signed)
    assert b.tasks == ["a1", "a2"]  # the text column 'note' is not a task
    np.testing.assert_array_equal(b.values, s.values)
    np.testing.assert_array_equal(b.values, np.array([[1, np.nan], [0, 1], [np.nan, 0], [1, 0]], dtype=np.float32))
    # the same signed file read as binary: 0 means inactive and -1 is out of the convention
    with pytest.raises(AssayLabelError, match=r"s.csv: column 'a1', data row 2 \(compound 'c2'\): value -1 .*binary"):
        read_assay_labels(signed, convention="binary")
    # auto reads a file without -1 as binary: there 0 is an inactive, not a missing label
    only = _write(tmp_path, "compound,a1\nc1,1\nc2,0\n", "o.csv")
    assert read_assay_labels(only).values[1, 0] == 0
    with pytest.raises(AssayLabelError, match="one class"):
        read_assay_labels(only, convention="signed")


def test_parquet_words_and_round_trip(tmp_path):
    df = pd.DataFrame({"Metadata_Treatment": ["A", "B", "C"], "t1": ["active", "inactive", ""],
                       "t2": [True, False, True]})
    df.to_parquet(tmp_path / "l.parquet")
    lab = read_assay_labels(tmp_path / "l.parquet")
    assert lab.compounds.name == "Metadata_Treatment"
    np.testing.assert_array_equal(lab.values, np.array([[1, 1], [0, 0], [np.nan, 1]], dtype=np.float32))
    for conv, name in (("binary", "x.csv"), ("signed", "y.csv"), ("binary", "z.parquet")):
        lab.write(tmp_path / name, convention=conv)
        back = read_assay_labels(tmp_path / name, convention=conv)
        np.testing.assert_array_equal(back.values, lab.values)
        assert list(back.compounds) == ["A", "B", "C"]
    assert (tmp_path / "x.csv").read_text().splitlines()[3] == "C,,1"


def test_long_layout_and_repeated_columns(tmp_path):
    p = _write(tmp_path, "compound,assay,label\nc1,a,1\nc2,a,0\nc1,b,0\nc3,b,1\n")
    lab = read_assay_labels(p)
    assert lab.tasks == ["a", "b"] and list(lab.compounds) == ["c1", "c2", "c3"]
    assert np.isnan(lab.values[2, 0]) and lab.values[2, 1] == 1
    rep = _write(tmp_path, "compound,688422,688422\nc1,1,-1\nc2,-1,1\n", "rep.csv")
    assert read_assay_labels(rep).tasks == ["688422", "688422#2"]


def test_summary_counts(tmp_path):
    lab = read_assay_labels(_write(tmp_path, "compound,a,b\nc1,1,0\nc2,0,\nc3,1,1\nc4,,0\n"))
    s = lab.summary().set_index("task")
    assert s.loc["a", ["n_measured", "n_active", "n_inactive"]].tolist() == [3, 2, 1]
    assert s.loc["b", ["n_measured", "n_active", "n_inactive"]].tolist() == [3, 1, 2]
    assert s.loc["a", "active_fraction"] == pytest.approx(2 / 3) and s.loc["b", "measured_fraction"] == 0.75


def test_min_actives_drop_names_the_column(tmp_path):
    p = _write(tmp_path, "compound,rich,poor\nc1,1,1\nc2,1,0\nc3,0,0\nc4,0,0\n")
    with pytest.warns(AssayTaskWarning, match=r"'poor' \(1 active, 3 inactive\)"):
        lab = read_assay_labels(p, min_actives=2, min_inactives=2)
    assert lab.tasks == ["rich"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_assay_labels(p, min_actives=1, min_inactives=1).tasks == ["rich", "poor"]
    with pytest.raises(AssayLabelError, match="min_actives must be a non-negative integer"):
        read_assay_labels(p, min_actives=-1)


# ---- joins -----------------------------------------------------------------------------------------------------
def test_join_nan_rows_and_report():
    lab = AssayLabels(pd.Index(["A", "B", "Z"], name="compound"), ["t1", "t2"],
                      np.array([[1, 0], [0, np.nan], [1, 1]], dtype=np.float32))
    cells = pd.DataFrame({"cpd": ["A", "A", "C", None, "B", "A"], "x": range(6)})
    j = lab.join(cells, "cpd")
    np.testing.assert_array_equal(j.values[[0, 1, 5]], np.tile([1, 0], (3, 1)))
    assert np.isnan(j.values[[2, 3]]).all() and j.values[4, 0] == 0 and np.isnan(j.values[4, 1])
    r = j.report
    assert (r.n_rows, r.n_rows_labelled, r.n_rows_without_compound) == (6, 4, 1)
    assert (r.table_compounds, r.matched_compounds, r.unlabelled_compounds) == (3, 2, ["C"])
    assert (r.labels_not_in_table, r.labels_not_in_table_examples) == (1, ["Z"])
    assert list(j.labels.compounds) == ["A", "B"]
    json.dumps(r.as_dict())


def test_join_inchikey14_ambiguity_names_both_rows():
    lab = AssayLabels(pd.Index(["AAAAAAAAAAAAAA-UHFFFAOYSA-N", "AAAAAAAAAAAAAA-XXXXXXXXSA-N", "BBBBBBBBBBBBBB-UHFFFAOYSA-N"]),
                      ["t"], np.array([[1], [0], [1]], dtype=np.float32), "lab.csv")
    ok = lab.join(pd.DataFrame({"k": ["BBBBBBBBBBBBBB"]}), "k", match="inchikey14")
    assert ok.values[0, 0] == 1
    with pytest.raises(AssayLabelError, match=r"'AAAAAAAAAAAAAA'.*label rows 1 .*and 2 "):
        lab.join(pd.DataFrame({"k": ["AAAAAAAAAAAAAA"]}), "k", match="inchikey14")


# ---- bad input -------------------------------------------------------------------------------------------------
def test_duplicate_compounds_name_both_rows(tmp_path):
    p = _write(tmp_path, "compound,a\nc1,1\nc2,0\nc1,0\n", "dup.csv")
    with pytest.raises(AssayLabelError, match=r"dup.csv: compound 'c1' \(column 'compound'\) appears in data rows 1 "
                                              r"and 3"):
        read_assay_labels(p)


@pytest.mark.parametrize("value", ["2", "0.5", "maybe"])
def test_value_outside_the_convention(tmp_path, value):
    p = _write(tmp_path, f"compound,a,b\nc1,1,0\nc2,0,{value}\nc3,1,1\n", "bad.csv")
    with pytest.raises(AssayLabelError, match=r"bad.csv: column 'b', data row 2"):
        read_assay_labels(p)


def test_one_class_task_is_named(tmp_path):
    p = _write(tmp_path, "compound,good,allactive\nc1,1,1\nc2,0,1\nc3,0,\n", "one.csv")
    with pytest.raises(AssayLabelError, match=r"one.csv: task 'allactive' \(task 2 of 2\) has only one class .*"
                                              r"\(2 active, 0 inactive\)"):
        read_assay_labels(p)
    empty = _write(tmp_path, "compound,good,never\nc1,1,\nc2,0,\n", "empty.csv")
    with pytest.raises(AssayLabelError, match="task 'never' .*no measured label"):
        read_assay_labels(empty)


def test_unknown_compound_column(tmp_path):
    p = _write(tmp_path, "compound,a\nc1,1\nc2,0\n")
    with pytest.raises(AssayLabelError, match=r"labels.csv: unknown compound column 'Metadata_cpd'"):
        read_assay_labels(p, compound_column="Metadata_cpd")
    nocol = _write(tmp_path, "name,a\nc1,1\nc2,0\n", "n.csv")
    with pytest.raises(AssayLabelError, match="no compound column"):
        read_assay_labels(nocol)
    lab = read_assay_labels(p)
    with pytest.raises(AssayLabelError, match=r"plate: unknown compound column 'cpd'"):
        lab.join(pd.DataFrame({"x": [1]}), "cpd", table_name="plate")
    with pytest.raises(AssayLabelError, match="unknown task column 'zz'"):
        read_assay_labels(p, tasks=["zz"])


def test_empty_compound_id_and_unknown_convention(tmp_path):
    p = _write(tmp_path, "compound,a\nc1,1\n,0\n")
    with pytest.raises(AssayLabelError, match=r"column 'compound', data row 2: empty compound id"):
        read_assay_labels(p)
    with pytest.raises(AssayLabelError, match="convention 'ternary'"):
        read_assay_labels(p, convention="ternary")
    with pytest.raises(FileNotFoundError, match="no such assay label file"):
        read_assay_labels(tmp_path / "nope.csv")


def _mtx(tmp_path, body, n_rows=3, n_cols=2, ids=("c1", "c2", "c3")):
    (tmp_path / "row-compound-index.csv").write_text("INDEX,INCHIKEY\n" + "".join(f"{i},{c}\n" for i, c in
                                                                               enumerate(ids)))
    (tmp_path / "column-assay-index.csv").write_text("ASSAY_ID\n" + "".join(f"a{j}\n" for j in range(n_cols)))
    p = tmp_path / "label-matrix.mtx"
    lines = body.strip().splitlines()
    p.write_text(f"%%MatrixMarket matrix coordinate integer general\n{n_rows} {n_cols} {len(lines)}\n" + body)
    return p


def test_matrix_market_bad_inputs(tmp_path):
    ok = "1 1 1\n2 1 -1\n1 2 -1\n3 2 1\n"
    lab = read_assay_labels(_mtx(tmp_path, ok))
    np.testing.assert_array_equal(lab.values, np.array([[1, 0], [0, np.nan], [np.nan, 1]], dtype=np.float32))
    with pytest.raises(AssayLabelError, match=r"entry \(2, 1\) \(compound 'c2', assay 'a0'\): value 3"):
        read_assay_labels(_mtx(tmp_path, "1 1 1\n2 1 3\n1 2 -1\n3 2 1\n"))
    with pytest.raises(AssayLabelError, match=r"entry \(1, 1\) .*more than once"):
        read_assay_labels(_mtx(tmp_path, "1 1 1\n1 1 -1\n2 1 -1\n1 2 -1\n3 2 1\n"))
    with pytest.raises(AssayLabelError, match="the matrix is 4 x 2 but row-compound-index.csv lists 3"):
        read_assay_labels(_mtx(tmp_path, ok, n_rows=4))
    with pytest.raises(AssayLabelError, match=r"compound 'c1' \(column 'INCHIKEY'\) appears in data rows 1 and 3"):
        read_assay_labels(_mtx(tmp_path, ok, ids=("c1", "c2", "c1")))
    (tmp_path / "junk.mtx").write_text("not a matrix\n")
    with pytest.raises(AssayLabelError, match="cannot read as Matrix Market"):
        read_assay_labels(tmp_path / "junk.mtx")


# ---- synthetic labels ------------------------------------------------------------------------------------------
def test_synthetic_labels_follow_the_moas():
    from phenovec.ingest.synth_assay_labels import synth_assay_labels

    treatments = [("DMSO", "control")] + [(f"{m}-{k}", m) for m in ("M1", "M2", "M3", "M4") for k in range(5)]
    lab, key = synth_assay_labels(treatments, 30, seed=3, noise=0.0, missing=0.0)
    assert "DMSO" not in lab.compounds and lab.shape == (20, 30)
    moa = np.array([c.split("-")[0] for c in lab.compounds])
    for j, row in key.iterrows():  # without noise a compound is active iff its MOA responds
        responding = set(row["responding_moas"].split("; "))
        np.testing.assert_array_equal(lab.values[:, j], np.isin(moa, list(responding)).astype(np.float32))
        assert 0 < len(responding) < 4
    noisy, _ = synth_assay_labels(treatments, 30, seed=3, noise=0.1, missing=0.5)
    frac = np.isnan(noisy.values).mean()
    assert 0.4 < frac < 0.6
    flipped = (noisy.values != lab.values) & ~np.isnan(noisy.values)
    assert 0.03 < flipped.sum() / (~np.isnan(noisy.values)).sum() < 0.2
    noisy.require_two_classes()  # every assay keeps both classes measured
    again, _ = synth_assay_labels(treatments, 30, seed=3, noise=0.1, missing=0.5)
    np.testing.assert_array_equal(again.values, noisy.values)
    other, _ = synth_assay_labels(treatments, 30, seed=4, noise=0.1, missing=0.5)
    assert not np.array_equal(np.isnan(other.values), np.isnan(noisy.values))
    more, _ = synth_assay_labels(treatments, 35, seed=3, noise=0.1, missing=0.5)
    np.testing.assert_array_equal(more.values[:, :30], noisy.values)  # adding assays keeps the first ones
    with pytest.raises(ValueError, match="at least two non-control MOAs"):
        synth_assay_labels([("A", "M1"), ("B", "M1")], 3)
    with pytest.raises(ValueError, match="compound 'A' has more than one MOA"):
        synth_assay_labels([("A", "M1"), ("A", "M2")], 3)


def test_synth_cli_writes_assay_labels(tmp_path, capsys):
    from phenovec.cli import main

    out = tmp_path / "plate"
    assert main(["synth", "--out", str(out), "--wells", "14", "--size", "96", "--cells", "2", "4", "--sites", "1",
                 "--cell-radius", "6", "--assays", "6", "--seed", "2", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["assays"] == 6 and summary["assay_labels"].endswith("assay_labels.csv")
    lab = read_assay_labels(out / "assay_labels.csv")
    index = pd.read_csv(out / "index.csv")
    assert lab.shape == (6, 6) and set(lab.compounds) == set(index["Metadata_Treatment"]) - {"DMSO"}
    j = lab.join(index, "Metadata_Treatment", table_name="index.csv")
    assert j.report.unlabelled_compounds == ["DMSO"] and np.isnan(j.values[index["Metadata_Control"].to_numpy()]).all()
    key = pd.read_csv(out / "assays.csv")
    assert key["assay"].tolist() == lab.tasks
    assert (key["n_active"] > 0).all() and (key["n_inactive"] > 0).all()
