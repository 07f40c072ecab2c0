"""The few-shot benchmark as a ``phenovec report`` section (phenovec.activity.report_section): figures, HTML and
numbers from a benchmark output folder."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from phenovec.activity.benchmark import BenchmarkConfig, run_benchmark
from phenovec.activity.report_section import (activity_figures, activity_numbers, activity_section_html, p_matrix,
                                              read_activity_section)
from phenovec.activity.synthetic import synthetic_activity


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("activity-report")
    labels, wells = synthetic_activity(n_moas=8, compounds_per_moa=12, n_features=8, seed=3)
    labels.to_csv(d / "labels.csv", index=False)
    wells.to_csv(d / "wells.csv", index=False)
    cfg = BenchmarkConfig.from_dict({
        "labels": {"path": "labels.csv"}, "profiles": {"path": "wells.csv"},
        "tasks": {"min_actives": 10, "min_inactives": 10, "test": 5, "validation": 0},
        "episodes": {"support_sizes": [8, 16], "episodes": 2},
        "learners": {"logreg": {"n_configs": 1}, "gbm": {"n_configs": 1}}}, base=d)
    run_benchmark(cfg, d / "out")
    return d / "out"


def test_section_figures_html_and_numbers(bench):
    sec = read_activity_section(bench)
    assert sec.learners == ["logreg", "gbm"]
    figs = activity_figures(sec)
    assert [f.key for f in figs] == ["activity_auroc_vs_m", "activity_wilcoxon"]
    assert all(f.png.startswith(b"\x89PNG") for f in figs)
    page = activity_section_html(sec, "<div>FIGS</div>")
    assert page.startswith("<h2>Few-shot activity prediction</h2>") and "<div>FIGS</div>" in page
    assert "M = 8" in page and "M = 16" in page and "Wilcoxon p-values at M = 16 (5 tasks" in page
    summary = pd.read_csv(bench / "summary.csv")
    value = summary[(summary.learner == "gbm") & (summary.M == 16)]["auroc"].iloc[0]
    assert f"{value:.4g}" in page  # the report's number format
    numbers = activity_numbers(sec)
    json.dumps(numbers, allow_nan=False)
    assert len(numbers["auroc"]) == 4 and len(numbers["wilcoxon"]) == 4
    wil = pd.read_csv(bench / "wilcoxon.csv")
    mat = p_matrix(sec.wilcoxon, 8, sec.learners)
    row = wil[(wil.M == 8) & (wil.learner == "logreg") & (wil.versus == "gbm")]
    assert mat.loc["logreg", "gbm"] == row["p"].iloc[0] and pd.isna(mat.loc["logreg", "logreg"])
    assert activity_figures(None) == [] and activity_section_html(None) == "" and activity_numbers(None) is None


def test_missing_files_are_named(tmp_path, bench):
    with pytest.raises(FileNotFoundError, match="summary.csv: missing"):
        read_activity_section(tmp_path)
    (tmp_path / "summary.csv").write_text("learner,M\nx,8\n")
    with pytest.raises(ValueError, match="summary.csv: no column 'tasks'"):
        read_activity_section(tmp_path)


def test_phenovec_report_activity_folder(bench, tmp_path):
    """phenovec report --activity BENCH-OUT: the section, its two figures and its numbers in report.html / .json."""
    from phenovec.cli import main
    from test_report import NULL, synthetic

    src = tmp_path / "wells.parquet"
    synthetic().to_parquet(src)
    assert main(["report", str(src), "--out", str(tmp_path / "rep"), "--null-size", str(NULL),
                 "--activity", str(bench)]) == 0
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert {"activity_auroc_vs_m", "activity_wilcoxon"} <= set(doc["figures"])
    assert len(doc["activity"]["auroc"]) == 4
    assert "Few-shot activity prediction" in (tmp_path / "rep" / "report.html").read_text()
