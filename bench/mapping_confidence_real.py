"""Does Symphony's per-cell mapping metric flag profiles the reference never saw? Leave-one-class-out on real Cell
Painting wells in ../shared/data (phenovec.batch.mapping_confidence, through the ``harmony`` step).

For each class (an MOA of BBBC021, an injury class of the cell-injury set): Harmony is fitted, with
``mapping_confidence=True``, on every other plate (sorted by name) without that class's wells; the other plates
(every well) are mapped onto the fit. Scored: the ROC AUC of ``Metadata_mapping_distance`` for the held-out class's
wells against the other treated wells of the mapped plates (1: every held-out well further than every known one;
0.5: no signal), and the mapped known wells' median distance over the reference's own. Wells are normalised per
plate to their controls first (``phenovec.process.normalize``, standardize), as in ``bench/integration_real.py``;
Harmony runs on ``--pcs`` principal components (the metric's covariances are d x d per cluster: a few hundred wells
cannot fill 50 dimensions).

    python bench/mapping_confidence_real.py --pcs 10

``--report DIR`` also maps BBBC021's other plates onto a fit of every class (nothing held out) and writes the
phenovec report of the mapped wells to DIR: its "Mapping onto the reference" section on real profiles.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics

import numpy as np
import pandas as pd

from integration_real import bbbc021, cell_injury, clean, markdown


def normalised_halves(df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The wells normalised per plate to their controls, and which of them are on every other plate (sorted by
    name): the plates to map."""
    from phenovec.process import normalize

    norm = clean(normalize(df, samples="Metadata_control == True", method="standardize", by="Metadata_Plate"))
    plates = sorted(norm["Metadata_Plate"].unique())
    return norm, norm["Metadata_Plate"].isin(plates[1::2]).to_numpy()


def leave_one_out(df: pd.DataFrame, label: str, pcs: int) -> pd.DataFrame:
    from sklearn.metrics import roc_auc_score

    from phenovec.batch import harmony
    from phenovec.batch.mapping_confidence import MAPPING_DISTANCE

    norm, new = normalised_halves(df)
    rows = []
    for held in sorted(norm.loc[~norm["Metadata_control"], label].unique()):
        ref = norm[~new & (norm[label] != held).to_numpy()]
        query = norm[new]
        fitted, fit = harmony(ref, vars_use="Metadata_Plate", n_components=pcs, random_state=0,
                              mapping_confidence=True, return_fit=True)
        mapped = harmony(query, fit=fit)
        treated = mapped[~mapped["Metadata_control"]]
        is_held = (treated[label] == held).to_numpy()
        if is_held.sum() == 0 or is_held.all():
            continue
        dist = treated[MAPPING_DISTANCE].to_numpy()
        rows.append({"held_out": held, "held_wells": int(is_held.sum()), "known_wells": int((~is_held).sum()),
                     "auc": float(roc_auc_score(is_held, dist)),
                     "known_over_reference": float(np.median(dist[~is_held])
                                                   / np.median(fitted[MAPPING_DISTANCE]))})
    return pd.DataFrame(rows)


def mapped_report(out: str, pcs: int) -> dict:
    """BBBC021's odd plates mapped onto a fit of its even plates (every class), reported with ``build_report``."""
    from phenovec.batch import harmony
    from phenovec.report import build_report

    norm, new = normalised_halves(clean(bbbc021()))
    _, fit = harmony(norm[~new], vars_use="Metadata_Plate", n_components=pcs, random_state=0,
                     mapping_confidence=True, return_fit=True)
    mapped = harmony(norm[new], fit=fit)
    paths = build_report(mapped, out, moa_column="Metadata_moa", treatment_column="Metadata_compound",
                         control_query="Metadata_control == True", null_size=2000)
    return json.loads(paths.json.read_text())["mapping"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pcs", type=int, default=10)
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", default=None, help="also write the report of BBBC021's mapped plates here")
    a = ap.parse_args()
    logging.getLogger("harmonypy").setLevel(logging.WARNING)
    report = {}
    for name, load, label in (("bbbc021", bbbc021, "Metadata_moa"), ("cell-injury", cell_injury, "Metadata_injury")):
        res = leave_one_out(clean(load()), label, a.pcs)
        report[name] = {"median_auc": statistics.median(res["auc"]), "classes": res.to_dict(orient="records")}
        print(f"\n## {name}: {len(res)} classes held out in turn, {a.pcs} PCs; median AUC "
              f"{statistics.median(res['auc']):.3f}")
        print(markdown(res, index=False))
    if a.report:
        sec = mapped_report(a.report, a.pcs)
        report["report"] = sec
        print(f"\n## BBBC021 mapped plates, report in {a.report}")
        print(markdown(pd.DataFrame(sec["per_plate"]), index=False))
        print(markdown(pd.DataFrame(sec["top"]), index=False))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps({k: v["median_auc"] for k, v in report.items() if "median_auc" in v}))


if __name__ == "__main__":
    main()
