"""``phenovec run`` with many plates: a list of indexes, or one index with ``profile.shard_by``, profiled as shards
on a 2-process LocalCluster (``phenovec.profile.shards``); process and report read every shard's outputs, and the
well profiles equal those of the one-run pipeline over the same plates."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from phenovec.io.config_schema import ConfigError
from phenovec.pipeline import load_run_config, run

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
REPORT = {"null_size": 100, "umap": False, "gallery": 0}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A one-run pipeline (synth 2 plates -> profile -> process -> report) with an exported resnet_tiny, and a
    2-process LocalCluster the sharded runs use by address."""
    from distributed import LocalCluster

    from phenovec.export import export_onnx
    from phenovec.train.models import build_model

    root = tmp_path_factory.mktemp("pipeline-shards")
    model = root / "model.onnx"
    export_onnx(build_model("resnet_tiny", 5, 7, seed=0), model, channels=CHANNELS, crop_size=32,
                intensity={"input_scaling": "minmax", "dtype_max": 65535.0}, parity=False)
    cfg = {"out": str(root / "one"), "model": str(model),
           "synth": {"plates": 2, "wells": 12, "sites": 1, "size": 128, "cells": [8, 12], "seed": 4},
           "profile": {"batch_size": 32, "scheduler": "threads", "workers": 1}, "report": REPORT}
    one = run(cfg, progress=False)
    synth = json.loads((root / "one" / "synth" / "stage.json").read_text())["outputs"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield {"root": root, "model": model, "one": one, "synth": synth, "address": cluster.scheduler_address}


def _profiles(res) -> pd.DataFrame:
    return pd.read_parquet(Path(res.out) / "process" / "profiles.parquet")


def test_a_list_of_indexes_runs_as_shards_and_equals_one_run(reference, tmp_path):
    index = pd.read_csv(reference["synth"]["index"])
    plates = list(dict.fromkeys(index["Metadata_Plate"]))
    folder = Path(reference["synth"]["index"]).parent
    paths = []
    for p in plates:  # per-plate indexes beside the synth index (its relative image paths stay valid)
        paths.append(folder / f"index_{p}.csv")
        index[index["Metadata_Plate"] == p].to_csv(paths[-1], index=False)
    cfg = {"out": str(tmp_path / "many"), "model": str(reference["model"]),
           "images": {"index": [str(p) for p in paths], "locations": reference["synth"]["locations"]},
           "profile": {"batch_size": 32, "scheduler": reference["address"]}, "report": REPORT}
    res = run(cfg, progress=False)
    assert list(res.stages) == ["profile", "process", "report"]
    manifest = json.loads((tmp_path / "many" / "profile" / "manifest.json").read_text())
    assert {e["state"] for e in manifest["shards"].values()} == {"done"} and len(manifest["shards"]) == 2
    pd.testing.assert_frame_equal(_profiles(res), _profiles(reference["one"]))
    wells = pd.read_parquet(tmp_path / "many" / "profile" / "wells_mean")
    assert sorted(wells["Metadata_Plate"].unique()) == plates
    numbers = json.loads(res.report_json.read_text())
    assert numbers["counts"]["wells"] == json.loads(reference["one"].report_json.read_text())["counts"]["wells"]
    again = run(cfg, progress=False)
    assert all(v["cached"] for v in again.stages.values())


def test_one_index_with_shard_by_runs_as_shards(reference, tmp_path):
    cfg = {"out": str(tmp_path / "by"), "model": str(reference["model"]),
           "images": {"index": reference["synth"]["index"], "locations": reference["synth"]["locations"]},
           "profile": {"batch_size": 32, "scheduler": reference["address"], "shard_by": "Metadata_Plate",
                       "task_cells": 16}, "report": REPORT}
    res = run(cfg, progress=False)
    shards = json.loads((tmp_path / "by" / "profile" / "manifest.json").read_text())["shards"]
    assert sorted(shards) == sorted(pd.read_csv(reference["synth"]["index"])["Metadata_Plate"].unique())
    pd.testing.assert_frame_equal(_profiles(res), _profiles(reference["one"]))


def test_sharded_config_errors_name_the_key(reference, tmp_path):
    from phenovec.pipeline import _merged_locations, sharded

    idx, loc = reference["synth"]["index"], reference["synth"]["locations"]
    one = load_run_config({"images": {"index": [idx], "locations": [loc]}})
    assert not sharded(one) and _merged_locations(one["images"]["locations"]) == loc  # a list of one: one run
    assert sharded(load_run_config({"images": {"index": [idx, idx], "locations": loc}}))
    with pytest.raises(ConfigError, match=r"images\.index\[1\]: .*absent\.csv does not exist"):
        load_run_config({"images": {"index": [idx, str(tmp_path / "absent.csv")], "locations": loc}})
    with pytest.raises(ConfigError, match=r"images\.locations: 3 tables for 2 indexes"):
        load_run_config({"images": {"index": [idx, idx], "locations": [loc, loc, loc]}})
    with pytest.raises(ConfigError, match=r"preset moaprofiler profiles whole fields in one run"):
        load_run_config({"preset": "moaprofiler", "images": {"index": idx}, "profile": {"shard_by": "Metadata_Plate"}})
    with pytest.raises(ConfigError, match=r"profile\.task_cells must be int"):
        load_run_config({"images": {"index": idx, "locations": loc}, "profile": {"task_cells": "many"}})


def test_an_index_by_url_is_taken_and_hashed_by_its_bytes(reference, tmp_path):
    """A LoadData CSV given by URL (here fsspec's memory://) is accepted as images.index (read when used) and
    keys the stages by its bytes; a missing local index is still refused."""
    import hashlib

    import fsspec

    from phenovec.pipeline import _index_sites, _input_sha256

    data = Path(reference["synth"]["index"]).read_bytes()
    fsspec.filesystem("memory").pipe("/pipeline-url/index.csv", data)
    url = "memory://pipeline-url/index.csv"
    cfg = load_run_config({"images": {"index": [url, url.replace("index", "other")],
                                      "locations": reference["synth"]["locations"]}})
    assert cfg["images"]["index"][0] == url
    assert _input_sha256(url) == hashlib.sha256(data).hexdigest()
    fsspec.filesystem("memory").pipe("/pipeline-url/load_data.csv", b"Metadata_Plate,Metadata_Well,Metadata_Site,"
                                     b"URL_OrigDNA\nP1,A01,1,memory://pipeline-url/a.tif\n")
    sites = _index_sites("memory://pipeline-url/load_data.csv", ["DNA"])
    assert list(sites["Metadata_Well"]) == ["A01"]
