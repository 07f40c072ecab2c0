"""The table trainer's inputs: pairing two modalities, splits, standardisation and every refused input."""
import numpy as np
import pandas as pd
import pytest

from phenovec.io.config_schema import ConfigError
from phenovec.train.tables.config import TABLE_TASKS, default_table_config, load_table_config
from phenovec.train.tables.pairing import PERTURBATION, PairingError, pair_tables, split_rows
from phenovec.train.tables.synthetic import synthetic_paired, write_synthetic_tables

SMALL = {"n_moa": 3, "compounds_per_moa": 4, "replicates": 3, "cp_dim": 6, "tx_dim": 9}


def test_pairs_on_keys_and_replicate():
    s = synthetic_paired(**SMALL)
    p = pair_tables(s.cp, s.tx, keys=["Metadata_pert_id", "Metadata_dose"], replicate="Metadata_replicate",
                    extra=["Metadata_moa", "Metadata_smiles"])
    assert len(p) == len(s.cp) == 36 and p.report.replicate_used and p.report.cp_only_keys == 0
    assert p.cp_features == [f"cp_{i}" for i in range(6)] and p.tx_features == [f"tx_{i}" for i in range(9)]
    # each pair is the same compound, dose and replicate in both tables
    t = s.tx.iloc[p.meta["tx_row"]]
    assert (t["Metadata_pert_id"].to_numpy() == p.meta["Metadata_pert_id"].to_numpy()).all()
    assert (t["Metadata_replicate"].to_numpy() == p.meta["Metadata_replicate"].to_numpy()).all()
    assert np.array_equal(p.tx, s.tx[p.tx_features].to_numpy(np.float32)[p.meta["tx_row"]])


def test_lincs_layout_consensus_tx_and_unmatched_report():
    """L1000 level 5: one TX signature per pert_id / pert_dose (no replicate): every CP replicate pairs with it;
    doses written 10 vs 9.99999 match at 3 significant digits; keys of one side only are reported."""
    s = synthetic_paired(**SMALL, tx_replicates=False, lincs_names=True)
    tx = s.tx.copy()
    tx["pert_dose"] = 9.99999
    tx = tx.iloc[1:]  # the first compound has no TX signature
    extra = pd.DataFrame({"pert_id": ["BRD-NOT-IN-CP"], "pert_dose": [10.0], **{c: [0.0] for c in s.tx.columns
                                                                              if c.startswith("tx_")}})
    tx = pd.concat([tx, extra], ignore_index=True)
    p = pair_tables(s.cp, tx, keys=["Metadata_pert_id", "Metadata_dose"], tx_keys=["pert_id", "pert_dose"],
                    replicate="Metadata_replicate")
    r = p.report
    assert not r.replicate_used and r.pairs == 33 and r.matched_keys == 11
    assert r.cp_only_keys == 1 and r.cp_rows_unpaired == 3 and r.cp_only_examples == ["BRD-S000000|10"]
    assert r.tx_only_keys == 1 and r.tx_only_examples == ["BRD-NOT-IN-CP|10"]
    assert p.meta.groupby("tx_row").size().eq(3).all()  # three CP replicates per TX signature


def test_no_matching_key_is_an_error_naming_both_files():
    s = synthetic_paired(**SMALL)
    tx = s.tx.assign(Metadata_pert_id="other")
    with pytest.raises(PairingError, match=r"cp.csv and tx.csv: no key matches.*BRD-S"):
        pair_tables(s.cp, tx, keys=["Metadata_pert_id"], cp_source="cp.csv", tx_source="tx.csv")


def test_nan_in_a_modality_names_column_and_row():
    s = synthetic_paired(**SMALL)
    tx = s.tx.copy()
    tx.loc[7, "tx_3"] = np.nan
    with pytest.raises(PairingError, match=r"tx.csv: the tx modality has NaN feature values: column 'tx_3', row 7"):
        pair_tables(s.cp, tx, keys=["Metadata_pert_id"], tx_source="tx.csv")
    cp = s.cp.copy()
    cp.loc[2, "cp_0"] = np.inf
    with pytest.raises(PairingError, match=r"infinite feature values: column 'cp_0', row 2"):
        pair_tables(cp, s.tx, keys=["Metadata_pert_id"])


def test_missing_key_column_and_value():
    s = synthetic_paired(**SMALL)
    with pytest.raises(PairingError, match=r"key column 'Metadata_plate' is not in the table"):
        pair_tables(s.cp, s.tx, keys=["Metadata_plate"])
    cp = s.cp.copy()
    cp.loc[4, "Metadata_pert_id"] = None
    with pytest.raises(PairingError, match=r"key column 'Metadata_pert_id'.*missing key value at row 4"):
        pair_tables(cp, s.tx, keys=["Metadata_pert_id"])


def test_scaffold_split_keeps_scaffolds_and_compounds_whole():
    s = synthetic_paired(n_moa=4, compounds_per_moa=10, replicates=2, cp_dim=4, tx_dim=4)
    meta = s.cp.assign(**{PERTURBATION: s.cp["Metadata_pert_id"]})
    for how in ("scaffold", "perturbation"):
        split = split_rows(meta, how, (0.7, 0.1, 0.2), compound="Metadata_pert_id", smiles="Metadata_smiles", seed=3)
        assert set(split) == {"train", "val", "test"}
        by = meta.assign(split=split)
        assert by.groupby("Metadata_pert_id")["split"].nunique().eq(1).all()
        if how == "scaffold":
            from phenovec.activity.scaffold import murcko_scaffolds

            by["scaffold"] = murcko_scaffolds(by["Metadata_smiles"].tolist())
            assert by.groupby("scaffold")["split"].nunique().eq(1).all()
        assert 0.55 < (split == "train").mean() < 0.85


