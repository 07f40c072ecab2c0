"""SimCLR on profile embeddings and the multi-task assay fnn learn on synthetic profiles."""
import warnings

import numpy as np
import pytest

from phenovec.train.tables.loop import train_tables
from phenovec.train.tables.synthetic import synthetic_config, write_synthetic_tables

DATA = {"n_moa": 8, "compounds_per_moa": 16, "nuisance_scale": 1.5}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    return write_synthetic_tables(tmp_path_factory.mktemp("profiles"), n_tasks=12, **DATA)


def _cfg(tables, task, out, epochs, **model):
    return synthetic_config(tables, task, out, epochs=epochs, **model)


def test_simclr_views_loss_falls(tables, tmp_path):
    r = train_tables(_cfg(tables, "simclr_profiles", tmp_path / "views", 8))
    assert r.metrics["train_loss"].iloc[-1] < 0.85 * r.metrics["train_loss"].iloc[0]
    assert {"raw_cp", "simclr_profiles"} == set(r.knn["representation"])


def test_simclr_replicate_positives_beat_raw(tables, tmp_path):
    """Positives = another well of the same compound: the encoder learns what replicates share (not the per-well
    nuisance), so held-out compounds' replicates and MOAs are retrieved better than from raw profiles."""
    r = train_tables(_cfg(tables, "simclr_profiles", tmp_path / "reps", 20, positives="replicates"))
    assert r.metrics["train_loss"].iloc[-1] < 0.8 * r.metrics["train_loss"].iloc[0]
    acc = r.knn.pivot(index="representation", columns="label", values="accuracy")
    assert acc.loc["simclr_profiles", "replicate"] > acc.loc["raw_cp", "replicate"] + 0.2, acc
    assert acc.loc["simclr_profiles", "moa"] > acc.loc["raw_cp", "moa"] + 0.1, acc


def test_fnn_predicts_held_out_compounds(tables, tmp_path):
    r = train_tables(_cfg(tables, "fnn", tmp_path / "fnn", 20))
    auc = r.task_auc
    assert len(auc) == 12 and r.evaluation["tasks_scored"] >= 8
    assert r.evaluation["mean_auc"] > 0.7, auc
    assert r.metrics["train_loss"].iloc[-1] < 0.6 * r.metrics["train_loss"].iloc[0]
    # held-out compounds: none of the test compounds was trained on
    import pandas as pd

    split = pd.read_parquet(tmp_path / "fnn" / "split.parquet")
    by = split.groupby("Metadata_pert_id")["split"].nunique()
    assert (by == 1).all() and (split["split"] == "test").any()


def test_fnn_shuffled_profiles_stay_near_chance(tables, tmp_path):
    """The same labels on profiles permuted across compounds: nothing to learn, AUC near 0.5 (the test can fail)."""
    import pandas as pd

    cp = pd.read_parquet(tables["cp"])
    feats = [c for c in cp.columns if c.startswith("cp_")]
    cp[feats] = cp[feats].to_numpy()[np.random.default_rng(0).permutation(len(cp))]
    path = tmp_path / "shuffled.parquet"
    cp.to_parquet(path)
    cfg = _cfg(tables, "fnn", tmp_path / "fnn_shuffled", 15)
    cfg["data"]["cp"] = str(path)
    r = train_tables(cfg)
    assert r.evaluation["mean_auc"] < 0.65


def test_fnn_labels_for_no_profiled_compound_is_an_error(tables, tmp_path):
    from phenovec.train.tables.pairing import PairingError

    bad = tmp_path / "labels.csv"
    bad.write_text("compound,assay,label\nX1,a,1\nX2,a,0\n")
    cfg = _cfg(tables, "fnn", tmp_path / "fnn_bad", 1)
    cfg["data"]["labels"] = str(bad)
    with pytest.raises(PairingError, match=r"labels.csv: no compound of the label file is in .*cp.parquet"):
        train_tables(cfg)
    assert not (tmp_path / "fnn_bad").exists()


