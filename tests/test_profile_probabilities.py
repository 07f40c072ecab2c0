"""`phenovec profile` writes an assays model's task outputs (probabilities) beside its features.

A tiny train.task: assays model (resnet_tiny, 2 epochs) on a small synthetic plate with phenovec's synthetic assay
labels is exported (probabilities on by default for an assays checkpoint) and profiled from its crop store. The
references: ``phenovec.train.assay_inference.predict_assays`` (PyTorch: the checkpoint's head and sigmoid on the
same crops, its own data path), pandas groupby of the stored per-cell probabilities, and a profile of the same
checkpoint exported without probabilities (the features and well tables of a model without tasks).
"""
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from phenovec.export import export_onnx
from phenovec.io.embeddings import EmbeddingStore
from phenovec.io.model_metadata import ModelMetadata
from phenovec.profile import profile_sites
from phenovec.runtime import ProfileSession, read_metadata
from phenovec.train import load_checkpoint, train
from phenovec.train.assay_inference import predict_assays

torch.set_num_threads(1)
MOAS = ("Aurora kinase inhibitor", "Mitochondrial stressor", "Actin disruptor", "Tubulin binder", "HDAC inhibitor")
WELL = ["Metadata_Plate", "Metadata_Well"]
CELL = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "x", "y"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(crops folder, checkpoint, tasks) of a 2-epoch resnet_tiny assays run on 21 compounds (+ DMSO)."""
    from phenovec.ingest.crop import crop_index
    from phenovec.ingest.index import read_image_index
    from phenovec.ingest.synth import CHANNELS, synth_plate
    from phenovec.ingest.synth_assay_labels import write_synth_assay_labels

    root = tmp_path_factory.mktemp("probs")
    treatments = [("DMSO", "control")] + [(f"{m[:3].upper()}-{i}", m) for m in MOAS for i in range(1, 5)]
    p = synth_plate(root, plates=1, wells=len(treatments), sites_per_well=1, size=160, cells_per_site=(6, 9),
                    treatments=treatments, seed=0, progress=False)
    crop_index(read_image_index(p["index"], list(CHANNELS)), p["nuclei"], root / "crops", box_size=32, edge="shift",
               chunk_cells=256, progress=False)
    labels = write_synth_assay_labels(root, 6, seed=0)["assay_labels"]
    cfg = {"data": {"crops": str(root / "crops"), "batch_size": 32, "workers": 0, "split": "compound",
                    "compound_column": "Metadata_Treatment", "split_fractions": [0.7, 0.1, 0.2]},
           "model": {"arch": "resnet_tiny"},
           "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "schedule": "constant", "warmup_epochs": 0},
           "augment": {"enabled": False},
           "train": {"task": "assays", "epochs": 2, "out": str(root / "run"), "threads": 1, "seed": 0},
           "assays": {"labels": str(labels), "min_actives": 1, "min_inactives": 1}}
    torch.manual_seed(0)
    res = train(cfg, progress=False)
    tasks = [str(t) for t in load_checkpoint(res.best)["data_config"]["tasks"]]
    assert len(tasks) >= 2
    return root / "crops", res.best, tasks


def _profile(crops, model, out):
    return profile_sites(model, crops_dir=crops, out=out, batch_size=64, scheduler="threads", workers=1, dtype="float32",
                         progress=False)


def test_profile_writes_the_heads_sigmoid_beside_the_features(run, tmp_path):
    crops, ckpt, tasks = run
    rep = export_onnx(ckpt, tmp_path / "assays.onnx")  # probabilities by default: an assays checkpoint
    assert rep.outputs == ["features", "probabilities"] and rep.parity.per_output["probabilities"] <= 1e-4
    meta = read_metadata(tmp_path / "assays.onnx")
    assert meta.tasks == tuple(tasks) and meta.probability_names() == [f"prob_{t}" for t in tasks]

    res = _profile(crops, tmp_path / "assays.onnx", tmp_path / "out")
    probs = [f"prob_{t}" for t in tasks]
    store = EmbeddingStore(tmp_path / "out" / "embeddings.zarr")
    assert list(store.features) == [f"feature_{i}" for i in range(rep.feature_dim)]  # no prob_ among features
    cells = store.meta
    assert set(probs) <= set(cells.columns) and len(cells) == res.embedded > 0

    # per cell: the checkpoint's head + sigmoid in PyTorch on the same crops (predict_assays' own data path)
    ref = predict_assays(ckpt, crops, by="cell", device="cpu", progress=False)
    m = cells.merge(ref, on=CELL, how="inner", validate="one_to_one")
    assert len(m) == len(cells)
    got, want = m[probs].to_numpy(np.float64), m[tasks].to_numpy(np.float64)
    assert np.abs(got - want).max() <= 1e-4 and got.std() > 0

    # per well: the mean over the well's cells (as stored), beside, not inside, the morphology tables
    wells = pd.read_parquet(tmp_path / "out" / "wells_probabilities.parquet")
    assert list(wells.columns[-len(probs):]) == probs and not any(c.startswith("feature_") for c in wells.columns)
    means = cells.groupby(WELL, sort=True)[probs].mean().reset_index()
    w = wells.merge(means, on=WELL, suffixes=("", "_ref"))
    assert len(w) == len(wells) == len(means)
    np.testing.assert_allclose(w[probs].to_numpy(), w[[f"{c}_ref" for c in probs]].to_numpy(), atol=1e-9)
    by_well = predict_assays(ckpt, crops, by="well", device="cpu", progress=False)
    w2 = wells.merge(by_well, on=WELL)
    assert np.abs(w2[probs].to_numpy() - w2[tasks].to_numpy()).max() <= 1e-4
    assert (w2["Metadata_Object_Count"] == w2["n_views"]).all()
    for op in ("mean", "median"):
        assert not any(str(c).startswith("prob_") for c in pd.read_parquet(tmp_path / "out" / f"wells_{op}.parquet"))


def test_a_model_without_probabilities_profiles_as_before(run, tmp_path):
    crops, ckpt, tasks = run
    export_onnx(ckpt, tmp_path / "assays.onnx")
    plain = export_onnx(ckpt, tmp_path / "plain.onnx", probabilities=False)
    assert plain.outputs == ["features"] and "tasks" in plain.metadata  # the tasks are recorded, not output
    _profile(crops, tmp_path / "assays.onnx", tmp_path / "with")
    _profile(crops, tmp_path / "plain.onnx", tmp_path / "without")
    a = EmbeddingStore(tmp_path / "with" / "embeddings.zarr")
    b = EmbeddingStore(tmp_path / "without" / "embeddings.zarr")
    np.testing.assert_array_equal(a.array[:], b.array[:])
    assert list(b.meta.columns) == [c for c in a.meta.columns if not c.startswith("prob_")]
    for op in ("mean", "median"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "with" / f"wells_{op}.parquet"),
                                      pd.read_parquet(tmp_path / "without" / f"wells_{op}.parquet"))
    assert not (tmp_path / "without" / "wells_probabilities.parquet").exists()


def test_session_runs_named_outputs_side_by_side(run, tmp_path):
    crops, ckpt, tasks = run
    export_onnx(ckpt, tmp_path / "m.onnx", logits=True)
    x = np.random.default_rng(0).random((5, 5, 32, 32), dtype=np.float32)
    sess = ProfileSession(tmp_path / "m.onnx", providers=["CPUExecutionProvider"])
    raw = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    f, lg, pr = raw.run(["features", "logits", "probabilities"], {"crops": x})
    np.testing.assert_allclose(pr, 1 / (1 + np.exp(-lg.astype(np.float64))), atol=1e-6)
    np.testing.assert_array_equal(sess.run_batches(x, 2), sess.run(x))  # default: features only
    both = sess.run_batches([x[:3], x[3:]], 2, outputs=("features", "probabilities"))
    assert both.shape == (5, f.shape[1] + len(tasks))
    np.testing.assert_allclose(both, np.hstack([f, pr]), atol=1e-5)
    assert sess.run_batches(x[:0], 2, outputs=("features", "probabilities")).shape == (0, f.shape[1] + len(tasks))
    with pytest.raises(ValueError, match="must start with 'features'"):
        sess.run_batches(x, 2, outputs=("probabilities",))


def test_metadata_tasks_round_trip_and_older_models_load():
    base = dict(channels=("DNA",), crop_size=8, intensity={"input_scaling": "none"}, feature_dim=4,
                outputs=("features",), arch="a", model_config={}, weights_sha256="0", phenovec_version="0",
                torch_version="0", opset=18, exporter="dynamo")
    old = ModelMetadata(**base)
    props = old.to_props()
    assert "tasks" not in props and ModelMetadata.from_props(props) == old and old.probability_names() == []
    new = ModelMetadata(**{**base, "outputs": ("features", "probabilities")}, tasks=("CHEMBL1", "CHEMBL2"))
    back = ModelMetadata.from_props(new.to_props())
    assert back == new and back.probability_names() == ["prob_CHEMBL1", "prob_CHEMBL2"]
    bad = {**new.to_props()}
    del bad["tasks"]
    with pytest.raises(ValueError, match="m.onnx: .*'tasks'"):
        ModelMetadata.from_props(bad, source="m.onnx")


def test_probabilities_need_task_names(run, tmp_path):
    from phenovec.train.models import build_model

    with pytest.raises(ValueError, match="needs the assay task names"):
        export_onnx(build_model("resnet_tiny", 5, 3), tmp_path / "x.onnx", channels=list("ABCDE"), crop_size=32,
                    intensity={"input_scaling": "none"}, probabilities=True)
    assert not (tmp_path / "x.onnx").exists()


def test_export_cli_probabilities_flag(run, tmp_path, capsys):
    import argparse
    import json

    from phenovec.export.command import add_export_parser

    crops, ckpt, tasks = run
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers())
    for flag, want in ((None, ["features", "probabilities"]), ("--no-probabilities", ["features"])):
        a = parser.parse_args(["export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--quiet"] + ([flag] if flag else []))
        a.run(a)
        assert json.loads(capsys.readouterr().out)["outputs"] == want
        assert list(read_metadata(tmp_path / "m.onnx").outputs) == want
