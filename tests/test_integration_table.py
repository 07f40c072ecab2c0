"""The overall score (by hand and against scib-metrics' Benchmarker), integration_table, its errors and its CLI."""
import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phenovec.evaluate.integration as pi
from integration_data import synthetic
from phenovec.evaluate.integration import score as S


def test_overall_score_by_hand():
    wide = pd.DataFrame({"ilisi_knn": [0.1, 0.5, 0.3], "graph_connectivity": [0.9, 0.9, 0.9],
                         "silhouette_label": [0.6, 0.4, np.nan], "clisi_knn": [1.0, 0.8, 0.9]},
                        index=["raw", "harmony", "tvn"])
    types = {"ilisi_knn": S.BATCH, "graph_connectivity": S.BATCH, "silhouette_label": S.BIO, "clisi_knn": S.BIO}
    out = pi.overall_scores(wide, types)
    # scaled: ilisi 0, 1, .5; graph connectivity constant -> 0; silhouette 1, 0, NaN; clisi 1, 0, .5
    batch = np.array([0.0, 0.5, 0.25])
    bio = np.array([1.0, 0.0, 0.5])
    np.testing.assert_allclose(out[S.BATCH], batch)
    np.testing.assert_allclose(out[S.BIO], bio)
    np.testing.assert_allclose(out[S.TOTAL], 0.4 * batch + 0.6 * bio)
    assert out["rank"].tolist() == [1, 3, 2]
    raw = pi.overall_scores(wide, types, min_max=False)
    np.testing.assert_allclose(raw[S.BIO], [0.8, 0.6, 0.9])
    with pytest.raises(ValueError, match="metric type unknown"):
        pi.overall_scores(wide, {"ilisi_knn": S.BATCH})


def test_overall_score_equals_scib_benchmarker():
    import anndata
    from scib_metrics.benchmark import Benchmarker

    rng = np.random.default_rng(0)
    methods = ["raw", "a", "b", "c"]
    metrics = {"silhouette_label": S.BIO, "clisi_knn": S.BIO, "isolated_labels": S.BIO,
               "ilisi_knn": S.BATCH, "kbet_per_label": S.BATCH, "pcr_comparison": S.BATCH}
    wide = pd.DataFrame(rng.random((4, len(metrics))), index=methods, columns=list(metrics))
    # a metric on which the methods tie up to one rounding step: sklearn's MinMaxScaler (scib's) keeps it ~0; a plain
    # division by its range (phenovec before) stretched it to 0 and 1 and moved the ranking
    wide["isolated_labels"] = [0.3, np.nextafter(0.3, 1.0), 0.3, 0.3]
    ad = anndata.AnnData(np.zeros((4, 2)), obs=pd.DataFrame({"b": list("xyxy"), "l": list("ppqq")}))
    bm = Benchmarker(ad, "b", "l", methods, progress_bar=False)
    res = wide.T.copy()
    res["Metric Type"] = ["Bio conservation" if metrics[m] == S.BIO else "Batch correction" for m in res.index]
    bm._results = res
    ref = bm.get_results(min_max_scale=True, clean_names=False).drop(index="Metric Type")
    ours = pi.overall_scores(wide, metrics)
    for col, theirs in ((S.BATCH, "Batch correction"), (S.BIO, "Bio conservation"), (S.TOTAL, "Total")):
        np.testing.assert_allclose(ours[col].to_numpy(float), ref.loc[methods, theirs].to_numpy(float), atol=1e-12)
    assert pi.min_max_scale(wide)["isolated_labels"].abs().max() < 1e-15


@pytest.fixture(scope="module")
def methods():
    X, labels, batches = synthetic(n=400, n_labels=4, batch_shift=1.5, seed=5)
    meta = pd.DataFrame({"Metadata_Plate": batches, "Metadata_moa": labels})
    centred = X.copy()
    for b in np.unique(batches):
        centred[batches == b] -= centred[batches == b].mean(axis=0)
    return meta, {"raw": X, "centred": centred}


