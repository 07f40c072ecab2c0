"""Training configuration: a YAML file (or dict) validated into typed sections, with errors naming the key.

A complete configuration with every default (``phenovec train --print-config`` prints it)::

    data:
      crops: crops-dir          # output folder of `phenovec crop` (crops.zarr + cells.parquet + manifest.json)
      fields: null              # or: output folder of `phenovec tiles` (whole fields, MOAProfiler;
                                # phenovec.train.field_data): give crops or fields
      stats_fields: null        # fields: the channel statistics over this many training fields (null = all)
      label: Metadata_Treatment # any column of the cell table
      split_by: [Metadata_Plate, Metadata_Well]   # all cells of one group land in one split (no leakage)
      val_fraction: 0.2         # of each label's groups, at least one group when the label has two or more
      holdout_plates: []        # Metadata_Plate values kept out of train and validation (the test split)
      split: plates             # plates (val_fraction of each label's groups; holdout_plates) | well_holdout |
                                # compound_holdout (MOAProfiler's, phenovec.train.moa_splits; label = the MOA) |
                                # compound (GapNet's: split_fractions of the compounds, phenovec.train.compound_folds)
      compound_column: null     # the compound of each cell, for split: compound_holdout / compound
      split_fractions: [0.6, 0.1, 0.3]   # train / val / test wells per MOA (well_holdout) or compounds (compound)
      min_test_plates: 7        # well_holdout: spread each MOA's test wells over at least this many plates
      train_fraction: 0.7       # compound_holdout: train share of the other wells (the rest validate)
      exclude_edge: [dropped, invalid]  # cells without a usable crop never train; add "padded" to drop them too
      balance: none             # none | sampler (each epoch draws equally per class) | loss (class weights) |
                                # duplicate (every cell, plus minority-class cells repeated up to the largest class)
      subsample: 1.0            # fraction of the training cells drawn afresh every epoch (GapNet's SC-CNN: 0.2)
      normalize: auto           # auto | minmax | scale | none: how stored crops become model input (see data.py)
      batch_size: 64
      workers: 2                # DataLoader worker processes (0 = in the main process)
      prefetch: 2               # batches prefetched per worker
      shuffle_chunks: 8         # Zarr chunks mixed in one shuffle window
    model:
      arch: efficientnet_b0     # see phenovec.train.models.ARCHS
      weights: null             # a user's state_dict file (e.g. ImageNet), adapted to the channel count
      dropout: 0.0
      recipe: null              # null, or moaprofiler: the paper's recipe under every key set here (RECIPES)
    optim:
      name: sgd                 # sgd | adamw
      lr: 0.02
      weight_decay: 1.0e-4
      momentum: 0.9
      schedule: cosine          # constant | step | cosine | multistep (x gamma at each of optim.milestones)
      milestones: []            # epochs, for schedule: multistep (MOAProfiler: [50, 75])
      warmup_epochs: 5
      step_size: 10             # epochs, for schedule: step
      gamma: 0.1
      label_smoothing: 0.1
      clip_grad_norm: null      # max global gradient norm, or null
    augment:
      enabled: true
      crop: 0.5                 # probability of a random 80-100 % crop resized back
      flip: true
      rotate: true
      brightness: 0.1
      contrast: [0.8, 1.2]
    train:
      task: classify            # classify | assays (GapNet) | simclr: what is optimised (phenovec.train.objectives)
      out: train-out            # checkpoints, metrics.csv / metrics.json, split.parquet
      epochs: 10
      seed: 0
      device: auto              # auto | cpu | cuda | cuda:N
      amp: auto                 # auto (on CUDA) | true | false
      threads: null             # torch CPU threads (null = torch's default)
      max_minutes: null         # stop cleanly (after a checkpoint) once this wall time is exceeded

Unknown keys, wrong types, out-of-range values and missing files raise ``ConfigError`` naming the key path
(``optim.lr``) and, for unknown keys, the closest valid name.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any


from phenovec.io.config_schema import NONE_TYPE, ConfigError, defaults, merge_sections, read_config_source, suggest


_NONE = NONE_TYPE
# section -> key -> (default, allowed types, check or None)
SCHEMA: dict[str, dict[str, tuple[Any, tuple, Any]]] = {
    "data": {
        "crops": (None, (str, _NONE), "path"),
        "fields": (None, (str, _NONE), "path"),
        "stats_fields": (None, (int, _NONE), (1, 1 << 40)),
        "label": ("Metadata_Treatment", (str,), None),
        "split_by": (["Metadata_Plate", "Metadata_Well"], (list, str), None),
        "val_fraction": (0.2, (float, int), (0.0, 0.9)),
        "holdout_plates": ([], (list,), None),
        "split": ("plates", (str,), ("plates", "well_holdout", "compound_holdout", "compound")),
        "compound_column": (None, (str, _NONE), None),
        "split_fractions": ([0.6, 0.1, 0.3], (list,), None),
        "min_test_plates": (7, (int,), (0, 100000)),
        "train_fraction": (0.7, (float, int), (0.05, 0.95)),
        "exclude_edge": (["dropped", "invalid"], (list,), ("inside", "shifted", "padded", "dropped", "invalid")),
        "balance": ("none", (str,), ("none", "sampler", "loss", "duplicate")),
        "subsample": (1.0, (float, int), (1e-6, 1.0)),
        "normalize": ("auto", (str,), ("auto", "minmax", "scale", "none")),
        "batch_size": (64, (int,), (1, 1 << 20)),
        "workers": (2, (int,), (0, 256)),
        "prefetch": (2, (int,), (1, 64)),
        "shuffle_chunks": (8, (int,), (1, 1 << 20)),
    },
    "model": {
        "arch": ("efficientnet_b0", (str,), None),
        "weights": (None, (str, _NONE), "path"),
        "dropout": (0.0, (float, int), (0.0, 0.99)),
        "recipe": (None, (str, _NONE), ("moaprofiler",)),
    },
    "optim": {
        "name": ("sgd", (str,), ("sgd", "adamw")),
        "lr": (0.02, (float, int), (0.0, 10.0)),
        "weight_decay": (1e-4, (float, int), (0.0, 1.0)),
        "momentum": (0.9, (float, int), (0.0, 1.0)),
        "schedule": ("cosine", (str,), ("constant", "step", "cosine", "multistep")),
        "milestones": ([], (list,), None),
        "warmup_epochs": (5, (int,), (0, 100000)),
        "step_size": (10, (int,), (1, 100000)),
        "gamma": (0.1, (float, int), (0.0, 1.0)),
        "label_smoothing": (0.1, (float, int), (0.0, 0.99)),
        "clip_grad_norm": (None, (float, int, _NONE), (0.0, 1e12)),
    },
    "augment": {
        "enabled": (True, (bool,), None),
        "crop": (0.5, (float, int), (0.0, 1.0)),
        "flip": (True, (bool,), None),
        "rotate": (True, (bool,), None),
        "brightness": (0.1, (float, int), (0.0, 1.0)),
        "contrast": ([0.8, 1.2], (list,), None),
    },
    "train": {
        "task": ("classify", (str,), None),
        "out": ("train-out", (str,), None),
        "epochs": (10, (int,), (1, 100000)),
        "seed": (0, (int,), None),
        "device": ("auto", (str,), None),
        "amp": ("auto", (str, bool), None),
        "threads": (None, (int, _NONE), (1, 4096)),
        "max_minutes": (None, (float, int, _NONE), (0.0, 1e9)),
    },
}


# model.recipe: a paper's training recipe, merged under the user's own keys (every value overridable)
RECIPES = {
    # MOAProfiler (Wong et al. 2023, digest part B): EfficientNet-B0, SGD lr 0.1 momentum 0.9 wd 1e-4, dropout 0.2,
    # lr x0.1 at epochs 50 and 75 of 100, batch 56, best-validation checkpoint (best.pt), minority classes
    # duplicated, per-channel brightness / contrast jitter up to 0.3, random 90-degree rotations and flips, the
    # well-holdout split; the label is the MOA column
    "moaprofiler": {
        "data": {"label": "Metadata_MOA", "split": "well_holdout", "balance": "duplicate", "batch_size": 56},
        "model": {"arch": "efficientnet_b0", "dropout": 0.2},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1.0e-4, "schedule": "multistep",
                  "milestones": [50, 75], "gamma": 0.1, "warmup_epochs": 0, "label_smoothing": 0.0},
        "augment": {"enabled": True, "crop": 0.0, "flip": True, "rotate": True, "brightness": 0.3,
                    "contrast": [0.7, 1.3]},
        "train": {"epochs": 100},
    },
}


def _under(base: dict, over: dict) -> dict:
    """``over`` merged over a deep copy of ``base`` (sections merged key by key)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _under(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def task_schema(task: str = "classify") -> dict:
    """``SCHEMA`` plus the sections of ``task``'s objective (e.g. ``assays``), raising ``ConfigError`` for an
    unknown task."""
    from phenovec.train.objectives import objective_class

    try:
        cls = objective_class(task)
    except (KeyError, ModuleNotFoundError) as e:
        raise ConfigError(str(e).strip('"')) from None
    return {**SCHEMA, **cls.SCHEMA}


def default_config(task: str = "classify") -> dict:
    """Every section and key with its default (``data.crops`` or ``data.fields`` is required and has none)."""
    out = defaults(task_schema(task))
    out["train"]["task"] = task
    return out


def validate_config(raw: dict, source: str = "<config>", base_dir: str | os.PathLike | None = None) -> dict:
    """Merge ``raw`` over the defaults and check it; returns a new dict. Paths are resolved against ``base_dir``
    (the YAML file's folder) and must exist (``data.crops``, ``model.weights``)."""
    task = ((raw or {}).get("train") or {}).get("task", "classify") if isinstance(raw, dict) else "classify"
    if not isinstance(task, str):
        raise ConfigError(f"{source}: train.task must be a string, got {task!r}")
    try:
        schema = task_schema(task)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    recipe = ((raw or {}).get("model") or {}).get("recipe") if isinstance((raw or {}).get("model"), dict) else None
    if recipe is not None:
        if recipe not in RECIPES:
            raise ConfigError(f"{source}: model.recipe = {recipe!r} is unknown{suggest(str(recipe), RECIPES)}")
        raw = _under(RECIPES[recipe], raw)
    cfg = merge_sections(raw, schema, source)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    if d["crops"] is None and d["fields"] is None:
        raise ConfigError(f"{source}: data.crops is required (the output folder of `phenovec crop`), or data.fields "
                          "(the output folder of `phenovec tiles`: whole fields)")
    if d["crops"] is not None and d["fields"] is not None:
        raise ConfigError(f"{source}: give data.crops or data.fields, not both")
    if d["fields"] is not None:
        if t["task"] != "classify":
            raise ConfigError(f"{source}: data.fields trains train.task: classify only, got {t['task']!r}")
        if d["normalize"] != "auto":
            raise ConfigError(f"{source}: data.normalize = {d['normalize']!r}: a field store's input is always "
                              "scaled per field to [0, 1] and standardised per channel (leave data.normalize: auto)")
    elif d["stats_fields"] is not None:
        raise ConfigError(f"{source}: data.stats_fields is for data.fields")
    if isinstance(d["split_by"], str):
        d["split_by"] = [d["split_by"]]
    if d["split"] != "plates" and d["holdout_plates"]:
        raise ConfigError(f"{source}: data.holdout_plates is for data.split: plates; {d['split']} makes its own "
                          "test set")
    if d["split"] in ("compound_holdout", "compound") and d["compound_column"] is None:
        raise ConfigError(f"{source}: data.split: {d['split']} needs data.compound_column (the compound of "
                          "each cell)")
    fr = d["split_fractions"]
    if len(fr) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in fr) \
            or abs(sum(fr) - 1) > 1e-9:
        raise ConfigError(f"{source}: data.split_fractions must be three fractions (train, val, test) summing to 1, "
                          f"got {fr!r}")
    for key in ("crops", "fields"):
        if d[key] is None:
            continue
        p = (base / d[key]).resolve() if not Path(d[key]).is_absolute() else Path(d[key])
        if not p.exists():
            raise ConfigError(f"{source}: data.{key}: {d[key]!r} does not exist (looked at {p})")
        d[key] = str(p)
    if m["weights"] is not None:
        p = (base / m["weights"]) if not Path(m["weights"]).is_absolute() else Path(m["weights"])
        if not p.is_file():
            raise ConfigError(f"{source}: model.weights: {m['weights']!r} is not a file (looked at {p})")
        m["weights"] = str(p.resolve())
    from phenovec.train.models import ARCHS

    if m["arch"] not in ARCHS:
        raise ConfigError(f"{source}: model.arch = {m['arch']!r} is unknown{suggest(m['arch'], ARCHS)}")
    c = cfg["augment"]["contrast"]
    if len(c) != 2 or not all(isinstance(v, (int, float)) for v in c) or not (0 < c[0] <= c[1]):
        raise ConfigError(f"{source}: augment.contrast must be [low, high] with 0 < low <= high, got {c!r}")
    o = cfg["optim"]
    ms = o["milestones"]
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms) or ms != sorted(set(ms)):
        raise ConfigError(f"{source}: optim.milestones must be increasing epoch numbers >= 1, got {ms!r}")
    if o["schedule"] == "multistep" and not ms:
        raise ConfigError(f"{source}: optim.schedule: multistep needs optim.milestones (e.g. [50, 75])")
    if o["schedule"] == "cosine" and o["warmup_epochs"] >= t["epochs"]:
        raise ConfigError(f"{source}: optim.warmup_epochs ({o['warmup_epochs']}) must be shorter than train.epochs "
                          f"({t['epochs']}) for the cosine schedule")
    dev = t["device"]
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"{source}: train.device = {dev!r}: use auto, cpu, cuda or cuda:N")
    if isinstance(t["amp"], str) and t["amp"] != "auto":
        raise ConfigError(f"{source}: train.amp must be auto, true or false, got {t['amp']!r}")
    t["out"] = str((base / t["out"]).resolve()) if not Path(t["out"]).is_absolute() else t["out"]
    from phenovec.train.objectives import objective_class

    objective_class(task).check_config(cfg, source, base)
    return cfg


def load_config(path_or_dict, overrides: dict | None = None) -> dict:
    """Read a YAML file (or take a dict), apply ``overrides`` (``{"train.epochs": 3}``) and validate."""
    raw, source, base = read_config_source(path_or_dict, overrides)
    return validate_config(raw, source, base)


def config_hash(cfg: dict) -> str:
    """SHA-256 of the settings that change the trained weights (everything but run-control keys)."""
    keep = copy.deepcopy(cfg)
    for k in ("out", "max_minutes", "threads", "device"):
        keep["train"].pop(k, None)
    for k in ("workers", "prefetch"):
        keep["data"].pop(k, None)
    for k in ("fields", "stats_fields"):  # unset: the hash of a crop run is what it was before these keys existed
        if keep["data"].get(k) is None:
            keep["data"].pop(k, None)
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()
