"""phenovec run / demo: every stage chained, cached by hash, resumable; config errors name the key or file; the
Python API mirrors the CLI."""
import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

import phenovec
from phenovec.io.config_schema import ConfigError
from phenovec.pipeline import default_config, load_run_config, run

SMALL = {"synth": {"plates": 2, "wells": 14, "sites": 1, "size": 192, "cells": [15, 20], "seed": 1},
         "crop": {"box_size": 48},
         "train": {"model": {"arch": "resnet_tiny"}, "optim": {"lr": 0.05, "warmup_epochs": 0},
                   "train": {"epochs": 2, "threads": 2}, "data": {"batch_size": 64, "workers": 0}},
         "report": {"null_size": 200, "umap": False}}


def _chromium_figures(html) -> tuple[int, int]:
    import re

    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          html.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    got = re.search(r'data-figures-rendered="(\d+)"', dom)
    want = re.search(r'data-figures-expected="(\d+)"', dom)
    assert got and want, "chromium did not run the report's render check (is chromium installed? bash .ci/chromium.sh)"
    return int(got.group(1)), int(want.group(1))


def test_run_chains_every_stage_caches_and_rebuilds_what_changed(tmp_path):
    cfg = {**SMALL, "out": str(tmp_path / "run")}
    res = run(cfg, progress=False)
    assert [s for s in res.stages] == ["synth", "crop", "train", "export", "profile", "process", "report"]
    assert not any(v["cached"] for v in res.stages.values())
    # the export's parity check ran on real crops: the first crops of the crop stage's store, scaled as training
    exported = json.loads((tmp_path / "run" / "export" / "stage.json").read_text())["outputs"]
    assert exported["parity_source"] == str(tmp_path / "run" / "crop" / "crops")
    assert exported["max_abs_diff"] <= 1e-4
    rendered, expected = _chromium_figures(res.report_html)
    assert rendered == expected > 0
    numbers = json.loads(res.report_json.read_text())
    profiles = pd.read_parquet(tmp_path / "run" / "process" / "profiles.parquet")
    # the report evaluates the wells the model did not train on (validation wells here: no test plate), and says so
    assert sum(numbers["scope"]["by_split"].values()) == len(profiles) == 28
    assert numbers["scope"]["held_out"] and numbers["scope"]["split"] == "val"
    assert numbers["counts"]["wells"] == numbers["scope"]["wells"] == (profiles["Metadata_Split"] == "val").sum()
    assert set(profiles["Metadata_Split"]) == {"train", "val"}
    assert numbers["training"] and len(numbers["training"]) == 2 and numbers["qc"]["cells_per_well"]
    assert "/" not in json.dumps(numbers["provenance"]["run"]["config"]["out"])  # paths relative to the run
    assert numbers["provenance"]["run"]["config"]["synth"]["seed"] == 1
    # batch effects over both plates: the processed profiles beside the raw per-well means of the same wells
    be = numbers["batch_effects"]
    assert be["plates"] == 2 and be["methods"] == ["profiles", "well means before processing"] and be["scaled"]
    # the well profiles are the per-well means of the spherized single-cell embeddings the profile stage wrote
    assert {"Metadata_Treatment", "Metadata_MOA", "Metadata_Plate"} <= set(profiles.columns)
    again = run(cfg, progress=False)
    assert all(v["cached"] for v in again.stages.values())
    changed = run({**cfg, "report": {"null_size": 300, "umap": False}}, progress=False)
    assert [k for k, v in changed.stages.items() if not v["cached"]] == ["report"]
    steps = [{"aggregate": {"strata": ["Metadata_Plate", "Metadata_Well"], "operation": "median"}}]
    changed = run({**cfg, "process": {"steps": steps}}, progress=False)
    assert [k for k, v in changed.stages.items() if not v["cached"]] == ["process", "report"]