def test_fnn_on_real_lincs_profiles_and_gapnet_labels(lincs_plate, tmp_path):
    """The profile path on real data: the LINCS plate's 15 compounds with GapNet labels (+1 / -1 / 0 coding, by
    InChIKey14): labels reach the right wells, a task without both classes in training is dropped with a warning,
    training runs and the held-out compounds are scored."""
    from conftest import shared

    labels = shared("hti-cnn-chembl-assay-labels", "overlap_lincs_SQ00015054_labels.csv")
    cp = lincs_plate[lincs_plate["Metadata_InChIKey14"].notna()].reset_index(drop=True)
    path = tmp_path / "lincs.parquet"
    cp.to_parquet(path)
    cfg = {"data": {"cp": str(path), "keys": ["Metadata_InChIKey14", "Metadata_mmoles_per_liter"],
                    "labels": str(labels), "label_compound_column": "InChIKey14", "label_coding": "signed",
                    "min_per_class": 1, "batch_size": 32},
           "model": {"fnn_hidden": [32, 32]}, "optim": {"lr": 1e-3},
           "train": {"task": "fnn", "out": str(tmp_path / "out"), "epochs": 3, "device": "cpu", "threads": 1}}
    with pytest.warns(UserWarning, match=r"task\(s\) with fewer than data.min_per_class = 1 training actives"):
        r = train_tables(cfg)
    from phenovec.train.tables.loop import prepare_table_data
    from phenovec.train.tables.config import load_table_config

    with pytest.warns(UserWarning):
        d = prepare_table_data(load_table_config(cfg))
    import pandas as pd

    ids = pd.read_csv(labels)["InChIKey14"]
    assert d.meta["Metadata_InChIKey14"].isin(ids).sum() == 96  # the 15 labelled compounds' wells
    measured = ~np.isnan(d.labels).all(axis=1)
    assert 10 <= d.meta.loc[measured, "Metadata_InChIKey14"].nunique() <= 15 and 0 < len(d.tasks) < 106
    assert np.isfinite(r.metrics["train_loss"]).all() and r.evaluation["tasks"] == len(d.tasks)


def test_fnn_on_real_cell_injury_profiles_and_gapnet_labels(tmp_path):
    """The profile path on the second real overlap: the cell-injury wells (plate-holdout file) of the compounds
    GapNet's matrix labels, joined by the full InChIKey (the 14-character prefix is ambiguous there): labels reach
    those wells, training runs, the held-out compounds are scored per assay."""
    import pandas as pd

    from conftest import shared
    from phenovec.train.tables.config import load_table_config
    from phenovec.train.tables.loop import prepare_table_data

    labels = shared("hti-cnn-chembl-assay-labels", "overlap_cell_injury_compounds_labels.csv")
    raw = pd.read_csv(shared("cell-injury-dahlin-dose", "aligned_plate_holdout.csv.gz"))
    keys = set(pd.read_csv(labels, usecols=["INCHIKEY"])["INCHIKEY"])
    feats = [c for c in raw.columns if c.startswith(("Cells_", "Cytoplasm_", "Nuclei_"))]
    cp = pd.DataFrame({"Metadata_InChIKey": raw["Compound InChIKey"],
                       "Metadata_dose": raw["Compound Concentration (microMolar)"],
                       "Metadata_Plate": raw["Plate"], "Metadata_Well": raw["Well"]})
    cp = pd.concat([cp, raw[feats]], axis=1)
    cp = cp[cp["Metadata_InChIKey"].isin(keys)].reset_index(drop=True)
    assert cp["Metadata_InChIKey"].nunique() == 15  # the labelled compounds this feature file holds
    path = tmp_path / "injury.parquet"
    cp.to_parquet(path)
    cfg = {"data": {"cp": str(path), "keys": ["Metadata_InChIKey", "Metadata_dose"],
                    "cp_metadata": ["Metadata_Plate", "Metadata_Well"], "labels": str(labels),
                    "label_compound_column": "INCHIKEY", "label_coding": "signed", "min_per_class": 1,
                    "split_fractions": [0.6, 0.1, 0.3], "batch_size": 32},
           "model": {"fnn_hidden": [32, 32]}, "optim": {"lr": 1e-3},
           "train": {"task": "fnn", "out": str(tmp_path / "out"), "epochs": 3, "device": "cpu", "threads": 1}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # thin tasks are dropped with a warning (tested above)
        r = train_tables(cfg)
        d = prepare_table_data(load_table_config(cfg))
    measured = ~np.isnan(d.labels).all(axis=1)
    assert measured.sum() > 0 and 0 < len(d.tasks) <= 149
    assert np.isfinite(r.metrics["train_loss"]).all() and r.evaluation["tasks"] == len(d.tasks)
    auc = pd.read_csv(tmp_path / "out" / "task_auc.csv")
    assert len(auc) == len(d.tasks) and auc["auc"].dropna().between(0, 1).all()
