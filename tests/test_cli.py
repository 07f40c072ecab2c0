"""The CLI end to end on real data: tables and JSON summary written, errors named."""
import json
import subprocess
import sys

import pandas as pd

from phenovec.cli import main


def test_evaluate_map_cli(tmp_path, bbbc021, capsys):
    src = tmp_path / "bbbc021.parquet"
    bbbc021.to_parquet(src)
    out = tmp_path / "ap.csv"
    rc = main(["evaluate", "map", str(src), "--query", "Metadata_moa != 'DMSO'", "--pos-sameby", "Metadata_moa",
               "--pos-diffby", "Metadata_compound", "--neg-diffby", "Metadata_moa", "--null-size", "200",
               "--out", str(out)])
    assert rc == 0
    ap = pd.read_csv(out)
    m = pd.read_csv(tmp_path / "ap_map.csv")
    summary = json.loads((tmp_path / "ap.json").read_text())
    assert len(ap) == 302 and len(m) == 12
    assert abs(summary["mean_average_precision"] - m["mean_average_precision"].mean()) < 1e-12
    assert 0 < summary["mean_average_precision"] < 1


def test_files_beside_the_output_keep_its_whole_name(tmp_path, bbbc021, capsys):
    """The summary and the per-group table beside ``-o run.v2.csv`` are run.v2.json / run.v2_map.csv (they were
    run.json / run_map.v2.csv: runs -o run.v1.csv and -o run.v2.csv overwrote each other's summary); a --summary in
    a new folder is made; a --summary that is the output or a folder is refused before anything is written."""
    from phenovec.cli import beside

    assert beside("d/run.v2.csv", suffix=".json").name == "run.v2.json"
    assert beside("run.v2.csv.gz", "_map").name == "run.v2_map.csv.gz"
    assert beside("x.parquet", "_confusion").name == "x_confusion.parquet"
    assert beside("plain", suffix=".json").name == "plain.json"
    src = tmp_path / "b.parquet"
    bbbc021.head(120).to_parquet(src)
    argv = ["evaluate", "map", str(src), "--pos-sameby", "Metadata_moa", "--neg-diffby", "Metadata_moa",
            "--null-size", "50"]
    assert main(argv + ["--out", str(tmp_path / "run.v2.csv")]) == 0
    assert (tmp_path / "run.v2.json").exists() and (tmp_path / "run.v2_map.csv").exists()
    assert not (tmp_path / "run.json").exists()
    assert main(argv + ["--out", str(tmp_path / "s.csv"), "--summary", str(tmp_path / "new" / "s.json")]) == 0
    assert json.loads((tmp_path / "new" / "s.json").read_text())["output"].endswith("s.csv")
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "t.csv"), "--summary", str(tmp_path / "t.csv")]) == 2
    assert "also -o's path" in capsys.readouterr().err and not (tmp_path / "t.csv").exists()
    # a summary over a side table, or the input: refused before anything is written (the _map table was)
    assert main(argv + ["--out", str(tmp_path / "v.csv"), "--summary", str(tmp_path / "v_map.csv")]) == 2
    assert "is also --summary's path" in capsys.readouterr().err
    assert main(argv + ["--out", str(src)]) == 2
    assert "is the input table" in capsys.readouterr().err and src.stat().st_size > 0
    assert not (tmp_path / "v.csv").exists() and not (tmp_path / "v_map.csv").exists()
    (tmp_path / "adir").mkdir()
    assert main(argv + ["--out", str(tmp_path / "u.csv"), "--summary", str(tmp_path / "adir")]) == 2
    assert "is a folder" in capsys.readouterr().err and not (tmp_path / "u.csv").exists()
    assert not (tmp_path / "u_map.csv").exists()
    assert not list((tmp_path / "adir").iterdir()) and not list(tmp_path.glob(".*tmp*"))


def test_cli_reports_unknown_column(tmp_path, bbbc021, capsys):
    src = tmp_path / "b.csv.gz"
    bbbc021.head(50).to_csv(src, index=False)
    rc = main(["evaluate", "map", str(src), "--pos-sameby", "Metadata_nope", "--neg-diffby", "Metadata_moa",
               "--out", str(tmp_path / "x.csv")])
    assert rc == 2
    assert "Metadata_nope" in capsys.readouterr().err


def test_demo_runs_as_a_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "phenovec.cli", "demo", "--bbbc021", "--out", str(tmp_path / "demo"), "--null-size", "500"],
                       capture_output=True, text=True, check=True)
    s = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert s["profiles"] == 632 and s["moa_retrieval"]["mean_average_precision"] > 0.2