def test_an_interrupted_stage_resumes(tmp_path, monkeypatch):
    cfg = {**SMALL, "out": str(tmp_path / "run")}
    import phenovec.profile as prof

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prof, "profile_sites", boom)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, progress=False)
    marker = json.loads((tmp_path / "run" / "profile" / "stage.json").read_text())
    assert marker["complete"] is False
    monkeypatch.undo()
    res = run(cfg, progress=False)
    assert [k for k, v in res.stages.items() if not v["cached"]] == ["profile", "process", "report"]


@pytest.mark.parametrize("raw, match", [
    ({"synth": {}, "outt": "x"}, r"unknown key 'outt'.*did you mean 'out'"),
    ({"synth": {"wells": "many"}}, r"synth\.wells must be int, got str"),
    ({"images": {"index": "nope.csv", "locations": "n.csv"}}, r"images\.index: .*nope\.csv does not exist"),
    ({"images": {"locations": "n.csv"}}, r"images\.index is required"),
    ({"synth": {}, "model": "absent.onnx"}, r"model: .*absent\.onnx does not exist"),
    ({"synth": {}, "train": {"optim": {"lrr": 1}}}, r"\(train\): unknown key 'optim\.lrr'"),
    ({"synth": {}, "train": {"data": {"crops": "c"}}}, r"train\.data\.crops is set by the pipeline"),
    ({"synth": {}, "process": {"steps": [{"normalise": {}}]}}, r"process\.steps: .*normalise"),
    # a batch step's typo or missing filter: refused when the config is read, not after crop / train / profile
    ({"synth": {}, "process": {"steps": [{"harmony": {"vars": "Metadata_Plate"}}]}},
     r"process\.steps: recipe step 1 \(harmony\): unknown argument 'vars' \(arguments: .*vars_use"),
    ({"synth": {}, "process": {"steps": [{"aggregate": {}}, {"tvn": {"batch": "Metadata_Plate"}}]}},
     r"process\.steps: .*step 2 \(tvn\) needs controls to fit"),
    ({"synth": {}, "profile": {"dtype": "int8"}}, r"profile\.dtype = 'int8' is not one of"),
])
def test_config_errors_name_the_key_or_file(tmp_path, raw, match):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=match):
        load_run_config(p)


def test_cli_print_config_round_trips_and_api_mirrors_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "phenovec.cli", "run", "--print-config"], capture_output=True,
                       text=True, check=True)
    printed = yaml.safe_load(r.stdout)
    assert printed == default_config()
    printed["synth"] = SMALL["synth"]
    cfg = load_run_config(printed)
    assert cfg["train"]["model"]["arch"] == "efficientnet_b0" and cfg["report"]["control"] == "DMSO"
    r = subprocess.run([sys.executable, "-m", "phenovec.cli", "run", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "missing.yaml does not exist" in r.stderr
    from phenovec.ingest.crop import crop_index
    from phenovec.pipeline import run as run_fn

    assert phenovec.crop is crop_index and phenovec.run is run_fn


def test_cli_run_out_overrides_the_configuration(tmp_path, monkeypatch):
    import phenovec.pipeline as pipeline
    from phenovec.cli import main

    seen = {}

    def fake_run(config, progress):
        seen.update(config=config, progress=progress)
        raise ValueError("stop here")

    monkeypatch.setattr(pipeline, "run", fake_run)
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"out": "from-config", "synth": {"plates": 1}}))
    assert main(["run", str(p), "-o", str(tmp_path / "elsewhere"), "--quiet"]) == 2
    assert seen["config"]["out"] == str((tmp_path / "elsewhere").resolve()) and seen["progress"] is False
    assert seen["config"]["synth"]["plates"] == 1 and seen["config"]["train"] == default_config()["train"]


