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

With one method the min-max scaling across methods is meaningless, so the scores are the unscaled means (as
scib-metrics' Benchmarker does with ``min_max_scale=False``); with several, the scaled ranking. The section is left
out, with the reason in the report's notes, when there is a single plate, fewer than two MOAs or fewer than
``MIN_WELLS`` wells.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from phenovec.report.inputs import ReportInput

MIN_WELLS = 8
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


def _rows(inp: ReportInput) -> np.ndarray:
    moa = inp.meta[inp.moa_column]
    return np.flatnonzero(~inp.control & moa.notna().to_numpy())


def _aligned(name: str, table, keys: list[str], wanted: pd.DataFrame) -> np.ndarray:
    """The feature matrix of ``table`` (a path or DataFrame) in the row order of ``wanted`` (keyed by ``keys``)."""
    from phenovec.io.profiles import read_table, split_profiles

    df = read_table(table) if not isinstance(table, pd.DataFrame) else table
    for k in keys:
        if k not in df.columns:
            raise KeyError(f"compare {name!r}: no column {k!r} to match its wells to the report's")
    prof = split_profiles(df.reset_index(drop=True))
    key_df = prof.meta[keys].astype(str)
    if key_df.duplicated().any():
        dup = key_df[key_df.duplicated()].iloc[0].tolist()
        raise ValueError(f"compare {name!r}: well {dup} appears twice (one row per well is needed)")
    pos = pd.Series(np.arange(len(key_df)), index=pd.MultiIndex.from_frame(key_df))
    want = pd.MultiIndex.from_frame(wanted[keys].astype(str))
    missing = ~want.isin(pos.index)
    if missing.any():
        raise ValueError(f"compare {name!r}: {int(missing.sum())} of the report's wells are missing, e.g. "
                         f"{list(want[missing][0])}")
    x = prof.feats.to_numpy(np.float64) if hasattr(prof.feats, "to_numpy") else np.asarray(prof.feats, np.float64)
    return x[pos.loc[want].to_numpy()]


def batch_effects(inp: ReportInput, compare: dict | None = None, *, seed: int = 0,
                  notes: list | None = None) -> BatchEffects | None:
    """The integration metrics of the report's wells (see the module docstring), or None with a note why not."""
    from phenovec.evaluate.integration import integration_table

    notes = notes if notes is not None else []
    rows = _rows(inp)
    meta = inp.meta.iloc[rows].reset_index(drop=True)
    plates = meta[inp.plate_column].nunique() if inp.plate_column in meta.columns else 0
    labels = meta[inp.moa_column].nunique()
    why = ("a single plate" if plates < 2 else "fewer than two MOAs among the treated wells" if labels < 2
           else f"fewer than {MIN_WELLS} treated wells with an MOA" if len(rows) < MIN_WELLS else None)
    if why is not None:
        notes.append(f"batch effects (integration metrics) left out: {why}")
        return None
    embeddings = {PROFILES: inp.x[rows]}
    if compare:
        keys = [inp.plate_column] + [k for k in KEYS[1:] if k in meta.columns]
        if len(keys) < 2:
            raise KeyError(f"compare: the report's profiles need a {KEYS[1]!r} column to match wells")
        for name, table in compare.items():
            if name == PROFILES:
                raise ValueError(f"compare: {PROFILES!r} is the report's own profiles; give another name")
            embeddings[name] = _aligned(name, table, keys, meta)
    md = pd.DataFrame({"batch": meta[inp.plate_column].astype(str).to_numpy(),
                       "label": meta[inp.moa_column].astype(str).to_numpy()})
    scaled = len(embeddings) > 1
    res = integration_table(embeddings, "batch", "label", metadata=md, baseline=list(embeddings)[-1] if scaled
                            else None, seed=seed, min_max=scaled)
    return BatchEffects(table=res.table, scores=res.scores, wells=len(rows), plates=int(plates), labels=int(labels),
                        methods=list(embeddings), scaled=scaled)


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
    ax.legend(fontsize=8)
    ax.set_title(f"Integration metrics: batch = plate ({b.plates}), label = MOA ({b.labels}), {b.wells} wells",
                 fontsize=9)
    fig.tight_layout()
    return Figure("batch_effects", "Batch effects: integration metrics",
                  "Integration metrics of the treated wells (scib-metrics' definitions): batch-correction metrics "
                  "are high when plates mix, bio-conservation metrics when wells group by MOA.", png_bytes(fig))
