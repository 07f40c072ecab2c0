"""Frozen-encoder probes (phenovec.evaluate.probes, phenovec evaluate probe): equal to scikit-learn run directly on
the same rows, the seeded forest reproducible, grouped folds that never split a group, and errors that name the
column."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from phenovec.evaluate.probes import MODELS, probe


def _table(n_wells=24, per_well=6, n_cls=3, d=8, seed=0, signal=2.5):
    """Embeddings of cells in wells; each class shifts a few features; each well adds its own offset."""
    rng = np.random.default_rng(seed)
    rows = []
    for w in range(n_wells):
        c = w % n_cls
        offset = rng.normal(0, 0.5, d)
        for _ in range(per_well):
            x = rng.normal(0, 1, d) + offset
            x[c] += signal
            rows.append({"Metadata_Well": f"W{w:02d}", "Metadata_Label": f"class{c}",
                         "Metadata_Split": "test" if (w // n_cls) % 4 == 3 else "train", **{f"f{i}": x[i] for i in range(d)}})
    return pd.DataFrame(rows)


def _value(res, model, metric, split="test", cls=""):
    s = res.scores
    return s[(s["model"] == model) & (s["split"] == split) & (s["metric"] == metric) & (s["class"] == cls)]["value"].item()


def test_train_test_split_equals_scikit_learn_directly():
    df = _table()
    res = probe(df, label_column="Metadata_Label", split_column="Metadata_Split", seed=3)
    feats = [f"f{i}" for i in range(8)]
    tr, te = df["Metadata_Split"] == "train", df["Metadata_Split"] == "test"
    y = df["Metadata_Label"].map({"class0": 0, "class1": 1, "class2": 2}).to_numpy()
    x = df[feats].to_numpy()
    for name, est in (("logistic", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=3))),
                      ("random_forest", RandomForestClassifier(n_estimators=100, random_state=3, n_jobs=1))):
        est.fit(x[tr], y[tr])
        pred, proba = est.predict(x[te]), est.predict_proba(x[te])
        assert _value(res, name, "accuracy") == pytest.approx(accuracy_score(y[te], pred), abs=1e-12)
        per_class = [roc_auc_score(y[te] == c, proba[:, c]) for c in range(3)]
        for c in range(3):
            assert _value(res, name, "auroc", cls=f"class{c}") == pytest.approx(per_class[c], abs=1e-12)
        assert _value(res, name, "auroc_macro") == pytest.approx(roc_auc_score(y[te], proba, multi_class="ovr"),
                                                                 abs=1e-12)
        conf = res.confusion[res.confusion["model"] == name].pivot(index="true", columns="predicted",
                                                                    values="count").to_numpy()
        assert (conf == confusion_matrix(y[te], pred)).all()
        assert res.summary["models"][name]["confusion"] == confusion_matrix(y[te], pred).tolist()
    # the planted signal is found well above chance (1/3)
    assert res.summary["models"]["logistic"]["accuracy_mean"] > 0.7
    assert res.summary["models"]["random_forest"]["auroc_macro_mean"] > 0.7
    preds = res.predictions
    assert len(preds) == 2 * te.sum() and set(preds["row"]) == set(np.flatnonzero(te))
    assert np.allclose(preds[["p_class0", "p_class1", "p_class2"]].sum(axis=1), 1.0)


def test_seeded_forest_is_reproducible_and_the_seed_matters():
    df = _table(seed=1, signal=0.6)
    kw = dict(label_column="Metadata_Label", group_column="Metadata_Well", n_folds=4, models=["random_forest"])
    a, b = probe(df, seed=7, **kw), probe(df, seed=7, **kw)
    pd.testing.assert_frame_equal(a.scores, b.scores)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    c = probe(df, seed=8, **kw)
    assert not c.predictions.equals(a.predictions)  # another seed: other folds and another forest


def test_grouped_folds_keep_every_well_whole_and_cover_every_row():
    df = _table()
    res = probe(df, label_column="Metadata_Label", group_column="Metadata_Well", n_folds=4, seed=0)
    assert res.summary["splits"] == ["fold1", "fold2", "fold3", "fold4"]
    p = res.predictions[res.predictions["model"] == "logistic"]
    assert sorted(p["row"]) == list(range(len(df)))  # each row tested once
    wells = df["Metadata_Well"].to_numpy()[p["row"].to_numpy()]
    assert (pd.Series(p["split"].to_numpy()).groupby(wells).nunique() == 1).all()  # a well in one fold only
    m = res.summary["models"]["logistic"]
    assert set(m) >= {"accuracy_mean", "accuracy_sd", "auroc_macro_mean", "f1_macro_mean", "confusion"}
    assert sum(map(sum, m["confusion"])) == len(df)


def test_binary_auroc_is_the_plain_auroc_and_absent_classes_are_nan():
    df = _table(n_cls=2)
    res = probe(df, label_column="Metadata_Label", split_column="Metadata_Split", models=["logistic"])
    p = res.predictions
    auc = roc_auc_score(p["true"] == "class1", p["p_class1"])
    assert _value(res, "logistic", "auroc_macro") == pytest.approx(auc, abs=1e-12)
    # a class absent from the test rows: its AUROC is NaN and the macro mean skips it
    df3 = _table(n_cls=3)
    df3.loc[(df3["Metadata_Label"] == "class2") & (df3["Metadata_Split"] == "test"), "Metadata_Split"] = "unused"
    r3 = probe(df3, label_column="Metadata_Label", split_column="Metadata_Split", models=["logistic"])
    assert np.isnan(_value(r3, "logistic", "auroc", cls="class2"))
    assert np.isfinite(_value(r3, "logistic", "auroc_macro"))


def test_errors_name_the_column_or_row():
    df = _table()
    with pytest.raises(ValueError, match="split_column .* or group_column"):
        probe(df, label_column="Metadata_Label")
    with pytest.raises(ValueError, match="label column 'Metadata_Nope'"):
        probe(df, label_column="Metadata_Nope", group_column="Metadata_Well")
    with pytest.raises(ValueError, match="group column 'Metadata_Plate'"):
        probe(df, label_column="Metadata_Label", group_column="Metadata_Plate")
    with pytest.raises(ValueError, match="unknown probe model 'svm'"):
        probe(df, label_column="Metadata_Label", group_column="Metadata_Well", models=["svm"])
    bad = df.copy()
    bad.loc[5, "f3"] = np.nan
    with pytest.raises(ValueError, match="feature 'f3' is nan at row 5"):
        probe(bad, label_column="Metadata_Label", group_column="Metadata_Well")
    one = df.assign(Metadata_Label="same")
    with pytest.raises(ValueError, match="has one class"):
        probe(one, label_column="Metadata_Label", group_column="Metadata_Well")
    with pytest.raises(ValueError, match="0 rows are 'training' and 36 are 'test'"):
        probe(df, label_column="Metadata_Label", split_column="Metadata_Split", train_value="training")
    with pytest.raises(ValueError, match="24 groups, fewer than the 30 folds"):
        probe(df, label_column="Metadata_Label", group_column="Metadata_Well", n_folds=30)


def test_the_cli_subcommand_writes_scores_confusion_and_summary(tmp_path):
    import argparse

    from phenovec.cli_options import Parser
    from phenovec.evaluate import probe_command

    assert probe_command.MODELS == MODELS
    df = _table()
    path = tmp_path / "emb.parquet"
    df.to_parquet(path)
    parser = Parser(prog="phenovec")
    metrics = parser.add_subparsers(dest="metric").add_parser("evaluate").add_subparsers(dest="m")
    probe_command.add_probe_parser(metrics)
    args = parser.parse_args(["evaluate", "probe", str(path), "--label-column", "Metadata_Label", "--group-column",
                              "Metadata_Well", "--folds", "3", "-o", str(tmp_path / "scores.csv"), "--predictions",
                              str(tmp_path / "pred.parquet"), "--quiet"])
    assert isinstance(args, argparse.Namespace)
    summary = args.run(args)
    scores = pd.read_csv(tmp_path / "scores.csv", keep_default_na=False)
    assert list(scores.columns) == ["model", "split", "metric", "class", "value"]
    assert set(scores["split"]) == {"fold1", "fold2", "fold3"}
    conf = pd.read_csv(tmp_path / "scores_confusion.csv")
    assert conf.groupby("model")["count"].sum().tolist() == [len(df), len(df)]
    written = json.loads((tmp_path / "scores.json").read_text())
    assert written["models"]["random_forest"]["accuracy_mean"] == summary["models"]["random_forest"]["accuracy_mean"]
    assert len(pd.read_parquet(tmp_path / "pred.parquet")) == 2 * len(df)
    with pytest.raises(ValueError, match="--split-column .* or --group-column"):
        args = parser.parse_args(["evaluate", "probe", str(path), "--label-column", "Metadata_Label", "-o",
                                  str(tmp_path / "x.csv")])
        args.run(args)
