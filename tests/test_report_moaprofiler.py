"""The report's MOAProfiler section: the protocol's numbers equal the evaluate functions on the wells the paper
evaluates (held-out, no controls, multi-compound MOAs), its figures render, and what cannot run is said."""
import numpy as np
import pandas as pd
import pytest

import phenovec.evaluate as pe
from phenovec.report import build_report
from test_report import NULL, _strict_json


def _wells(seed=0):
    """3 plates; 4 MOAs x 3 compounds x 2 wells per plate + a single-compound MOA + 3 DMSO wells per plate; the
    compound-holdout split: one compound per MOA is test."""
    rng = np.random.default_rng(seed)
    d = 16
    sig = {f"moa{i}": rng.normal(0, 2.5, d) for i in range(4)}
    sig["lonely"] = rng.normal(0, 2.5, d)
    rows, x = [], []
    for plate in ("P1", "P2", "P3"):
        for moa, s in sig.items():
            for c in range(1 if moa == "lonely" else 3):
                cpd = f"{moa}-c{c}"
                for w in range(2):
                    split = "test" if c == 0 and moa != "lonely" else "train"
                    rows.append((plate, f"{plate}-{cpd}-{w}", cpd, moa, False, split))
                    x.append(s + rng.normal(0, 1, d))
        for w in range(3):
            rows.append((plate, f"{plate}-dmso-{w}", "DMSO", "DMSO", True, "test" if w == 0 else "train"))
            x.append(rng.normal(0, 1, d))
    meta = pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Treatment", "Metadata_MOA",
                                       "Metadata_Control", "Metadata_Split"])
    return pd.concat([meta, pd.DataFrame(np.array(x), columns=[f"f{i}" for i in range(d)])], axis=1)


def test_section_equals_the_evaluate_functions_on_the_papers_wells(tmp_path):
    df = _wells()
    paths = build_report(df, tmp_path / "rep", null_size=NULL, moaprofiler=True, control_query="DMSO",
                         evaluate_on="held_out")
    doc = _strict_json(paths.json)
    mp = doc["moaprofiler"]
    feats = [c for c in df.columns if c.startswith("f")]
    test = df[(df["Metadata_Split"] == "test") & ~df["Metadata_Control"] & (df["Metadata_MOA"] != "lonely")]
    test = test.reset_index(drop=True)
    assert mp["wells"] == len(test) == 24 and mp["moas"] == 4 and mp["compounds"] == 4
    kw = {"moa_col": "Metadata_MOA"}
    m, x = test.filter(regex="^Metadata_"), test[feats].to_numpy(float)
    delta = pe.moa_similarity_delta(m, x, **kw)[0].iloc[0]
    assert mp["summary"]["delta"] == pytest.approx(delta["delta"], abs=1e-12)
    latent = pe.class_latent_assignment(m, x, **kw)[0].iloc[0]
    assert mp["summary"]["class_latent_f1"] == pytest.approx(latent["f1"], abs=1e-12)
    # one compound per MOA in the test set (a compound hold-out): no same-MOA other-compound pair, so the
    # three-group analysis and the leave-compound-out k-NN are left out, and the notes say so
    assert mp["groups"] is None and mp["knn"] is None
    assert any("three-group similarity and k-NN left out" in n for n in doc["notes"])
    # hold-out identification from the training wells: the test compounds of a clear synthetic signal are found
    train_test = df[~df["Metadata_Control"]].reset_index(drop=True)
    ho = pe.holdout_moa_identification(train_test.filter(regex="^Metadata_"), train_test[feats].to_numpy(float),
                                       compound_col="Metadata_Treatment", split_col="Metadata_Split", **kw)[0].iloc[0]
    assert mp["summary"]["holdout_aggregated_vote"] == pytest.approx(ho["aggregated_vote"])
    assert mp["summary"]["holdout_aggregated_vote"] > mp["summary"]["holdout_baseline"]
    figs = set(doc["figures"])
    assert {"moaprofiler_enrichment", "moaprofiler_delta", "moaprofiler_tsne"} <= figs
    assert "MOAProfiler evaluation" in paths.html.read_text()


def test_all_wells_three_groups_and_left_out_notes(tmp_path):
    df = _wells(seed=1)
    doc = _strict_json(build_report(df, tmp_path / "all", null_size=NULL, moaprofiler=True, control_query="DMSO",
                                    evaluate_on="all").json)
    mp = doc["moaprofiler"]
    assert mp["wells"] == 72  # every plate, no DMSO, no single-compound MOA
    feats = [c for c in df.columns if c.startswith("f")]
    ev = df[~df["Metadata_Control"] & (df["Metadata_MOA"] != "lonely")].reset_index(drop=True)
    knn = pe.knn_accuracy(ev.filter(regex="^Metadata_"), ev[feats].to_numpy(float), moa_col="Metadata_MOA",
                          compound_col="Metadata_Treatment", k=[1, 2, 3])[0]
    got = pd.DataFrame(mp["knn"])
    assert list(got["k"]) == list(range(1, 31))  # k = 1..30 (MAX_K)
    np.testing.assert_allclose(got["f1_weighted"].to_numpy()[:3], knn["f1_weighted"].to_numpy(), atol=1e-12)
    assert "moaprofiler_knn" in doc["figures"]
    g = pd.DataFrame(mp["groups"]).set_index("group")["mean"]
    assert g["same_compound"] > g["different_moa"] and g["same_moa"] > g["different_moa"]
    assert "moaprofiler_groups" in doc["figures"]
    # without a split: the hold-out identification is left out and the notes say why
    nosplit = df.drop(columns=["Metadata_Split"])
    doc = _strict_json(build_report(nosplit, tmp_path / "ns", null_size=NULL, moaprofiler=True,
                                    control_query="DMSO").json)
    assert doc["moaprofiler"]["holdout"] is None
    assert any("hold-out identification left out" in n for n in doc["notes"])
    # off by default
    assert _strict_json(build_report(df, tmp_path / "off", null_size=NULL, control_query="DMSO").json)[
        "moaprofiler"] is None