def test_integration_table_ranks_batch_removal_first(methods, tmp_path):
    meta, emb = methods
    res = pi.integration_table(emb, "Metadata_Plate", "Metadata_moa", metadata=meta, sbee=True)
    wide = res.wide()
    assert set(wide.columns) == {m for m in pi.METRIC_TYPES if "leiden" not in m}
    # the metrics computed inside the table are the metrics computed alone
    g = pi.knn_graph(emb["centred"], 90)
    assert wide.loc["centred", "ilisi_knn"] == pi.ilisi_knn(g, meta["Metadata_Plate"])
    assert wide.loc["centred", "kbet_per_label"] == pi.kbet_per_label(g.subset_neighbors(50), meta["Metadata_Plate"],
                                                                      meta["Metadata_moa"])
    assert wide.loc["centred", "sbee"] == pi.sbee(g, emb["centred"], meta["Metadata_Plate"], meta["Metadata_moa"])
    assert wide.loc["centred", "sbee"] > wide.loc["raw", "sbee"]
    assert "sbee" not in pi.integration_table(emb, "Metadata_Plate", "Metadata_moa", metadata=meta,
                                              mean_average_precision=False).wide().columns
    assert wide.loc["raw", "pcr_comparison"] == 0 and wide.loc["centred", "pcr_comparison"] > 0.99
    scores = res.scores.set_index("method")
    assert scores.loc["centred", "rank"] == 1 and scores.loc["centred", S.BATCH] == 1.0
    assert wide.loc["centred", "ilisi_knn"] > wide.loc["raw", "ilisi_knn"]
    png = pi.integration_heatmap(res, tmp_path / "heat.png")
    assert (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"


def test_integration_table_refusals(methods):
    meta, emb = methods
    bad = meta.copy()
    bad.loc[5, "Metadata_Plate"] = np.nan
    with pytest.raises(ValueError, match="Metadata_Plate: missing value .* row 5"):
        pi.integration_table(emb, "Metadata_Plate", "Metadata_moa", metadata=bad)
    one = meta.assign(Metadata_Plate="plate0")
    with pytest.raises(ValueError, match="Metadata_Plate: 1 distinct value"):
        pi.integration_table(emb, "Metadata_Plate", "Metadata_moa", metadata=one)
    with pytest.raises(KeyError, match="no column 'Metadata_target'"):
        pi.integration_table(emb, "Metadata_Plate", "Metadata_target", metadata=meta)
    nolab = meta.copy()
    nolab.loc[9, "Metadata_moa"] = None
    with pytest.raises(ValueError, match="Metadata_moa: missing value .* row 9"):
        pi.integration_table(emb, "Metadata_Plate", "Metadata_moa", metadata=nolab)
    with pytest.raises(KeyError, match="baseline 'harmony'"):
        pi.integration_table(emb, "Metadata_Plate", "Metadata_moa", metadata=meta, baseline="harmony")
    t1 = pd.concat([meta, pd.DataFrame(emb["raw"], columns=[f"f{i}" for i in range(emb["raw"].shape[1])])], axis=1)
    t2 = t1.sample(frac=1, random_state=0)
    with pytest.raises(ValueError, match="rows differ"):
        pi.integration_table({"a": t1, "b": t2}, "Metadata_Plate", "Metadata_moa")
    # batch / label columns without the Metadata_ prefix are annotations, not (non-numeric) features
    plain = t1.assign(plate=t1["Metadata_Plate"]).drop(columns="Metadata_Plate")
    a = pi.integration_table({"a": plain}, "plate", "Metadata_moa", mean_average_precision=False).wide()
    b = pi.integration_table({"a": t1}, "Metadata_Plate", "Metadata_moa", mean_average_precision=False).wide()
    pd.testing.assert_frame_equal(a, b)


def _write_tables(meta, emb, folder) -> list[str]:
    """Each embedding as a Parquet profile table (the metadata, then features f0..) in ``folder``; their paths."""
    paths = []
    for nm, x in emb.items():
        df = pd.concat([meta, pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])], axis=1)
        paths.append(str(folder / f"{nm}.parquet"))
        df.to_parquet(paths[-1])
    return paths


def test_cli(methods, tmp_path):
    from phenovec.evaluate.integration_command import add_integration_parser

    meta, emb = methods
    paths = _write_tables(meta, emb, tmp_path)
    parser = argparse.ArgumentParser()
    add_integration_parser(parser.add_subparsers(dest="metric"))
    out = tmp_path / "integration.csv"
    args = parser.parse_args(["integration", *paths, "--batch-key", "Metadata_Plate", "--label-key", "Metadata_moa",
                              "-o", str(out), "--no-map", "--figure", str(tmp_path / "h.png"), "--quiet", "--sbee"])
    args.run(args)
    table = pd.read_csv(out)
    assert set(table["method"]) == {"raw", "centred"} and "mean_average_precision" not in set(table["metric"])
    assert "sbee" in set(table["metric"])
    summary = json.loads((tmp_path / "integration.json").read_text())
    assert [s["method"] for s in summary["scores"] if s["rank"] == 1] == ["centred"]
    assert (tmp_path / "h.png").exists()
    args = parser.parse_args(["integration", *paths, "--names", "x", "--batch-key", "Metadata_Plate",
                              "--label-key", "Metadata_moa", "-o", str(out)])
    with pytest.raises(ValueError, match="--names: 1 names for 2"):
        args.run(args)
    # every label on one plate: silhouette_batch is undefined, left blank and named, the rest scored
    meta, emb = methods
    split = meta.assign(Metadata_Plate=meta["Metadata_moa"])
    df = pd.concat([split, pd.DataFrame(emb["raw"], columns=[f"f{i}" for i in range(emb["raw"].shape[1])])], axis=1)
    df.to_parquet(tmp_path / "split.parquet")
    args = parser.parse_args(["integration", str(tmp_path / "split.parquet"), "--batch-key", "Metadata_Plate",
                              "--label-key", "Metadata_moa", "-o", str(tmp_path / "split.csv"), "--no-map", "--quiet"])
    args.run(args)
    table = pd.read_csv(tmp_path / "split.csv").set_index("metric")["value"]
    assert np.isnan(table["silhouette_batch"]) and np.isfinite(table["ilisi_knn"])
    assert "silhouette_batch" in json.loads((tmp_path / "split.json").read_text())["undefined"]
    # every label a single row: nothing to retrieve (mAP) and no label kBET can score, both blank and named
    single = meta.assign(Metadata_moa=[f"w{i}" for i in range(len(meta))])
    res = pi.integration_table(emb, "Metadata_Plate", "Metadata_moa", metadata=single, skip_undefined=True)
    assert {"mean_average_precision", "kbet_per_label"} <= set(res.undefined)
    assert res.wide()[["mean_average_precision", "kbet_per_label"]].isna().all().all()


