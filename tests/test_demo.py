"""The demos a newcomer runs first: their numbers must be able to say something (neither saturated nor at chance),
say what was held out, and every demo writes its own HTML report."""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import shared
from phenovec.pipeline import DEMO_HELD_OUT_PLATE, demo_config, run


def test_synthetic_demo_spreads_holds_out_a_plate_and_reports_qc(tmp_path):
    res = run(demo_config(tmp_path / "demo", null_size=500), progress=False)
    doc = json.loads(res.report_json.read_text())
    # evaluated on the plate the model never saw
    assert doc["scope"]["held_out"] and doc["scope"]["split"] == "test"
    prof = pd.read_parquet(tmp_path / "demo" / "process" / "profiles.parquet")
    test_wells = prof[prof["Metadata_Split"] == "test"]
    assert set(test_wells["Metadata_Plate"]) == {DEMO_HELD_OUT_PLATE}
    assert doc["counts"]["wells"] == len(test_wells) and doc["counts"]["plates"] == 1
    # the metrics spread: graded strengths and an inactive compound are told apart from the strong ones
    rep = pd.DataFrame(doc["replicate_map"]["per_treatment"])
    maps = rep.set_index("Metadata_Treatment")["mean_average_precision"]
    assert maps.std() > 0.1 and (maps < 0.9).sum() >= 2 and (maps > 0.9).sum() >= 2, maps
    assert 0.3 < maps.mean() < 0.95, maps
    assert rep["below_corrected_p"].any() and not rep["below_corrected_p"].all()
    assert maps["ACT-0"] < maps["ACT-1"]  # the inactive Actin compound vs the strong one
    moa = pd.DataFrame(doc["moa_map"]["per_moa"])
    assert len(moa) == doc["counts"]["moas_with_two_treatments"] == 3 and doc["counts"]["moas"] == 5
    assert moa["mean_average_precision"].std() > 0.05
    # figures: every one the issue asks for, each with its data
    assert {"replicate_map", "moa_map", "pca_views", "umap_views", "training_curve", "gallery",
            "qc_cells", "batch_effects"} <= set(doc["figures"])
    assert sum(k.startswith("gradcam_") for k in doc["figures"]) == 6  # one Grad-CAM panel per MOA (and control)
    assert len(doc["training"]) == 6 and doc["views"]["wells"] and len(doc["views"]["wells"]) == len(prof)
    # QC: the empty wells the synthetic plates hold are reported as excluded, by name
    index = pd.read_csv(tmp_path / "demo" / "synth" / "index.csv").drop_duplicates(["Metadata_Plate", "Metadata_Well"])
    empty = index[index["Metadata_WellQC"] == "empty"]
    flagged = pd.DataFrame(doc["qc"]["flagged_wells"])
    got = set(zip(flagged.loc[flagged["cells"] == 0, "Metadata_Plate"], flagged.loc[flagged["cells"] == 0,
                                                                                    "Metadata_Well"]))
    assert got == set(zip(empty["Metadata_Plate"], empty["Metadata_Well"])) and len(got) == 3
    page = res.report_html.read_text()
    assert "test wells (held out from training and model selection)" in page
    assert "Secondary view: the training wells" in page
    assert "of 5 MOAs" in page and "synthetic plates" in page
    # provenance paths are relative to the run folder: no machine path in the shared report
    assert str(tmp_path) not in page and str(tmp_path) not in json.dumps(doc["provenance"])


def test_bbbc021_demo_writes_its_own_folder_and_report(tmp_path, monkeypatch):
    from phenovec.cli import main

    monkeypatch.chdir(tmp_path)
    data = shared("bbbc021-cytominergallery")
    assert main(["demo", "--bbbc021", "--data", str(data), "--null-size", "200", "--quiet"]) == 0
    summary = json.loads((tmp_path / "demo-bbbc021" / "summary.json").read_text())
    written = summary["outputs"]
    assert all((tmp_path / "demo-bbbc021" / f).is_file() for f in written) and "report/report.html" in written
    assert not (tmp_path / "demo-out").exists()
    doc = json.loads((tmp_path / "demo-bbbc021" / "report" / "report.json").read_text())
    assert doc["counts"]["wells"] == 632 and doc["dataset"].startswith("BBBC021")
    maps = pd.DataFrame(doc["replicate_map"]["per_treatment"])["mean_average_precision"]
    assert maps.std() > 0.1 and np.isfinite(maps).all()
    assert "umap_views" in doc["figures"] and not doc["scope"]["held_out"]
