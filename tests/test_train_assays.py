"""train.task: assays (GapNet's multi-task assay prediction) through the image trainer on a synthetic plate.

The plate has 30 compounds of 5 MOAs (+ DMSO); the labels are phenovec's synthetic MOA-driven assay labels (label
noise, missing entries). The references: the labels themselves and the noise-free MOA truth they were drawn from
(held-out compounds' ROC AUC through phenovec.evaluate.assay_prediction, itself checked against scikit-learn in its
own tests), the split table the run writes, an uninterrupted run's weights for the resume, and onnxruntime for the
exported checkpoint.
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from phenovec.evaluate.assay_prediction import assay_metrics, assay_summary, evaluate_assay_predictions
from phenovec.export import export_onnx
from phenovec.io.assay_labels import AssayLabelError, AssayTaskWarning, read_assay_labels
from phenovec.train import ConfigError, load_checkpoint, train
from phenovec.train.assay_inference import predict_assays
from phenovec.train.config import default_config, load_config
from phenovec.train.data import open_crops, split_cells
from phenovec.train.objectives import objective_class

MOAS = ("Aurora kinase inhibitor", "Mitochondrial stressor", "Actin disruptor", "Tubulin binder", "HDAC inhibitor")


def make_plate(root):
    """(root, crops folder, labels file): 1 plate, 31 wells (one per compound, 1 site), 5 x 48 x 48 crops."""
    from phenovec.ingest.crop import crop_index
    from phenovec.ingest.index import read_image_index
    from phenovec.ingest.synth import CHANNELS, synth_plate
    from phenovec.ingest.synth_assay_labels import write_synth_assay_labels

    treatments = [("DMSO", "control")] + [(f"{m[:3].upper()}-{i}", m) for m in MOAS for i in range(1, 7)]
    p = synth_plate(root, plates=1, wells=31, sites_per_well=1, size=256, cells_per_site=(18, 24),
                    treatments=treatments, seed=0, progress=False)
    crop_index(read_image_index(p["index"], list(CHANNELS)), p["nuclei"], root / "crops", box_size=48, edge="shift",
               chunk_cells=256, progress=False)
    labels = write_synth_assay_labels(root, 8, seed=0)["assay_labels"]
    return root, root / "crops", labels


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    return make_plate(tmp_path_factory.mktemp("assays"))


def _cfg(plate, out, **over):
    _, crops, labels = plate
    cfg = {"data": {"crops": str(crops), "batch_size": 32, "workers": 0, "split": "compound",
                    "compound_column": "Metadata_Treatment", "split_fractions": [0.7, 0.1, 0.2]},
           "model": {"arch": "gapnet"},
           "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "constant",
                     "warmup_epochs": 0, "clip_grad_norm": 5.0},
           "augment": {"enabled": True},
           "train": {"task": "assays", "epochs": 4, "out": str(out), "threads": 1, "seed": 0},
           "assays": {"labels": str(labels)}}
    for k, v in over.items():
        sec, key = k.split(".")
        cfg.setdefault(sec, {})[key] = v
    return cfg


def _targets(cfg):
    """The objective's targets for a configuration (no training)."""
    cfg = load_config(cfg)
    crops = open_crops(cfg["data"]["crops"])
    split = split_cells(crops.cells, cfg["data"], cfg["train"]["seed"])
    return crops.cells, objective_class("assays")(cfg).targets(crops.cells, (split == "train").to_numpy())


