"""phenovec.evaluate.field_classification against brute-force references written here: the precision-recall
curve by counting at every threshold (micro over the flattened one-vs-rest matrix and per class), its trapezoidal
area and step-wise average precision, arg-max accuracy, edge wells listed by hand; errors name the column."""
import json

import numpy as np
import pandas as pd
import pytest

from phenovec.evaluate.field_classification import edge_wells, field_classification, well_position

CLASSES = ["DMSO", "aurora", "mito", "actin"]


def brute_pr(y, s):
    """(trapezoidal area, average precision) by counting: thresholds = the distinct scores from high to low,
    the curve starts at (recall 0, precision 1) as sklearn's does."""
    y, s = np.asarray(y, bool), np.asarray(s, float)
    pos = y.sum()
    if pos == 0:
        return np.nan, np.nan
    points = [(0.0, 1.0)]
    ap, last_r = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        tp = sum(1 for yi, si in zip(y, s) if si >= t and yi)
        fp = sum(1 for yi, si in zip(y, s) if si >= t and not yi)
        prec, rec = tp / (tp + fp), tp / pos
        ap += (rec - last_r) * prec
        last_r = rec
        points.append((rec, prec))
        if rec == 1.0:  # sklearn stops the curve at full recall
            break
    area = sum((r1 - r0) * (p0 + p1) / 2 for (r0, p0), (r1, p1) in zip(points, points[1:]))
    return area, ap


def _fields(seed=0, n=60, classes=CLASSES, plate=(16, 24), ties=False):
    rng = np.random.default_rng(seed)
    rows, cols = plate
    letters = [chr(65 + i) if i < 26 else "A" + chr(65 + i - 26) for i in range(rows)]
    wells = [f"{letters[rng.integers(rows)]}{rng.integers(1, cols + 1):02d}" for _ in range(n)]
    y = rng.choice(classes[1:], size=n)  # DMSO fields filtered out by the caller; DMSO stays a class column
    logits = rng.normal(size=(n, len(classes)))
    logits[np.arange(n), [classes.index(c) for c in y]] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ties:
        p = np.round(p, 1)
    df = pd.DataFrame({"Metadata_Well": wells, "Metadata_MOA": y})
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = p[:, j]
    return df, p


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_against_brute_force(seed, ties):
    df, p = _fields(seed, ties=ties)
    summary, table = field_classification(df, label_col="Metadata_MOA")
    s = summary.iloc[0]
    y = df["Metadata_MOA"].to_numpy()
    onehot = np.array([[yi == c for c in CLASSES] for yi in y])
    area, ap = brute_pr(onehot.ravel(), p.ravel())
    assert s["auprc_micro"] == pytest.approx(area, abs=1e-12)
    assert s["average_precision_micro"] == pytest.approx(ap, abs=1e-12)
    assert s["auprc_baseline"] == pytest.approx(1 / len(CLASSES)) and s["accuracy_baseline"] == 0.25
    pred = [CLASSES[int(np.argmax(row))] for row in p]
    correct = np.array([a == b for a, b in zip(pred, y)])
    assert s["accuracy"] == pytest.approx(correct.mean()) and s["n_fields"] == len(df) and s["n_classes"] == 4
    edge = np.array([w[0] in "AP" or int(w[1:]) in (1, 24) for w in df["Metadata_Well"]])
    assert s["n_edge_fields"] == edge.sum() and s["n_non_edge_fields"] == (~edge).sum()
    assert s["accuracy_edge"] == pytest.approx(correct[edge].mean() if edge.any() else np.nan, nan_ok=True)
    assert s["accuracy_non_edge"] == pytest.approx(correct[~edge].mean())
    for j, c in enumerate(CLASSES):
        row = table.set_index("Metadata_MOA").loc[c]
        a, b = brute_pr(onehot[:, j], p[:, j])
        assert row["auprc"] == pytest.approx(a, abs=1e-12, nan_ok=True)
        assert row["average_precision"] == pytest.approx(b, abs=1e-12, nan_ok=True)
        assert row["n_fields"] == (y == c).sum() and row["n_predicted"] == pred.count(c)
        assert row["accuracy"] == pytest.approx(correct[y == c].mean() if (y == c).any() else np.nan, nan_ok=True)
    assert np.isnan(table.set_index("Metadata_MOA").loc["DMSO", "auprc"])  # no DMSO field: out of the macro mean
    assert s["auprc_macro"] == pytest.approx(table["auprc"].iloc[1:].mean())
    # the matrix form gives the same numbers
    s2, t2 = field_classification(df[["Metadata_Well", "Metadata_MOA"]], p, CLASSES, label_col="Metadata_MOA")
    pd.testing.assert_frame_equal(summary, s2)
    pd.testing.assert_frame_equal(table, t2)


