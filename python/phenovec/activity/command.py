"""``phenovec activity ...``: few-shot activity prediction on the command line.

    phenovec activity benchmark CONFIG -o OUT     (every learner on every episode; see phenovec.activity.benchmark)
    phenovec activity learners                    (the learner names a configuration may use)
    phenovec activity dose TABLE --train-dose 20 --train-dose 0.62 -o OUT.csv   (low-concentration inference)

The parser imports nothing heavy; the benchmark imports scikit-learn / PyTorch only for the learners it runs.
"""
from __future__ import annotations

import json

from phenovec.cli_options import add_out, add_quiet, option, show_progress


def _run_benchmark(a) -> dict:
    from phenovec.activity.benchmark import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig.from_file(a.config)
    if a.episodes is not None:
        if a.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {a.episodes}")
        config.episodes["episodes"] = a.episodes
    if a.workers is not None:
        if a.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {a.workers}")
        config.workers = a.workers
    if a.learners:
        unknown = [n for n in a.learners if n not in config.learners]
        if unknown:
            raise ValueError(f"--learners: {unknown[0]!r} is not a learner of {a.config} "
                             f"({', '.join(config.learners)})")
        config.learners = {n: config.learners[n] for n in a.learners}
    summary = run_benchmark(config, a.out, progress=show_progress(a))
    print(json.dumps(summary, indent=2, default=str))
    return summary


def _run_dose(a) -> dict:
    from phenovec.activity.dose import dose_comparison, dose_series_study, format_dose

    series, tasks, table = dose_series_study(a.table, a.train_dose, min_compounds=a.min_compounds,
                                             exclude_labels=a.exclude_label, folds=a.folds, seed=a.seed)
    print(f"{series.source}: {len(series.x)} dosed wells, {len(set(series.compound))} compounds, doses "
          f"{[format_dose(d) for d in series.doses()]} uM; tasks ({len(tasks)}): {', '.join(tasks)}")
    for metric in ("auroc", "riptop_auprc"):
        print(f"\nmean {metric} over the {len(tasks)} tasks (out-of-fold, scaffold-grouped {a.folds}-fold):")
        print(dose_comparison(table, metric).round(3).to_string())
    if a.out:
        from phenovec.io.profiles import write_table

        write_table(table, a.out)
    return {"tasks": tasks, "rows": len(table), "output": a.out}


def _list_learners(a) -> dict:
    from phenovec.activity.learners import LEARNERS

    for name, target in LEARNERS.items():
        print(f"{name}\t{target}")
    return dict(LEARNERS)


def add_activity_parser(stages) -> None:
    """``phenovec activity`` and its subcommands, on the CLI's subparsers ``stages``."""
    ac = stages.add_parser("activity", help="few-shot activity prediction: the FSL-CP benchmark of learners on "
                                            "assay tasks")
    sub = ac.add_subparsers(dest="action", required=True)
    p = sub.add_parser("benchmark", help="run every learner on every episode of the test tasks of a YAML "
                                         "configuration; writes results, summary, Wilcoxon p-values, plot, report")
    p.add_argument("config", help="benchmark configuration (YAML; see phenovec.activity.benchmark)")
    add_out(p, "output folder (results.csv, summary.csv, wilcoxon.csv, throughput.csv, auroc_vs_m.png, report.md)")
    option(p, "--episodes", type=int, default=None, help="episodes per task and M (default: the configuration's)")
    option(p, "--workers", type=int, default=None,
           help="processes running each learner's test episodes (default: the configuration's; same results)")
    option(p, "--learners", nargs="+", default=None,
           help="run only these learners of the configuration (default: all)")
    add_quiet(p)
    p.set_defaults(run=_run_benchmark)
    p = sub.add_parser("dose", help="low-concentration inference: one-vs-rest tasks trained at each --train-dose, "
                                    "scored out-of-fold at every dose (FSL-CP thesis ch. 3)")
    p.add_argument("table", help="well table (CSV; default columns: the Dahlin et al. 2023 cell-injury set's)")
    option(p, "--train-dose", type=float, action="append", required=True,
           help="a training dose (repeat the option for several)")
    option(p, "--min-compounds", type=int, default=5, help="tasks: labels with at least this many compounds")
    option(p, "--exclude-label", action="append", default=["Control"], help="labels that are no task (repeatable)")
    option(p, "--folds", type=int, default=5, help="compound folds (stratified, scaffold-grouped)")
    option(p, "--seed", type=int, default=0, help="seed of the folds and the model")
    add_out(p, "the tidy per-task table (.csv / .parquet; default: not written)", required=False, default=None)
    add_quiet(p)
    p.set_defaults(run=_run_dose)
    p = sub.add_parser("learners", help="list the learner names a benchmark configuration may use")
    p.set_defaults(run=_list_learners)
