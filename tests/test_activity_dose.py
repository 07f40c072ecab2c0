"""Low-concentration inference (phenovec.activity.dose): the model sees only training-dose wells, scores are
computed per inference dose from that dose's wells, the [train/infer/threshold] names, the errors, and the real
cell-injury dose series."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from phenovec.activity.dose import (
    DoseSeries,
    compound_folds,
    cross_dose_scores,
    cross_dose_table,
    default_estimator,
    dose_comparison,
    dose_levels,
    model_name,
    read_dose_series,
)

from conftest import shared

DOSES = (20.0, 5.0, 1.25, 0.31)


def _synthetic(seed: int = 0, n_compounds: int = 60, d: int = 8, reps: int = 2) -> DoseSeries:
    """Actives move along a fixed direction by an amount proportional to dose (none at 0 dose): high doses show the
    phenotype clearly, low ones barely."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    rows, comp, dose, label = [], [], [], []
    for c in range(n_compounds):
        active = c % 4 == 0
        for dz in DOSES:
            for _ in range(reps):
                rows.append(rng.normal(size=d) + (0.25 * dz * direction if active else 0.0))
                comp.append(f"c{c:02d}")
                dose.append(dz)
                label.append("hit" if active else "other")
    return DoseSeries(np.array(rows), np.array(comp), np.array(dose), np.array(label, dtype=object), None,
                      [f"f{i}" for i in range(d)], "synthetic")


def test_names_and_dose_levels():
    assert model_name(20, 0.16, 5) == "[20µM/0.16µM/5]"
    assert model_name(20.0, 0.625, "Genotoxin") == "[20µM/0.625µM/Genotoxin]"
    lv = dose_levels([0.62, 0.63, 0.62, 1.25, np.nan, 20, 19.99, 0.31, 20])
    assert lv[:4].tolist() == [0.62, 0.62, 0.62, 1.25] and np.isnan(lv[4]) and lv[5:].tolist() == [20, 20, 0.31, 20]


def test_scores_are_per_inference_dose_and_use_training_dose_wells_only():
    s = _synthetic()
    folds = compound_folds(s, "hit", k=4, seed=0)
    est = default_estimator()
    scores = cross_dose_scores(s, "hit", [20.0], folds, estimator=est)
    assert sorted(scores["infer_dose"].unique()) == sorted(DOSES)
    assert (scores.groupby("infer_dose")["compound"].nunique() == 60).all()  # every compound out-of-fold once
    # recompute one fold by hand: fitted on the other folds' 20 µM wells, scoring this fold's 1.25 µM wells
    fold = np.array([folds[c] for c in s.compound])
    train = (fold != 1) & (s.dose == 20.0)
    model = clone(est).fit(s.x[train], (s.label[train] == "hit").astype(int))
    wells = (fold == 1) & (s.dose == 1.25)
    want = pd.Series(model.predict_proba(s.x[wells])[:, 1]).groupby(s.compound[wells]).mean()
    got = scores[(scores.fold == 1) & (scores.infer_dose == 1.25)].set_index("compound")["score"]
    assert np.allclose(got.sort_index().to_numpy(), want.sort_index().to_numpy())
    # the profiles at other doses never reach the 20 µM model: scrambling them leaves the 20 µM scores unchanged
    x2 = s.x.copy()
    x2[s.dose != 20.0] = np.random.default_rng(1).normal(size=x2[s.dose != 20.0].shape) * 50
    s2 = DoseSeries(x2, s.compound, s.dose, s.label, None, s.features, "scrambled")
    at20 = lambda t: t[t.infer_dose == 20.0].sort_values("compound")["score"].to_numpy()  # noqa: E731
    assert np.allclose(at20(scores), at20(cross_dose_scores(s2, "hit", [20.0], folds, estimator=est)))


def test_table_compares_training_doses_and_signal_fades_with_dose():
    s = _synthetic(seed=3)
    folds = compound_folds(s, "hit", k=4, seed=0)
    table = cross_dose_table(cross_dose_scores(s, "hit", [20.0, 0.31], folds))
    assert set(table["model"]) >= {"[20µM/20µM/hit]", "[20µM/0.31µM/hit]", "[0.31µM/20µM/hit]"}
    auc = table.set_index(["train_dose", "infer_dose"])["auroc"]
    assert auc[(20.0, 20.0)] > 0.95  # the phenotype is obvious at the top dose
    assert auc[(20.0, 0.31)] < auc[(20.0, 20.0)] - 0.1  # and fades at the lowest
    comp = dose_comparison(table)
    assert list(comp.columns) == ["train 20µM", "train 0.31µM"] and "infer 0.31µM" in comp.index


