"""Per-assay metrics (phenovec.evaluate.assay_prediction) checked against scikit-learn on the same inputs, masking,
view averaging, one-class tasks, the figure, the ``evaluate assays`` command and bad input."""
import argparse
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from phenovec.evaluate.assay_prediction import (assay_metrics, assay_summary, average_precision,
                                                average_predictions, evaluate_assay_predictions, f1_at,
                                                measured_vs_auc_figure, roc_auc)
from phenovec.io.assay_labels import AssayLabels


def _problem(n=120, t=12, seed=0, missing=0.5, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, t)) < rng.uniform(0.1, 0.6, t)).astype(np.float64)
    p = 1 / (1 + np.exp(-(2 * y - 1) * rng.uniform(0, 2, t) - rng.normal(0, 1.2, (n, t))))
    if ties:
        p = np.round(p, 1)
    y[rng.random((n, t)) < missing] = np.nan
    return y, p


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_equal_sklearn_with_masking(ties):
    y, p = _problem(ties=ties)
    table = assay_metrics(p, y, [f"t{j}" for j in range(y.shape[1])])
    for j, row in table.iterrows():
        m = ~np.isnan(y[:, j])
        yj, pj = y[m, j], p[m, j]
        assert row["n_measured"] == m.sum() and row["n_active"] == yj.sum()
        assert row["auc"] == pytest.approx(roc_auc_score(yj, pj), abs=1e-12)
        assert row["auprc"] == pytest.approx(average_precision_score(yj, pj), abs=1e-12)
        assert row["f1"] == pytest.approx(f1_score(yj, pj >= 0.5, zero_division=0.0), abs=1e-12)
        assert row["reason"] == ""
    # a missing label is masked, not an inactive: changing a prediction where the label is NaN changes nothing
    j = 0
    i = int(np.flatnonzero(np.isnan(y[:, j]))[0])
    p2 = p.copy()
    p2[i, j] = 1.0 - p2[i, j]
    pd.testing.assert_frame_equal(assay_metrics(p2, y), assay_metrics(p, y))
    # whereas scoring the NaN as inactive would change the AUC
    y0 = np.nan_to_num(y[:, j], nan=0.0)
    assert roc_auc_score(y0, p[:, j]) != pytest.approx(table.loc[0, "auc"])


def test_single_metrics_edge_cases():
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3])) and np.isnan(average_precision([0, 0], [0.1, 0.2]))
    assert f1_at([0, 0], [0.1, 0.2]) == 0.0 == f1_score([0, 0], [0, 0], zero_division=0.0)
    y, p = [0, 1, 1, 0, 1], [0.5, 0.5, 0.9, 0.1, 0.5]  # ties across classes, a score exactly at 0.5
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert average_precision(y, p) == pytest.approx(average_precision_score(y, p))
    assert f1_at(y, p) == pytest.approx(f1_score(y, np.asarray(p) >= 0.5))


def test_one_class_tasks_are_reported_not_dropped():
    y = np.array([[1, 1, np.nan], [0, 1, np.nan], [1, 1, np.nan], [0, np.nan, np.nan]])
    p = np.full(y.shape, 0.4)
    t = assay_metrics(p, y, ["ok", "allactive", "empty"])
    assert t["task"].tolist() == ["ok", "allactive", "empty"]
    assert t.loc[1, "reason"] == "one class among measured labels (3 active, 0 inactive)"
    assert t.loc[2, "reason"] == "no measured label"
    assert t.loc[[1, 2], ["auc", "auprc", "f1"]].isna().all().all()
    s = assay_summary(t)
    assert (s["n_tasks"], s["n_scored"], s["n_not_scored"]) == (3, 1, 2)


def test_summary_mean_sd_and_counts():
    y, p = _problem(n=200, t=15, seed=4)
    t = assay_metrics(p, y)
    s = assay_summary(t)
    auc = t["auc"].to_numpy()
    assert s["auc_mean"] == pytest.approx(auc.mean()) and s["auc_sd"] == pytest.approx(np.std(auc, ddof=1))
    assert s["auc_median"] == pytest.approx(np.median(auc))
    for lv in (0.9, 0.8, 0.7):
        assert s[f"auc_gt_{lv:g}"] == int((auc > lv).sum())
    assert s["auc_gt_0.7"] >= s["auc_gt_0.8"] >= s["auc_gt_0.9"]
    assert s["f1_mean"] == pytest.approx(t["f1"].mean()) and s["auprc_sd"] == pytest.approx(t["auprc"].std(ddof=1))


def test_average_predictions_per_compound():
    pred = pd.DataFrame({"cpd": ["a", "a", "b", "a", "c"], "t1": [0.2, 0.4, 0.9, 0.6, np.nan],
                         "t2": [0.1, 0.1, 0.1, 0.4, 0.5]})
    out = average_predictions(pred, "cpd", ["t1", "t2"]).set_index("cpd")
    assert out.loc["a", "t1"] == pytest.approx(0.4) and out.loc["a", "n_views"] == 3
    assert out.loc["a", "t2"] == pytest.approx(0.2) and np.isnan(out.loc["c", "t1"])
    ref = pred.groupby("cpd")[["t1", "t2"]].mean()
    np.testing.assert_allclose(out[["t1", "t2"]].to_numpy(), ref.loc[out.index].to_numpy())