def test_gapnet_learns_assays_of_held_out_compounds(plate, tmp_path):
    root, crops, labels_path = plate
    torch.manual_seed(0)
    res = train(_cfg(plate, tmp_path / "run"), progress=False)
    assert res.epochs == 4 and res.score_name == "val_mean_auc"
    m = res.metrics
    assert {"train_loss", "val_loss", "val_mean_auc", "val_tasks_scored"} <= set(m.columns)
    assert m["train_loss"].iloc[-1] < m["train_loss"].iloc[0]

    split = pd.read_parquet(tmp_path / "run" / "split.parquet")
    per = split.groupby("Metadata_Treatment")["split"].nunique()
    assert (per == 1).all()  # every crop of a compound in one fold
    folds = split.drop_duplicates("Metadata_Treatment")["split"].value_counts()
    assert folds["train"] == 21 and folds["val"] == 3 and folds["test"] == 7  # 31 compounds (DMSO included)

    ck = load_checkpoint(res.best)
    labels = read_assay_labels(labels_path)
    assert ck["data_config"]["tasks"] == labels.tasks and ck["data_config"]["compound_column"] == "Metadata_Treatment"
    test_rows = split.loc[split["split"] == "test", "row"]
    cells = predict_assays(res.best, crops, by="cell", rows=test_rows)
    assert len(cells) == len(test_rows) and cells[labels.tasks].to_numpy().min() >= 0
    joined = labels.join(cells, "Metadata_Treatment")
    per_task = assay_metrics(cells[labels.tasks].to_numpy(), joined.values, labels.tasks)
    summary = assay_summary(per_task)
    by_compound = predict_assays(res.best, crops, by="compound", rows=test_rows)
    assert set(by_compound["Metadata_Treatment"]) == set(cells["Metadata_Treatment"])
    assert by_compound["n_views"].sum() == len(cells)
    _, comp_summary = evaluate_assay_predictions(by_compound, labels, compound_column="Metadata_Treatment")
    # the noise-free labels the synthetic ones were drawn from: a compound is active iff its MOA responds
    key = pd.read_csv(root / "assays.csv")
    moa = cells["Metadata_Treatment"].map(pd.read_csv(root / "index.csv").drop_duplicates("Metadata_Treatment")
                                          .set_index("Metadata_Treatment")["Metadata_MOA"])
    truth = np.column_stack([moa.isin(r.split("; ")).to_numpy(dtype=float) for r in key["responding_moas"]])
    true_summary = assay_summary(assay_metrics(cells[labels.tasks].to_numpy(), truth, labels.tasks))
    print(f"held-out cells: mean AUC {summary['auc_mean']:.3f} over {summary['n_scored']} tasks (noise-free labels "
          f"{true_summary['auc_mean']:.3f} over {true_summary['n_scored']}); per compound "
          f"{comp_summary['auc_mean']:.3f} over {comp_summary['n_scored']}; val AUC by epoch "
          f"{m['val_mean_auc'].round(3).tolist()}")
    assert summary["n_scored"] >= 3 and true_summary["n_scored"] >= 4
    assert summary["auc_mean"] > 0.65, per_task
    assert true_summary["auc_mean"] > 0.7

    # the checkpoint exports like any ProfileNet (parity on the training store's crops); the task head's sigmoid
    # is predict_assays' probabilities
    rep = export_onnx(res.best, tmp_path / "gapnet.onnx", logits=True)
    assert rep.parity_crops == "store" and rep.feature_dim == 1024 and rep.max_abs_diff <= 1e-4
    other = dict(ck, data_config={**ck["data_config"], "task": "classify"})
    with pytest.raises(ConfigError, match="not an assays run"):
        predict_assays(other, crops)


def test_resume_ends_with_the_uninterrupted_weights(plate, tmp_path):
    over = {"data.subsample": 0.25, "train.epochs": 2}
    ref = train(_cfg(plate, tmp_path / "ref", **over), progress=False)
    first = train(_cfg(plate, tmp_path / "cut", **over, **{"train.max_minutes": 0}), progress=False)
    assert first.stopped_early and first.epochs == 1
    done = train(_cfg(plate, tmp_path / "cut", **over), progress=False)
    assert done.epochs == 2 and not done.stopped_early
    a, b = load_checkpoint(ref.last)["model_state"], load_checkpoint(done.last)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert done.metrics["val_mean_auc"].tolist() == ref.metrics["val_mean_auc"].tolist()


def test_targets_are_the_joined_label_matrix(plate):
    _, crops, labels_path = plate
    cells, t = _targets(_cfg(plate, "unused"))
    labels = read_assay_labels(labels_path)
    assert t.values.dtype == np.float32 and t.values.shape == (len(cells), len(labels.tasks)) == (len(cells), 8)
    assert t.outputs == 8 and t.meta["tasks"] == labels.tasks and t.groups is None
    for i in np.random.default_rng(0).choice(len(cells), 40, replace=False):
        comp = cells["Metadata_Treatment"].iloc[i]
        if comp == "DMSO":
            assert np.isnan(t.values[i]).all() and not t.usable[i]
        else:
            np.testing.assert_array_equal(t.values[i], labels.values[labels.compounds.get_loc(comp)])
            assert t.usable[i] == (~np.isnan(t.values[i])).any()


def test_min_counts_drop_tasks_with_a_warning_naming_them(plate):
    _, _, labels_path = plate
    labels = read_assay_labels(labels_path)
    act, _ = labels.counts()
    cut = int(np.median(act)) + 1
    with pytest.warns(AssayTaskWarning, match=labels.tasks[int(np.argmin(act))]):
        _, t = _targets(_cfg(plate, "unused", **{"assays.min_actives": cut}))
    assert t.meta["tasks"] == [task for task, a in zip(labels.tasks, act) if a >= cut]


def _write(plate, tmp_path, edit):
    labels = pd.read_csv(plate[2])
    labels = edit(labels)
    path = tmp_path / "labels.csv"
    labels.to_csv(path, index=False)
    return path


