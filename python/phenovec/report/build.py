"""``build_report``: well profiles -> one self-contained HTML file and one JSON file of every number.

Steps: read and check the input (:mod:`.inputs`), compute the metrics with :mod:`phenovec.evaluate`
(:mod:`.metrics`), draw the figures (:mod:`.figures`), write the JSON (:mod:`.numbers`) and the HTML
(:mod:`.html`). Both files are written atomically (temporary file + ``os.replace``).
"""
from __future__ import annotations

import json
import time

import pandas as pd
from dataclasses import dataclass
from pathlib import Path

from phenovec.io.atomic import write_text_atomic
from phenovec.report.figures import all_figures
from phenovec.report.html import render_html
from phenovec.report.inputs import load_input, subset_input
from phenovec.report.metrics import DEFAULT_KS, DEFAULT_PERCENT_LIST, DEFAULT_PERCENTILES, compute_metrics, map_summary
from phenovec.report.numbers import report_numbers
from phenovec.report.provenance import collect_provenance


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    json: Path


def build_report(
    profiles,
    out_dir,
    *,
    moa_column: str = "Metadata_MOA",
    treatment_column: str = "Metadata_Treatment",
    control_query: str = "Metadata_Control == True",
    control_key: str = "control_query",
    plate_column: str = "Metadata_Plate",
    features="infer",
    provenance: dict | None = None,
    similarity: str = "cosine",
    null_size: int = 10000,
    seed: int = 0,
    threshold: float = 0.05,
    percentiles=DEFAULT_PERCENTILES,
    ks=DEFAULT_KS,
    percent_list=DEFAULT_PERCENT_LIST,
    name: str = "report",
    title: str = "phenovec report",
    split_column: str = "Metadata_Split",
    evaluate_on: str = "held_out",
    context=None,
    umap: bool = False,
    compare: dict | None = None,
    batch_effects: bool = True,
    moaprofiler: bool = False,
    activity=None,
) -> ReportPaths:
    """Evaluate well-level profiles and write ``OUT_DIR/NAME.html`` and ``OUT_DIR/NAME.json``.

    ``profiles``: a DataFrame or a CSV / Parquet path (pycytominer layout). ``control_query``: a row filter
    (:mod:`phenovec.io.row_filter`, never evaluated as code: ``"Metadata_Control == True"``) or a treatment value
    (``"DMSO"``); ``control_key`` is the name errors give it (a CLI option, a configuration key). ``features``:
    ``"infer"`` (every non-``Metadata_`` column) or a list of column names. ``provenance``: the caller's dict (config,
    hashes, timings), stored under ``provenance.run``. Metric definitions: :mod:`phenovec.report.metrics`; JSON
    layout: :mod:`phenovec.report.numbers`.

    **What is evaluated.** When the profiles carry ``split_column`` (the training split of each well: ``train`` /
    ``val`` / ``test``, as ``phenovec run`` writes it) and ``evaluate_on="held_out"`` (the default), every metric is
    computed on the wells the model did not train on (``test`` when there are test wells, else ``val``); the
    training wells get a secondary, labelled summary (replicate and MOA mAP only). ``evaluate_on="all"`` evaluates
    every well. Without the column every well is evaluated and the report says that no split was given.
    ``context``: a :class:`phenovec.report.context.ReportContext` (dataset name, training curve, QC, example
    cells); ``umap``: add a UMAP view (umap-learn; some seconds of JIT compilation).

    **Batch effects.** With ``batch_effects`` (the default) and two or more plates, the scib integration metrics of
    the treated wells (batch = plate, label = MOA) get their own section (:mod:`phenovec.report.batch_effects`);
    ``compare`` (name -> profile table or path of the same wells, matched by plate and well) adds other embeddings
    of those wells to it, e.g. the profiles before processing or after Harmony.

    **MOAProfiler.** ``moaprofiler=True`` adds Wong et al. 2023's evaluation protocol on the evaluated wells, the
    treatment column read as the compound (:mod:`phenovec.report.moaprofiler`). ``activity``: a ``phenovec
    activity benchmark`` output folder: adds the few-shot section (mean AUROC vs M, Wilcoxon p-values).
    """
    if compare and not batch_effects:
        raise ValueError("compare: needs batch_effects=True (the tables are compared in the batch-effect section)")
    if evaluate_on not in ("held_out", "all"):
        raise ValueError(f"evaluate_on must be 'held_out' or 'all', got {evaluate_on!r}")
    timings = {}
    t0 = time.perf_counter()
    inp = load_input(profiles, moa_column=moa_column, treatment_column=treatment_column,
                     control_query=control_query, plate_column=plate_column, features=features,
                     control_key=control_key)
    timings["load"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    primary, scope, train_inp = _scope(inp, split_column, evaluate_on)
    res = compute_metrics(primary, similarity=similarity, null_size=null_size, seed=seed, threshold=threshold,
                          percentiles=percentiles, ks=ks, percent_list=percent_list)
    res.scope = scope
    if train_inp is not None:
        res.secondary = map_summary(train_inp, similarity, null_size, seed, threshold)
    timings["metrics"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    from phenovec.report.views import embedding_views

    res.views, res.views_explained_variance = embedding_views(inp, umap=umap, seed=seed, split_column=split_column)
    res.context = context
    if context is not None and context.cells is not None:
        from phenovec.report.context import qc_tables

        res.qc_wells, res.qc_flagged = qc_tables(context.cells, context.layout, context.min_cells, treatment_column)
    timings["views"] = round(time.perf_counter() - t0, 4)
    if batch_effects:
        from phenovec.report.batch_effects import batch_effects as integration

        t0 = time.perf_counter()
        res.batch_effects = integration(inp, compare, seed=seed, notes=res.notes)
        timings["batch_effects"] = round(time.perf_counter() - t0, 4)
    from phenovec.report.mapping import mapping_section

    res.mapping = mapping_section(inp, notes=res.notes)  # only with the harmony step's Metadata_mapping_distance column
    if moaprofiler:
        from phenovec.report.moaprofiler import moaprofiler_section

        t0 = time.perf_counter()
        res.moaprofiler = moaprofiler_section(inp, primary, split_column=split_column, seed=seed, notes=res.notes)
        timings["moaprofiler"] = round(time.perf_counter() - t0, 4)
    if activity is not None:
        from phenovec.activity.report_section import read_activity_section

        res.activity = read_activity_section(activity)
    t0 = time.perf_counter()
    figures = all_figures(res)
    timings["figures"] = round(time.perf_counter() - t0, 4)
    prov = collect_provenance(profiles if isinstance(profiles, (str, Path)) else inp.source, provenance, timings)
    if context is not None and context.run_dir is not None:
        from phenovec.report.context import relative_paths

        prov = relative_paths(prov, context.run_dir)
    numbers = report_numbers(res, prov)
    numbers["figures"] = [f.key for f in figures]
    out = Path(out_dir)
    jpath = write_text_atomic(out / f"{name}.json", json.dumps(numbers, indent=1, allow_nan=False))
    hpath = write_text_atomic(out / f"{name}.html", render_html(res, figures, numbers, title=title))
    return ReportPaths(html=hpath, json=jpath)


def _scope(inp, split_column: str, evaluate_on: str):
    """(the input to evaluate, a description of it, the training wells' input or None); see ``build_report``."""
    meta = inp.meta
    if split_column not in meta.columns:
        return inp, {"evaluated": "all wells", "reason": f"no training split given ({split_column} absent): every "
                     "well is evaluated", "wells": int(len(meta)), "held_out": False}, None
    split = meta[split_column].astype(str).to_numpy()
    by_split = {k: int(v) for k, v in pd.Series(split).value_counts().sort_index().items()}
    is_train = split == "train"
    if evaluate_on == "all":
        return inp, {"evaluated": "all wells", "reason": "evaluate_on: all (training wells included)",
                     "wells": int(len(meta)), "by_split": by_split, "held_out": False}, None
    for which in ("test", "val"):
        sel = split == which
        if sel.any() and inp.control[sel].any() and (~inp.control[sel]).any():
            desc = ("test wells (held out from training and model selection)" if which == "test"
                    else "validation wells (never trained on; used to pick the best epoch)")
            train_inp = subset_input(inp, is_train) if is_train.any() and inp.control[is_train].any() \
                and (~inp.control[is_train]).any() else None
            return subset_input(inp, sel), {"evaluated": desc, "split": which, "wells": int(sel.sum()),
                                            "by_split": by_split, "held_out": True}, train_inp
    return inp, {"evaluated": "all wells", "reason": "no held-out split has both control and treatment wells: "
                 "training wells are included", "wells": int(len(meta)), "by_split": by_split,
                 "held_out": False}, None
