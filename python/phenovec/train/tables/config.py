"""Configuration of the profile-level (table) trainer: YAML or dict, validated key by key (errors name the key path).

``train.task`` picks the recipe (:data:`TABLE_TASKS`): ``clip`` (Cell Painting + transcriptomics, symmetric
InfoNCE), ``bae`` (bimodal masked autoencoder), ``simclr_profiles`` (SimCLR on one profile table) and ``fnn``
(multi-task assay prediction from profiles, masked BCE). A complete configuration with every default
(``default_table_config("clip")``)::

    data:
      cp: null                  # the Cell Painting (or any) profile table; required
      tx: null                  # the second modality (L1000 level 5, ...); required by clip / bae only
      keys: [Metadata_pert_id, Metadata_dose]  # perturbation (+ dose) columns joining the two tables
      tx_keys: null             # the second table's names for the same keys (null = the same names)
      replicate: null           # replicate column: joined too when both tables have it
      key_digits: 3             # numeric keys (doses) are matched at this many significant digits
      cp_features: null         # feature columns (null = every numeric column that is not metadata or a key)
      tx_features: null
      cp_metadata: []           # further metadata columns of the cp table (never features)
      tx_metadata: []
      compound: null            # the compound column (cp names; null = keys[0]): split unit, replicate label
      moa: null                 # MOA column of the cp table (evaluation only)
      smiles: null              # SMILES column of the cp table (split: scaffold)
      split: perturbation       # perturbation (whole compounds) | scaffold (whole Murcko scaffolds, RDKit)
      split_fractions: [0.7, 0.1, 0.2]
      labels: null              # an activity label file (phenovec.io.activity_labels layouts): fnn's targets;
                                # other tasks: per-assay logistic probes of each representation in the evaluation
      label_coding: auto        # auto | binary (1/0) | signed (+1/-1/0)
      label_compound_column: null  # the label file's compound column (null = its default)
      min_per_class: 2          # fnn: tasks with fewer training actives or inactives are dropped (warned)
      batch_size: 128
    model:
      cp_hidden: [1024, 1024, 1024]   # CP encoder hidden widths (clip, simclr_profiles)
      tx_hidden: [4096, 4096, 4096]   # TX encoder hidden widths (clip)
      embed_dim: 512            # encoder output: the exported representation
      proj_dim: 256             # projection (clip: the shared space; simclr: the NT-Xent head)
      bae_encoder: [1024, 512, 512]   # BAE: CP encoder hidden widths, then the latent (embed_dim)
      bae_cp_decoder: [512, 512, 1024]
      bae_tx_decoder: [1024, 2048, 4096]
      fnn_hidden: [1024, 1024, 1024]  # fnn: SELU hidden widths
      dropout: 0.0              # dropout after each hidden layer (alpha dropout for the SELU fnn)
      temperature: null         # clip 0.1, simclr_profiles 0.5 (null = the task's default)
      learn_temperature: true   # clip: learn the temperature (from temperature); false keeps it fixed
      mask_fraction: 0.1        # augmentation: fraction of input features zeroed per sample
      noise_std: 0.0            # augmentation: Gaussian feature noise (simclr_profiles default 0.1)
      positives: views          # simclr_profiles: views (two augmentations of a row) | replicates (a row and
                                # another row of its compound, each augmented; same-compound rows are no negatives)
    optim:
      name: adam                # adam | adamw | sgd
      lr: 4.0e-4
      weight_decay: 0.0
      momentum: 0.9             # sgd only
      clip_grad_norm: null
    train:
      task: clip
      out: train-out
      epochs: 50
      seed: 0
      device: auto              # auto | cpu | cuda | cuda:N
      threads: null
      max_minutes: null
    eval:
      k: 5                      # kNN accuracy: k neighbours, the query itself left out
      metric: cosine            # similarity for kNN and mAP
      map_null_size: 1000       # mAP permutation null size (0: mean AP only, no p-values)

Unknown keys, wrong types, out-of-range values and missing files raise ``ConfigError`` naming the key path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


from phenovec.io.config_schema import NONE_TYPE, ConfigError, defaults, merge_sections, read_config_source
from phenovec.train.config import config_hash

__all__ = ["TABLE_TASKS", "TABLE_SCHEMA", "TABLE_COMMENTS", "ConfigError", "config_hash", "default_table_config",
           "load_table_config", "validate_table_config"]

TABLE_TASKS = ("clip", "bae", "simclr_profiles", "fnn")
PAIRED_TASKS = ("clip", "bae")
_NONE = NONE_TYPE
_WIDTHS = (list,)

TABLE_SCHEMA: dict[str, dict[str, tuple[Any, tuple, Any]]] = {
    "data": {
        "cp": (None, (str, _NONE), "path"),
        "tx": (None, (str, _NONE), "path"),
        "keys": (["Metadata_pert_id", "Metadata_dose"], (list, str), None),
        "tx_keys": (None, (list, str, _NONE), None),
        "replicate": (None, (str, _NONE), None),
        "key_digits": (3, (int,), (1, 17)),
        "cp_features": (None, (list, _NONE), None),
        "tx_features": (None, (list, _NONE), None),
        "cp_metadata": ([], (list,), None),
        "tx_metadata": ([], (list,), None),
        "compound": (None, (str, _NONE), None),
        "moa": (None, (str, _NONE), None),
        "smiles": (None, (str, _NONE), None),
        "split": ("perturbation", (str,), ("perturbation", "scaffold")),
        "split_fractions": ([0.7, 0.1, 0.2], (list,), None),
        "labels": (None, (str, _NONE), "path"),
        "label_coding": ("auto", (str,), ("auto", "binary", "signed")),
        "label_compound_column": (None, (str, _NONE), None),
        "min_per_class": (2, (int,), (1, 1 << 30)),
        "batch_size": (128, (int,), (1, 1 << 20)),
    },
    "model": {
        "cp_hidden": ([1024, 1024, 1024], _WIDTHS, None),
        "tx_hidden": ([4096, 4096, 4096], _WIDTHS, None),
        "embed_dim": (512, (int,), (1, 1 << 20)),
        "proj_dim": (256, (int,), (1, 1 << 20)),
        "bae_encoder": ([1024, 512, 512], _WIDTHS, None),
        "bae_cp_decoder": ([512, 512, 1024], _WIDTHS, None),
        "bae_tx_decoder": ([1024, 2048, 4096], _WIDTHS, None),
        "fnn_hidden": ([1024, 1024, 1024], _WIDTHS, None),
        "dropout": (0.0, (float, int), (0.0, 0.99)),
        "temperature": (None, (float, int, _NONE), (1e-4, 100.0)),
        "learn_temperature": (True, (bool,), None),
        "mask_fraction": (0.1, (float, int), (0.0, 0.9)),
        "noise_std": (None, (float, int, _NONE), (0.0, 100.0)),
        "positives": ("views", (str,), ("views", "replicates")),
    },
    "optim": {
        "name": ("adam", (str,), ("adam", "adamw", "sgd")),
        "lr": (4e-4, (float, int), (0.0, 10.0)),
        "weight_decay": (0.0, (float, int), (0.0, 1.0)),
        "momentum": (0.9, (float, int), (0.0, 1.0)),
        "clip_grad_norm": (None, (float, int, _NONE), (0.0, 1e12)),
    },
    "train": {
        "task": ("clip", (str,), TABLE_TASKS),
        "out": ("train-out", (str,), None),
        "epochs": (50, (int,), (1, 100000)),
        "seed": (0, (int,), None),
        "device": ("auto", (str,), None),
        "threads": (None, (int, _NONE), (1, 4096)),
        "max_minutes": (None, (float, int, _NONE), (0.0, 1e9)),
    },
    "eval": {
        "k": (5, (int,), (1, 1000)),
        "metric": ("cosine", (str,), ("cosine", "pearson", "euclidean")),
        "map_null_size": (1000, (int,), (0, 1 << 24)),
    },
}

#: task -> key -> the value a null means for that task
TASK_DEFAULTS = {
    "clip": {"model.temperature": 0.1, "model.noise_std": 0.0},
    "bae": {"model.temperature": None, "model.noise_std": 0.0},
    "simclr_profiles": {"model.temperature": 0.5, "model.noise_std": 0.1},
    "fnn": {"model.temperature": None, "model.noise_std": 0.0},
}

#: one line per section and key, for ``phenovec train --print-config`` (the CLI's COMMENTS shape)
TABLE_COMMENTS = {
    "data": "the profile tables, how they are paired and split",
    "data.cp": "the Cell Painting (or any) profile table (CSV / Parquet / AnnData / embeddings); required",
    "data.tx": "the second modality (e.g. L1000 level 5); required by clip and bae",
    "data.keys": "perturbation (+ dose) columns joining the two tables (LINCS: [Metadata_pert_id, "
                 "Metadata_mmoles_per_liter])",
    "data.tx_keys": "the second table's names for the same keys (LINCS L1000: [pert_id, pert_dose]); null = same",
    "data.replicate": "replicate column, joined too when both tables have it",
    "data.key_digits": "numeric keys (doses) are matched at this many significant digits",
    "data.cp_features": "feature columns of the cp table (null = numeric columns that are not metadata or keys)",
    "data.tx_features": "feature columns of the tx table (null = as for cp)",
    "data.cp_metadata": "further metadata columns of the cp table (never features)",
    "data.tx_metadata": "further metadata columns of the tx table (never features)",
    "data.compound": "compound column (cp names; null = keys[0]): split unit, replicate label, SimCLR positives",
    "data.moa": "MOA column of the cp table, for the kNN / mAP evaluation",
    "data.smiles": "SMILES column of the cp table, for split: scaffold",
    "data.split": "perturbation (whole compounds per split) | scaffold (whole Murcko scaffolds)",
    "data.split_fractions": "train / val / test fractions",
    "data.labels": "activity label file (long, wide or Matrix Market; phenovec.io.activity_labels): fnn's targets; "
                   "for clip / bae / simclr_profiles, the evaluation's per-assay probes of every representation",
    "data.label_coding": "auto | binary (1 / 0) | signed (+1 / -1 / 0 = unmeasured)",
    "data.label_compound_column": "the label file's compound column (null = the reader's default)",
    "data.min_per_class": "fnn: tasks with fewer training actives or inactives than this are dropped (warned)",
    "data.batch_size": "rows per training step (at least 2)",
    "model": "the networks",
    "model.cp_hidden": "CP encoder hidden widths (clip, simclr_profiles)",
    "model.tx_hidden": "TX encoder hidden widths (clip)",
    "model.embed_dim": "encoder output width: the exported representation",
    "model.proj_dim": "projection width (clip's shared space, simclr's NT-Xent head)",
    "model.bae_encoder": "BAE CP encoder hidden widths (then the latent of embed_dim)",
    "model.bae_cp_decoder": "BAE CP decoder hidden widths",
    "model.bae_tx_decoder": "BAE TX decoder hidden widths",
    "model.fnn_hidden": "fnn SELU hidden widths",
    "model.dropout": "dropout after each hidden layer (alpha dropout in the SELU fnn)",
    "model.temperature": "InfoNCE / NT-Xent temperature (null = clip 0.1, simclr_profiles 0.5)",
    "model.learn_temperature": "clip: learn the temperature, starting from model.temperature",
    "model.mask_fraction": "augmentation: fraction of input features zeroed per sample",
    "model.noise_std": "augmentation: Gaussian feature noise (null = simclr_profiles 0.1, else 0)",
    "model.positives": "simclr_profiles: views | replicates (another row of the same compound)",
    "optim": "the optimiser",
    "optim.name": "adam | adamw | sgd",
    "optim.lr": "learning rate",
    "optim.weight_decay": "L2 weight decay",
    "optim.momentum": "SGD momentum",
    "optim.clip_grad_norm": "max global gradient norm, or null",
    "train": "the run",
    "train.task": "clip | bae | simclr_profiles | fnn",
    "train.out": "checkpoints, metrics.csv / metrics.json, split.parquet, evaluation.json",
    "train.epochs": "passes over the training rows",
    "train.seed": "seeds the split, initialisation and every epoch",
    "train.device": "auto | cpu | cuda | cuda:N",
    "train.threads": "torch CPU threads (null = torch's default)",
    "train.max_minutes": "stop cleanly (after a checkpoint) once this wall time is exceeded",
    "eval": "the evaluation on the test split",
    "eval.k": "kNN accuracy: neighbours (the query itself left out)",
    "eval.metric": "cosine | pearson | euclidean",
    "eval.map_null_size": "mAP permutation null size (0: mean AP only)",
}


def _task_defaults(cfg: dict, task: str) -> None:
    for dotted, value in TASK_DEFAULTS[task].items():
        sec, key = dotted.split(".")
        if cfg[sec][key] is None:
            cfg[sec][key] = value


def default_table_config(task: str = "clip") -> dict:
    """Every section and key with its default for ``task`` (``data.cp`` is required and has none)."""
    if task not in TABLE_TASKS:
        raise ConfigError(f"train.task = {task!r} is not a table task ({', '.join(TABLE_TASKS)})")
    cfg = defaults(TABLE_SCHEMA)
    cfg["train"]["task"] = task
    _task_defaults(cfg, task)
    return cfg


def _names(value, where: str, source: str, allow_empty: bool = False) -> list[str]:
    vals = [value] if isinstance(value, str) else list(value)
    if (not vals and not allow_empty) or not all(isinstance(v, str) and v for v in vals):
        raise ConfigError(f"{source}: {where} must be {'a' if allow_empty else 'a non-empty'} list of column names, "
                          f"got {value!r}")
    if len(set(vals)) != len(vals):
        raise ConfigError(f"{source}: {where} names a column twice: {vals!r}")
    return vals


def _widths(value, where: str, source: str) -> list[int]:
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ConfigError(f"{source}: {where} must be a non-empty list of positive integer widths, got {value!r}")
    return list(value)


def _path(value: str, where: str, source: str, base: Path) -> str:
    p = Path(value) if Path(value).is_absolute() else base / value
    if not p.exists():
        raise ConfigError(f"{source}: {where}: {value!r} does not exist (looked at {p.resolve()})")
    return str(p.resolve())


def validate_table_config(raw: dict, source: str = "<config>", base_dir: str | os.PathLike | None = None) -> dict:
    """Merge ``raw`` over the defaults and check it; returns a new dict. Paths are resolved against ``base_dir``
    (the YAML file's folder) and must exist."""
    cfg = merge_sections(raw, TABLE_SCHEMA, source)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    task = t["task"]
    _task_defaults(cfg, task)
    if d["cp"] is None:
        raise ConfigError(f"{source}: data.cp is required (the Cell Painting profile table)")
    d["cp"] = _path(d["cp"], "data.cp", source, base)
    if task in PAIRED_TASKS:
        if d["tx"] is None:
            raise ConfigError(f"{source}: data.tx is required by train.task {task} (the second modality's table)")
        d["tx"] = _path(d["tx"], "data.tx", source, base)
    elif d["tx"] is not None:
        raise ConfigError(f"{source}: data.tx is not used by train.task {task} (only by {', '.join(PAIRED_TASKS)})")
    if task == "fnn" and d["labels"] is None:
        raise ConfigError(f"{source}: data.labels is required by train.task fnn (an activity label file)")
    if d["labels"] is not None:  # fnn: the targets; other tasks: the activity probes of the evaluation
        d["labels"] = _path(d["labels"], "data.labels", source, base)
    d["keys"] = _names(d["keys"], "data.keys", source)
    if d["tx_keys"] is not None:
        d["tx_keys"] = _names(d["tx_keys"], "data.tx_keys", source)
        if len(d["tx_keys"]) != len(d["keys"]):
            raise ConfigError(f"{source}: data.tx_keys has {len(d['tx_keys'])} names, data.keys {len(d['keys'])}: "
                              "they name the same keys in the two tables")
    for key in ("cp_features", "tx_features"):
        if d[key] is not None:
            d[key] = _names(d[key], f"data.{key}", source)
    for key in ("cp_metadata", "tx_metadata"):
        d[key] = _names(d[key], f"data.{key}", source, allow_empty=True)
    if d["compound"] is None:
        d["compound"] = d["keys"][0]
    if d["split"] == "scaffold" and d["smiles"] is None:
        raise ConfigError(f"{source}: data.split: scaffold needs data.smiles (the SMILES column of the cp table)")
    fr = d["split_fractions"]
    if len(fr) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in fr) \
            or abs(sum(fr) - 1) > 1e-9 or fr[0] <= 0:
        raise ConfigError(f"{source}: data.split_fractions must be three fractions (train, val, test) summing to 1 "
                          f"with train > 0, got {fr!r}")
    if d["batch_size"] < 2:
        raise ConfigError(f"{source}: data.batch_size = {d['batch_size']}: a batch of one has no negatives to "
                          "contrast and no batch statistics; use at least 2")
    for key in ("cp_hidden", "tx_hidden", "bae_encoder", "bae_cp_decoder", "bae_tx_decoder", "fnn_hidden"):
        m[key] = _widths(m[key], f"model.{key}", source)
    if m["positives"] == "replicates" and task != "simclr_profiles":
        raise ConfigError(f"{source}: model.positives: replicates is for train.task simclr_profiles, not {task}")
    dev = t["device"]
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"{source}: train.device = {dev!r}: use auto, cpu, cuda or cuda:N")
    t["out"] = str((base / t["out"]).resolve()) if not Path(t["out"]).is_absolute() else t["out"]
    return cfg


def load_table_config(path_or_dict, overrides: dict | None = None) -> dict:
    """Read a YAML file (or take a dict), apply ``overrides`` (``{"train.epochs": 3}``) and validate."""
    raw, source, base = read_config_source(path_or_dict, overrides)
    return validate_table_config(raw, source, base)