def _labels_and_views(seed=0):
    rng = np.random.default_rng(seed)
    n, t = 60, 6
    y = (rng.random((n, t)) < 0.4).astype(np.float32)
    y[rng.random((n, t)) < 0.3] = np.nan
    y[0, :], y[1, :] = 1, 0  # both classes in every task
    compounds = [f"c{i}" for i in range(n)]
    labels = AssayLabels(pd.Index(compounds, name="compound"), [f"a{j}" for j in range(t)], y)
    rows = []
    for i, c in enumerate(compounds):
        for v in range(4):  # 4 noisy views whose mean tracks the label
            rows.append({"Metadata_compound": c, **{f"a{j}": float(np.clip(0.5 + 0.3 * (np.nan_to_num(y[i, j], nan=0.5)
                                                                                      - 0.5) + rng.normal(0, 0.2), 0, 1))
                                                    for j in range(t)}})
    rows.append({"Metadata_compound": "unlabelled", **{f"a{j}": 0.5 for j in range(t)}})
    return labels, pd.DataFrame(rows)


def test_evaluate_aligns_by_compound_and_averages_views():
    labels, views = _labels_and_views()
    per_task, summary = evaluate_assay_predictions(views.sample(frac=1.0, random_state=1), labels,
                                                   compound_column="Metadata_compound")
    mean = views.groupby("Metadata_compound")[labels.tasks].mean().loc[list(labels.compounds)]
    for j, task in enumerate(labels.tasks):
        m = ~np.isnan(labels.values[:, j])
        assert per_task.loc[j, "auc"] == pytest.approx(roc_auc_score(labels.values[m, j], mean[task].to_numpy()[m]))
    assert summary["n_compounds"] == 61 and summary["n_compounds_scored"] == 60
    assert summary["compounds_without_labels"] == 1 and summary["n_prediction_rows"] == 241
    per_view, _ = evaluate_assay_predictions(views, labels, compound_column="Metadata_compound", average=False)
    assert (per_view["n_measured"] == 4 * per_task["n_measured"]).all()
    assert per_task["auc"].mean() > per_view["auc"].mean()  # averaging views removes view noise


def test_figure_png(tmp_path):
    labels, views = _labels_and_views()
    t, _ = evaluate_assay_predictions(views, labels, compound_column="Metadata_compound")
    t2 = t.assign(auc=t["auc"] * 0.9)
    fig = measured_vs_auc_figure({"gapnet": t, "fnn": t2}, tmp_path / "fig.png", title="synthetic")
    data = (tmp_path / "fig.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data == fig.png and "Fig. A1" in fig.caption
    measured_vs_auc_figure(t)  # a single table, no file


def _cli(argv):
    from phenovec.evaluate.assay_command import add_assay_parsers

    parser = argparse.ArgumentParser()
    add_assay_parsers(parser.add_subparsers(dest="metric"))
    args = parser.parse_args(argv)
    return args.run(args)


def test_evaluate_assays_command(tmp_path, capsys):
    labels, views = _labels_and_views()
    labels.write(tmp_path / "labels.csv")
    views = views.rename(columns={t: f"p_{t}" for t in labels.tasks}).assign(split="test")
    views.loc[:3, "split"] = "train"
    views.to_parquet(tmp_path / "pred.parquet")
    summary = _cli(["assays", str(tmp_path / "pred.parquet"), "--labels", str(tmp_path / "labels.csv"),
                    "--compound-column", "Metadata_compound", "--prefix", "p_", "--query", "split == 'test'",
                    "-o", str(tmp_path / "per_task.csv"), "--figure", str(tmp_path / "auc.png")])
    table = pd.read_csv(tmp_path / "per_task.csv")
    assert table["task"].tolist() == labels.tasks and summary["n_compounds_scored"] == 59  # c0's views were train
    on_disk = json.loads((tmp_path / "per_task.json").read_text())
    assert on_disk["auc_mean"] == pytest.approx(table["auc"].mean())
    assert (tmp_path / "auc.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()


def test_bad_inputs():
    y, p = _problem(n=20, t=3)
    with pytest.raises(ValueError, match=r"predictions \(20, 3\) and labels \(20, 2\) differ"):
        assay_metrics(p, y[:, :2])
    bad = p.copy()
    bad[3, 1] = 1.5
    with pytest.raises(ValueError, match="prediction 1.5 at row 3, task 1 is not a probability"):
        assay_metrics(bad, y)
    yb = y.copy()
    yb[0, 0] = -1
    with pytest.raises(ValueError, match="label -1 of task 't0', row 0 is not 1, 0 or NaN"):
        assay_metrics(p, yb, ["t0", "t1", "t2"])
    holes = p.copy()
    i = int(np.flatnonzero(~np.isnan(y[:, 2]))[0])
    holes[i, 2] = np.nan
    with pytest.raises(ValueError, match=f"task 'c' has no prediction \\(NaN\\) for compound 'x{i}'"):
        assay_metrics(holes, y, ["a", "b", "c"], compounds=[f"x{k}" for k in range(20)])
    labels, views = _labels_and_views()
    with pytest.raises(ValueError, match="no column for task 'a5'"):
        evaluate_assay_predictions(views.drop(columns=["a5"]), labels, compound_column="Metadata_compound")
    with pytest.raises(ValueError, match="unknown compound column 'cpd'"):
        evaluate_assay_predictions(views, labels, compound_column="cpd")
    with pytest.raises(ValueError, match="unknown task 'zz'"):
        evaluate_assay_predictions(views, labels, compound_column="Metadata_compound", tasks=["zz"])