def test_standardisation_uses_training_rows_only(tmp_path):
    from phenovec.train.tables.loop import prepare_table_data

    paths = write_synthetic_tables(tmp_path, **SMALL)
    cfg = load_table_config({"data": {"cp": paths["cp"], "tx": paths["tx"], "replicate": "Metadata_replicate"},
                             "train": {"task": "bae", "out": str(tmp_path / "o")}})
    d = prepare_table_data(cfg)
    tr = d.split == "train"
    assert np.allclose(d.cp[tr].mean(0), 0, atol=1e-5) and np.allclose(d.cp[tr].std(0), 1, atol=1e-4)
    assert np.allclose(d.tx[tr].mean(0), 0, atol=1e-5)
    assert not np.allclose(d.cp[~tr].mean(0), 0, atol=1e-3)  # the held-out rows do not enter the statistics


@pytest.mark.parametrize("raw, match", [
    ({"data": {"batch_size": 1}}, r"data.batch_size = 1: a batch of one"),
    ({"data": {"batchsize": 8}}, r"unknown key 'data.batchsize' \(did you mean 'batch_size'\?\)"),
    ({"modle": {}}, r"unknown section 'modle'"),
    ({"model": {"cp_hidden": [64, 0]}}, r"model.cp_hidden must be a non-empty list of positive integer widths"),
    ({"model": {"temperature": 0}}, r"model.temperature = 0 is outside"),
    ({"train": {"task": "clip2"}}, r"train.task = 'clip2' is not one of clip, bae, simclr_profiles, fnn"),
    ({"data": {"split": "scaffold"}}, r"data.split: scaffold needs data.smiles"),
    ({"data": {"split_fractions": [0.7, 0.2, 0.2]}}, r"data.split_fractions must be three fractions"),
    ({"data": {"tx_keys": ["pert_id"]}}, r"data.tx_keys has 1 names, data.keys 2"),
    ({"train": {"task": "fnn"}}, r"data.labels is required by train.task fnn"),
    ({"model": {"positives": "replicates"}}, r"model.positives: replicates is for train.task simclr_profiles"),
])
def test_config_errors_name_the_key(tmp_path, raw, match):
    paths = write_synthetic_tables(tmp_path, **SMALL)
    base = {"data": {"cp": paths["cp"], "tx": paths["tx"]}}
    for sec, body in raw.items():
        base.setdefault(sec, {}).update(body)
    if base.get("train", {}).get("task") == "fnn":
        base["data"].pop("tx")
    with pytest.raises(ConfigError, match=match):
        load_table_config(base)


def test_config_requires_modalities_and_defaults_per_task(tmp_path):
    paths = write_synthetic_tables(tmp_path, **SMALL)
    with pytest.raises(ConfigError, match=r"data.tx is required by train.task clip"):
        load_table_config({"data": {"cp": paths["cp"]}})
    with pytest.raises(ConfigError, match=r"data.tx is not used by train.task simclr_profiles"):
        load_table_config({"data": {"cp": paths["cp"], "tx": paths["tx"]}, "train": {"task": "simclr_profiles"}})
    with pytest.raises(ConfigError, match=r"data.cp: 'nope.parquet' does not exist"):
        load_table_config({"data": {"cp": "nope.parquet", "tx": paths["tx"]}})
    assert default_table_config("clip")["model"]["temperature"] == 0.1
    assert default_table_config("simclr_profiles")["model"]["temperature"] == 0.5
    assert default_table_config("clip")["model"]["cp_hidden"] == [1024, 1024, 1024]
    assert default_table_config("clip")["model"]["tx_hidden"] == [4096, 4096, 4096]
    assert set(TABLE_TASKS) == {"clip", "bae", "simclr_profiles", "fnn"}
    cfg = load_table_config({"data": {"cp": paths["cp"], "tx": paths["tx"]}}, {"train.epochs": 3, "model.proj_dim": 8})
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["proj_dim"] == 8 and cfg["data"]["compound"] == "Metadata_pert_id"


def test_losses_refuse_a_batch_of_one():
    import torch

    from phenovec.train.tables.contrastive import nt_xent, symmetric_info_nce

    with pytest.raises(ValueError, match="at least 2 pairs"):
        symmetric_info_nce(torch.zeros(1, 3), torch.zeros(1, 3), 10.0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        nt_xent(torch.zeros(1, 3), torch.zeros(1, 3))


def test_info_nce_matches_the_thesis_formula_and_masks_same_group():
    import torch

    from phenovec.train.tables.contrastive import nt_xent, symmetric_info_nce

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    tau = 0.3
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    s = an @ bn.T / tau
    ref = -(torch.diag(s) - torch.logsumexp(s, 1)).mean() - (torch.diag(s) - torch.logsumexp(s, 0)).mean()
    assert torch.allclose(symmetric_info_nce(a, b, 1 / tau), ref, atol=1e-6)
    # rows 0 and 1 in one group: their cross entries are no negatives
    grp = torch.tensor([0, 0, 1, 2, 3])
    s2 = s.clone()
    s2[0, 1] = s2[1, 0] = float("-inf")
    ref2 = -(torch.diag(s2) - torch.logsumexp(s2, 1)).mean() - (torch.diag(s2) - torch.logsumexp(s2, 0)).mean()
    assert torch.allclose(symmetric_info_nce(a, b, 1 / tau, grp), ref2, atol=1e-6)
    # NT-Xent: identical views of orthogonal rows give the minimum loss
    e = torch.eye(4)
    assert float(nt_xent(e, e, 0.05)) < 1e-6 < float(nt_xent(e, e[[1, 0, 3, 2]], 0.05))
