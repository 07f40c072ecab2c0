"""phenovec.report: the JSON equals direct phenovec.evaluate calls, the HTML renders every figure in
headless Chromium (Debian's `chromium`, installed by .ci/chromium.sh), bad input gives clear errors."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phenovec.evaluate as pe
from phenovec.report import build_report
from phenovec.cli import main as report_main

NULL = 60


def _strict_json(path):
    def no_constant(name):
        raise AssertionError(f"{path}: JSON holds {name} (NaN/inf must be written as null)")

    return json.loads(path.read_text(), parse_constant=no_constant)


def synthetic(seed: int = 0, feature_names=None) -> pd.DataFrame:
    """2 plates; 3 MOAs x 2 treatments x 3 wells per plate + 4 control wells per plate; 12 features."""
    rng = np.random.default_rng(seed)
    d = 12
    moa_sig = {f"moa{i}": rng.normal(0, 3, d) for i in range(3)}
    rows, x = [], []
    for plate in ("P1", "P2"):
        shift = rng.normal(0, 0.3, d)
        for moa, sig in moa_sig.items():
            for t in range(2):
                tsig = sig + rng.normal(0, 1, d)
                for _ in range(3):
                    rows.append((plate, f"{moa}-t{t}", moa, False))
                    x.append(tsig + shift + rng.normal(0, 1, d))
        for _ in range(4):
            rows.append((plate, "DMSO", None, True))
            x.append(shift + rng.normal(0, 1, d))
    meta = pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Treatment", "Metadata_MOA", "Metadata_Control"])
    names = feature_names or [f"feat_{i}" for i in range(d)]
    return pd.concat([meta, pd.DataFrame(np.array(x), columns=names)], axis=1)


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")


def find_browser() -> str | None:
    """A headless-capable Chromium: ``PHENOVEC_BROWSER``, Debian's binary behind its launcher script (the launcher's
    shell checks print noise on some hosts), else the first of :data:`BROWSERS` on PATH."""
    named = os.environ.get("PHENOVEC_BROWSER")
    if named:
        return named
    debian = Path("/usr/lib/chromium/chromium")
    if debian.is_file() and os.access(debian, os.X_OK):
        return str(debian)
    return next((exe for exe in map(shutil.which, BROWSERS) if exe), None)


def chromium_dom(html_path, tmp_path) -> str:
    exe = find_browser()
    if exe is None:
        pytest.skip("no headless Chromium / Chrome on this machine (looked for PHENOVEC_BROWSER, "
                    f"{', '.join(BROWSERS)}): `bash .ci/chromium.sh` installs Debian's chromium where apt-get can run "
                    "(CI does); without it the report's rendering in a browser is not checked")
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'chromium-profile'}",
         "--virtual-time-budget=10000", "--dump-dom", html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


def _body_attr(dom: str, name: str) -> int:
    body = re.search(r"<body[^>]*>", dom)
    assert body, "no <body> in the dumped DOM"
    m = re.search(name + r'="(\d+)"', body.group(0))
    assert m, f"{name} missing on <body>: {body.group(0)}"
    return int(m.group(1))


def test_synthetic_report_renders_every_figure_in_chromium(tmp_path):
    df = synthetic()
    paths = build_report(df, tmp_path / "rep", null_size=NULL, provenance={"config": {"a": 1}, "hash": "abc"})
    assert paths.html.name == "report.html" and paths.json.name == "report.json"
    doc = _strict_json(paths.json)
    page = paths.html.read_text()
    # self-contained: every image is an inline PNG, nothing is fetched
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(srcs) == len(doc["figures"]) == 7
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    dom = chromium_dom(paths.html, tmp_path)
    assert _body_attr(dom, "data-figures-expected") == 7
    assert _body_attr(dom, "data-figures-rendered") == 7, "some figure did not render in Chromium"
    assert doc["counts"]["wells"] == len(df) and doc["counts"]["control_wells"] == 8
    assert doc["counts"]["treatments"] == 6 and doc["counts"]["moas"] == 3 and doc["counts"]["plates"] == 2
    assert doc["provenance"]["run"] == {"config": {"a": 1}, "hash": "abc"}
    assert doc["provenance"]["versions"]["numpy"] == np.__version__
    assert [n for n in doc["notes"] if "kbet_per_label is weak here" not in n] == []  # 12 wells per MOA: kBET noted
    assert len(doc["per_moa"]) == 3 and [r["n_wells"] for r in doc["per_moa"]] == [12, 12, 12]


def test_chromium_counts_a_broken_figure(tmp_path):
    """The render check can fail: a corrupted PNG is not counted as rendered."""
    paths = build_report(synthetic(), tmp_path / "rep", null_size=NULL)
    page = paths.html.read_text()
    broken = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]{40}", "data:image/png;base64,AAAA", page, count=1)
    bad = tmp_path / "broken.html"
    bad.write_text(broken)
    assert _body_attr(chromium_dom(bad, tmp_path), "data-figures-rendered") == 6


def _zscore_to_controls(df: pd.DataFrame, feats, control: np.ndarray) -> np.ndarray:
    x = df[feats].to_numpy(np.float64)
    out = np.empty_like(x)
    for _, idx in df.groupby("Metadata_Plate").indices.items():
        ref = x[idx[control[idx]]]
        sd = ref.std(axis=0)
        out[idx] = (x[idx] - ref.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    keep = np.isfinite(out).all(axis=0) & (out.std(axis=0) > 0)
    return out[:, keep]


def test_bbbc021_report_equals_direct_evaluate_calls(bbbc021, tmp_path):
    control = (bbbc021["Metadata_compound"] == "DMSO").to_numpy()
    feats = [c for c in bbbc021.columns if not c.startswith("Metadata_")]
    x = _zscore_to_controls(bbbc021, feats, control)
    meta = bbbc021.filter(regex="^Metadata_").reset_index(drop=True)
    prof = pd.concat([meta, pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])], axis=1)
    path = tmp_path / "wells.parquet"
    prof.to_parquet(path)
    t, m = "Metadata_compound", "Metadata_moa"
    paths = build_report(path, tmp_path / "rep", moa_column=m, treatment_column=t, control_query="DMSO",
                         null_size=NULL, seed=3)
    doc = _strict_json(paths.json)
    assert doc["counts"]["wells"] == 632 and doc["counts"]["control_wells"] == int(control.sum())
    assert doc["counts"]["moas"] == 12 and doc["counts"]["features"] == x.shape[1]
    assert len(doc["provenance"]["input"]["sha256"]) == 64

    # replicate mAP vs DMSO (copairs' phenotypic-activity protocol)
    act = meta[[t, m, "Metadata_Plate"]].copy()
    act["Metadata_Reference_Index"] = np.where(control, np.arange(len(act)), -1)
    ap = pe.average_precision(act, x, [t, "Metadata_Reference_Index"], [], [], [t, "Metadata_Reference_Index"],
                              distance="cosine", progress_bar=False)
    want = pe.mean_average_precision(ap[~control], [t], null_size=NULL, threshold=0.05, seed=3, progress_bar=False)
    got = pd.DataFrame(doc["replicate_map"]["per_treatment"])
    assert list(got[t]) == list(want[t])
    for c in ("mean_average_precision", "p_value", "corrected_p_value"):
        np.testing.assert_allclose(got[c], want[c], rtol=1e-12)
    assert list(got["below_corrected_p"]) == list(want["below_corrected_p"])
    assert doc["replicate_map"]["mean_map"] == pytest.approx(want["mean_average_precision"].mean(), rel=1e-12)

    # MOA mAP (same MOA, other compound)
    trt = ~control
    mmeta = meta.loc[trt, [t, m]].reset_index(drop=True)
    map_ap = pe.average_precision(mmeta, x[trt], [m], [t], [], [m], distance="cosine", progress_bar=False)
    want_m = pe.mean_average_precision(map_ap, [m], null_size=NULL, threshold=0.05, seed=3, progress_bar=False)
    got_m = pd.DataFrame(doc["moa_map"]["per_moa"])
    assert list(got_m[m]) == list(want_m[m])
    np.testing.assert_allclose(got_m["mean_average_precision"], want_m["mean_average_precision"], rtol=1e-12)
    np.testing.assert_allclose(got_m["p_value"], want_m["p_value"], rtol=1e-12)

    # cytominer-eval family on the treatment wells (every BBBC021 MOA has >= 2 wells)
    common = dict(replicate_groups=[m], similarity_metric="cosine")
    enr = pe.enrichment(mmeta, x[trt], percentile=doc["settings"]["percentiles"], **common)
    got_e = pd.DataFrame(doc["enrichment"])
    np.testing.assert_allclose(got_e["odds_ratio"], enr["odds_ratio"], rtol=1e-12)
    np.testing.assert_allclose(got_e["threshold"], enr["threshold"], rtol=1e-12)
    pr = pe.precision_recall(mmeta, x[trt], groupby_columns=[t], k=doc["settings"]["ks"], **common)
    got_pr = pd.DataFrame(doc["precision_recall"]["per_treatment"])
    np.testing.assert_allclose(got_pr[["precision", "recall"]], pr[["precision", "recall"]], rtol=1e-12)
    summ = pd.DataFrame(doc["precision_recall"]["summary"])
    np.testing.assert_allclose(summ["mean_precision"], pr.groupby("k", sort=False)["precision"].mean(), rtol=1e-12)
    _, par_mean = pe.precision_at_r(mmeta, x[trt], groupby_columns=[t], **common)
    assert doc["precision_at_r"]["mean"] == pytest.approx(par_mean, rel=1e-12)
    hk = pe.hit_at_k(mmeta, x[trt], groupby_columns=[t], percent_list=doc["settings"]["percent_list"], **common)
    assert {r["percent"]: r["score"] for r in doc["hit_at_k"]["percent_scores"]} == hk.percent_scores
    np.testing.assert_allclose([r["normalised_score"] for r in doc["hit_at_k"]["accumulated"]],
                               hk.accumulated["normalised_score"], rtol=1e-12)

    # PCA against numpy's SVD of the centred matrix
    xc = x - x.mean(axis=0)
    s = np.linalg.svd(xc, compute_uv=False)
    np.testing.assert_allclose(doc["pca"]["explained_variance_ratio"], (s**2 / (s**2).sum())[:2], rtol=1e-8)
    pcs = pd.DataFrame(doc["pca"]["wells"])
    np.testing.assert_allclose(pcs["PC1"].var(ddof=1), s[0] ** 2 / (len(x) - 1), rtol=1e-8)

    # per-MOA table: counts from pandas, means from the per-treatment tables
    per = pd.DataFrame(doc["per_moa"]).set_index(m)
    tw = meta[trt]
    pd.testing.assert_series_equal(per["n_wells"], tw.groupby(m).size(), check_names=False)
    pd.testing.assert_series_equal(per["n_treatments"], tw.groupby(m)[t].nunique(), check_names=False)
    t2m = tw.drop_duplicates(t).set_index(t)[m]
    np.testing.assert_allclose(per["mean_replicate_map"],
                               want.groupby(want[t].map(t2m))["mean_average_precision"].mean().loc[per.index])
    np.testing.assert_allclose(per["moa_map"], want_m.set_index(m)["mean_average_precision"].loc[per.index])


def test_cli_csv_named_features_prints_the_report_path(tmp_path, capsys):
    names = [f"emb{i}" for i in range(12)]
    df = synthetic(1, feature_names=names)
    df["Metadata_Control"] = df["Metadata_Treatment"] == "DMSO"
    df = df.rename(columns={"Metadata_MOA": "moa_label"})  # non-Metadata_ metadata: features must be named
    path = tmp_path / "wells.csv"
    df.to_csv(path, index=False)
    rc = report_main(["report", str(path), "--out", str(tmp_path / "out"), "--moa-column", "moa_label",
                      "--control", "DMSO", "--features", *names, "--null-size", str(NULL)])
    assert rc == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "out" / "report.html")
    doc = _strict_json(tmp_path / "out" / "report.json")
    assert doc["counts"]["features"] == 12 and doc["settings"]["control_rule"] == "treatment"
    assert doc["provenance"]["input"]["source"] == str(path)
    # inferring features would take moa_label as a feature: a clear error, not silently wrong numbers
    rc = report_main(["report", str(path), "--out", str(tmp_path / "o2"), "--moa-column", "moa_label",
                      "--control", "DMSO"])
    assert rc == 2
    assert "moa_label" in capsys.readouterr().err


def test_bad_input_names_the_column_or_query(tmp_path):
    df = synthetic()
    with pytest.raises(KeyError, match="moa_column 'Metadata_moa'"):
        build_report(df, tmp_path, moa_column="Metadata_moa", null_size=NULL)
    with pytest.raises(KeyError, match="treatment_column 'Metadata_cpd'"):
        build_report(df, tmp_path, treatment_column="Metadata_cpd", null_size=NULL)
    with pytest.raises(ValueError, match="control_query .Metadata_Plate == .P9.. selects no control well"):
        build_report(df, tmp_path, control_query="Metadata_Plate == 'P9'", null_size=NULL)
    with pytest.raises(ValueError, match="control_query 'Vehicle' selects no control well"):
        build_report(df, tmp_path, control_query="Vehicle", null_size=NULL)
    with pytest.raises(ValueError, match="control_query 'Metadata_Ctrl == True' cannot be evaluated"):
        build_report(df, tmp_path, control_query="Metadata_Ctrl == True", null_size=NULL)
    with pytest.raises(ValueError, match="selects every well"):
        build_report(df, tmp_path, control_query="Metadata_Plate != 'P9'", null_size=NULL)
    nan = df.copy()
    nan.loc[5, "feat_3"] = np.nan
    with pytest.raises(ValueError, match="feature 'feat_3' is not finite at row 5"):
        build_report(nan, tmp_path, null_size=NULL)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        build_report(tmp_path / "missing.parquet", tmp_path, null_size=NULL)
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob("*.json"))


def test_held_out_scope_denominators_and_readable_tables(tmp_path):
    """With a training split the metrics are over the held-out wells only, the training wells get a labelled
    secondary view, the summary carries denominators, p-values are formatted and one odds-ratio column is shown."""
    from phenovec.report.context import ReportContext

    df = synthetic()
    df["Metadata_Split"] = np.where(df["Metadata_Plate"] == "P2", "test", "train")
    df.loc[df.index[:3], "Metadata_Split"] = "val"
    cells = df.loc[df.index.repeat(5), ["Metadata_Plate"]].reset_index(drop=True)
    cells["Metadata_Well"] = [f"A{(i // 5) % 24 + 1:02d}" for i in range(len(cells))]
    ctx = ReportContext(dataset="unit-test plates", cells=cells, min_cells=6,
                        training=pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.9],
                                               "train_accuracy": [0.3, 0.6], "val_accuracy": [0.25, 0.4]}))
    paths = build_report(df, tmp_path / "rep", null_size=NULL, context=ctx)
    doc = _strict_json(paths.json)
    assert doc["scope"]["held_out"] and doc["scope"]["split"] == "test"
    assert doc["counts"]["wells"] == int((df["Metadata_Split"] == "test").sum()) == 22
    assert doc["scope"]["by_split"] == {"test": 22, "train": 19, "val": 3}
    assert doc["training_wells"]["wells"] == 19 and "replicate_map" in doc["training_wells"]
    # the JSON's PCA is over the evaluated wells; the views cover every well
    assert len(doc["pca"]["wells"]) == 22 and len(doc["views"]["wells"]) == len(df)
    page = paths.html.read_text()
    assert "unit-test plates" in page and "computed on the 22 test wells" in page
    assert re.search(r"mean over \d+ of 6 treatments", page) and re.search(r"mean over \d+ of 3 MOAs", page)
    assert "Secondary view: the training wells" in page
    assert "ods_ratio" not in page and "odds ratio" in page
    assert "training_curve" in doc["figures"] and "qc_cells" in doc["figures"]
    assert "fewer than 6 cells" in page  # every well has 5 cells: all flagged
    assert 'class="wide"' not in page  # no table is clipped behind a scroll bar


def test_p_value_formatting():
    from phenovec.report.html import format_p

    assert format_p(0.0) == "< 1e-300" and format_p(0.0123) == "0.0123" and format_p(2.5e-7) == "2.50e-07"
    assert format_p(float("nan")) == ""
