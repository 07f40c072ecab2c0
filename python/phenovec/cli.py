"""The ``phenovec`` command line: one subcommand per stage.

    phenovec evaluate map PROFILES --pos-sameby Metadata_cpd --neg-diffby Metadata_cpd --out ap.parquet
    phenovec evaluate enrichment PROFILES --replicate-groups Metadata_moa --out enrichment.csv
    phenovec evaluate three-group-pcc PROFILES --moa-column Metadata_moa --compound-column Metadata_compound \
        --test-wells -o groups.csv      (and moa-similarity-delta, class-latent-assignment,
                                         holdout-moa-identification, batch-diagnostic: MOAProfiler's protocol)
    phenovec process run recipe.yaml wells.parquet -o profiles.parquet   (see phenovec.process.command)
    phenovec train config.yaml                                          (see phenovec.train.config)
    phenovec export CHECKPOINT -o model.onnx [--logits] [--parity-crops CROPS]
    phenovec profile MODEL.onnx --index index.csv --locations nuclei.csv -o OUT   (Dask, resumable)
    phenovec report PROFILES --out DIR [--moa-column C --treatment-column C --control DMSO|QUERY]
    phenovec run config.yaml                 (every stage, cached by hash; see phenovec.pipeline)
    phenovec demo --out demo-out             (the whole pipeline on a synthetic plate)
    phenovec bench --out bench.json [--quick] [--model M.onnx] [--compare other.json]   (this machine's rates)

Every ``evaluate`` subcommand reads CSV / CSV.gz / Parquet, writes its table (CSV or Parquet by the
file name) and a JSON summary (``--summary``, default: beside ``--out``), and prints the summary.

Building the parser imports no stage: each subcommand imports what it needs when it runs, so ``phenovec --help``,
``evaluate`` and ``process`` work with the core install alone (no torch, onnxruntime or matplotlib). A user error
(a bad file, column, value or configuration key, or a missing optional package) is one line on stderr and exit
status 2, never a traceback. The shared option vocabulary is ``phenovec.cli_options``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from phenovec.cli_options import Parser, add_out, add_quiet, add_similarity, option, show_progress


def _profiles_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("profiles", help="profile table (.csv, .csv.gz, .parquet): Metadata_* columns + features")
    p.add_argument("--features", nargs="+", help="feature columns (default: every non-Metadata_ column)")
    option(p, "--meta-features", old=["--meta"], nargs="+",
           help="metadata columns (default: every Metadata_ column)")
    p.add_argument("--query", help="filter selecting the rows to evaluate, e.g. \"Metadata_moa != 'DMSO'\" "
                                   "(columns, literals, comparisons, and / or / not, in [...], .isna(); "
                                   "see phenovec.io.row_filter)")
    add_out(p, "output table (.csv, .csv.gz or .parquet)")
    p.add_argument("--summary", help="JSON summary path (default: OUT with .json)")
    add_quiet(p)


def _load(args):
    from phenovec.io.profiles import read_table, split_profiles
    from phenovec.io.row_filter import filter_mask

    df = read_table(args.profiles)
    if args.query:
        df = df[filter_mask(df, args.query, key="--query")]
        if df.empty:
            raise ValueError(f"--query {args.query!r} selects no row of {args.profiles}")
    return split_profiles(df.reset_index(drop=True), features=args.features, meta=args.meta_features)


def beside(out, tag: str = "", suffix: str | None = None) -> Path:
    """A file next to the table ``out``: its name with ``tag`` inserted before the table suffix (.csv, .csv.gz,
    .parquet, ...), which ``suffix`` replaces if given: ``beside("run.v2.csv", "_map")`` -> ``run.v2_map.csv``,
    ``beside("run.v2.csv", suffix=".json")`` -> ``run.v2.json`` (the name up to its first dot made runs' files
    overwrite each other)."""
    from phenovec.io.profiles import TEXT_SUFFIXES

    out = Path(out)
    name = out.name
    table = next((s for s in sorted((*TEXT_SUFFIXES, ".parquet", ".pq"), key=len, reverse=True)
                  if name.lower().endswith(s) and len(s) < len(name)), out.suffix)
    stem = name[: len(name) - len(table)]
    return out.with_name(stem + tag + (table if suffix is None else suffix))


def summary_path(out, summary=None) -> Path:
    """``--summary``, else ``--out`` with its table suffix replaced by .json."""
    return Path(summary) if summary else beside(out, suffix=".json")


def check_outputs(args, **extra) -> None:
    """Before any work: ``-o``, the summary and the command's other outputs (``extra``: their flag or name ->
    path) must be distinct files, none a folder and none an input (``args.profiles``); a collision replaced one
    output (or the input) with another, or failed only after the tables beside it had been written."""
    outputs = {"-o": Path(args.out), "--summary": summary_path(args.out, getattr(args, "summary", None))}
    outputs.update({k: Path(v) for k, v in extra.items() if v is not None})
    profiles = getattr(args, "profiles", None)
    inputs = {Path(p).resolve(): p for p in ([profiles] if isinstance(profiles, (str, Path)) else profiles or [])}
    seen = {}
    for flag, path in outputs.items():
        where = path.resolve()
        if where in inputs:
            raise ValueError(f"{flag} {path} is the input table {inputs[where]}: give the output another name")
        if where in seen:
            raise ValueError(f"{flag} {path} is also {seen[where]}'s path: give each output its own name")
        if path.is_dir():
            raise IsADirectoryError(f"{flag} {path} is a folder: give a file name")
        seen[where] = flag


def _finish(args, table, summary: dict) -> dict:
    from phenovec.io.atomic import write_text_atomic
    from phenovec.io.profiles import write_table

    spath = summary_path(args.out, args.summary)
    check_outputs(args)
    out = write_table(table, args.out)
    summary = {"command": " ".join(sys.argv[1:]), "output": str(out), **summary}
    write_text_atomic(spath, json.dumps(summary, indent=2, default=_json_default))
    print(json.dumps(summary, indent=2, default=_json_default))
    return summary


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if np.isnan(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---- evaluate map ----------------------------------------------------------------------------

def _add_map(sub) -> None:
    p = sub.add_parser("map", help="average precision per query and mAP per group with p-values (copairs semantics)")
    _profiles_args(p)
    for name in ("pos-sameby", "pos-diffby", "neg-sameby", "neg-diffby"):
        p.add_argument(f"--{name}", nargs="*", default=[], help=f"copairs {name.replace('-', '_')} columns "
                                                                "(default: none)")
    option(p, "--multilabel-column", old=["--multilabel-col"],
           help="column of separated labels (positives ranked per label)")
    p.add_argument("--label-sep", default="|", help="separator of --multilabel-column labels")
    p.add_argument("--reference", help="filter marking control rows (as --query): adds Metadata_Reference_Index "
                   "(copairs' assign_reference_index) for replicate-vs-control (phenotypic activity) mAP")
    add_similarity(p, "cosine", help="similarity ranking the pairs (copairs' distance)")
    p.add_argument("--map-sameby", nargs="+", help="group columns for mAP (default: --pos-sameby)")
    p.add_argument("--null-size", type=int, default=10000, help="null distribution size for the mAP p-values")
    p.add_argument("--threshold", type=float, default=0.05, help="significance level of the corrected p-values")
    p.add_argument("--seed", type=int, default=0, help="seed of the null distributions")
    p.add_argument("--null-method", choices=["copairs", "fast", "exact"], default="copairs",
                   help="copairs: copairs 0.5.5's exact random stream; fast: the same null sampled in Rust; "
                        "exact: enumerated for small (M, L), fast elsewhere")
    p.add_argument("--ties", choices=["copairs", "exact"], default="copairs",
                   help="copairs: copairs' float32 sort key; exact: float64 similarities")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "tf32"], default="fp32",
                   help="similarity GEMM precision (fp32 exact; bf16 on AMX/AVX512-BF16 CPUs or CUDA; fp16/tf32 CUDA)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                   help="where similarities are computed and ranked (auto: cuda when PyTorch sees a GPU)")
    p.add_argument("--roc-auc", action="store_true",
                   help="add roc_auc, mann_whitney_u and roc_auc_p_value per query (not with --multilabel-column)")
    p.add_argument("--map-out", help="mAP table path (default: OUT with _map)")
    p.set_defaults(run=_run_map)


def _run_map(args) -> dict:
    import numpy as np

    import phenovec.evaluate as pe
    from phenovec.io.profiles import write_table
    from phenovec.io.row_filter import filter_mask

    out = Path(args.out)
    map_out = Path(args.map_out) if args.map_out else beside(out, "_map")
    check_outputs(args, **{"the mAP table": map_out})
    prof = _load(args)
    meta = prof.meta.copy()
    pos_sameby = list(args.pos_sameby)
    neg_diffby = list(args.neg_diffby)
    if args.reference:
        ctrl = filter_mask(meta, args.reference, key="--reference")
        if not ctrl.any():
            raise ValueError(f"--reference {args.reference!r} matches no row")
        meta["Metadata_Reference_Index"] = np.where(ctrl, np.arange(len(meta)), -1)
        pos_sameby.append("Metadata_Reference_Index")
        neg_diffby.append("Metadata_Reference_Index")
    label_col = args.multilabel_column
    if label_col:
        meta[label_col] = meta[label_col].map(lambda v: v.split(args.label_sep) if isinstance(v, str) else v)
    progress = show_progress(args)
    if args.roc_auc:
        from phenovec.evaluate.roc_auc import roc_auc

        if label_col:
            raise ValueError("--roc-auc: not available with --multilabel-column")
        ap = roc_auc(meta, prof.feats, pos_sameby, args.pos_diffby, args.neg_sameby, neg_diffby,
                     distance=args.similarity, ties=args.ties, precision=args.precision, device=args.device)
    else:
        ap = pe.average_precision(meta, prof.feats, pos_sameby, args.pos_diffby, args.neg_sameby, neg_diffby,
                                  distance=args.similarity, multilabel_col=label_col, ties=args.ties,
                                  progress_bar=progress, precision=args.precision, device=args.device)
    sameby = args.map_sameby or [c for c in pos_sameby if c != "Metadata_Reference_Index"]
    if label_col and label_col in sameby and not args.map_sameby:
        sameby = [label_col]
    m = pe.mean_average_precision(ap, sameby, null_size=args.null_size, threshold=args.threshold, seed=args.seed,
                                  null_method=args.null_method, progress_bar=progress)
    write_table(m.drop(columns=["indices"]), map_out)
    return _finish(args, ap, {
        "metric": "mean_average_precision",
        "n_profiles": len(ap),
        "n_queries_with_positives": int((ap["n_pos_pairs"] > 0).sum()),
        "mean_average_precision": float(m["mean_average_precision"].mean()),
        "n_groups": len(m),
        "fraction_below_corrected_p": float(m["below_corrected_p"].mean()),
        "map_table": str(map_out),
        "null_method": args.null_method,
        "precision": args.precision,
        "device": args.device,
    })


# ---- cytominer-eval family ------------------------------------------------------------------

def _metric_parser(sub, name: str, help: str, run, groupby: bool = False):
    p = sub.add_parser(name, help=help)
    _profiles_args(p)
    p.add_argument("--replicate-groups", nargs="+", required=True, help="columns whose equality makes a replicate pair")
    if groupby:
        p.add_argument("--groupby-columns", nargs="+", required=True, help="columns whose groups pool one ranked list")
    add_similarity(p, "pearson", help="similarity between profiles (cytominer-eval's similarity_metric)")
    p.set_defaults(run=run)
    return p


def _common(args, prof) -> dict:
    return dict(feats=prof.feats, replicate_groups=args.replicate_groups, similarity_metric=args.similarity)


def _run_enrichment(args) -> dict:
    from phenovec.evaluate import enrichment

    prof = _load(args)
    pct = "moaprofiler" if "moaprofiler" in args.percentile else args.percentile
    if pct == "moaprofiler" and len(args.percentile) > 1:
        raise ValueError("--percentile: give 'moaprofiler' alone or a list of fractions")
    t = enrichment(prof.meta, percentile=pct, **_common(args, prof))
    return _finish(args, t, {"metric": "enrichment", "odds_ratio": dict(zip(t["enrichment_percentile"], t["odds_ratio"]))})


def _run_precision_recall(args) -> dict:
    from phenovec.evaluate import precision_recall

    prof = _load(args)
    t = precision_recall(prof.meta, groupby_columns=args.groupby_columns, k=args.k, **_common(args, prof))
    means = t.groupby("k")[["precision", "recall"]].mean()
    return _finish(args, t, {"metric": "precision_recall",
                             "macro_precision": {int(k): v for k, v in means["precision"].items()},
                             "macro_recall": {int(k): v for k, v in means["recall"].items()}})


def _run_precision_at_r(args) -> dict:
    from phenovec.evaluate import precision_at_r

    prof = _load(args)
    t, mean = precision_at_r(prof.meta, groupby_columns=args.groupby_columns, **_common(args, prof))
    return _finish(args, t, {"metric": "precision_at_r", "precision_at_r": mean, "n_groups": len(t)})


def _run_hit_at_k(args) -> dict:
    import numpy as np
    import pandas as pd

    from phenovec.evaluate import hit_at_k

    prof = _load(args)
    pl = "all" if args.percent_list == ["all"] else [int(v) for v in args.percent_list]
    r = hit_at_k(prof.meta, groupby_columns=args.groupby_columns, percent_list=pl, **_common(args, prof))
    hits = pd.DataFrame({"hit_rank": np.asarray(r.hits_list)})
    return _finish(args, hits, {"metric": "hit_at_k", "percent_scores": {str(k): v for k, v in r.percent_scores.items()},
                                "n_hits": len(hits)})


def _run_replicate_reproducibility(args) -> dict:
    from phenovec.evaluate import replicate_reproducibility

    prof = _load(args)
    frac, med = replicate_reproducibility(prof.meta, quantile_over_null=args.quantile_over_null,
                                          return_median_correlations=True, **_common(args, prof))
    return _finish(args, med, {"metric": "replicate_reproducibility", "fraction_replicating": frac,
                               "quantile_over_null": args.quantile_over_null})


def _percentile(text: str):
    if text == "moaprofiler":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction or 'moaprofiler': {text!r}") from None


def _add_cytominer_family(metrics) -> None:
    p = _metric_parser(metrics, "enrichment", "odds ratio of replicate pairs above similarity percentiles", _run_enrichment)
    p.add_argument("--percentile", nargs="+", type=_percentile, default=[0.9, 0.95, 0.97, 0.99, 0.995],
                   help="similarity percentiles of the enrichment thresholds (fractions), or 'moaprofiler' "
                        "(the paper's 0.98 to 0.998 in steps of 0.002)")
    p = _metric_parser(metrics, "precision-recall", "precision@k and recall@k per group", _run_precision_recall, groupby=True)
    p.add_argument("--k", nargs="+", type=int, default=[5, 10, 20], help="ranks k of precision@k / recall@k")
    _metric_parser(metrics, "precision-at-r", "precision@R per group (R = number of replicates)", _run_precision_at_r,
                   groupby=True)
    p = _metric_parser(metrics, "hit-at-k", "hits list and hit@k scores", _run_hit_at_k, groupby=True)
    p.add_argument("--percent-list", nargs="+", default=["2", "5", "10"], help="percentages, or 'all'")
    p = _metric_parser(metrics, "replicate-reproducibility", "percent replicating against the non-replicate null",
                       _run_replicate_reproducibility)
    p.add_argument("--quantile-over-null", type=float, default=0.95,
                   help="quantile of the non-replicate null a replicate median must exceed")


# ---- grit, mp-value, knn ---------------------------------------------------------------------

def _run_grit(args) -> dict:
    from phenovec.evaluate import grit

    prof = _load(args)
    t = grit(prof.meta, prof.feats, control_perts=args.control_perts, profile_col=args.profile_column,
             replicate_group_col=args.replicate_group_column, similarity_metric=args.similarity,
             grit_replicate_summary_method=args.summary_method)
    return _finish(args, t, {"metric": "grit", "mean_grit": float(t["grit"].mean()),
                             "n_perturbations": len(t), "n_without_target": int(t["grit"].isna().sum())})


def _run_mp_value(args) -> dict:
    from phenovec.evaluate import mp_value

    prof = _load(args)
    t = mp_value(prof.meta, prof.feats, control_perts=args.control_perts, replicate_id=args.replicate_id,
                 rescale_pca=not args.no_rescale_pca, nb_permutations=args.nb_permutations, seed=args.seed)
    pcol = [c for c in t.columns if "p" in c.lower() and "value" in c.lower()]
    return _finish(args, t, {"metric": "mp_value", "n_groups": len(t), "seed": args.seed,
                             "fraction_below_0.05": float((t[pcol[0]] < 0.05).mean()) if pcol else None})


def _run_knn(args) -> dict:
    from phenovec.evaluate import knn_accuracy

    check_outputs(args, **{"the predictions table": beside(args.out, "_predictions")})
    prof = _load(args)
    k = "all" if args.k == ["all"] else [int(v) for v in args.k]
    summary, pred = knn_accuracy(prof.meta, prof.feats, moa_col=args.moa_column, compound_col=args.compound_column,
                                 k=k, exclude_same=args.exclude_same, similarity_metric=args.similarity,
                                 leave_out=args.leave_out)
    out = Path(args.out)
    pred_out = beside(out, "_predictions")
    from phenovec.io.profiles import write_table

    write_table(pred, pred_out)
    best = summary.loc[summary["f1_weighted"].idxmax()]
    return _finish(args, summary, {"metric": "knn_accuracy", "predictions": str(pred_out),
                                   "best_k": int(best["k"]), "best_f1_weighted": float(best["f1_weighted"]),
                                   "by_k": summary.to_dict(orient="records")})


def _add_replicate_stats(metrics) -> None:
    p = metrics.add_parser("grit", help="grit: replicate similarity z-scored against controls (cytominer-eval)")
    _profiles_args(p)
    p.add_argument("--control-perts", nargs="+", required=True, help="control perturbation values (of the "
                                                                      "--profile-column)")
    option(p, "--profile-column", old=["--profile-col"], required=True, help="column naming each perturbation")
    option(p, "--replicate-group-column", old=["--replicate-group-col"], required=True,
           help="column grouping perturbations (e.g. the gene of several guides)")
    add_similarity(p, "pearson")
    p.add_argument("--summary-method", default="mean", choices=["mean", "median"],
                   help="summary of each perturbation's replicate similarities")
    p.set_defaults(run=_run_grit)
    p = metrics.add_parser("mp-value", help="mp-value: permutation test of each group against controls (seeded)")
    _profiles_args(p)
    p.add_argument("--control-perts", nargs="+", required=True, help="control values of --replicate-id")
    p.add_argument("--replicate-id", required=True, help="column whose values form the tested groups")
    p.add_argument("--nb-permutations", type=int, default=100, help="permutations per group")
    p.add_argument("--no-rescale-pca", action="store_true", help="do not rescale the PCA components by variance")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    p.set_defaults(run=_run_mp_value)
    p = metrics.add_parser("knn", help="leave-one-compound-out k-NN MOA accuracy and F1 (MOAProfiler protocol)")
    _profiles_args(p)
    option(p, "--moa-column", old=["--moa-col"], required=True, help="column of the MOA labels predicted")
    option(p, "--compound-column", old=["--compound-col"], required=True,
           help="column of compounds: a query's own compound is left out of its neighbours")
    p.add_argument("--k", nargs="+", default=["1", "3", "5"], help="list of k, or 'all'")
    p.add_argument("--exclude-same", nargs="*", help="also exclude neighbours sharing these columns (plate, batch)")
    p.add_argument("--leave-out", choices=["compound", "well"], default="compound",
                   help="neighbours exclude the query's whole compound, or only the query well (the paper's)")
    add_similarity(p, "pearson", help="similarity ranking the neighbours (the paper's PCC)")
    p.set_defaults(run=_run_knn)


# ---- MOAProfiler protocol (Wong et al. 2023) -------------------------------------------------

MOAPROFILER_METRICS = {
    "moa-similarity-delta": ("moa_similarity_delta", "mean same-MOA minus different-MOA pair similarity (per-MOA table)"),
    "three-group-pcc": ("three_group_pcc", "mean similarity of same-compound, same-MOA and different-MOA pairs, "
                                           "with z-test p-values"),
    "class-latent-assignment": ("class_latent_assignment", "assign each well the MOA of its most similar "
                                                           "leave-query-out MOA median (weighted F1 / P / R)"),
    "holdout-moa-identification": ("holdout_moa_identification", "identify held-out compounds' MOAs from training "
                                                                 "MOA medians (individual and aggregated vote)"),
    "batch-diagnostic": ("batch_diagnostic", "same-MOA similarity within vs across plates and the DMSO "
                                             "batch-enrichment score"),
}


def _run_moaprofiler(args) -> dict:
    import phenovec.evaluate as pe

    name = MOAPROFILER_METRICS[args.metric][0]
    prof = _load(args)
    meta, feats = prof.meta, prof.feats
    batch = name == "batch_diagnostic"
    if args.test_wells:
        meta, feats = pe.moa_test_wells(meta, feats, moa_col=args.moa_column, compound_col=args.compound_column,
                                        control=args.control, missing=args.missing_moa, keep_controls=batch)
    kw = dict(moa_col=args.moa_column, compound_col=args.compound_column, similarity_metric=args.similarity)
    if name == "holdout_moa_identification":
        kw.update(split_col=args.split_column, train_value=args.train_value, test_value=args.test_value)
    if batch:
        kw.update(plate_col=args.plate_column, batch_col=args.batch_column, control=args.control,
                  bes_percentile=args.bes_percentile)
    summary, table = getattr(pe, name)(meta, feats, **kw)
    return _finish(args, table, {"metric": name, "n_rows": len(meta), **summary.iloc[0].to_dict()})


def _add_moaprofiler(metrics) -> None:
    for cmd, (name, help) in MOAPROFILER_METRICS.items():
        p = metrics.add_parser(cmd, help=f"{help} (MOAProfiler protocol)")
        _profiles_args(p)
        option(p, "--moa-column", old=["--moa-col"], required=True, help="column of the MOA labels")
        option(p, "--compound-column", old=["--compound-col"], required=True, help="column of the compounds")
        p.add_argument("--test-wells", action="store_true",
                       help="first drop the --control wells and MOAs with fewer than 2 compounds (the paper's "
                            "test wells; phenovec.evaluate.moa_test_wells)")
        p.add_argument("--control", default="DMSO", help="control value of --compound-column (or --moa-column)")
        p.add_argument("--missing-moa", choices=["raise", "drop"], default="raise",
                       help="with --test-wells: wells without an MOA are an error, or dropped")
        if name == "holdout_moa_identification":
            p.add_argument("--split-column", required=True, help="column marking training and held-out wells")
            p.add_argument("--train-value", default="train", help="--split-column value of the training wells")
            p.add_argument("--test-value", default="test", help="--split-column value of the held-out wells")
        if name == "batch_diagnostic":
            p.add_argument("--plate-column", default="Metadata_Plate", help="column of the plates")
            p.add_argument("--batch-column", help="column of the batches of the DMSO batch-enrichment score "
                                                  "(default: --plate-column)")
            p.add_argument("--bes-percentile", type=float, default=0.995,
                           help="similarity percentile of the batch-enrichment score (Bornholdt: 99.5th)")
        add_similarity(p, "pearson", help="similarity between wells (the paper's PCC)")
        p.set_defaults(run=_run_moaprofiler)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; imports only the stages' ``command`` modules (no torch, onnxruntime, matplotlib,
    Dask, scikit-learn, SciPy or Zarr)."""
    from phenovec import __version__
    from phenovec.activity.command import add_activity_parser
    from phenovec.benchmark.command import add_parser as add_bench_parser
    from phenovec.evaluate.assay_command import add_assay_parsers
    from phenovec.evaluate.field_classification import add_parser as add_field_classification_parser
    from phenovec.evaluate.integration_command import add_integration_parser
    from phenovec.evaluate.probe_command import add_probe_parser
    from phenovec.evaluate.suite_command import add_suite_parser
    from phenovec.export.command import add_export_parser
    from phenovec.ingest.command import add_crop_parser, add_illum_parser, add_synth_parser, add_tiles_parser
    from phenovec.pipeline import add_run_parsers
    from phenovec.process.command import add_process_parser
    from phenovec.profile.command import add_profile_parser
    from phenovec.report.command import add_report_parser
    from phenovec.train.command import add_train_parser
    from phenovec.train.gradcam_command import add_explain_parser

    parser = Parser(prog="phenovec", description="High-performance image-based profiling.")
    parser.add_argument("--version", action="version", version=f"phenovec {__version__}")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="COMMAND")
    ev = stages.add_parser("evaluate", help="similarity and retrieval metrics on a profile table")
    metrics = ev.add_subparsers(dest="metric", required=True, metavar="METRIC")
    _add_map(metrics)
    _add_cytominer_family(metrics)
    _add_replicate_stats(metrics)
    _add_moaprofiler(metrics)
    add_assay_parsers(metrics)
    add_probe_parser(metrics)
    add_suite_parser(metrics)
    add_integration_parser(metrics)
    add_field_classification_parser(metrics)
    add_process_parser(stages)
    for add in (add_synth_parser, add_illum_parser, add_crop_parser, add_tiles_parser, add_train_parser,
                add_export_parser, add_profile_parser, add_report_parser, add_activity_parser, add_explain_parser,
                add_run_parsers, add_bench_parser):
        add(stages)
    return parser