def test_preset_gapnet_runs_an_assays_stage_and_reports_it(tmp_path):
    """preset: gapnet: synthetic assay labels from the synth stage, train.task assays with the paper's recipe split
    by compound, an assays stage scoring the held-out compounds, and an assay section in the report."""
    from phenovec.pipeline import DEMO_ASSAY_MOAS

    treatments = [["DMSO", "control"]] + [[f"{m[:3].upper()}-{i}", m] for m in DEMO_ASSAY_MOAS[:3] for i in range(4)]
    cfg = {"out": str(tmp_path / "run"), "preset": "gapnet",
           "synth": {"plates": 1, "wells": 17, "sites": 1, "size": 192, "cells": [12, 16], "seed": 2,
                     "treatments": treatments, "control_wells": 5, "assays": 6},
           "crop": {"box_size": 48},
           "train": {"data": {"batch_size": 32, "workers": 0}, "train": {"epochs": 1, "threads": 2}},
           "report": {"null_size": 100, "umap": False, "gallery": 0}}
    res = run(cfg, progress=False)
    assert list(res.stages) == ["synth", "crop", "train", "assays", "export", "profile", "process", "report"]
    train_stage = json.loads((tmp_path / "run" / "train" / "stage.json").read_text())["config"]
    assert train_stage["model"]["arch"] == "gapnet" and train_stage["data"]["split"] == "compound"
    assert train_stage["optim"]["lr"] == 0.01 and train_stage["train"]["task"] == "assays"
    summary = json.loads((tmp_path / "run" / "assays" / "summary.json").read_text())
    split = pd.read_parquet(tmp_path / "run" / "train" / "split.parquet")
    held = set(split.loc[split["split"] == summary["split"], "Metadata_Treatment"])
    preds = pd.read_parquet(tmp_path / "run" / "assays" / "predictions.parquet")
    assert set(preds["Metadata_Treatment"]) == held and summary["n_tasks"] == 6
    doc = json.loads(res.report_json.read_text())
    assert doc["assays"]["summary"]["n_tasks"] == 6 and len(doc["assays"]["per_task"]) == 6
    assert "Assay prediction" in res.report_html.read_text() and "assays" in doc["figures"]


def test_preset_moaprofiler_trains_on_fields_and_identifies_held_out_compounds(tmp_path):
    """preset: moaprofiler (the demo's configuration): tiles instead of crops, the field classifier with the paper's
    recipe and the compound hold-out, export --fields --logits, field profiles -> DMSO-standardised well medians,
    and a report whose MOAProfiler section identifies the held-out compounds' MOAs above chance."""
    from phenovec.pipeline import demo_moaprofiler_config

    res = run(demo_moaprofiler_config(tmp_path / "mp", null_size=100), progress=False)
    assert list(res.stages) == ["synth", "tiles", "train", "export", "profile", "process", "report"]
    train_stage = json.loads((tmp_path / "mp" / "train" / "stage.json").read_text())
    assert train_stage["config"]["model"]["recipe"] == "moaprofiler"
    assert train_stage["config"]["data"]["split"] == "compound_holdout"
    from phenovec.runtime.session import read_metadata

    meta = read_metadata(tmp_path / "mp" / "export" / "model.onnx")
    assert meta.input_kind == "fields"
    probs = pd.read_parquet(tmp_path / "mp" / "profile" / "field_probabilities.parquet")
    assert len(probs) == 2 * 30 * 2 and {"prob_control", "prob_Actin disruptor"} <= set(probs.columns)
    doc = json.loads(res.report_json.read_text())
    mp = doc["moaprofiler"]
    split = pd.read_parquet(tmp_path / "mp" / "train" / "split.parquet")
    held = set(split.loc[split["split"] == "test", "Metadata_Treatment"])
    assert len(held) == 3 and {r["Metadata_Treatment"] for r in mp["holdout"]} == held
    s = mp["summary"]
    assert s["holdout_baseline"] == pytest.approx(1 / 3)
    assert max(s["holdout_aggregated_vote"], s["holdout_individual_vote"]) > s["holdout_baseline"]
    assert "MOAProfiler evaluation" in res.report_html.read_text()


def test_preset_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"preset = 'gapnett' is unknown.*did you mean 'gapnet'"):
        load_run_config({"synth": {}, "preset": "gapnett"})
    for name in ("index.csv", "nuclei.csv"):
        (tmp_path / name).write_text("x\n")
    images = {"index": str(tmp_path / "index.csv"), "locations": str(tmp_path / "nuclei.csv")}
    with pytest.raises(ConfigError, match="preset gapnet needs train.assays.labels"):
        load_run_config({"preset": "gapnet", "images": images})