def test_labels_for_unknown_compounds_are_an_error_naming_the_row(plate, tmp_path):
    def add_ghost(df):
        ghost = df.iloc[[0]].copy()
        ghost["Metadata_Treatment"] = "GHOST-9"
        return pd.concat([df, ghost], ignore_index=True)

    path = _write(plate, tmp_path, add_ghost)
    n = len(pd.read_csv(path))
    with pytest.raises(ConfigError, match=rf"'GHOST-9' \(label row {n}\).*assays.unknown_compounds"):
        _targets(_cfg(plate, "unused", **{"assays.labels": str(path)}))
    with pytest.warns(UserWarning, match="GHOST-9"):
        _targets(_cfg(plate, "unused", **{"assays.labels": str(path), "assays.unknown_compounds": "warn"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, t = _targets(_cfg(plate, "unused", **{"assays.labels": str(path), "assays.unknown_compounds": "ignore"}))
    assert t.outputs == 8
    with pytest.raises(ConfigError, match="no column 'Metadata_Compound'"):
        _targets(_cfg(plate, "unused", **{"assays.compound_column": "Metadata_Compound"}))


def test_a_task_with_one_class_is_an_error_naming_it(plate, tmp_path):
    def one_class(df):
        df["assay_03"] = df["assay_03"].where(df["assay_03"].isna(), 1.0)
        return df

    path = _write(plate, tmp_path, one_class)
    with pytest.raises(AssayLabelError, match="task 'assay_03'.*only one class"):
        train(_cfg(plate, tmp_path / "run", **{"assays.labels": str(path)}), progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_duplicate_compounds_are_an_error_naming_the_rows(plate, tmp_path):
    def duplicate(df):
        return pd.concat([df, df.iloc[[2]]], ignore_index=True)

    path = _write(plate, tmp_path, duplicate)
    comp = pd.read_csv(path)["Metadata_Treatment"].iloc[2]
    with pytest.raises(AssayLabelError, match=rf"{comp}.*rows 3 and {len(pd.read_csv(path))}"):
        _targets(_cfg(plate, "unused", **{"assays.labels": str(path)}))


def test_configuration_errors_name_the_key(plate, tmp_path):
    cfg = _cfg(plate, tmp_path / "run")
    del cfg["assays"]
    with pytest.raises(ConfigError, match="assays.labels is required"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="assays.labels: 'nope.csv' does not exist"):
        load_config(_cfg(plate, tmp_path / "run", **{"assays.labels": "nope.csv"}))
    with pytest.raises(ConfigError, match="data.balance: sampler"):
        load_config(_cfg(plate, tmp_path / "run", **{"data.balance": "sampler"}))
    with pytest.raises(ConfigError, match="assays.convention"):
        load_config(_cfg(plate, tmp_path / "run", **{"assays.convention": "ternary"}))
    with pytest.raises(ConfigError, match="data.split: compound needs data.compound_column"):
        load_config(_cfg(plate, tmp_path / "run", **{"data.compound_column": None}))
    with pytest.raises(ConfigError, match="unknown section 'assays'"):
        load_config(_cfg(plate, tmp_path / "run", **{"train.task": "classify"}))


def test_print_config_has_the_assays_section_with_a_comment_on_every_key():
    import yaml

    from phenovec.commented_yaml import commented_yaml
    from phenovec.train.command import COMMENTS

    cls = objective_class("assays")
    cfg = default_config("assays")
    assert cfg["assays"]["labels"] is None and cfg["assays"]["min_actives"] == 1
    text = commented_yaml(cfg, {**COMMENTS, **cls.COMMENTS})  # raises KeyError for a key without a comment
    assert yaml.safe_load(text) == cfg and "Matrix Market" in text


@pytest.mark.parametrize("name", ["gapnet", "sc_cnn", "densenet121", "resnet101"])
def test_presets_are_valid_configurations_with_the_papers_optimiser(plate, tmp_path, name):
    from phenovec.train.objectives.assays import PRESETS

    preset = PRESETS[name]
    cfg = load_config({**preset, "data": {**preset["data"], "crops": str(plate[1]),
                                          "compound_column": "Metadata_Treatment"},
                       "train": {**preset["train"], "out": str(tmp_path)}, "assays": {"labels": str(plate[2])}})
    paper = {"gapnet": (0.01, 0.9, 128), "sc_cnn": (0.01, 0.2, 2048), "densenet121": (0.01, 0.9, 12),
             "resnet101": (0.001, 0.9, 24)}[name]
    o = cfg["optim"]
    assert (o["name"], o["lr"], o["momentum"], o["weight_decay"], cfg["data"]["batch_size"]) == ("sgd", *paper[:2],
                                                                                                1e-4, paper[2])
    assert cfg["model"]["arch"] == name and cfg["data"]["split_fractions"] == [0.7, 0.1, 0.2]
    assert cfg["data"]["subsample"] == (0.2 if name == "sc_cnn" else 1.0)