# optional package (import name) -> the extras of pyproject.toml that install it
OPTIONAL = {"torch": ("train", "export"), "torchvision": ("train", "export"), "onnx": ("export",),
            "onnxscript": ("export",), "onnxruntime": ("profile",), "dask": ("profile",),
            "distributed": ("profile",), "matplotlib": ("report",), "anndata": ("anndata",), "h5py": ("anndata",)}
PIPELINE_EXTRAS = "train,export,profile,report"


def missing_dependency(error: ModuleNotFoundError, stage: str | None) -> str | None:
    """The one-line message for an optional package that is not installed, or None for any other module."""
    package = (error.name or "").split(".")[0]
    extras = OPTIONAL.get(package)
    if extras is None:
        return None
    extra = PIPELINE_EXTRAS if stage in ("run", "demo") else stage if stage in extras else extras[0]
    return (f"phenovec {stage} needs the optional package {package}, which is not installed: "
            f"pip install phenovec[{extra}]")


def _error_message(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors are one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except BrokenPipeError:  # stdout closed early (phenovec ... | head): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ModuleNotFoundError as e:
        msg = missing_dependency(e, args.stage)
        if msg is None:
            raise
        print(f"phenovec: error: {msg}", file=sys.stderr)
        return 2
    except (KeyError, ValueError, OSError, FloatingPointError) as e:  # OSError: missing, unreadable or unwritable
        # files, full disks; FloatingPointError: a computation the input's values make undefined (Harmony's objective)
        print(f"phenovec: error: {_error_message(e)}", file=sys.stderr)
        return 2
    except SystemExit as e:  # a stage's own refusal: SystemExit("message")
        if not isinstance(e.code, str):
            raise
        print(f"phenovec: error: {e.code}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
