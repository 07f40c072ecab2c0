"""The demo job: evaluate the real BBBC021 per-well CellProfiler profiles (MCF7, 12 MOAs).

``phenovec demo --bbbc021`` shows the evaluation stage alone on real data (``phenovec demo`` without it runs the
whole image pipeline on a synthetic plate, ``phenovec.pipeline.demo_config``): it joins
the per-well means to compounds and MOAs, z-scores every feature against the DMSO wells of its own
plate, and reports phenotypic activity (replicates vs DMSO, mAP with p-values) and MOA retrieval
(same MOA, different compound: mAP per MOA with p-values).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_DATA = Path("..") / "shared" / "data" / "bbbc021-cytominergallery"


def load_bbbc021(data: str | Path | None = None) -> pd.DataFrame:
    """Per-well profiles with Metadata_Plate, _Well, _compound, _concentration, _moa (632 wells)."""
    d = Path(data) if data else DEFAULT_DATA
    files = {k: d / f for k, f in [("prof", "ljosa_jbiomolscreen_2013_per_well_mean.csv.gz"),
                                   ("img", "BBBC021_v1_image.csv.gz"), ("moa", "BBBC021_v1_moa.csv")]}
    for f in files.values():
        if not f.exists():
            raise FileNotFoundError(f"BBBC021 demo file not found: {f} (pass --data FOLDER)")
    prof = pd.read_csv(files["prof"])
    img = pd.read_csv(files["img"])
    moa = pd.read_csv(files["moa"])
    wells = (img[["Image_Metadata_Plate_DAPI", "Image_Metadata_Well_DAPI", "Image_Metadata_Compound",
                  "Image_Metadata_Concentration"]].drop_duplicates()
             .rename(columns={"Image_Metadata_Plate_DAPI": "Image_Metadata_Plate", "Image_Metadata_Well_DAPI": "Image_Metadata_Well"}))
    df = prof.merge(wells, on=["Image_Metadata_Plate", "Image_Metadata_Well"])
    df = df.merge(moa, left_on=["Image_Metadata_Compound", "Image_Metadata_Concentration"], right_on=["compound", "concentration"])
    df = df.drop(columns=["Image_Metadata_Compound", "Image_Metadata_Concentration"])
    df = df.rename(columns={"Image_Metadata_Plate": "Metadata_Plate", "Image_Metadata_Well": "Metadata_Well",
                            "compound": "Metadata_compound", "concentration": "Metadata_concentration", "moa": "Metadata_moa"})
    meta = [c for c in df.columns if c.startswith("Metadata_")]
    return df[meta + [c for c in df.columns if c not in meta]]


def _zscore_to_dmso(df: pd.DataFrame, feats: list[str]) -> np.ndarray:
    x = df[feats].to_numpy(np.float64)
    out = np.empty_like(x)
    for _, idx in df.groupby("Metadata_Plate").indices.items():
        ctrl = idx[(df["Metadata_moa"].to_numpy()[idx] == "DMSO")]
        ref = x[ctrl] if len(ctrl) > 1 else x[idx]
        sd = ref.std(axis=0)
        out[idx] = (x[idx] - ref.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    keep = np.isfinite(out).all(axis=0) & (out.std(axis=0) > 0)
    return out[:, keep]


def run_demo(data=None, out="demo-bbbc021", null_size: int = 10000, progress: bool = False) -> dict:
    """Evaluate BBBC021 into ``out``: ``profiles.parquet`` (the plate-wise DMSO z-scored well profiles),
    ``activity_map.csv``, ``moa_map.csv`` (MOA retrieval excluding the same compound at other doses), the HTML
    report (``report/report.html`` + ``report.json``, every section that applies to profiles) and
    ``summary.json``; prints and returns the summary."""
    import phenovec.evaluate as pe
    from phenovec.io.profiles import write_table

    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    df = load_bbbc021(data)
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    x = _zscore_to_dmso(df, feats)
    meta = df.filter(regex="^Metadata_").copy()
    meta["Metadata_treatment"] = meta["Metadata_compound"] + "@" + meta["Metadata_concentration"].astype(str)
    meta["Metadata_Reference_Index"] = np.where(meta["Metadata_moa"] == "DMSO", np.arange(len(meta)), -1)

    act = pe.average_precision(meta, x, pos_sameby=["Metadata_treatment", "Metadata_Reference_Index"], pos_diffby=[],
                               neg_sameby=[], neg_diffby=["Metadata_treatment", "Metadata_Reference_Index"],
                               progress_bar=progress)
    act = act[act["Metadata_moa"] != "DMSO"]
    act_map = pe.mean_average_precision(act, ["Metadata_treatment"], null_size=null_size, threshold=0.05, seed=0,
                                        progress_bar=progress)
    trt = meta["Metadata_moa"] != "DMSO"
    moa_ap = pe.average_precision(meta[trt].reset_index(drop=True), x[trt.to_numpy()], pos_sameby=["Metadata_moa"],
                                  pos_diffby=["Metadata_compound"], neg_sameby=[], neg_diffby=["Metadata_moa"],
                                  progress_bar=progress)
    moa_map = pe.mean_average_precision(moa_ap, ["Metadata_moa"], null_size=null_size, threshold=0.05, seed=0,
                                        progress_bar=progress)
    write_table(act_map.drop(columns=["indices"]), outdir / "activity_map.csv")
    write_table(moa_map.drop(columns=["indices"]), outdir / "moa_map.csv")
    from phenovec.report import build_report
    from phenovec.report.context import ReportContext

    profiles = pd.concat([meta.drop(columns=["Metadata_Reference_Index"]).reset_index(drop=True),
                          pd.DataFrame(x, columns=[f"feature_{i}" for i in range(x.shape[1])])], axis=1)
    write_table(profiles, outdir / "profiles.parquet")
    rep = build_report(profiles, outdir / "report", moa_column="Metadata_moa", treatment_column="Metadata_treatment",
                       control_query="Metadata_moa == 'DMSO'", null_size=null_size, seed=0, umap=True,
                       context=ReportContext(dataset="BBBC021 (MCF7, Ljosa 2013 per-well mean CellProfiler profiles)",
                                             run_dir=outdir.resolve()),
                       title="phenovec demo report: BBBC021")
    written = ["profiles.parquet", "activity_map.csv", "moa_map.csv", "report/report.html", "report/report.json",
               "summary.json"]
    summary = {
        "data": "BBBC021 per-well mean CellProfiler profiles (632 wells, 103 treatments, 12 MOAs)",
        "profiles": int(len(df)), "features_used": int(x.shape[1]),
        "phenotypic_activity": {"mean_average_precision": float(act_map["mean_average_precision"].mean()),
                                "fraction_active_fdr_0.05": float(act_map["below_corrected_p"].mean()),
                                "n_treatments": int(len(act_map))},
        "moa_retrieval": {"mean_average_precision": float(moa_map["mean_average_precision"].mean()),
                          "fraction_significant_fdr_0.05": float(moa_map["below_corrected_p"].mean()),
                          "per_moa": dict(zip(moa_map["Metadata_moa"], moa_map["mean_average_precision"].round(4)))},
        "report": str(rep.html),
        "outputs": written,
    }
    from phenovec.io.atomic import write_text_atomic

    write_text_atomic(outdir / "summary.json", json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary
