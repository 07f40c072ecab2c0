"""The report's batch-effect section: the scib integration metrics of the well profiles, batch = plate.

A scientist reading a multi-plate report asks whether the profiles group by biology or by plate. This section
answers with the integration metric set of :mod:`phenovec.evaluate.integration` (scib-metrics' definitions;
Arevalo et al. 2024's ranking), computed on the report's wells with

* batch = the plate column, label = the MOA column;
* the non-control wells with an MOA label (controls are one label spread over every plate and would dominate the
  label metrics), every plate (batch effects are a property of the whole experiment, so the training wells are
  included, and the section says so);
* one method per embedding of those wells: the profiles themselves, plus any ``compare`` tables of the same wells
  (``phenovec run`` adds the per-well means before processing, so the table shows what processing did to the
  batch effect; ``phenovec report --compare NAME=PATH`` adds others, e.g. a Harmony-corrected table).

``pcr_comparison`` (how much of the plate's share of the variance an embedding removed) is measured against the
first ``compare`` table, the baseline, which the section names (``phenovec run``'s: the well means before
processing; on the command line list the unprocessed table first). Without a compare table it is left out: against
itself every table scores 0.

With one method the min-max scaling across methods is meaningless, so the scores are the unscaled means (as
scib-metrics' Benchmarker does with ``min_max_scale=False``); with several, the scaled ranking. The section is left
out, with the reason in the report's notes, when there is a single plate, fewer than two MOAs or fewer than
``MIN_WELLS`` wells. Wells without a plate label are left out of it (noted), a metric whose definition does not
apply to the wells (``silhouette_batch`` when no MOA has wells on two plates) is left blank with the reason noted,
and compare tables are skipped, noted, when the profiles have no well column to match them by.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from phenovec.report.inputs import ReportInput

MIN_WELLS = 8
#: MOAs' median wells below which the report notes that kBET (neighbourhoods of at least 11 wells) is weak
KBET_FEW_WELLS = 40
KEYS = ("Metadata_Plate", "Metadata_Well")
PROFILES = "profiles"


@dataclass
class BatchEffects:
    """What the section shows: the tidy metric table, the per-method scores, and how many wells / plates / MOAs."""

    table: pd.DataFrame
    scores: pd.DataFrame
    wells: int
    plates: int
    labels: int
    methods: list[str] = field(default_factory=list)
    scaled: bool = False
    baseline: str | None = None  # the table pcr_comparison is measured against (None: left out)
    undefined: dict = field(default_factory=dict)  # metric -> why it does not apply


def _rows(inp: ReportInput) -> np.ndarray:
    moa = inp.meta[inp.moa_column]
    return np.flatnonzero(~inp.control & moa.notna().to_numpy())


def _key_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Key columns as text, numbers written canonically ("001", 1 and 1.0 all "1"): a CSV read back turns plate
    "001" into the number 1, which must still match."""
    def canon(v):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return str(v)
        return str(int(f)) if np.isfinite(f) and f == int(f) else repr(f)

    return frame.apply(lambda col: col.map(canon))


def _aligned(name: str, table, keys: list[str], wanted: pd.DataFrame) -> np.ndarray:
    """The feature matrix of ``table`` (a path or DataFrame) in the row order of ``wanted`` (keyed by ``keys``)."""
    from phenovec.io.profiles import read_table, split_profiles

    df = read_table(table) if not isinstance(table, pd.DataFrame) else table
    for k in keys:
        if k not in df.columns:
            raise KeyError(f"compare {name!r}: no column {k!r} to match its wells to the report's")
    prof = split_profiles(df.reset_index(drop=True))
    key_df, want_df = prof.meta[keys].astype(str), wanted[keys].astype(str)
    if not pd.MultiIndex.from_frame(want_df).isin(pd.MultiIndex.from_frame(key_df)).all():
        key_df, want_df = _key_text(prof.meta[keys]), _key_text(wanted[keys])  # e.g. plate "001" read back as 1
    if key_df.duplicated().any():
        dup = key_df[key_df.duplicated()].iloc[0].tolist()
        raise ValueError(f"compare {name!r}: well {dup} appears twice (one row per well is needed)")
    pos = pd.Series(np.arange(len(key_df)), index=pd.MultiIndex.from_frame(key_df))
    want = pd.MultiIndex.from_frame(want_df)
    missing = ~want.isin(pos.index)
    if missing.any():
        raise ValueError(f"compare {name!r}: {int(missing.sum())} of the report's wells are missing, e.g. "
                         f"{list(want[missing][0])} (its own first wells: {key_df.head(2).values.tolist()})")
    x = prof.feats.to_numpy(np.float64) if hasattr(prof.feats, "to_numpy") else np.asarray(prof.feats, np.float64)
    return x[pos.loc[want].to_numpy()]


