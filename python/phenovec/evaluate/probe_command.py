"""``phenovec evaluate probe``: frozen-encoder probes (logistic regression, Random Forest) on an embeddings table.

    phenovec evaluate probe EMBEDDINGS --label-column Metadata_Treatment --group-column Metadata_Well -o scores.csv
    phenovec evaluate probe EMBEDDINGS --label-column treatment --split-column split --features 0 1 2 ... \
        --models random_forest --trees 100 --seed 0 -o scores.csv

Writes the tidy score table (``model, split, metric, class, value``) to ``--out``, the pooled confusion matrices
beside it (``<out>_confusion``) and, with ``--predictions``, one row per scored test row; prints and writes the JSON
summary (per model: mean and SD of accuracy, balanced accuracy, macro precision / recall / F1 and macro one-vs-rest
AUROC over the splits, and the confusion matrix). See :mod:`phenovec.evaluate.probes`.

``add_probe_parser(metrics)`` adds the subcommand to ``phenovec evaluate``'s subparsers; building it imports
nothing heavy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from phenovec.cli_options import option

MODELS = ("logistic", "random_forest")  # phenovec.evaluate.probes.MODELS, spelled here so the parser imports no numpy


def _run_probe(args) -> dict:
    from phenovec.cli import _finish, _load, beside, check_outputs
    from phenovec.evaluate.probes import probe
    from phenovec.io.profiles import write_table

    check_outputs(args, **{"the confusion table": beside(args.out, "_confusion"), "--predictions": args.predictions})
    prof = _load(args)
    if args.split_column is None and args.group_column is None:
        raise ValueError("phenovec evaluate probe needs --split-column (train / test rows) or --group-column "
                         "(grouped cross-validation: replicates never straddle train and test)")
    res = probe(prof.meta, prof.feats, prof.features, label_column=args.label_column, split_column=args.split_column,
                train_value=args.train_value, test_value=args.test_value, group_column=args.group_column,
                n_folds=args.folds, models=args.models, seed=args.seed, n_trees=args.trees)
    out = Path(args.out)
    conf_out = write_table(res.confusion, beside(out, "_confusion"))
    extra = {"confusion_table": str(conf_out)}
    if args.predictions:
        extra["predictions"] = str(write_table(res.predictions, args.predictions))
    return _finish(args, res.scores, {"metric": "probe", **res.summary, **extra})


def add_probe_parser(metrics) -> argparse.ArgumentParser:
    """Add ``probe`` to ``phenovec evaluate``'s subparsers."""
    from phenovec.cli import _profiles_args

    p = metrics.add_parser("probe", help="frozen-encoder probes: logistic regression and a seeded Random Forest on "
                                         "embeddings (accuracy, one-vs-rest AUROC, confusion matrix)")
    _profiles_args(p)
    option(p, "--label-column", required=True, help="metadata column the probes predict")
    option(p, "--split-column", help="column saying which rows train (--train-value) and test (--test-value)")
    p.add_argument("--train-value", default="train", help="--split-column value of the training rows")
    p.add_argument("--test-value", default="test", help="--split-column value of the test rows")
    option(p, "--group-column", help="without --split-column: grouped stratified cross-validation, each group "
                                     "(well, compound, site) wholly in one fold")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds, with --group-column")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="probes to fit")
    p.add_argument("--trees", type=int, default=100, help="Random Forest trees")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds, the forest and the logistic solver")
    p.add_argument("--predictions", help="also write one row per scored test row (true, predicted, p_<class>)")
    p.set_defaults(run=_run_probe)
    return p
