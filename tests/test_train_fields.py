"""Training on field stores (MOAProfiler, ``data.fields``): the field table and its well-keeping splits, the input
rule (per-field min-max then the training fields' channel statistics) against numpy, a short run's checkpoint,
export of the field checkpoint (its normalisation in the metadata; a crop checkpoint refused) and the ONNX field
model profiled on the raw images against PyTorch on the same fields, with its class probabilities."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from phenovec.ingest.fields import tile_index
from phenovec.ingest.index import read_image_index
from phenovec.ingest.synth import synth_plate
from phenovec.train import ConfigError, load_checkpoint, train

torch.set_num_threads(1)
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
WELL = ["Metadata_Plate", "Metadata_Well"]
FACTOR, SIZE = 4, 128  # fields of 32 x 32 after the downsampling


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("field_train")
    p = synth_plate(tmp / "plate", plates=2, wells=12, sites_per_well=2, size=SIZE, cells_per_site=(4, 8), seed=3,
                    progress=False)
    idx = read_image_index(p["index"], CHANNELS)
    tile_index(idx, tmp / "fields", factor=FACTOR, chunk_sites=4, progress=False)  # float32 block means
    return tmp, p, idx


def _cfg(fields, out, **over):
    cfg = {"data": {"fields": str(fields), "batch_size": 8, "workers": 0, "min_test_plates": 0},
           "model": {"recipe": "moaprofiler", "arch": "resnet_tiny"},
           "optim": {"lr": 0.01, "milestones": [1]},
           "train": {"epochs": 2, "out": str(out), "threads": 1, "seed": 5}}
    for k, v in over.items():
        sec, key = k.split(".")
        cfg[sec][key] = v
    return cfg


def _minmax(x: np.ndarray) -> np.ndarray:
    """Per field and channel (x - min) / (max - min) in float32 (a constant plane -> 0), numpy."""
    x = x.astype(np.float32)
    lo = x.min(axis=(2, 3), keepdims=True)
    span = x.max(axis=(2, 3), keepdims=True) - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


def test_field_store_rule_and_statistics_against_numpy(plate, tmp_path):
    """open_fields gives one row per field; the channel statistics are numpy's over every pixel of the training
    fields after the per-field min-max (a factor-1 uint16 store too), and the evaluation input is
    (minmax - mean) / std while the training input is the min-max alone (the augmentation comes before the
    standardisation)."""
    from phenovec.train.field_data import field_channel_moments, open_fields
    from phenovec.train.inputs import field_rule

    tmp, p, idx = plate
    fs = open_fields(tmp / "fields")
    assert len(fs.cells) == 48 and fs.shape == (48, 5, 32, 32) and fs.factor == FACTOR and fs.field_size == SIZE
    arr = zarr.open_array(str(tmp / "fields" / "tiles.zarr"), mode="r")[:]
    rows = np.array([3, 10, 11, 40, 47])
    mean, std = field_channel_moments(fs, rows, batch=2)
    ref = _minmax(arr[rows]).astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-10)
    sample = field_channel_moments(fs, np.arange(48), max_fields=6, seed=1)
    assert sample != field_channel_moments(fs, np.arange(48))  # a 6-field sample, not all
    data = {"fields": str(tmp / "fields"), "stats_fields": None}
    rule = field_rule(fs, data, rows, 0)
    x = torch.from_numpy(arr[:4])
    np.testing.assert_allclose(rule.train_scale(x).numpy(), _minmax(arr[:4]), rtol=0, atol=1e-7)
    want = (_minmax(arr[:4]) - np.float32(mean)[None, :, None, None]) / np.float32(std)[None, :, None, None]
    np.testing.assert_allclose(rule.eval_scale(x).numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rule.augment(None)(rule.train_scale(x)).numpy(), want, rtol=1e-5, atol=1e-5)
    dc = rule.data_config
    assert dc["source"] == "fields" and dc["box_size"] == 32 and dc["channels"] == CHANNELS
    assert dc["intensity"] == {"input_scaling": "field", "factor": FACTOR, "field_size": SIZE, "dtype_max": 65535.0,
                               "mean": mean, "std": std, "per_image": "minmax", "trained_on": "fields"}
    # a full-resolution (factor 1) store holds raw uint16 fields; the same rule applies
    sub = read_image_index(pd.read_csv(p["index"]).iloc[:3], CHANNELS, root=p["index"].parent)
    tile_index(sub, tmp_path / "full", progress=False)
    full = open_fields(tmp_path / "full")
    assert full.dtype == np.uint16 and full.field_size == SIZE and full.side == SIZE
    raw = zarr.open_array(str(tmp_path / "full" / "tiles.zarr"), mode="r")[:]
    m1, s1 = field_channel_moments(full, np.arange(3))
    np.testing.assert_allclose(m1, _minmax(raw).astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(s1, _minmax(raw).astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-10)


def test_train_on_fields_then_export_and_profile_parity(plate, tmp_path, capsys):
    """A short moaprofiler-recipe run on fields: the well-holdout split keeps every field of a well in one set,
    classes are the MOAs with DMSO's ('control'), the checkpoint records the field contract with the training
    fields' statistics; `phenovec export --fields --logits` exports it unchanged (metadata), and profiling the raw
    images with it equals PyTorch on the same fields (tile store -> the training rule), probabilities included;
    the checkpoint exported without --fields, and a crop checkpoint with --fields, are refused."""
    from phenovec.cli import main
    from phenovec.profile import profile_fields
    from phenovec.runtime import read_metadata
    from phenovec.train.checkpoint import model_from_checkpoint
    from phenovec.train.field_data import field_channel_moments, open_fields
    from phenovec.train.inputs import field_rule

    tmp, p, idx = plate
    out = tmp_path / "run"
    res = train(_cfg(tmp / "fields", out), progress=False)
    assert res.epochs == 2 and res.classes == sorted(pd.read_csv(p["index"])["Metadata_MOA"].unique())
    assert "control" in res.classes
    split = pd.read_parquet(out / "split.parquet")
    assert len(split) == 48 and (split.groupby(WELL)["split"].nunique() == 1).all()
    assert set(split["split"]) == {"train", "val", "test"}
    ck = load_checkpoint(out / "best.pt")
    dc = ck["data_config"]
    fs = open_fields(tmp / "fields")
    train_rows = split.loc[split["split"] == "train", "row"].to_numpy()
    mean, std = field_channel_moments(fs, train_rows)
    assert dc["intensity"]["mean"] == mean and dc["intensity"]["std"] == std
    assert dc["source"] == "fields" and dc["classes"] == res.classes and dc["label_column"] == "Metadata_MOA"
    m = pd.read_csv(out / "metrics.csv")
    assert m["train_cells"].iloc[0] > int((split["split"] == "train").sum())  # minority MOAs duplicated

    onnx_path = tmp_path / "field.onnx"
    assert main(["export", str(out / "best.pt"), "--fields", "--logits", "-o", str(onnx_path)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["input_kind"] == "fields" and rep["crop_size"] == 32 and rep["max_abs_diff"] <= 1e-4
    assert rep["parity_source"] == "given" and rep["parity_n"] == 2  # the training store's first fields
    meta = read_metadata(onnx_path)
    assert meta.intensity == dc["intensity"] and meta.classes == tuple(res.classes)
    assert meta.outputs == ("features", "logits")

    prof = profile_fields(onnx_path, p["index"], tmp_path / "prof", batch_size=8, workers=1, progress=False)
    from phenovec.io.embeddings import EmbeddingStore

    got = np.asarray(EmbeddingStore(prof.paths["embeddings"]).array[:])
    model, _ = model_from_checkpoint(out / "best.pt")
    rule = field_rule(fs, {"fields": str(tmp / "fields"), "stats_fields": None}, train_rows, 0)
    tiles = zarr.open_array(str(tmp / "fields" / "tiles.zarr"), mode="r")[:]
    assert list(fs.cells["row"]) == list(range(48))  # tile rows are the index's sites in order
    with torch.no_grad():
        f, logits = model.forward_features(rule.eval_scale(torch.from_numpy(tiles)))
    np.testing.assert_allclose(got, f.numpy(), atol=1e-4, rtol=0)
    probs = pd.read_parquet(prof.paths["field_probabilities"])
    cols = [f"prob_{c}" for c in res.classes]
    np.testing.assert_allclose(probs[cols].to_numpy(), torch.softmax(logits.double(), 1).numpy(), atol=1e-5)
    pd.testing.assert_frame_equal(probs[WELL], idx.sites[WELL].reset_index(drop=True))

    # refusals: the field checkpoint as a crop model; another field size; a crop checkpoint as a field model
    assert main(["export", str(out / "best.pt"), "-o", str(tmp_path / "x.onnx")]) != 0
    assert "trained on whole fields" in capsys.readouterr().err
    assert main(["export", str(out / "best.pt"), "--fields", "--field-size", "256", "-o",
                 str(tmp_path / "x.onnx")]) != 0
    assert "field_size=256 differs" in capsys.readouterr().err
    from phenovec.train.checkpoint import save_checkpoint

    crop_ck = save_checkpoint({"model_config": model.config, "model_state": model.state_dict(),
                               "data_config": {"channels": CHANNELS, "box_size": 32, "input_scaling": "minmax",
                                               "dtype_max": 65535.0}}, tmp_path / "crop.pt")
    assert main(["export", str(crop_ck), "--fields", "--field-size", str(SIZE), "-o", str(tmp_path / "x.onnx")]) != 0
    err = capsys.readouterr().err
    assert "crop.pt: the checkpoint was trained on crops" in err and "input_scaling = 'minmax'" in err
    assert not (tmp_path / "x.onnx").exists()


def test_field_config_errors(plate, tmp_path):
    tmp, _, _ = plate
    with pytest.raises(ConfigError, match="data.crops or data.fields, not both"):
        train(_cfg(tmp / "fields", tmp_path / "r", **{"data.crops": str(tmp / "fields")}), progress=False)
    with pytest.raises(ConfigError, match="data.normalize"):
        train(_cfg(tmp / "fields", tmp_path / "r", **{"data.normalize": "scale"}), progress=False)
    with pytest.raises(ConfigError, match="train.task: classify only"):
        train(_cfg(tmp / "fields", tmp_path / "r", **{"train.task": "simclr"}), progress=False)
    from phenovec.train.data import DataError

    with pytest.raises(DataError, match="not a field store"):
        train(_cfg(tmp / "plate", tmp_path / "r"), progress=False)
    assert not (tmp_path / "r").exists()


def test_tiles_made_with_intensity_warned_then_refused_at_export(plate, tmp_path):
    """Training on tiles rescaled at tiling time is warned about, and exporting such a checkpoint as a field model
    is refused: profiling decodes raw fields."""
    from phenovec.export.field_model import export_field_model
    from phenovec.train.checkpoint import save_checkpoint
    from phenovec.train.field_data import open_fields
    from phenovec.train.inputs import field_rule
    from phenovec.train.models import build_model

    tmp, p, _ = plate
    sub = read_image_index(pd.read_csv(p["index"]).iloc[:3], CHANNELS, root=p["index"].parent)
    tile_index(sub, tmp_path / "pct", factor=FACTOR, intensity=("percentile", 1, 99), progress=False)
    fs = open_fields(tmp_path / "pct")
    with pytest.warns(UserWarning, match=r"tiled with intensity .*will refuse"):
        rule = field_rule(fs, {"fields": str(tmp_path / "pct"), "stats_fields": None}, np.arange(3), 0)
    model = build_model("resnet_tiny", 5, 2)
    ck = save_checkpoint({"model_config": model.config, "model_state": model.state_dict(),
                          "data_config": {**rule.data_config, "classes": ["a", "b"]}}, tmp_path / "pct.pt")
    with pytest.raises(ValueError, match=r"pct\.pt: the checkpoint was trained on a field store made with intensity "
                                         r"rescale \['percentile', 1\.0, 99\.0\]"):
        export_field_model(ck, tmp_path / "pct.onnx", channels=None)
    assert not (tmp_path / "pct.onnx").exists()


def test_field_run_resumes_to_the_uninterrupted_weights(plate, tmp_path):
    """A field run stopped after its first epoch (train.max_minutes: 0) and rerun finishes with the weights of an
    uninterrupted run, bit for bit (the channel statistics come back from the checkpoint)."""
    tmp, _, _ = plate
    over = {"model.arch": "gapnet", "train.epochs": 2}
    whole = train(_cfg(tmp / "fields", tmp_path / "whole", **over), progress=False)
    cut = train(_cfg(tmp / "fields", tmp_path / "cut", **over, **{"train.max_minutes": 0}), progress=False)
    assert cut.stopped_early and cut.epochs == 1
    done = train(_cfg(tmp / "fields", tmp_path / "cut", **over), progress=False)
    assert done.epochs == 2 and not done.stopped_early
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert a["data_config"] == b["data_config"]
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "metrics.csv").drop(
        columns=["train_seconds", "cells_per_s"]), pd.read_csv(tmp_path / "cut" / "metrics.csv").drop(
        columns=["train_seconds", "cells_per_s"]))