def test_cytominer_family_cli_matches_python(tmp_path, lincs_plate):
    import phenovec.evaluate as pe

    src = tmp_path / "lincs.parquet"
    moa = lincs_plate[lincs_plate["Metadata_moa"].notna()]
    moa.to_parquet(src)
    common = [str(src), "--replicate-groups", "Metadata_moa"]
    assert main(["evaluate", "enrichment", *common, "--percentile", "0.99", "--out", str(tmp_path / "e.csv")]) == 0
    e = pd.read_csv(tmp_path / "e.csv")
    ref = pe.enrichment(moa, replicate_groups=["Metadata_moa"], percentile=[0.99])
    assert abs(e["odds_ratio"].iloc[0] - ref["odds_ratio"].iloc[0]) < 1e-9
    g = ["--groupby-columns", "Metadata_broad_sample"]
    assert main(["evaluate", "precision-at-r", *common, *g, "--out", str(tmp_path / "r.csv")]) == 0
    s = json.loads((tmp_path / "r.json").read_text())
    assert abs(s["precision_at_r"] - pe.precision_at_r(moa, replicate_groups=["Metadata_moa"], groupby_columns=["Metadata_broad_sample"])[1]) < 1e-12
    for name, extra in [("precision-recall", ["--k", "5"]), ("hit-at-k", []), ("replicate-reproducibility", [])]:
        args = [*common, *(g if name != "replicate-reproducibility" else []), *extra, "--out", str(tmp_path / f"{name}.csv")]
        assert main(["evaluate", name, *args]) == 0, name
        assert (tmp_path / f"{name}.json").exists()


def test_knn_grit_mp_value_cli(tmp_path, bbbc021, lincs_plate):
    import phenovec.evaluate as pe

    src = tmp_path / "b.parquet"
    trt = bbbc021[bbbc021["Metadata_moa"] != "DMSO"].reset_index(drop=True)
    trt.to_parquet(src)
    assert main(["evaluate", "knn", str(src), "--moa-col", "Metadata_moa", "--compound-col", "Metadata_compound",
                 "--k", "1", "3", "--out", str(tmp_path / "knn.csv")]) == 0
    got = pd.read_csv(tmp_path / "knn.csv")
    ref, _ = pe.knn_accuracy(trt, moa_col="Metadata_moa", compound_col="Metadata_compound", k=[1, 3])
    assert abs(got["accuracy"].iloc[0] - ref["accuracy"].iloc[0]) < 1e-12
    assert (tmp_path / "knn_predictions.csv").exists()
    lsrc = tmp_path / "l.parquet"
    lincs = lincs_plate.assign(Metadata_moa=lincs_plate["Metadata_moa"].fillna("unannotated"))
    lincs.to_parquet(lsrc)
    assert main(["evaluate", "grit", str(lsrc), "--control-perts", "DMSO", "--profile-col", "Metadata_broad_sample",
                 "--replicate-group-col", "Metadata_moa", "--out", str(tmp_path / "grit.csv")]) == 0
    assert pd.read_csv(tmp_path / "grit.csv")["grit"].notna().any()
    assert main(["evaluate", "mp-value", str(lsrc), "--control-perts", "DMSO", "--replicate-id", "Metadata_broad_sample",
                 "--nb-permutations", "20", "--out", str(tmp_path / "mp.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "mp.csv")) > 10


def test_evaluate_map_cli_roc_auc_precision_and_exact_null(tmp_path, bbbc021, capsys):
    """--roc-auc adds the per-query ROC-AUC and Mann-Whitney p (equal to the API's), --null-method exact runs,
    --precision bf16 runs where the CPU has it and tf32 on the CPU is one clear error."""
    from phenovec.evaluate.roc_auc import roc_auc

    src = tmp_path / "b.parquet"
    df = bbbc021[bbbc021["Metadata_moa"] != "DMSO"].reset_index(drop=True)
    df.to_parquet(src)
    common = ["--pos-sameby", "Metadata_moa", "--pos-diffby", "Metadata_compound", "--neg-diffby", "Metadata_moa",
              "--null-size", "200"]
    assert main(["evaluate", "map", str(src), *common, "--roc-auc", "--null-method", "exact",
                 "--out", str(tmp_path / "auc.csv")]) == 0
    got = pd.read_csv(tmp_path / "auc.csv")
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    want = roc_auc(df[[c for c in df.columns if c.startswith("Metadata_")]], df[feats].to_numpy(), ["Metadata_moa"],
                   ["Metadata_compound"], [], ["Metadata_moa"])
    assert len(got) == len(want) == 302
    assert (got["roc_auc"] - want["roc_auc"].to_numpy()).abs().max() < 1e-9
    assert json.loads((tmp_path / "auc.json").read_text())["null_method"] == "exact"
    import torch

    if not torch.cuda.is_available():  # tf32 is a CUDA format: on a CPU-only machine it is refused by name
        capsys.readouterr()
        assert main(["evaluate", "map", str(src), *common, "--precision", "tf32", "--out", str(tmp_path / "t.csv")]) == 2
        assert "tf32" in capsys.readouterr().err


def test_a_numerical_failure_is_a_one_line_error(tmp_path, capsys):
    """Harmony's 'objectives must be finite' (sigma=1e-38, as harmonypy) was a traceback with exit status 1."""
    import numpy as np

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(120, 6)), columns=[f"Cells_f{i}" for i in range(6)])
    df.insert(0, "Metadata_Plate", np.repeat(["P1", "P2", "P3"], 40))
    df.to_parquet(tmp_path / "p.parquet")
    rc = main(["process", "batch", "harmony", str(tmp_path / "p.parquet"), "-o", str(tmp_path / "o.parquet"),
               "--set", "sigma=1e-38", "--set", "nclust=4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("phenovec: error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
