"""The training loop: checkpoints readable with weights_only, metrics, exact resume after kill -9, refusals."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from phenovec.train import ConfigError, embed_crops, load_checkpoint, train


def _cfg(crops, out, **over):
    cfg = {"data": {"crops": str(crops), "batch_size": 64, "workers": 0, "subsample": 0.5},
           "model": {"arch": "resnet_tiny"},
           "optim": {"lr": 0.05, "warmup_epochs": 1},
           "train": {"epochs": 2, "out": str(out), "threads": 1, "seed": 7}}
    for k, v in over.items():
        sec, key = k.split(".")
        cfg[sec][key] = v
    return cfg


def _weights(path):
    return load_checkpoint(path)["model_state"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_writes_checkpoints_metrics_and_split(synth_crops, tmp_path):
    res = train(_cfg(synth_crops, tmp_path / "run"), progress=False)
    assert res.epochs == 2 and len(res.metrics) == 2
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(m["epoch"]) == [1, 2] and m["val_accuracy"].between(0, 1).all()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["best"]["epoch"] == res.best_epoch
    ck = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)  # no unpickling needed
    assert ck["epoch"] == 2 and ck["data_config"]["input_scaling"] == "minmax"
    assert ck["data_config"]["channels"] == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert ck["data_config"]["classes"] == res.classes and len(res.classes) == 7
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == res.best_epoch
    split = pd.read_parquet(tmp_path / "run" / "split.parquet")
    assert (split.groupby(["Metadata_Plate", "Metadata_Well"])["split"].nunique() == 1).all()
    assert set(split["split"]) == {"train", "val"}
    # a finished run is not retrained; a changed configuration is refused
    before = os.path.getmtime(tmp_path / "run" / "last.pt")
    again = train(_cfg(synth_crops, tmp_path / "run"), progress=False)
    assert again.epochs == 2 and os.path.getmtime(tmp_path / "run" / "last.pt") == before
    with pytest.raises(ConfigError, match="another configuration"):
        train(_cfg(synth_crops, tmp_path / "run", **{"optim.lr": 0.01}), progress=False)
    cells, emb = embed_crops(tmp_path / "run" / "last.pt", synth_crops, batch_size=128, progress=False)
    assert emb.shape == (len(cells), 128) and np.isfinite(emb).all()


def test_worker_processes_do_not_change_the_result(synth_crops, tmp_path):
    over = {"train.epochs": 1, "data.subsample": 0.3, "optim.warmup_epochs": 0}
    train(_cfg(synth_crops, tmp_path / "w0", **over), progress=False)
    train(_cfg(synth_crops, tmp_path / "w2", **over, **{"data.workers": 2}), progress=False)
    assert _same(_weights(tmp_path / "w0" / "last.pt"), _weights(tmp_path / "w2" / "last.pt"))


def test_exact_resume_after_kill_9(synth_crops, tmp_path):
    """A run killed (SIGKILL) during epoch 2 of 3 resumes and ends with the uninterrupted run's weights."""
    over = {"train.epochs": 3, "data.subsample": 0.4}
    ref = train(_cfg(synth_crops, tmp_path / "ref", **over), progress=False)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_cfg(synth_crops, tmp_path / "killed", **over)))
    proc = subprocess.Popen([sys.executable, "-m", "phenovec.cli", "train", str(cfg_path), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "killed" / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(pd.read_csv(metrics)) == 1:
            time.sleep(0.5)  # inside epoch 2
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1
    res = train(cfg_path, progress=False)
    assert res.epochs == 3
    assert _same(_weights(tmp_path / "killed" / "last.pt"), _weights(ref.last))
    pd.testing.assert_frame_equal(res.metrics.drop(columns=["train_seconds", "cells_per_s"]),
                                  ref.metrics.drop(columns=["train_seconds", "cells_per_s"]))


def test_bad_data_errors(synth_crops, tmp_path):
    with pytest.raises(ValueError, match="no column 'Metadata_Nope'"):
        train(_cfg(synth_crops, tmp_path / "x", **{"data.label": "Metadata_Nope"}), progress=False)
    with pytest.raises(ValueError, match=r"holdout_plates \['P9'\]"):
        train(_cfg(synth_crops, tmp_path / "x", **{"data.holdout_plates": ["P9"]}), progress=False)


def test_moaprofiler_splits_from_the_configuration(synth_crops, tmp_path):
    """data.split: well_holdout / compound_holdout (phenovec.train.moa_splits) reach the trainer: its split.parquet
    keeps wells whole, holds a test set, and the compound hold-out leaves out one compound per multi-compound MOA;
    refusals name the key."""
    res = train(_cfg(synth_crops, tmp_path / "well", **{"data.label": "Metadata_MOA", "data.split": "well_holdout",
                                                          "data.min_test_plates": 2, "train.epochs": 1,
                                                          "optim.warmup_epochs": 0}),
                progress=False)
    split = pd.read_parquet(tmp_path / "well" / "split.parquet")
    assert (split.groupby(["Metadata_Plate", "Metadata_Well"])["split"].nunique() == 1).all()
    assert set(split["split"]) == {"train", "val", "test"} and len(res.classes) == 4
    test_plates = split[split["split"] == "test"].groupby("Metadata_MOA")["Metadata_Plate"].nunique()
    assert (test_plates == 2).all(), test_plates  # spread over both plates
    train(_cfg(synth_crops, tmp_path / "cpd", **{"data.label": "Metadata_MOA", "data.split": "compound_holdout",
                                                 "data.compound_column": "Metadata_Treatment", "train.epochs": 1,
                                                 "optim.warmup_epochs": 0}),
          progress=False)
    split = pd.read_parquet(tmp_path / "cpd" / "split.parquet")
    held = split[split["split"] == "test"].groupby("Metadata_MOA")["Metadata_Treatment"].unique()
    assert sorted(held.index) == ["Actin disruptor", "Aurora kinase inhibitor", "Mitochondrial stressor"]
    assert all(len(v) == 1 for v in held)  # one compound per MOA with two; DMSO (one compound) only trains
    for t in held:
        assert set(split.loc[split["Metadata_Treatment"] == t[0], "split"]) == {"test"}
    with pytest.raises(ConfigError, match="compound_holdout needs data.compound_column"):
        train(_cfg(synth_crops, tmp_path / "x", **{"data.split": "compound_holdout"}), progress=False)
    with pytest.raises(ConfigError, match="data.holdout_plates is for data.split: plates"):
        train(_cfg(synth_crops, tmp_path / "y", **{"data.split": "well_holdout", "data.holdout_plates": ["P1"]}),
              progress=False)
