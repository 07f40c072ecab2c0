"""``integration_table`` on real Cell Painting profiles in ../shared/data: raw / normalised / sphered side by side.

Datasets (batch = plate, label = MOA / injury class; DMSO / control wells fit the normalisation and the
sphering and are left out of the scoring, which is about the treated wells):

- ``bbbc021``: BBBC021 per-well means (cytominergallery, 632 wells, 55 plates, 12 MOAs + DMSO; 302 treated wells
  scored), batch = ``Metadata_Plate``; also ``bbbc021-week`` with batch = the imaging week (10).
- ``cell-injury``: Dahlin et al. 2023 U2OS wells (``aligned_plate_holdout``: 1,948 wells, 9 plates, 14 injury
  classes + Control; 876 treated wells scored), batch = ``Metadata_Plate``.
- The LINCS plate (SQ00015054) is a single plate: batch = plate is refused (one batch); CPJUMP1 / Target2 in
  ../shared/data are single sites / two wells of one plate: no batch structure to score.

Methods: ``raw`` (features as given, NaN / constant columns dropped); ``normalized`` = ``phenovec.process.normalize``
(standardize per plate on the control wells); ``sphered`` = ``normalized``, then ``phenovec.process.feature_select``
(variance + correlation threshold 0.9, so the control wells outnumber the features) and ``phenovec.process.spherize``
(ZCA-cor on the control wells, epsilon ``--epsilon``); plus ``phenovec.batch``'s corrections of the normalised profiles:
``harmony`` (harmonypy 2.1.0's algorithm on the first 50 PCs, batch = plate, seed 0), ``symphony`` (Harmony fitted
on every other plate, sorted by name, and the other plates mapped onto that fit: ``phenovec.batch.symphony``) and
``tvn`` (PCA on the control wells + per-plate CORAL). Harmony / TVN always correct by plate (also for ``bbbc021-week``). Prints one table per dataset and writes them (tidy CSV +
scores + heat map) under ``--out``.

    python bench/integration_real.py --out /tmp/integration-real
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def bbbc021() -> pd.DataFrame:
    d = SHARED / "bbbc021-cytominergallery"
    prof = pd.read_csv(d / "ljosa_jbiomolscreen_2013_per_well_mean.csv.gz")
    img = pd.read_csv(d / "BBBC021_v1_image.csv.gz")
    moa = pd.read_csv(d / "BBBC021_v1_moa.csv")
    wells = (img[["Image_Metadata_Plate_DAPI", "Image_Metadata_Well_DAPI", "Image_Metadata_Compound",
                  "Image_Metadata_Concentration"]].drop_duplicates()
             .rename(columns={"Image_Metadata_Plate_DAPI": "Image_Metadata_Plate",
                              "Image_Metadata_Well_DAPI": "Image_Metadata_Well"}))
    df = prof.merge(wells, on=["Image_Metadata_Plate", "Image_Metadata_Well"]).merge(
        moa, left_on=["Image_Metadata_Compound", "Image_Metadata_Concentration"], right_on=["compound", "concentration"])
    meta = pd.DataFrame({"Metadata_Plate": df["Image_Metadata_Plate"], "Metadata_Well": df["Image_Metadata_Well"],
                         "Metadata_Week": df["Image_Metadata_Plate"].str.split("_").str[0],
                         "Metadata_compound": df["compound"], "Metadata_moa": df["moa"],
                         "Metadata_control": df["moa"] == "DMSO"})
    feats = df[[c for c in prof.columns if not c.startswith("Image_Metadata_")]]
    return pd.concat([meta, feats], axis=1)


def cell_injury() -> pd.DataFrame:
    df = pd.read_csv(SHARED / "cell-injury-dahlin-dose" / "aligned_plate_holdout.csv.gz")
    meta = pd.DataFrame({"Metadata_Plate": df["Plate"].astype(str), "Metadata_Well": df["Well"],
                         "Metadata_injury": df["injury_type"], "Metadata_control": df["injury_type"] == "Control"})
    return pd.concat([meta, df.iloc[:, 33:]], axis=1)


def clean(df: pd.DataFrame) -> pd.DataFrame:
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    x = df[feats]
    keep = [c for c in feats if x[c].notna().all() and x[c].std() > 0]
    return df[[c for c in df.columns if c.startswith("Metadata_")] + keep].reset_index(drop=True)


def methods(df: pd.DataFrame, epsilon: float) -> dict[str, pd.DataFrame]:
    from phenovec.process import feature_select, normalize, spherize

    control = "Metadata_control == True"
    out = {"raw": df}
    norm = clean(normalize(df, samples=control, method="standardize", by="Metadata_Plate"))
    out["normalized"] = norm
    selected = clean(feature_select(norm, operation=["variance_threshold", "correlation_threshold"]))
    out["sphered"] = spherize(selected, samples=control, method="ZCA-cor", epsilon=epsilon)
    try:  # the corrections of phenovec.batch, when that package has landed
        from phenovec.batch import harmony, tvn
    except ImportError as e:
        print(f"  phenovec.batch not available ({e}): no harmony / tvn columns", file=sys.stderr)
    else:
        n_pc = min(50, len(norm) - 1, sum(not c.startswith("Metadata_") for c in norm.columns))
        out["harmony"] = harmony(norm, vars_use="Metadata_Plate", n_components=n_pc, random_state=0)
        # Symphony: Harmony on every other plate, the rest mapped onto that fit (new plates, reference unchanged)
        plates = sorted(norm["Metadata_Plate"].unique())
        new = norm["Metadata_Plate"].isin(plates[1::2])
        fitted, fit = harmony(norm[~new], vars_use="Metadata_Plate", n_components=n_pc, random_state=0,
                              return_fit=True)
        out["symphony"] = pd.concat([fitted, harmony(norm[new], fit=fit)]).loc[norm.index]
        out["tvn"] = tvn(norm, controls=control, batch="Metadata_Plate")
    return out


def markdown(df: pd.DataFrame, index: bool = True) -> str:
    """A pipe table (pandas' to_markdown needs tabulate, which phenovec does not depend on)."""
    d = df.reset_index() if index else df
    fmt = lambda v: f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)  # noqa: E731
    rows = [" | ".join(map(str, d.columns)), " | ".join("---" for _ in d.columns)]
    rows += [" | ".join(fmt(v) for v in r) for r in d.itertuples(index=False)]
    return "\n".join(f"| {r} |" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--epsilon", type=float, default=1e-2)
    a = ap.parse_args()
    from phenovec.evaluate.integration import integration_heatmap, integration_table

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {"bbbc021": (bbbc021, "Metadata_Plate", "Metadata_moa"),
            "bbbc021-week": (bbbc021, "Metadata_Week", "Metadata_moa"),
            "cell-injury": (cell_injury, "Metadata_Plate", "Metadata_injury")}
    report = {}
    for name, (load, batch_key, label_key) in sets.items():
        df = clean(load())
        ms = methods(df, a.epsilon)
        treated = {k: v[~v["Metadata_control"]].reset_index(drop=True) for k, v in ms.items()}
        t0 = time.perf_counter()
        res = integration_table(treated, batch_key, label_key, leiden=True)
        secs = time.perf_counter() - t0
        res.table.to_csv(out / f"{name}.csv", index=False)
        res.scores.to_csv(out / f"{name}_scores.csv", index=False)
        integration_heatmap(res, out / f"{name}.png", title=f"{name}: batch = {batch_key}, label = {label_key}")
        wide = res.wide()
        wide.columns = [c.replace("nmi_ari_cluster_labels_", "") for c in wide.columns]
        n = len(next(iter(treated.values())))
        print(f"\n## {name}: {n} treated wells, batch = {batch_key} "
              f"({treated['raw'][batch_key].nunique()}), label = {label_key} ({treated['raw'][label_key].nunique()}); "
              f"{secs:.1f} s")
        print(markdown(wide))
        print()
        print(markdown(res.scores, index=False))
        report[name] = {"rows": n, "seconds": secs, "scores": res.scores.to_dict(orient="records"),
                        "metrics": res.wide().to_dict(orient="index")}
    try:
        from phenovec.evaluate.integration import integration_table as _t
        lincs = pd.read_csv(SHARED / "cytominer-eval-lincs-plate" / "SQ00015054_normalized_feature_select.csv.gz")
        _t({"raw": clean(lincs.assign(Metadata_moa=lincs["Metadata_moa"].fillna("DMSO")))}, "Metadata_Plate",
           "Metadata_moa")
    except ValueError as e:
        print(f"\n## lincs-plate: refused: {e}")
        report["lincs-plate"] = {"refused": str(e)}
    (out / "integration_real.json").write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
