"""``phenovec train``: train on a crops folder (``phenovec.train.config``: classify, assays, simclr) or on profile
tables (``phenovec.train.tables``: clip, bae, simclr_profiles, fnn), as the configuration's ``train.task`` says.

    phenovec train config.yaml [--set train.epochs=3 --set data.batch_size=32]
    phenovec train --print-config [--task clip]   # every key with its default
    torchrun --nproc-per-node 4 -m phenovec.cli train config.yaml   # data parallel (phenovec.train.distributed)

Resumes the run in ``train.out`` when it holds a checkpoint of the same configuration. Prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os

from phenovec.cli_options import add_quiet, show_progress

# every key of phenovec.train.config.SCHEMA, for --print-config (and the train section of phenovec run's)
COMMENTS = {
    "data": "the crops and how they are split, sampled and fed",
    "data.crops": "output folder of `phenovec crop` (crops.zarr + cells.parquet + manifest.json); this or "
                  "data.fields is required",
    "data.fields": "null, or the output folder of `phenovec tiles` (whole fields, full or --factor downsampled): "
                   "MOAProfiler's field classifier; each field min-max scaled to [0, 1] per channel, then "
                   "standardised with the training fields' channel statistics",
    "data.stats_fields": "data.fields: channel statistics over this many (seeded) training fields; null = all",
    "data.label": "the class each cell is trained to predict: any column of the cell table",
    "data.split_by": "all cells of one group land in one split (no leakage)",
    "data.val_fraction": "fraction of each label's groups for validation (at least one when it has two or more)",
    "data.holdout_plates": "Metadata_Plate values kept out of train and validation (the test split)",
    "data.split": "plates (val_fraction of each label's groups; holdout_plates) | well_holdout | compound_holdout "
                  "(MOAProfiler's splits, phenovec.train.moa_splits; data.label is then the MOA) | compound (GapNet's: "
                  "split_fractions of the compounds, every cell of a compound in one split; needs "
                  "data.compound_column)",
    "data.compound_column": "null, or the compound of each cell (required by split: compound_holdout and compound)",
    "data.split_fractions": "train / val / test fractions of each MOA's wells (split: well_holdout) or of the "
                            "compounds (split: compound; GapNet 0.7 / 0.1 / 0.2)",
    "data.min_test_plates": "well_holdout: spread each MOA's test wells over at least this many plates (warns "
                            "naming the MOA where the plates are not there)",
    "data.train_fraction": "compound_holdout: the train share of the wells not held out (the rest validate)",
    "data.exclude_edge": "edge outcomes never trained on: inside | shifted | padded | dropped | invalid",
    "data.balance": "none | sampler (each epoch draws equally per class) | loss (class weights) | duplicate (every "
                    "cell plus minority-class cells repeated up to the largest class: MOAProfiler)",
    "data.subsample": "fraction of the training cells drawn afresh every epoch (GapNet's SC-CNN: 0.2)",
    "data.normalize": "auto | minmax | scale | none: how stored crops become model input",
    "data.batch_size": "crops per training step",
    "data.workers": "DataLoader worker processes (0 = in the main process)",
    "data.prefetch": "batches prefetched per worker",
    "data.shuffle_chunks": "Zarr chunks mixed in one shuffle window",
    "model": "the network",
    "model.arch": "efficientnet_b0 | resnet50 | resnet18 | resnet101 | densenet121 | efficientnet_tiny | resnet_tiny "
                  "| gapnet | sc_cnn",
    "model.weights": "null (random init) or a state_dict file (e.g. ImageNet), adapted to the channel count",
    "model.dropout": "dropout before the classifier (gapnet / sc_cnn: SELU's AlphaDropout after each fc layer)",
    "model.recipe": "null, or moaprofiler: the paper's recipe (EfficientNet-B0, SGD 0.1, x0.1 at epochs 50 / 75 of 100, "
                    "batch 56, dropout 0.2, duplicated minority classes, jitter 0.3, well holdout) under your keys",
    "optim": "optimiser and learning-rate schedule",
    "optim.name": "sgd | adamw",
    "optim.lr": "peak learning rate",
    "optim.weight_decay": "L2 weight decay",
    "optim.momentum": "SGD momentum",
    "optim.schedule": "constant | step | cosine | multistep (x gamma at each of optim.milestones)",
    "optim.milestones": "epochs at which multistep multiplies the lr by gamma (MOAProfiler: [50, 75])",
    "optim.warmup_epochs": "linear warm-up epochs",
    "optim.step_size": "epochs between decays, for schedule: step",
    "optim.gamma": "decay factor, for schedule: step and multistep",
    "optim.label_smoothing": "cross-entropy label smoothing",
    "optim.clip_grad_norm": "null (no clipping) or the max global gradient norm",
    "augment": "DeepProfiler's augmentation",
    "augment.enabled": "false turns every augmentation off",
    "augment.crop": "probability of a random 80-100 % crop resized back",
    "augment.flip": "random horizontal / vertical flips",
    "augment.rotate": "random 90-degree rotations",
    "augment.brightness": "random brightness shift, up to this fraction",
    "augment.contrast": "random contrast factor range [low, high]",
    "train": "the run",
    "train.task": "classify | assays (GapNet multi-task) | simclr: what is optimised on crops (phenovec.train."
                  "objectives); clip | bae | simclr_profiles | fnn train on profile tables (phenovec.train.tables, "
                  "--print-config --task clip)",
    "train.out": "checkpoints, metrics.csv / metrics.json, split.parquet (rerun to resume)",
    "train.epochs": "epochs",
    "train.seed": "seed of splits, sampling, augmentation and initialisation",
    "train.device": "auto | cpu | cuda | cuda:N",
    "train.amp": "auto (on CUDA) | true | false: mixed precision",
    "train.threads": "null (torch's default) or torch CPU threads",
    "train.max_minutes": "null (no limit) or stop cleanly after a checkpoint once this wall time is exceeded",
}


def _parse_override(text: str) -> tuple[str, object]:
    from phenovec.io.yaml_load import load_yaml

    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ValueError(f"--set {text!r}: use section.key=value, e.g. train.epochs=3")
    return key.strip(), load_yaml(value)


def _run_train(a) -> dict:
    import yaml

    from phenovec.train.config import default_config

    if a.print_config:
        from phenovec.commented_yaml import commented_yaml

        from phenovec.train.tables.config import TABLE_COMMENTS, TABLE_TASKS, default_table_config

        if a.task in TABLE_TASKS:
            print(commented_yaml(default_table_config(a.task), TABLE_COMMENTS))
            return {}
        from phenovec.train.objectives import objective_class

        print(commented_yaml(default_config(a.task), {**COMMENTS, **objective_class(a.task).COMMENTS}))
        return {}
    if not a.config:
        raise ValueError("phenovec train needs a configuration file (see --print-config)")
    import torch  # noqa: F401  (every task needs it: a missing install is named before the configuration is read)

    overrides = dict(_parse_override(s) for s in a.set or [])
    if _task(a.config, overrides) in _table_tasks():
        return _run_table_train(a.config, overrides, show_progress(a))
    from phenovec.train.loop import train

    res = train(a.config, overrides, progress=show_progress(a))
    last = res.metrics.to_dict(orient="records")[-1] if len(res.metrics) else {}
    summary = {"out": str(res.out), "epochs": res.epochs, "best_epoch": res.best_epoch,
               "best_val_accuracy": res.best_val_accuracy, "score": res.score_name, "best_score": res.best_score,
               "last": str(res.last),
               "best": str(res.best) if res.best else None, "stopped_early": res.stopped_early,
               "classes": res.classes, "last_epoch": last}
    if os.environ.get("RANK", "0") in ("0", ""):  # under torchrun every process returns this; rank 0 prints it
        print(json.dumps(summary, indent=2, default=float))
    return summary


def _table_tasks() -> tuple:
    from phenovec.train.tables.config import TABLE_TASKS

    return tuple(TABLE_TASKS)


def _task(config_path, overrides: dict) -> str:
    """``train.task`` of a configuration file (after ``--set``), to route it to the image or the table trainer."""
    from phenovec.io.config_schema import read_config_source

    raw, _, _ = read_config_source(config_path, overrides)
    task = (raw.get("train") or {}).get("task", "classify") if isinstance(raw.get("train"), dict) else "classify"
    return task if isinstance(task, str) else "classify"


def _run_table_train(config_path, overrides: dict, progress) -> dict:
    from phenovec.train.tables.loop import train_tables

    res = train_tables(config_path, overrides, progress=progress)
    last = res.metrics.to_dict(orient="records")[-1] if len(res.metrics) else {}
    summary = {"out": str(res.out), "task": res.task, "epochs": res.epochs, "best_epoch": res.best_epoch,
               "best_val_loss": res.best_val_loss, "last": str(res.last), "best": str(res.best) if res.best else None,
               "stopped_early": res.stopped_early, "evaluation": res.evaluation, "last_epoch": last}
    print(json.dumps(summary, indent=2, default=float))
    return summary


def add_train_parser(stages) -> argparse.ArgumentParser:
    """Add ``train`` to the CLI's top-level subparsers; the handler is ``args.run``."""
    p = stages.add_parser("train", help="train on crops or whole fields (classifier, GapNet assays, SimCLR; "
                                       "torchrun for data-parallel) or on profile tables "
                                       "(CLIP, bimodal autoencoder, SimCLR, assay fnn); PyTorch")
    p.add_argument("config", nargs="?", help="training configuration (YAML)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a configuration value (repeatable)")
    p.add_argument("--print-config", action="store_true",
                   help="print every configuration key with its default and a comment, and exit")
    p.add_argument("--task", default="classify",
                   help="with --print-config: the train.task whose keys to print (classify, assays, simclr; the "
                        "profile-table tasks clip, bae, simclr_profiles, fnn)")
    add_quiet(p)
    p.set_defaults(run=_run_train)
    return p
