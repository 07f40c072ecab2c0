"""The report's mapping section: how far each well sits from the Harmony reference it was mapped onto.

Profiles mapped onto a saved Harmony fit with ``mapping_confidence`` (the ``harmony`` step,
:mod:`phenovec.batch.mapping_confidence`) carry Symphony's per-cell mapping metric in ``Metadata_mapping_distance``.
When the report's profiles have that column, this section shows it the way it can be read: within a plate, since
a plate's own offset (which the mapping then removes) raises all its wells' distances. Each well's distance is
divided by the median distance of its plate's control wells (the controls are the phenotype every reference holds;
a plate without control wells, or whose controls' median is 0, is divided by the median of all its wells
instead, and the table says so). Plates are ordered as their labels sort (numbers as numbers); wells without a
plate label are left out, noted. The
section gives per plate the wells' distances, the treated wells furthest from the reference by that ratio, and a
strip plot of every plate. Without the column the section is left out; a missing or non-finite distance is an
error naming its row.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd

from phenovec.batch.mapping_confidence import MAPPING_DISTANCE as COLUMN
from phenovec.report.inputs import ReportInput

#: treated wells listed as furthest from the reference
TOP = 15


@dataclass
class MappingSection:
    """``per_plate``: one row per plate; ``top``: the treated wells with the largest ratio to their plate's baseline;
    ``wells``: every well's plate, treatment, control flag, distance and ratio (for the figure)."""

    per_plate: pd.DataFrame
    top: pd.DataFrame
    wells: pd.DataFrame


def _plate_order(labels) -> list:
    """Distinct plate labels sorted as numbers when every one is a number (1, 2, 10), else as text."""
    uniq = list(dict.fromkeys(labels))
    try:
        return sorted(uniq, key=float)
    except (TypeError, ValueError):
        return sorted(uniq, key=str)