def test_cli_refuses_outputs_before_work_and_names_files_and_rows(methods, tmp_path, capsys):
    """Output names are checked before the metrics run (an input table was replaced by the results, the heat map by
    the table; a bad suffix failed after the whole run); a table's bad value or label is named by its file, its
    data row (as read, before --query) and its feature; --figure writes the format its name says."""
    from phenovec.cli import main

    meta, emb = methods
    paths = _write_tables(meta, emb, tmp_path)
    base = ["evaluate", "integration", *paths, "--batch-key", "Metadata_Plate", "--label-key", "Metadata_moa",
            "--no-map", "--quiet"]
    before = {p: Path(p).read_bytes() for p in paths}
    for extra, says in ((["-o", paths[1]], "is the input table"),
                        (["-o", str(tmp_path / "t.csv"), "--summary", str(tmp_path / "t.csv")], "also -o's path"),
                        (["-o", str(tmp_path / "t.csv"), "--figure", str(tmp_path / "x.svg"), "--summary",
                          str(tmp_path / "x.svg")], "also --summary's path"),
                        (["-o", str(tmp_path / "t.csv"), "--summary", paths[0]], "is the input table"),
                        (["-o", str(tmp_path / "t.txt")], "the table is written as"),
                        (["-o", str(tmp_path / "t.csv"), "--figure", str(tmp_path / "h.jpeg")], "heat map is written")):
        assert main(base + extra) == 2, extra
        assert says in capsys.readouterr().err, extra
    assert {p: Path(p).read_bytes() for p in paths} == before and not (tmp_path / "t.csv").exists()
    # --figure as PDF / SVG
    assert main(base + ["-o", str(tmp_path / "ok.csv"), "--figure", str(tmp_path / "h.pdf")]) == 0
    assert (tmp_path / "h.pdf").read_bytes().startswith(b"%PDF")
    capsys.readouterr()
    # a NaN feature and a missing label: the file, the data row before --query, the feature
    df = pd.read_parquet(paths[1])
    df.loc[57, "f3"] = np.nan
    df.to_parquet(tmp_path / "nan.parquet")
    assert main(["evaluate", "integration", paths[0], str(tmp_path / "nan.parquet"), "--batch-key", "Metadata_Plate",
                 "--label-key", "Metadata_moa", "--no-map", "-o", str(tmp_path / "n.csv"),
                 "--query", f"Metadata_moa != '{df.loc[0, 'Metadata_moa']}'"]) == 2
    err = capsys.readouterr().err
    assert "nan.parquet: feature 'f3' is nan in row 57" in err, err
    df = pd.read_parquet(paths[1])
    df.loc[33, "Metadata_moa"] = None
    df.to_parquet(tmp_path / "nolabel.parquet")
    assert main(["evaluate", "integration", str(tmp_path / "nolabel.parquet"), "--batch-key", "Metadata_Plate",
                 "--label-key", "Metadata_moa", "--no-map", "-o", str(tmp_path / "m.csv")]) == 2
    assert "nolabel.parquet: label_key 'Metadata_moa' is missing (NaN / None) in row 33" in capsys.readouterr().err
    zero = pd.read_parquet(paths[1])
    zero.loc[12, [c for c in zero.columns if c.startswith("f")]] = 0.0
    with pytest.raises(ValueError, match="z: row 12 has zero norm"):
        pi.integration_table({"z": zero}, "Metadata_Plate", "Metadata_moa")
    with pytest.raises(ValueError, match="zero.parquet: row 12 has zero norm"):
        pi.integration_table({"z": zero}, "Metadata_Plate", "Metadata_moa", sources={"z": "zero.parquet"})
