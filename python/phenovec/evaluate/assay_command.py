"""The assay-prediction subcommands of ``phenovec evaluate`` (GapNet's protocol):

    phenovec evaluate assays PREDICTIONS --labels LABELS --compound-column C -o per_task.csv \
        [--figure auc.png] [--query "split == 'test'"] [--min-actives 1 --min-inactives 1]
    phenovec evaluate compare-assays RUN_A.csv RUN_B.csv [RUN_C.csv ...] [--names A B C] -o wilcoxon.csv

``assays``: a prediction table (one row per view / well / crop: the compound column and one probability column per
task, named ``--prefix`` + task) and a label table (wide CSV / Parquet or GapNet's ``label-matrix.mtx``; see
:mod:`phenovec.io.assay_labels`) -> the per-task table (n measured / active / inactive, AUC, AUPRC, F1 at 0.5,
the reason a task is not scored), the summary JSON (mean +- SD, counts of tasks with AUC > 0.9 / 0.8 / 0.7) and,
with ``--figure``, measured compounds vs AUC as PNG. Predictions are averaged per compound first unless
``--no-average``.

``compare-assays``: two or more per-task tables of ``assays`` -> the Table A1 p-value matrix (p that the column
model outperformed the row model, one-sided paired Wilcoxon over tasks) and, in the summary, each model's mean,
every pair's Pearson r of per-task AUCs and, for two runs, both one-sided tests.

``add_assay_parsers(metrics)`` adds both to ``phenovec evaluate``'s subparsers. Building the parsers imports
nothing heavy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from phenovec.cli_options import add_out, add_quiet, option


def _run_assays(args) -> dict:
    from phenovec.cli import _finish
    from phenovec.evaluate.assay_prediction import evaluate_assay_predictions, measured_vs_auc_figure
    from phenovec.io.assay_labels import read_assay_labels
    from phenovec.io.profiles import read_table
    from phenovec.io.row_filter import filter_mask

    labels = read_assay_labels(args.labels, convention=args.convention, compound_column=args.label_compound_column,
                               tasks=args.tasks, min_actives=args.min_actives, min_inactives=args.min_inactives,
                               row_index=args.row_index, column_index=args.column_index)
    pred = read_table(args.predictions)
    if args.query:
        pred = pred[filter_mask(pred, args.query, key="--query")]
        if pred.empty:
            raise ValueError(f"--query {args.query!r} selects no row of {args.predictions}")
    if args.prefix:
        pred = pred.rename(columns={f"{args.prefix}{t}": t for t in labels.tasks})
    per_task, summary = evaluate_assay_predictions(pred.reset_index(drop=True), labels,
                                                   compound_column=args.compound_column,
                                                   average=not args.no_average, threshold=args.threshold,
                                                   match=args.match)
    if args.figure:
        measured_vs_auc_figure(per_task, args.figure, title=args.title)
        summary["figure"] = str(args.figure)
    return _finish(args, per_task, {"metric": "assays", "labels": str(args.labels), **summary})


def _add_assays(metrics) -> None:
    p = metrics.add_parser("assays", help="per-assay ROC AUC / AUPRC / F1 of multi-task assay predictions with "
                                          "missing labels masked (GapNet protocol)")
    p.add_argument("predictions", help="prediction table (.csv, .csv.gz, .parquet): a compound column and one "
                                       "probability column per task")
    p.add_argument("--labels", required=True, help="assay label table: wide CSV / Parquet (one row per compound, "
                                                   "1 / 0 / empty or +1 / -1 / 0) or GapNet's label-matrix.mtx")
    option(p, "--compound-column", old=["--compound-col"], required=True,
           help="compound column of the predictions, matched to the label compounds")
    p.add_argument("--label-compound-column", help="compound column of a wide label table (default: compound, "
                                                   "INCHIKEY, InChIKey, Metadata_compound or Metadata_Treatment)")
    p.add_argument("--match", choices=["exact", "inchikey14"], default="exact",
                   help="compound matching: exact, or the first 14 characters of an InChIKey (LINCS InChIKey14)")
    p.add_argument("--convention", choices=["auto", "binary", "signed"], default="auto",
                   help="label values: binary 1 / 0 / empty, signed +1 / -1 / 0, auto = signed iff any -1")
    p.add_argument("--tasks", nargs="+", help="label tasks to score (default: all)")
    p.add_argument("--min-actives", type=int, default=0, help="drop tasks with fewer measured actives (warning)")
    p.add_argument("--min-inactives", type=int, default=0, help="drop tasks with fewer measured inactives (warning)")
    p.add_argument("--row-index", help="Matrix Market labels: compound index file (default row-compound-index.csv "
                                       "beside it)")
    p.add_argument("--column-index", help="Matrix Market labels: assay index file (default column-assay-index.csv "
                                          "beside it)")
    p.add_argument("--prefix", default="", help="prediction column of task T is PREFIX + T")
    p.add_argument("--no-average", action="store_true", help="score every prediction row on its own instead of "
                                                             "the mean per compound")
    p.add_argument("--threshold", type=float, default=0.5, help="F1 decision threshold on the probability")
    p.add_argument("--query", help="filter selecting prediction rows, e.g. \"split == 'test'\" (phenovec.io.row_filter)")
    add_out(p, "per-task table (.csv, .csv.gz or .parquet)")
    p.add_argument("--summary", help="JSON summary path (default: OUT with .json)")
    p.add_argument("--figure", help="PNG of measured compounds per task vs AUC")
    p.add_argument("--title", help="figure title")
    add_quiet(p)
    p.set_defaults(run=_run_assays)


def _run_compare(args) -> dict:
    from itertools import combinations

    from phenovec.cli import _finish
    from phenovec.evaluate.roc_comparison import auc_columns, auc_correlation, paired_auc_test, wilcoxon_table
    from phenovec.io.profiles import read_table

    if len(args.runs) < 2:
        raise ValueError("compare-assays needs at least two per-task tables")
    names = args.names or [Path(r).name.split(".")[0] for r in args.runs]
    if len(names) != len(args.runs):
        raise ValueError(f"--names: {len(names)} names for {len(args.runs)} tables")
    if len(set(names)) != len(names):
        raise ValueError(f"run names must differ (got {', '.join(names)}); name them with --names")
    runs = {n: read_table(r) for n, r in zip(names, args.runs)}
    for n, r in zip(names, args.runs):
        for col in ("task", args.metric):
            if col not in runs[n].columns:
                raise ValueError(f"{r}: no column {col!r} (expected a per-task table of 'phenovec evaluate assays')")
    scores = auc_columns(runs, args.metric)
    table = wilcoxon_table(scores, triangle=args.triangle)
    summary: dict = {"metric": f"compare-assays ({args.metric})", "runs": dict(zip(names, map(str, args.runs))),
                     "mean": {n: float(scores[n].mean()) for n in names},
                     "n_tasks": {n: int(scores[n].notna().sum()) for n in names}, "pearson": {}}
    for a, b in combinations(names, 2):
        try:
            summary["pearson"][f"{a} vs {b}"] = auc_correlation(scores[a], scores[b])
        except ValueError as e:
            summary["pearson"][f"{a} vs {b}"] = {"error": str(e)}
    if len(names) == 2:
        a, b = names
        summary["wilcoxon"] = {f"{a} > {b}": paired_auc_test(scores[a], scores[b]),
                               f"{b} > {a}": paired_auc_test(scores[b], scores[a])}
    out = table.reset_index().rename(columns={"index": "model"})
    return _finish(args, out, summary)


def _add_compare(metrics) -> None:
    p = metrics.add_parser("compare-assays", help="paired one-sided Wilcoxon table (GapNet Table A1) and Pearson r "
                                                  "of per-assay AUCs between runs")
    p.add_argument("runs", nargs="+", help="two or more per-task tables from 'phenovec evaluate assays'")
    p.add_argument("--names", nargs="+", help="run names (default: the file names without extension)")
    p.add_argument("--metric", default="auc", choices=["auc", "auprc", "f1"], help="per-task metric compared")
    p.add_argument("--triangle", action="store_true", help="keep only the lower triangle (each model against the "
                                                           "better ones), as the paper prints it")
    add_out(p, "p-value table (.csv or .parquet): row = model, column = model; p that the column outperformed "
               "the row")
    p.add_argument("--summary", help="JSON summary path (default: OUT with .json)")
    add_quiet(p)
    p.set_defaults(run=_run_compare)


def add_assay_parsers(metrics) -> list[argparse.ArgumentParser]:
    """Add ``assays`` and ``compare-assays`` to ``phenovec evaluate``'s subparsers."""
    _add_assays(metrics)
    _add_compare(metrics)
    return [metrics.choices["assays"], metrics.choices["compare-assays"]]