def mapping_section(inp: ReportInput, notes: list | None = None) -> MappingSection | None:
    """The section of the report's profiles (None without a ``Metadata_mapping_distance`` column)."""
    if COLUMN not in inp.meta.columns:
        return None
    notes = notes if notes is not None else []
    dist = pd.to_numeric(inp.meta[COLUMN], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(dist) | (dist < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = inp.meta[COLUMN].iloc[row]
        value = value.item() if isinstance(value, np.generic) else value  # -0.5, not np.float64(-0.5)
        raise ValueError(f"{inp.source}: {COLUMN} is {value!r} at row {row}: the mapping "
                         "distance must be a finite number >= 0")
    plate = inp.meta[inp.plate_column]
    wells = pd.DataFrame({"plate": plate.to_numpy(), "treatment": inp.meta[inp.treatment_column].astype(str).to_numpy(),
                          "moa": inp.meta[inp.moa_column].to_numpy(), "control": inp.control, "distance": dist})
    if "Metadata_Well" in inp.meta.columns:
        wells.insert(1, "well", inp.meta["Metadata_Well"].astype(str).to_numpy())
    if plate.isna().any():
        notes.append(f"mapping section: {int(plate.isna().sum())} well(s) without a plate label "
                     f"({inp.plate_column}) left out")
        wells = wells[plate.notna().to_numpy()].reset_index(drop=True)
    order = _plate_order(wells["plate"])
    wells["plate"] = wells["plate"].astype(str)
    rows = []
    for p in map(str, order):
        g = wells[wells["plate"] == p]
        controls = g.loc[g["control"], "distance"]
        treated = g.loc[~g["control"], "distance"]
        base, how = (float(controls.median()), "control median") if len(controls) else (np.nan, "")
        if not base > 0:  # no controls, or their median is 0: the plate's own median
            base = float(g["distance"].median())
            how = "all wells' median (" + ("no controls" if not len(controls) else "control median 0") + ")"
            if not base > 0:
                base, how = np.nan, "none (the plate's median distance is 0)"
        rows.append({"plate": p, "wells": len(g), "controls": len(controls), "baseline": how,
                     "baseline_distance": base,
                     "treated_median": float(treated.median()) if len(treated) else np.nan,
                     "treated_max": float(treated.max()) if len(treated) else np.nan,
                     "treated_over_2x": int((treated > 2 * base).sum()) if base > 0 else 0})
    per_plate = pd.DataFrame(rows)
    base = per_plate.set_index("plate")["baseline_distance"]
    denom = base.loc[wells["plate"]].to_numpy()
    d = wells["distance"].to_numpy()
    wells["ratio"] = np.divide(d, denom, out=np.full(len(d), np.nan), where=denom > 0)
    top = (wells[~wells["control"]].sort_values(["ratio", "distance"], ascending=False, kind="stable")
           .head(TOP).drop(columns="control").reset_index(drop=True))
    return MappingSection(per_plate=per_plate, top=top, wells=wells)


def mapping_figures(sec: MappingSection | None) -> list:
    """``mapping_distance``: each plate's wells by their distance over the plate's baseline (controls grey)."""
    if sec is None:
        return []
    from phenovec.figure import Figure, png_bytes, pyplot

    plt = pyplot()
    plates = list(sec.per_plate["plate"])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.45 * len(plates) + 2.0), 3.4))
    jitter = np.random.default_rng(0)
    for i, p in enumerate(plates):
        g = sec.wells[sec.wells["plate"] == p]
        for is_control, colour, label in ((True, "0.6", "controls"), (False, "tab:blue", "treated")):
            v = np.maximum(g.loc[g["control"] == is_control, "ratio"].to_numpy(), 1e-2)  # > 0 on the log axis
            ax.scatter(i + jitter.uniform(-0.25, 0.25, len(v)), v, s=9, color=colour, alpha=0.8,
                       label=label if i == 0 else None, zorder=1 if is_control else 2)
    ax.axhline(1.0, color="0.4", lw=0.8, ls=":")
    ax.axhline(2.0, color="tab:red", lw=0.8, ls="--", label="2 x baseline")
    ax.set_xticks(range(len(plates)), plates, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")  # one failed well at 100x must not flatten the rest
    ax.set_ylabel("distance / plate baseline (log)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return [Figure("mapping_distance", "Mapping onto the reference: distance per plate",
                   "Symphony's per-cell mapping metric of each well (a Mahalanobis distance to the reference "
                   "clusters it was assigned to), over its plate's baseline (its control wells' median; all its "
                   "wells' median for a plate without controls), on a log scale: wells far above their plate's "
                   "baseline resemble nothing in the reference.", png_bytes(fig))]


def mapping_section_html(sec: MappingSection | None, figures_html: str = "") -> str:
    """The section's HTML (empty without a section)."""
    from phenovec.report.html import table_html

    if sec is None:
        return ""
    explain = (f"Each well's {COLUMN} (the harmony step's mapping_confidence: Symphony's per-cell mapping "
               "metric) says how far it lies from the Harmony reference clusters it was assigned to. The distances "
               "are taken before the mapping's correction, so a plate's own offset raises all of its wells: read "
               "them within a plate, over the plate's baseline (its control wells' median). A treated well far "
               "above that baseline resembles nothing the reference holds: a new phenotype, or a failed well. (On "
               "the reference's own plates the distances are in sample and run low.)")
    return "".join(["<h2>Mapping onto the reference</h2>", f'<p class="explain">{html.escape(explain)}</p>',
                    table_html(sec.per_plate), figures_html,
                    f"<h3>Treated wells furthest from the reference (top {len(sec.top)}, by distance over their "
                    "plate's baseline)</h3>", table_html(sec.top)])


def mapping_numbers(sec: MappingSection | None) -> dict | None:
    """``{column, per_plate: [...], top: [...]}`` for ``report.json``."""
    if sec is None:
        return None
    return {"column": COLUMN, "per_plate": sec.per_plate, "top": sec.top}
