"""``phenovec evaluate integration``: the scib integration metrics of several embeddings of the same rows.

    phenovec evaluate integration raw.parquet normalized.parquet sphered.parquet --names raw normalized sphered \
        --batch-key Metadata_Plate --label-key Metadata_moa -o integration.csv [--figure integration.png] \
        [--baseline raw] [--leiden] [--sbee] [--no-map] [--query "Metadata_moa != 'DMSO'"] [--summary S.json]

Each PROFILES table holds the same rows (same ``--batch-key`` / ``--label-key`` values, row for row); features are
its non-Metadata columns (each table may have its own). Writes the tidy table (method, metric, metric_type,
value, scaled), a JSON summary with the per-method batch-correction / bio-conservation / total scores and rank
(0.4 x batch + 0.6 x bio over min-max scaled metrics, Arevalo et al. 2024), and with ``--figure`` the heat map. A
metric undefined for these rows (``silhouette_batch`` when no label spans two batches, ...) is left blank, named in
the summary's ``undefined`` and on stderr.
See :mod:`phenovec.evaluate.integration`. ``add_integration_parser(metrics)`` adds it to ``phenovec evaluate``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from phenovec.cli_options import add_out, add_quiet


def _check_outputs(args) -> None:
    """Refuse, before any work, output names that cannot be written or that would replace an input or another
    output (the whole run's metrics came first, then a bad name's error, or an input table silently replaced)."""
    from phenovec.cli import check_outputs
    from phenovec.evaluate.integration.benchmark import HEATMAP_FORMATS
    from phenovec.io.profiles import TEXT_SUFFIXES

    if not str(args.out).lower().endswith((".parquet", ".pq", *TEXT_SUFFIXES)):
        raise ValueError(f"-o {args.out}: the table is written as .parquet or {', '.join(TEXT_SUFFIXES)}")
    if args.figure and Path(args.figure).suffix.lower().lstrip(".") not in HEATMAP_FORMATS:
        raise ValueError(f"--figure {args.figure}: the heat map is written as .{', .'.join(HEATMAP_FORMATS)}")
    check_outputs(args, **{"--figure": args.figure})


def _run(args) -> dict:
    from phenovec.cli import _finish
    from phenovec.evaluate.integration import integration_heatmap, integration_table
    from phenovec.io.profiles import read_table
    from phenovec.io.row_filter import filter_mask

    names = args.names or [Path(p).name.split(".")[0] for p in args.profiles]
    if len(names) != len(args.profiles):
        raise ValueError(f"--names: {len(names)} names for {len(args.profiles)} profile tables")
    if len(set(names)) != len(names):
        raise ValueError(f"--names: duplicate method names {names} (give distinct --names)")
    _check_outputs(args)
    tables = {}
    for nm, path in zip(names, args.profiles):
        df = read_table(path)
        if args.query:
            df = df[filter_mask(df, args.query, key="--query")]
            if df.empty:
                raise ValueError(f"--query {args.query!r} selects no row of {path}")
        tables[nm] = df  # its index: the file's data rows, which errors name
    res = integration_table(tables, args.batch_key, args.label_key, baseline=args.baseline, leiden=args.leiden,
                            mean_average_precision=not args.no_map, seed=args.seed, sbee=args.sbee,
                            sources=dict(zip(names, map(str, args.profiles))),
                            skip_undefined=True)
    for metric, why in res.undefined.items():  # blank (NaN) in the table, out of the scores' means
        print(f"phenovec: {metric} left blank: {why}", file=sys.stderr)
    summary = {"metric": "integration", "batch_key": args.batch_key, "label_key": args.label_key,
               "methods": names, "scores": res.scores.to_dict(orient="records"), "undefined": res.undefined}
    if args.figure:
        integration_heatmap(res, args.figure, title=f"batch = {args.batch_key}, label = {args.label_key}")
        summary["figure"] = str(args.figure)
    return _finish(args, res.table, summary)


def add_integration_parser(metrics) -> None:
    p = metrics.add_parser("integration", help="scib integration metrics (batch correction / bio conservation) of "
                                               "several embeddings of the same rows, ranked (Arevalo et al. 2024)")
    p.add_argument("profiles", nargs="+", help="profile tables of the same rows (.csv, .csv.gz, .parquet), one per "
                                               "method: Metadata_* columns + features")
    p.add_argument("--names", nargs="+", help="method names, one per table (default: the file names)")
    p.add_argument("--batch-key", required=True, help="batch column, e.g. Metadata_Plate")
    p.add_argument("--label-key", required=True, help="biological label column, e.g. Metadata_moa")
    p.add_argument("--baseline", help="method whose profiles are the pre-integration reference of pcr_comparison "
                                      "(default: the first)")
    p.add_argument("--leiden", action="store_true", help="add Leiden NMI / ARI (needs python-igraph)")
    p.add_argument("--sbee", action="store_true", help="add sBEE (scib-metrics 0.6.1's batch-mixing score; "
                                                      "O(rows of a label ^ 2) distances)")
    p.add_argument("--no-map", action="store_true", help="skip the label mAP (O(n^2 log n))")
    p.add_argument("--seed", type=int, default=0, help="k-means seeding (default 0)")
    p.add_argument("--query", help="filter applied to every table before scoring, e.g. \"Metadata_moa != 'DMSO'\" "
                                   "(see phenovec.io.row_filter)")
    p.add_argument("--figure", help="heat map of the scaled metrics and scores (.png, .pdf or .svg)")
    add_out(p, "output table (.csv, .csv.gz or .parquet)")
    p.add_argument("--summary", help="JSON summary path (default: OUT with .json)")
    add_quiet(p)
    p.set_defaults(run=_run)