def test_errors_name_the_problem(tmp_path):
    good = pd.DataFrame({"cmpd": ["a", "a", "b", "b"], "dose": [1, 2, 1, 2], "cls": ["x", "x", "y", "y"],
                         "Cells_f": [0.1, 0.2, 0.3, 0.4]})
    path = tmp_path / "wells.csv"
    good.drop(columns="dose").to_csv(path, index=False)
    with pytest.raises(KeyError, match=r"wells.csv: no column\(s\) \['dose'\]"):
        read_dose_series(path, compound_column="cmpd", dose_column="dose", label_column="cls", smiles_column=None)
    good.assign(dose=["1", "two", "1", "2"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"row 1, column 'dose': dose 'two' is not a number"):
        read_dose_series(path, compound_column="cmpd", dose_column="dose", label_column="cls", smiles_column=None)
    good.assign(cls=["x", "z", "y", "y"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"compound 'a' has more than one 'cls'"):
        read_dose_series(path, compound_column="cmpd", dose_column="dose", label_column="cls", smiles_column=None)
    good.assign(Cells_f=[0.1, np.inf, 0.3, 0.4]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"row 1, column 'Cells_f': feature is not finite"):
        read_dose_series(path, compound_column="cmpd", dose_column="dose", label_column="cls", smiles_column=None)
    s = _synthetic(n_compounds=12)
    with pytest.raises(ValueError, match="task 'hit' has 3 active .* 5 folds need at least 5"):
        compound_folds(s, "hit", k=5)
    folds = compound_folds(s, "hit", k=3)
    with pytest.raises(ValueError, match="no wells at dose 7"):
        cross_dose_scores(s, "hit", [7.0], folds)
    with pytest.raises(ValueError, match="compound 'c00' has no fold"):
        cross_dose_scores(s, "hit", [20.0], {k: v for k, v in folds.items() if k != "c00"})


def test_cell_injury_dose_series_scores_per_inference_dose():
    """U2OS wells of the Dahlin et al. set: the one-vs-rest HDAC task trained at 20 µM and at 0.62 µM, scored out of
    fold (scaffold-grouped) at each of the six doses from that dose's wells."""
    s = read_dose_series(shared("cell-injury-dahlin-dose", "aligned_plate_holdout.csv.gz"))
    main = [0.62, 1.25, 2.5, 5.0, 10.0, 20.0]
    assert all(d in s.doses() for d in main)
    folds = compound_folds(s, "HDAC", k=5, seed=0)
    scores = cross_dose_scores(s, "HDAC", [20.0, 0.62], folds, infer_doses=main)
    by = scores.groupby(["train_dose", "infer_dose"])
    assert by.ngroups == 12
    # per inference dose: the compounds scored are those with wells at that dose, and their scores differ by dose
    for d in main:
        assert set(scores[(scores.train_dose == 20.0) & (scores.infer_dose == d)]["compound"]) == set(
            s.compound[s.dose == d])
    wide = scores[scores.train_dose == 20.0].pivot(index="compound", columns="infer_dose", values="score").dropna()
    assert len(wide) > 80 and not np.allclose(wide[20.0], wide[0.62])
    table = cross_dose_table(scores)
    assert table["auroc"].notna().all() and len(table) == 12
    assert table.set_index("model").loc["[20µM/20µM/HDAC]", "auroc"] > 0.8  # HDAC inhibitors are clear at 20 µM
    comp = dose_comparison(table)
    assert comp.shape == (6, 2)


def test_cli_dose_study_on_the_cell_injury_series(tmp_path, capsys):
    """``phenovec activity dose``: the comparison printed per inference dose, the tidy table written; a training
    dose the table lacks is a clear error."""
    from phenovec.cli import main

    table = shared("cell-injury-dahlin-dose", "aligned_plate_holdout.csv.gz")  # missing shared data fails
    out = tmp_path / "dose.csv"
    assert main(["activity", "dose", str(table), "--train-dose", "20", "-o", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "tasks (7)" in printed and "train 20µM" in printed and "infer 0.62µM" in printed
    got = pd.read_csv(out)
    assert set(got["train_dose"]) == {20.0} and got["infer_dose"].nunique() >= 6 and got["task"].nunique() == 7
    assert main(["activity", "dose", str(table), "--train-dose", "7", "-o", str(tmp_path / "x.csv")]) == 2
    assert "7" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
