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


def test_cli_reports_unknown_column(tmp_path, bbbc021, capsys):
    src = tmp_path / "b.csv.gz"
    bbbc021.head(50).to_csv(src, index=False)
    rc = main(["evaluate", "map", str(src), "--pos-sameby", "Metadata_nope", "--neg-diffby", "Metadata_moa",
               "--out", str(tmp_path / "x.csv")])
    assert rc == 2
    assert "Metadata_nope" in capsys.readouterr().err


def test_demo_runs_as_a_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "phenovec.cli", "demo", "--out", str(tmp_path / "demo"), "--null-size", "500"],
                       capture_output=True, text=True, check=True)
    s = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert s["profiles"] == 632 and s["moa_retrieval"]["mean_average_precision"] > 0.2