def test_two_classes_and_a_perfect_classifier():
    df = pd.DataFrame({"Metadata_Well": ["B02", "C03", "D04", "E05"], "label": ["a", "b", "b", "a"],
                       "prob_a": [0.9, 0.2, 0.4, 0.6], "prob_b": [0.1, 0.8, 0.6, 0.4]})
    s, t = field_classification(df, label_col="label")
    assert s.iloc[0]["accuracy"] == 1.0 and s.iloc[0]["auprc_micro"] == pytest.approx(1.0)
    assert s.iloc[0]["average_precision_micro"] == 1.0 and np.isnan(s.iloc[0]["accuracy_edge"])
    df.loc[0, "prob_a"], df.loc[0, "prob_b"] = 0.1, 0.9  # one field wrong
    s, _ = field_classification(df, label_col="label")
    assert s.iloc[0]["accuracy"] == 0.75 and s.iloc[0]["auprc_micro"] < 1


def test_edge_wells_and_plate_shapes():
    assert well_position("A01") == (0, 0) and well_position("p24") == (15, 23) and well_position("AF48", (32, 48)) \
        == (31, 47)
    assert list(edge_wells(["A05", "P05", "C01", "C24", "C05", "B02", "O23"])) == [True, True, True, True, False,
                                                                                   False, False]
    # a 96-well plate: rows A-H, columns 1-12
    assert list(edge_wells(["H05", "C12", "C11", "B02"], (8, 12))) == [True, True, False, False]
    with pytest.raises(ValueError, match="outside a plate of 8 rows x 12 columns"):
        edge_wells(["I01"], (8, 12))
    with pytest.raises(ValueError, match="not a well name"):
        well_position("well-7")


def test_errors_name_the_column(tmp_path):
    df, _ = _fields(3, n=12)
    bad = df.copy()
    bad.loc[4, "Metadata_MOA"] = None
    with pytest.raises(ValueError, match=r"label_col: column 'Metadata_MOA' is missing \(NaN\) at row 4"):
        field_classification(bad, label_col="Metadata_MOA")
    bad = df.copy()
    bad.loc[2, "Metadata_MOA"] = "kinase"
    with pytest.raises(ValueError, match=r"'kinase' of column 'Metadata_MOA' \(row 2\) is not one of the model's"):
        field_classification(bad, label_col="Metadata_MOA")
    with pytest.raises(ValueError, match="no column 'moa'"):
        field_classification(df, label_col="moa")
    bad = df.copy()
    bad.loc[1, "prob_mito"] = np.nan
    with pytest.raises(ValueError, match="prob_mito: probability is nan at row 1"):
        field_classification(bad, label_col="Metadata_MOA")
    with pytest.raises(ValueError, match="no probability columns"):
        field_classification(df[["Metadata_Well", "Metadata_MOA"]], label_col="Metadata_MOA")
    bad = df.copy()
    bad.loc[0, "Metadata_Well"] = "Z99"
    with pytest.raises(ValueError, match=r"well_col: column 'Metadata_Well': well 'Z99' is outside"):
        field_classification(bad, label_col="Metadata_MOA")
    one = df[["Metadata_Well", "Metadata_MOA", "prob_aurora"]]
    with pytest.raises(ValueError, match="at least two classes"):
        field_classification(one, label_col="Metadata_MOA")


def test_command(tmp_path, capsys):
    """add_parser / run: the CLI wiring the lead adds to phenovec evaluate, on a parser built here."""
    import argparse

    from phenovec.evaluate.field_classification import add_parser

    df, _ = _fields(4)
    df.loc[:5, "Metadata_MOA"] = "DMSO"
    path = tmp_path / "field_probabilities.parquet"
    df.to_parquet(path)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="metric"))
    args = parser.parse_args(["field-classification", str(path), "--label-column", "Metadata_MOA", "--query",
                              "Metadata_MOA != 'DMSO'", "-o", str(tmp_path / "fc.csv")])
    summary = args.run(args)
    want, table = field_classification(df[df["Metadata_MOA"] != "DMSO"].reset_index(drop=True),
                                       label_col="Metadata_MOA")
    assert summary["n_fields"] == len(df) - 6 and summary["auprc_micro"] == pytest.approx(want.iloc[0]["auprc_micro"])
    assert json.loads((tmp_path / "fc.json").read_text())["accuracy"] == pytest.approx(want.iloc[0]["accuracy"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "fc.csv"), table, check_dtype=False)