def batch_effects(inp: ReportInput, compare: dict | None = None, *, seed: int = 0,
                  notes: list | None = None) -> BatchEffects | None:
    """The integration metrics of the report's wells (see the module docstring), or None with a note why not."""
    from phenovec.evaluate.integration import integration_table

    notes = notes if notes is not None else []
    rows = _rows(inp)
    if inp.plate_column in inp.meta.columns:
        no_plate = inp.meta[inp.plate_column].iloc[rows].isna().to_numpy()
        if no_plate.any():
            notes.append(f"batch effects: {int(no_plate.sum())} treated well(s) without a plate label "
                         f"({inp.plate_column}) left out of the section")
            rows = rows[~no_plate]
    meta = inp.meta.iloc[rows].reset_index(drop=True)
    plates = meta[inp.plate_column].nunique() if inp.plate_column in meta.columns else 0
    labels = meta[inp.moa_column].nunique()
    why = ("a single plate" if plates < 2 else "fewer than two MOAs among the treated wells" if labels < 2
           else f"fewer than {MIN_WELLS} treated wells with an MOA" if len(rows) < MIN_WELLS else None)
    if why is not None:
        notes.append(f"batch effects (integration metrics) left out: {why}")
        return None
    embeddings = {PROFILES: inp.x[rows]}
    if compare and KEYS[1] not in meta.columns:
        notes.append(f"batch effects: the compare tables ({', '.join(compare)}) left out: the report's profiles "
                     f"have no {KEYS[1]!r} column to match their wells by (profiles not per well)")
        compare = None
    if compare:
        keys = [inp.plate_column, KEYS[1]]
        for name, table in compare.items():
            if name == PROFILES:
                raise ValueError(f"compare: {PROFILES!r} is the report's own profiles; give another name")
            embeddings[name] = _aligned(name, table, keys, meta)
    md = pd.DataFrame({"batch": meta[inp.plate_column].astype(str).to_numpy(),
                       "label": meta[inp.moa_column].astype(str).to_numpy()})
    scaled = len(embeddings) > 1
    baseline = next(iter(compare)) if compare else None
    res = integration_table(embeddings, "batch", "label", metadata=md, baseline=baseline, seed=seed, min_max=scaled,
                            pcr=baseline is not None, skip_undefined=True)
    for metric, why in res.undefined.items():
        notes.append(f"batch effects: {metric} left blank: {why}")
    sizes = meta[inp.moa_column].value_counts()
    sizes = sizes[sizes >= 10]  # kBET scores MOAs of 10 wells or more
    if len(sizes) and sizes.median() < KBET_FEW_WELLS:
        notes.append(f"batch effects: kbet_per_label is weak here: the MOAs it scores have a median of "
                     f"{int(sizes.median())} wells, and its neighbourhoods hold at least 11, so each test sees much "
                     "of its MOA and tends to accept; read ilisi_knn beside it")
    return BatchEffects(table=res.table, scores=res.scores, wells=len(rows), plates=int(plates), labels=int(labels),
                        methods=list(embeddings), scaled=scaled, baseline=baseline, undefined=dict(res.undefined))


def batch_effects_figure(b: BatchEffects | None):
    """Bars of each metric's raw value per method, batch-correction metrics then bio-conservation metrics."""
    if b is None:
        return None
    from phenovec.figure import Figure, png_bytes, pyplot

    plt = pyplot()
    t = b.table
    metrics = list(dict.fromkeys(t.sort_values("metric_type", kind="stable")["metric"]))
    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    width = 0.8 / len(b.methods)
    for i, m in enumerate(b.methods):
        vals = t[t["method"] == m].set_index("metric").reindex(metrics)["value"].to_numpy(float)
        ax.bar(np.arange(len(metrics)) + i * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2,
                  [f"{x.replace('nmi_ari_cluster_labels_', '')}\n({t[t['metric'] == x]['metric_type'].iloc[0]})"
                   for x in metrics], rotation=55, ha="right", fontsize=7)
    ax.set_ylabel("value (higher is better)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"Integration metrics: batch = plate ({b.plates}), label = MOA ({b.labels}), {b.wells} wells",
                 fontsize=9)
    fig.tight_layout()
    return Figure("batch_effects", "Batch effects: integration metrics",
                  "Integration metrics of the treated wells (scib-metrics' definitions): batch-correction metrics "
                  "are high when plates mix, bio-conservation metrics when wells group by MOA.", png_bytes(fig))
