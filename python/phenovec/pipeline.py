"""``phenovec run``: images to report in one command, each stage cached by a hash of its inputs and configuration.

Stages, in order (each is also usable alone; see its own module):

``synth`` (optional: generate the synthetic plate) -> ``crop`` -> ``train`` -> ``export`` (both skipped when a
``model`` ONNX file is given) -> ``profile`` (Rust decode + crop + onnxruntime on Dask, from the images) ->
``process`` (a recipe over the single-cell embeddings; default: drop zero-variance features, spherize on the
control cells, average per well) -> ``report`` (HTML + JSON).

Configuration (YAML): ``phenovec run --print-config`` prints every key with its default and a comment
(``default_config()``, the defaults ``load_run_config`` fills in; ``COMMENTS``)::

    out: run-out
    synth: null            # or {plates, wells, sites, size, cells: [lo, hi], seed}: generate the plate first
    images: {index: null, locations: null, channels: [DNA, ER, RNA, AGP, Mito]}
    model: null            # an exported phenovec ONNX model: skips crop, train and export
    crop: {box_size: 128, edge: shift, chunk_cells: 256}
    train: {...}           # sections data / model / optim / augment / train of `phenovec train`, with its defaults
                           # (data.crops and train.out are filled in by the pipeline)
    export: {opset: 18}
    profile: {batch_size: 256, scheduler: null, workers: null, dtype: float32, precision: fp32, shard_by: null,
              task_cells: null}
                           # precision: fp32, fp16 (TensorRT) or bf16 (OpenVINO on AMX / AVX512-BF16 CPUs)
    process: {steps: null}  # recipe steps (null = the default above)
    report: {moa_column: Metadata_MOA, treatment_column: Metadata_Treatment, control: DMSO, null_size: 10000, seed: 0}

**Many plates**: ``images.index`` may be a list of indexes (one per plate, e.g. the Cell Painting Gallery's
LoadData CSVs; ``images.locations`` one table for all or one per index), or one index with ``profile.shard_by``
(e.g. ``Metadata_Plate``). The profile stage then runs the plates as shards on one Dask cluster
(``phenovec.profile.shards``: ``profile.scheduler`` null is a local cluster of ``profile.workers`` processes, or a
``tcp://`` address; each shard resumable, ``profile/manifest.json`` their states, ``profile/wells_mean/`` the
plate-partitioned well means); process reads every shard's embeddings in the shards' order, and the crop stage
(training data) the plates' sites together.

``preset: moaprofiler`` runs MOAProfiler's field-level route instead: ``synth`` -> ``tiles`` (whole fields,
``tiles.factor``) -> ``train`` (``data.fields``, ``model.recipe: moaprofiler``, the compound hold-out split) ->
``export`` (``--fields --logits``) -> ``profile`` (one vector and class scores per field) -> ``process``
(``moa_profiles``: control-standardised per plate, median per well) -> ``report`` (with the paper's protocol);
``images.locations`` is not needed. ``preset: gapnet`` (and sc_cnn, densenet121, resnet101) adds an ``assays``
stage after ``train``.

The demo (``demo_config``) sets its own small values: a 2-plate synthetic set, 48-pixel crops, a tiny ResNet
for 6 epochs, a 2000-draw null.

**Caching and resume**: a stage's key is the SHA-256 of its name, its configuration and the keys of the stages
it reads (the first stage also hashes the index and locations files). Its folder ``OUT/<stage>`` holds
``stage.json`` (key, configuration, timings, complete flag), written when the stage starts and marked complete at
the end. A rerun skips complete stages with the same key, resumes an incomplete one with the same key (crop,
train and profile resume inside), and rebuilds a stage whose key changed (and so every stage after it).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from phenovec.io.atomic import write_json_atomic
from phenovec.io.digest import file_sha256
from phenovec.io.config_schema import NONE_TYPE, ConfigError, merge_sections, suggest
from phenovec.io.yaml_load import load_yaml

STAGES = ("synth", "crop", "tiles", "train", "assays", "export", "profile", "process", "report")  # assays, tiles: presets
TOP_KEYS = ("out", "preset", "synth", "model", "images", "crop", "tiles", "train", "export", "profile", "process",
            "report")
MOAPROFILER = "moaprofiler"  # the field-level preset (the others are GapNet's, phenovec.train.objectives.assays)
SCHEMA = {
    "images": {"index": (None, (str, list, NONE_TYPE), "path"), "locations": (None, (str, list, NONE_TYPE), "path"),
               "channels": (["DNA", "ER", "RNA", "AGP", "Mito"], (list,), None)},
    "synth": {"plates": (2, (int,), (1, 1000)), "wells": (28, (int,), (2, 384)), "sites": (2, (int,), (1, 100)),
              "size": (256, (int,), (64, 4096)), "cells": ([25, 35], (list,), None), "seed": (0, (int,), None),
              "treatments": (None, (list, NONE_TYPE), None), "bad_wells": (0, (int,), (0, 384)),
              "control_wells": (None, (int, NONE_TYPE), (1, 384)), "assays": (0, (int,), (0, 10_000))},
    "crop": {"box_size": (128, (int,), (8, 1024)), "edge": ("shift", (str,), ("drop", "shift", "pad")),
             "chunk_cells": (256, (int,), (1, 1 << 20))},
    "tiles": {"factor": (1, (int,), (1, 64))},
    "export": {"opset": (18, (int,), (17, 30))},
    "profile": {"batch_size": (256, (int,), (1, 1 << 20)), "scheduler": (None, (str, NONE_TYPE), None),
                "workers": (None, (int, NONE_TYPE), (1, 4096)),
                "dtype": ("float32", (str,), ("float16", "float32")),
                "precision": ("fp32", (str,), ("fp32", "fp16", "bf16")),
                "shard_by": (None, (str, NONE_TYPE), None), "task_cells": (None, (int, NONE_TYPE), (1, 1 << 24))},
    "process": {"steps": (None, (list, NONE_TYPE), None)},
    "report": {"moa_column": ("Metadata_MOA", (str,), None), "treatment_column": ("Metadata_Treatment", (str,), None),
               "control": ("DMSO", (str,), None), "null_size": (10000, (int,), (10, 10_000_000)),
               "seed": (0, (int,), None), "evaluate_on": ("held_out", (str,), ("held_out", "all")),
               "dataset": (None, (str, NONE_TYPE), None), "umap": (True, (bool,), None),
               "gallery": (3, (int,), (0, 50)), "min_cells": (5, (int,), (0, 1_000_000)),
               "gradcam": (True, (bool,), None)},
}
# the keys of the train section the pipeline sets itself
PIPELINE_SET = (("data", "crops"), ("data", "fields"), ("train", "out"))
# the demo's training: a tiny ResNet for a few minutes on 2 cores
DEMO_TRAIN = {"model": {"arch": "resnet_tiny"}, "optim": {"lr": 0.05, "warmup_epochs": 1},
              "train": {"epochs": 6, "threads": 2}, "data": {"batch_size": 64, "workers": 0}}


def default_steps(control_query: str) -> list:
    return [{"feature_select": {"operation": ["variance_threshold"]}},
            {"spherize": {"method": "ZCA", "samples": control_query, "epsilon": 1e-6}},
            {"aggregate": {"strata": ["Metadata_Plate", "Metadata_Well"], "operation": "mean"}}]


def moaprofiler_steps(report: dict) -> list:
    """The moaprofiler preset's processing: field embeddings standardised per plate on the control fields, then the
    median per well (Wong et al. 2023, B4; ``phenovec.process.moa_profiles``)."""
    return [{"moa_profiles": {"level": "well", "order": "standardize_then_median", "control": report["control"],
                              "control_col": report["treatment_column"], "compound_col": report["treatment_column"],
                              "moa_col": report["moa_column"]}}]


def default_train() -> dict:
    """``phenovec train``'s defaults, less the keys the pipeline sets (``PIPELINE_SET``)."""
    from phenovec.train.config import default_config as train_defaults

    tr = train_defaults()
    for sec, key in PIPELINE_SET:
        del tr[sec][key]
    return tr


def default_config() -> dict:
    """Every key with the default ``load_run_config`` gives it (``synth`` and ``model`` default to none)."""
    from phenovec.io.config_schema import defaults

    cfg = defaults(SCHEMA)
    return {"out": "run-out", "preset": None, "synth": None, "model": None, "images": cfg["images"], "crop": cfg["crop"],
            "tiles": cfg["tiles"], "train": default_train(), "export": cfg["export"], "profile": cfg["profile"],
            "process": cfg["process"], "report": cfg["report"]}


def _comments() -> dict:
    """``COMMENTS`` plus the train section's (``phenovec train``'s own) for ``--print-config``."""
    from phenovec.commented_yaml import inline_yaml
    from phenovec.train.command import COMMENTS as TRAIN_COMMENTS

    synth = inline_yaml({k: v[0] for k, v in SCHEMA["synth"].items()})
    return {**COMMENTS, "synth": f"null (read images.index / images.locations), or a synthetic plate to generate "
                                 f"first, e.g. {synth}",
            **{f"train.{k}": v for k, v in TRAIN_COMMENTS.items()
               if tuple(k.split(".")) not in PIPELINE_SET}}


COMMENTS = {
    "out": "output folder: one subfolder per stage (rerun to resume; finished stages are skipped)",
    "model": "null (crop -> train -> export a model), or the path of an exported phenovec ONNX model: skips crop, "
             "train and export",
    "images": "the plate's images (index and locations unused with synth)",
    "images.index": "image index (.csv / .parquet; or a LoadData CSV, also by URL): Metadata_Plate / Well / Site "
                    "+ FileName_<channel>; required without synth; a list of indexes (one per plate) profiles each "
                    "as a shard",
    "images.locations": "nuclei table (.csv / .parquet / .sqlite) with Metadata_Plate / Well / Site and centres; "
                        "required without synth; with a list of indexes one table for all or one per index",
    "images.channels": "channel names, in model input order",
    "crop": "single-cell crops for training (phenovec crop)",
    "crop.box_size": "crop side in pixels, centred on the nucleus",
    "crop.edge": "drop | shift | pad: a box crossing the image edge (also used when profiling)",
    "crop.chunk_cells": "cells per Zarr chunk (the resume unit)",
    "train": "the sections of `phenovec train` (data.crops and train.out are set by the pipeline); unused with "
             "model",
    "tiles": "whole fields for the moaprofiler preset (phenovec tiles)",
    "tiles.factor": "block-mean downsampling of each field (1: full size)",
    "export": "ONNX export (phenovec export)",
    "export.opset": "ONNX opset (>= 17; 17 uses the TorchScript exporter)",
    "profile": "single-cell embeddings and well profiles (phenovec profile)",
    "profile.batch_size": "crops per inference call",
    "profile.scheduler": "null (threads), processes, or a Dask scheduler address tcp://host:port",
    "profile.workers": "null (the CPU count) or threads / processes of the local cluster",
    "profile.dtype": "float16 | float32: embeddings on disk",
    "profile.precision": "fp32 | fp16 (TensorRT) | bf16 (OpenVINO on AMX / AVX512-BF16 CPUs)",
    "profile.shard_by": "null, or a column (e.g. Metadata_Plate) splitting the index into shards: a sharded run "
                        "(also made by a list of images.index) on one Dask cluster (scheduler null: processes), "
                        "each shard resumable (phenovec.profile.shards)",
    "profile.task_cells": "sharded runs: cells per task (null: batch_size)",
    "process": "single-cell embeddings to well profiles (a phenovec process recipe)",
    "process.steps": "null = drop zero-variance features, spherize (ZCA) on the control cells, average per well; "
                     "or a list of recipe steps, e.g. [{normalize: {method: mad_robustize}}, {aggregate: {strata: "
                     "[Metadata_Plate, Metadata_Well], operation: median}}]",
    "report": "the HTML report and its numbers (phenovec report)",
    "report.moa_column": "column of the mechanism-of-action labels",
    "report.treatment_column": "column naming each treatment",
    "report.control": "the control treatment's value in treatment_column",
    "report.null_size": "null distribution size for the mAP p-values",
    "report.seed": "seed of the null distributions",
    "preset": "null, or gapnet | sc_cnn | densenet121 | resnet101: GapNet's multi-task assay prediction "
              "(train.task: assays with the paper's optimiser, split by compound; an assays stage scores the held-out "
              "compounds and the report gets an assay section; train.assays.labels, or synth.assays for synthetic "
              "labels); or moaprofiler: MOAProfiler's field-level model (tiles -> train on fields with model.recipe "
              "moaprofiler, compound hold-out -> export --fields -> profile fields -> DMSO-standardised well medians "
              "-> a report with the paper's evaluation protocol; images.locations unused)",
    "report.evaluate_on": "held_out (metrics on the wells the model did not train on: test, else val; the training "
                          "wells get a labelled secondary view) | all",
    "report.dataset": "null (the synthetic plate / the index file's name) or a name for the report's title",
    "report.umap": "add a UMAP of the well profiles (umap-learn) beside the PCA",
    "report.gallery": "example crops per MOA in the report (0: none)",
    "report.min_cells": "QC: wells with fewer profiled cells are flagged",
    "report.gradcam": "Grad-CAM of the trained model for one example cell per MOA (needs report.gallery > 0)",
}


def print_config() -> str:
    """``default_config()`` as YAML, every key commented (``phenovec run --print-config``)."""
    from phenovec.commented_yaml import commented_yaml

    return commented_yaml(default_config(), _comments())


def _resolve(base: Path, p: str | None) -> str | None:
    return None if p is None else str((base / p).resolve()) if not Path(p).is_absolute() else p


def load_run_config(path_or_dict) -> dict:
    """Validate a run configuration (module docstring); errors name the key or file."""
    if isinstance(path_or_dict, dict):
        raw, source, base = copy.deepcopy(path_or_dict), "<config>", Path.cwd()
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise ConfigError(f"run configuration {path} does not exist")
        try:
            raw = load_yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        source, base = str(path), path.parent.resolve()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}{suggest(str(key), TOP_KEYS)}")
    sections = tuple(s for s in SCHEMA if s != "synth" or raw.get("synth") is not None)
    cfg = merge_sections({k: v for k, v in raw.items() if k in sections}, SCHEMA, source, sections)
    out = raw.get("out", "run-out")
    if not isinstance(out, str):
        raise ConfigError(f"{source}: out must be a folder path (str), got {type(out).__name__}")
    cfg["out"] = _resolve(base, out)
    cfg["synth"] = cfg["synth"] if raw.get("synth") is not None else None
    if cfg["synth"] is not None:
        c = cfg["synth"]["cells"]
        if len(c) != 2 or not all(isinstance(v, int) for v in c) or not 1 <= c[0] <= c[1]:
            raise ConfigError(f"{source}: synth.cells must be [low, high] integers with 1 <= low <= high, got {c!r}")
        for i, t in enumerate(cfg["synth"]["treatments"] or []):
            if not isinstance(t, list) or len(t) not in (2, 3):
                raise ConfigError(f"{source}: synth.treatments[{i}] must be [name, moa] or [name, moa, strength], "
                                  f"got {t!r}")
    img = cfg["images"]
    if cfg["synth"] is None:
        for key in ("index",) if raw.get("preset") == MOAPROFILER else ("index", "locations"):
            if img[key] is None:
                raise ConfigError(f"{source}: images.{key} is required (or give a synth section to generate a plate)")
            many = isinstance(img[key], list)
            for i, p in enumerate(img[key] if many else [img[key]]):
                where = f"images.{key}[{i}]" if many else f"images.{key}"
                if not isinstance(p, str):
                    raise ConfigError(f"{source}: {where} must be a path (str), got {type(p).__name__}")
                if key == "index" and _is_url(p):  # a LoadData CSV by URL (the Gallery's): read when used
                    pass
                else:
                    p = _resolve(base, p)
                    if not Path(p).is_file():
                        raise ConfigError(f"{source}: {where}: {p} does not exist")
                if many:
                    img[key][i] = p
                else:
                    img[key] = p
            if many and not img[key]:
                raise ConfigError(f"{source}: images.{key} is an empty list")
        n_idx = len(img["index"]) if isinstance(img["index"], list) else 1
        if isinstance(img["locations"], list) and len(img["locations"]) not in (1, n_idx):
            raise ConfigError(f"{source}: images.locations: {len(img['locations'])} tables for {n_idx} indexes (one "
                              "for all, or one per index)")
    else:
        for key in ("index", "locations"):
            if isinstance(raw.get("images", {}).get(key), list):
                raise ConfigError(f"{source}: images.{key}: a list of indexes is read without synth (synth writes "
                                  "one index; shard it with profile.shard_by)")
    if sharded(cfg) and raw.get("preset") == MOAPROFILER:
        raise ConfigError(f"{source}: preset moaprofiler profiles whole fields in one run; remove profile.shard_by "
                          "and give one images.index")
    model = raw.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise ConfigError(f"{source}: model must be the path of an ONNX file, got {type(model).__name__}")
        model = _resolve(base, model)
        if not Path(model).is_file():
            raise ConfigError(f"{source}: model: {model} does not exist")
    cfg["model"] = model
    preset = raw.get("preset")
    if preset is not None:
        from phenovec.train.objectives.assays import PRESETS

        known = [*PRESETS, MOAPROFILER]
        if preset not in known:
            raise ConfigError(f"{source}: preset = {preset!r} is unknown{suggest(str(preset), known)}")
        if model is not None:
            raise ConfigError(f"{source}: preset {preset} trains its own model; remove model")
    cfg["preset"] = preset
    tr = raw.get("train", default_train() if model is None else None)
    if preset == MOAPROFILER:
        tr = _moaprofiler_train(tr or {}, cfg["report"])
    elif preset is not None:
        tr = _preset_train(preset, tr or {})
        labels = ((tr.get("assays") or {}).get("labels"))
        if labels is None and not (cfg["synth"] is not None and cfg["synth"]["assays"]):
            if cfg["synth"] is None:
                raise ConfigError(f"{source}: preset {preset} needs train.assays.labels (the compound x assay label "
                                  "table) or a synth section (synthetic labels)")
            cfg["synth"]["assays"] = 12
        if labels is not None:
            tr["assays"]["labels"] = _resolve(base, labels)
    if tr is not None:
        if not isinstance(tr, dict):
            raise ConfigError(f"{source}: train must be a mapping of `phenovec train` sections")
        from phenovec.train.config import task_schema

        for sec, body in tr.items():
            for key in (body or {}):
                if (sec, key) in PIPELINE_SET:
                    raise ConfigError(f"{source}: train.{sec}.{key} is set by the pipeline; remove it")
        task = (tr.get("train") or {}).get("task", "classify")
        try:
            schema = task_schema(task)
        except ConfigError as e:
            raise ConfigError(f"{source} (train): {e}") from None
        merge_sections(tr, schema, f"{source} (train)")  # key and type errors now, not after cropping
    cfg["train"] = tr
    if cfg["process"]["steps"] is not None:
        from phenovec.process.recipe import Recipe

        try:
            Recipe.from_obj(cfg["process"]["steps"]).check_required()
        except ValueError as e:
            raise ConfigError(f"{source}: process.steps: {e}") from None
    return cfg


def sharded(cfg: dict) -> bool:
    """True when the profile stage runs as shards (``phenovec.profile.shards``): a list of several indexes, or
    ``profile.shard_by``."""
    idx = cfg["images"].get("index")
    return cfg["profile"]["shard_by"] is not None or (isinstance(idx, list) and len(idx) > 1)


def _as_list(x) -> list:
    return list(x) if isinstance(x, list) else [x]


def _merged_index(paths: list, channels: list):
    """One :class:`~phenovec.ingest.index.ImageIndex` of several indexes (the crop and tiles stages: training
    data from every plate), each read from its own folder."""
    import pandas as pd

    from phenovec.ingest.index import ImageIndex, read_image_index

    parts = [read_image_index(p, channels) for p in paths]
    if len(parts) == 1:
        return parts[0]
    frames = None if all(p.frames is None for p in parts) else [
        f for p in parts for f in (p.frames or [[0] * len(channels)] * len(p))]
    labels = None if any(p.labels is None for p in parts) else [lab for p in parts for lab in p.labels]
    return ImageIndex(pd.concat([p.sites for p in parts], ignore_index=True), list(channels),
                      [r for p in parts for r in p.paths], " + ".join(map(str, paths)), frames=frames, labels=labels)


def _is_url(path: str) -> bool:
    from phenovec.ingest import image_source

    return image_source.is_remote(path)


def _input_sha256(path: str) -> str:
    """The sha256 of an input file, or of the bytes at its URL (an index given by URL)."""
    if not _is_url(path):
        return file_sha256(path)
    from phenovec.ingest import image_source

    return hashlib.sha256(image_source.read_bytes(path)).hexdigest()


def _index_sites(path: str, channels: list):
    """An index's table (its site columns at least) for the report's plate layout."""
    from phenovec.io.profiles import read_table

    if not _is_url(path):
        return read_table(path)
    from phenovec.ingest.index import read_image_index

    return read_image_index(path, channels, fetch=False).sites


def _merged_locations(locations):
    """One nuclei table of several (a DataFrame), or the one path as it is."""
    if not isinstance(locations, list):
        return locations
    if len(locations) == 1:
        return locations[0]
    import pandas as pd

    from phenovec.ingest.index import read_locations

    return pd.concat([read_locations(p) for p in locations], ignore_index=True)


def _shard_cells(profiled: dict):
    """The single-cell table (``Metadata_`` columns, then the features as float64) of the profile stage's
    embeddings: one store, or every shard's in the shards' order (``profiled["embeddings"]`` a list)."""
    import numpy as np
    import pandas as pd

    from phenovec.io.embeddings import EmbeddingStore

    parts = []
    for path in _as_list(profiled["embeddings"]):
        store = EmbeddingStore(path)
        meta = store.meta.reset_index(drop=True)
        feats = np.asarray(store.array[:], dtype=np.float64)
        parts.append(pd.concat([meta[[c for c in meta.columns if str(c).startswith("Metadata_")]],
                                pd.DataFrame(feats, columns=list(store.features))], axis=1))
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _preset_train(preset: str, user: dict) -> dict:
    """The train section of ``preset: NAME``: the paper's recipe (``phenovec.train.objectives.assays.PRESETS``) for
    ``train.task: assays``, the compound column defaulting to ``Metadata_Treatment``, under the user's own keys."""
    from phenovec.train.objectives.assays import PRESETS

    base = _deep_merge(PRESETS[preset], {"train": {"task": "assays"},
                                         "data": {"compound_column": "Metadata_Treatment"}, "assays": {}})
    return _deep_merge(base, user)


def _moaprofiler_train(user: dict, report: dict) -> dict:
    """The train section of ``preset: moaprofiler``: MOAProfiler's recipe (``model.recipe: moaprofiler``: the field
    classifier of the MOA, DMSO a class) with the compound hold-out split (the report identifies the held-out
    compounds' MOAs), the label and compound columns the report's, under the user's own keys."""
    base = {"model": {"recipe": MOAPROFILER},
            "data": {"label": report["moa_column"], "split": "compound_holdout",
                     "compound_column": report["treatment_column"]}}
    return _deep_merge(base, user)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class RunResult:
    out: Path
    report_html: Path
    report_json: Path
    stages: dict = field(default_factory=dict)  # stage -> {"key", "cached", "seconds"}


class _Stage:
    """One stage's folder and marker: ``done`` when complete with the same key; otherwise (re)started."""

    def __init__(self, out: Path, name: str, key: str, config):
        self.dir, self.name, self.key, self.config = out / name, name, key, config
        self.marker = self.dir / "stage.json"

    def done(self) -> bool:
        if not self.marker.exists():
            return False
        m = json.loads(self.marker.read_text())
        if m.get("key") != self.key:
            shutil.rmtree(self.dir)  # configuration or upstream changed: rebuild
            return False
        return bool(m.get("complete"))

    def _write(self, obj: dict) -> None:
        write_json_atomic(self.marker, obj)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write({"stage": self.name, "key": self.key, "config": self.config, "complete": False})

    def finish(self, seconds: float, outputs: dict) -> None:
        self._write({"stage": self.name, "key": self.key, "config": self.config, "complete": True,
                     "seconds": round(seconds, 3), "outputs": outputs})

    def outputs(self) -> dict:
        return json.loads(self.marker.read_text())["outputs"]


def run(config, progress: bool = True) -> RunResult:
    """Run (or resume) the pipeline of ``config`` (a YAML path or dict); returns the report's paths."""
    cfg = load_run_config(config)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}
    timings: dict[str, float] = {}

    def stage(name: str, key: str, conf, body) -> dict:
        st = _Stage(out, name, key, conf)
        if st.done():
            stages[name] = {"key": key, "cached": True}
            return st.outputs()
        st.start()
        t0 = time.perf_counter()
        outputs = body(st.dir)
        secs = time.perf_counter() - t0
        st.finish(secs, outputs)
        stages[name], timings[name] = {"key": key, "cached": False, "seconds": round(secs, 3)}, secs
        return outputs

    images = dict(cfg["images"])
    if cfg["synth"] is not None:
        s = cfg["synth"]

        def do_synth(d: Path) -> dict:
            from phenovec.ingest.synth import synth_plate

            extra = {"treatments": [tuple(t) for t in s["treatments"]]} if s["treatments"] else {}
            p = synth_plate(d, plates=s["plates"], wells=s["wells"], sites_per_well=s["sites"], size=s["size"],
                            cells_per_site=tuple(s["cells"]), channels=tuple(images["channels"]), seed=s["seed"],
                            bad_wells=s["bad_wells"], control_wells=s["control_wells"], progress=progress, **extra)
            outputs = {"index": str(p["index"]), "locations": str(p["nuclei"])}
            if s["assays"]:
                from phenovec.ingest.synth_assay_labels import write_synth_assay_labels

                lab = write_synth_assay_labels(d, s["assays"], seed=s["seed"])
                outputs["assay_labels"] = str(lab["assay_labels"])
            return outputs

        k_in = _key("synth", s, images["channels"])
        images.update(stage("synth", k_in, s, do_synth))
    else:
        def digest(x):  # one file: its hash as before lists were accepted (the stage keys of earlier runs hold)
            return [_input_sha256(p) for p in x] if isinstance(x, list) else _input_sha256(x) if x else None

        k_in = _key("images", digest(images["index"]), digest(images["locations"]), images["channels"])
    fields = cfg["preset"] == MOAPROFILER

    def index():
        from phenovec.ingest.index import read_image_index

        if isinstance(images["index"], list):
            return _merged_index(images["index"], images["channels"])
        return read_image_index(images["index"], images["channels"])

    assays = None
    crops = None
    if cfg["model"] is None and fields:
        tiles_conf = cfg["tiles"]

        def do_tiles(d: Path) -> dict:
            from phenovec.ingest.fields import tile_index

            tile_index(index(), d / "fields", factor=tiles_conf["factor"], progress=progress)
            return {"fields": str(d / "fields")}

        k_crop = _key("tiles", tiles_conf, k_in)
        training_data = stage("tiles", k_crop, tiles_conf, do_tiles)["fields"]
    elif cfg["model"] is None:
        crop_conf = cfg["crop"]

        def do_crop(d: Path) -> dict:
            from phenovec.ingest.crop import crop_index

            crop_index(index(), _merged_locations(images["locations"]), d / "crops", box_size=crop_conf["box_size"],
                       edge=crop_conf["edge"], chunk_cells=crop_conf["chunk_cells"], progress=progress)
            return {"crops": str(d / "crops")}

        k_crop = _key("crop", crop_conf, k_in)
        crops = training_data = stage("crop", k_crop, crop_conf, do_crop)["crops"]
    if cfg["model"] is None:

        def do_train(d: Path) -> dict:
            from phenovec.train import train

            tr = copy.deepcopy(cfg["train"])
            tr.setdefault("data", {})["fields" if fields else "crops"] = training_data
            tr.setdefault("train", {})["out"] = str(d)
            if tr["train"].get("task") == "assays" and not (tr.get("assays") or {}).get("labels"):
                tr.setdefault("assays", {})["labels"] = images["assay_labels"]
            res = train(tr, progress=progress)
            best = res.best if res.best is not None else res.last
            return {"checkpoint": str(best), "best_val_accuracy": res.best_val_accuracy, "epochs": res.epochs}

        k_train = _key("train", cfg["train"], k_crop)
        trained = stage("train", k_train, cfg["train"], do_train)
        if (cfg["train"].get("train") or {}).get("task") == "assays":
            def do_assays(d: Path) -> dict:
                return _score_assays(trained["checkpoint"], crops, d, cfg["train"], images, progress)

            assays = stage("assays", _key("assays", k_train), {}, do_assays)

        def do_export(d: Path) -> dict:
            from phenovec.export import export_onnx

            if fields:  # the field checkpoint's contract (size, factor, statistics) and its class scores
                from phenovec.export.field_model import export_field_model

                rep = export_field_model(trained["checkpoint"], d / "model.onnx", channels=None, logits=True,
                                         opset=cfg["export"]["opset"])
            else:  # parity on the first crops of the crop stage's store (the checkpoint's data_config["crops"])
                rep = export_onnx(trained["checkpoint"], d / "model.onnx", opset=cfg["export"]["opset"])
            return {"model": str(d / "model.onnx"), "max_abs_diff": rep.max_abs_diff,
                    "parity_source": rep.parity_source}

        k_model = _key("export", cfg["export"], k_train)
        model = stage("export", k_model, cfg["export"], do_export)["model"]
    else:
        k_model = _key("model", file_sha256(cfg["model"]))
        model, trained = cfg["model"], None

    prof_conf = cfg["profile"]

    def do_profile(d: Path) -> dict:
        from phenovec.profile import profile_sites

        if fields:
            from phenovec.profile.fields import profile_fields

            res = profile_fields(model, index(), d, batch_size=min(prof_conf["batch_size"], 64),
                                 scheduler=prof_conf["scheduler"], workers=prof_conf["workers"],
                                 dtype=prof_conf["dtype"], precision=prof_conf["precision"], progress=progress)
            return {k: str(v) for k, v in res.paths.items()} | {"fields": res.cells}
        if sharded(cfg):
            return _profile_shards(model, images, prof_conf, cfg["crop"]["edge"], d, progress)
        res = profile_sites(model, index=index(), locations=_merged_locations(images["locations"]), out=d,
                            batch_size=prof_conf["batch_size"],
                            scheduler=prof_conf["scheduler"], workers=prof_conf["workers"], dtype=prof_conf["dtype"],
                            precision=prof_conf["precision"], edge=cfg["crop"]["edge"], progress=progress)
        return {k: str(v) for k, v in res.paths.items()} | {"cells": res.cells, "embedded": res.embedded}

    k_prof = _key("profile", prof_conf, cfg["crop"]["edge"], k_model, k_in)
    profiled = stage("profile", k_prof, prof_conf, do_profile)

    rep = cfg["report"]
    control_query = f"`{rep['treatment_column']}` == {rep['control']!r}"  # a row filter (phenovec.io.row_filter)
    steps = cfg["process"]["steps"] or (moaprofiler_steps(rep) if fields else default_steps(control_query))

    def do_process(d: Path) -> dict:
        from phenovec.process.recipe import apply_recipe

        cells = _shard_cells(profiled)  # a sharded run: every shard's cells, in the shards' order
        keep = [c for c in cells.columns if c.startswith("Metadata_")]
        steps_run = [{**s} for s in steps]
        for s in steps_run:  # the per-well metadata rides along as strata
            if "aggregate" in s and "strata" in s["aggregate"]:
                strata = list(s["aggregate"]["strata"])
                s["aggregate"] = {**s["aggregate"], "strata": strata + [c for c in keep if c not in strata and
                                  cells.groupby(strata)[c].nunique(dropna=False).max() == 1]}
        apply_recipe({"name": "pipeline", "steps": steps_run}, cells, output_file=d / "profiles.parquet",
                     progress=progress, features_default="non-metadata")
        if trained is not None:
            _attach_split(d / "profiles.parquet", Path(trained["checkpoint"]).parent / "split.parquet")
        return {"profiles": str(d / "profiles.parquet")}

    k_proc = _key("process", steps, k_prof, k_model)
    processed = stage("process", k_proc, {"steps": steps}, do_process)

    def do_report(d: Path) -> dict:
        from phenovec.report import build_report

        provenance = {"config": cfg, "stages": stages, "timings_s": timings,
                      "training": trained if trained is not None else {"model": cfg["model"]}}
        context = _report_context(cfg, out, images, profiled, trained, crops, processed["profiles"])
        if rep["gradcam"] and trained is not None and context.gallery:
            context.gradcam = _gradcam_panels(trained["checkpoint"], crops, context.gallery, d / "gradcam")
        if assays is not None:
            import pandas as pd

            context.assay_per_task = pd.read_csv(assays["per_task"])
            context.assay_summary = json.loads(Path(assays["summary"]).read_text())
        paths = build_report(processed["profiles"], d, moa_column=rep["moa_column"],
                             treatment_column=rep["treatment_column"], control_query=rep["control"],
                             control_key="report.control", provenance=provenance, null_size=rep["null_size"],
                             seed=rep["seed"], evaluate_on=rep["evaluate_on"], context=context, umap=rep["umap"],
                             title="phenovec run report", compare=_unprocessed(profiled), moaprofiler=fields)
        return {"html": str(paths.html), "json": str(paths.json)}

    k_rep = _key("report", rep, k_proc, assays)
    reported = stage("report", k_rep, rep, do_report)
    return RunResult(out, Path(reported["html"]), Path(reported["json"]), stages)


def _profile_shards(model: str, images: dict, prof_conf: dict, edge: str, d: Path, progress) -> dict:
    """The profile stage of a sharded run (``phenovec.profile.shards``): the indexes (or the one index split by
    ``profile.shard_by``) as shards under ``d``; its outputs name every shard's embeddings and the well
    datasets. A failed shard fails the stage, naming it (a rerun resumes the unfinished shards)."""
    from phenovec.profile.shards import DEFAULT_SHARD_BY, profile_shards

    idx, loc = images["index"], images["locations"]
    if isinstance(idx, list) and len(idx) == 1:
        idx = idx[0]
    if isinstance(loc, list) and len(loc) == 1:
        loc = loc[0]
    res = profile_shards(model, idx, d, locations=loc, shard_by=prof_conf["shard_by"] or DEFAULT_SHARD_BY,
                         batch_size=prof_conf["batch_size"], scheduler=prof_conf["scheduler"] or "processes",
                         workers=prof_conf["workers"], dtype=prof_conf["dtype"], precision=prof_conf["precision"],
                         edge=edge, task_cells=prof_conf["task_cells"], progress=progress)
    if res.failed:
        first = next(iter(res.failed.items()))
        raise RuntimeError(f"{len(res.failed)} of {len(res.shards)} shards failed (see {d / 'manifest.json'}; a "
                           f"rerun resumes them); {first[0]}: {first[1]}")
    shards = [d / e["dir"] for e in res.shards.values()]
    return {"embeddings": [str(s / "embeddings.zarr") for s in shards],
            "cells_tables": [str(s / "cells.parquet") for s in shards],
            "wells_mean": str(d / "wells_mean"), "wells_median": str(d / "wells_median"),
            "manifest": str(d / "manifest.json"), "cells": res.cells, "embedded": res.embedded}


def _unprocessed(profiled: dict) -> dict | None:
    """The per-well means of the raw embeddings (the profile stage's ``wells_mean``: a file, or a sharded run's
    plate-partitioned dataset), compared with the processed profiles in the report's batch-effect section: what
    processing did to the plate effect."""
    import pandas as pd

    path = profiled.get("wells_mean")
    if path and Path(path).is_dir():
        return {"well means before processing": pd.read_parquet(path)}
    return {"well means before processing": path} if path and Path(path).is_file() else None


def _score_assays(checkpoint: str, crops: str, d: Path, train_cfg: dict, images: dict, progress) -> dict:
    """The assays stage: the trained model's task probabilities averaged per compound over the test compounds'
    crops (``predict_assays``), scored per assay against the label table (``evaluate_assay_predictions``)."""
    import pandas as pd

    from phenovec.evaluate.assay_prediction import evaluate_assay_predictions, measured_vs_auc_figure
    from phenovec.io.assay_labels import read_assay_labels
    from phenovec.io.atomic import write_text_atomic
    from phenovec.io.profiles import write_table
    from phenovec.train.assay_inference import predict_assays
    from phenovec.train.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    split = pd.read_parquet(Path(checkpoint).parent / "split.parquet", columns=["row", "split"])
    which = "test" if (split["split"] == "test").any() else "val"
    rows = split.loc[split["split"] == which, "row"].to_numpy()
    preds = predict_assays(ck, crops, by="compound", rows=rows, progress=progress)
    labels_path = (train_cfg.get("assays") or {}).get("labels") or images["assay_labels"]
    labels = read_assay_labels(labels_path)
    compound = ck["data_config"]["compound_column"]
    per_task, summary = evaluate_assay_predictions(preds, labels, compound_column=compound,
                                                   tasks=ck["data_config"]["tasks"])
    summary = {**summary, "split": which, "compounds": int(len(preds)), "labels": Path(labels_path).name}
    write_table(preds, d / "predictions.parquet")
    write_table(per_task, d / "per_task.csv")
    write_text_atomic(d / "summary.json", json.dumps(summary, indent=1, default=float))
    measured_vs_auc_figure(per_task, d / "measured_vs_auc.png")
    return {"predictions": str(d / "predictions.parquet"), "per_task": str(d / "per_task.csv"),
            "summary": str(d / "summary.json"), "figure": str(d / "measured_vs_auc.png")}


def _gradcam_panels(checkpoint: str, crops: str, gallery: list, out: Path) -> list:
    """Grad-CAM PNGs (``phenovec.train.gradcam``) of the first gallery cell of each MOA: (MOA, treatment, bytes)."""
    from phenovec.train.gradcam import gradcam_pngs

    first: dict = {}
    for cell in gallery:
        first.setdefault(cell.moa, cell)
    cells = list(first.values())
    if len(cells) < 2:
        return []  # an embedding model's target is the mean of the chosen crops: two at least
    paths = gradcam_pngs(checkpoint, crops, [c.row for c in cells], out)
    return [(c.moa, c.treatment, Path(p).read_bytes()) for c, p in zip(cells, paths)]


def _attach_split(profiles_path: Path, split_path: Path) -> None:
    """Add ``Metadata_Split`` (train / val / test / unused per well, from the training run's ``split.parquet``) to the
    well profiles, so the report evaluates what the model did not train on. A well whose cells straddle splits
    is ``mixed``; a well the training never saw (e.g. cells without a crop) is ``unused``."""
    import pandas as pd

    from phenovec.io.profiles import write_table

    if not split_path.is_file():
        return
    keys = ["Metadata_Plate", "Metadata_Well"]
    split = pd.read_parquet(split_path, columns=keys + ["split"])
    per_well = split.groupby(keys)["split"].agg(lambda v: v.iloc[0] if v.nunique() == 1 else "mixed")
    prof = pd.read_parquet(profiles_path)
    if not set(keys) <= set(prof.columns):
        return
    col = prof.set_index(keys).index.map(per_well.to_dict()).to_series(index=prof.index).fillna("unused")
    meta = [c for c in prof.columns if str(c).startswith("Metadata_")]
    prof.insert(len(meta), "Metadata_Split", col.astype(str).to_numpy())
    write_table(prof, profiles_path)


def _report_context(cfg: dict, out: Path, images: dict, profiled: dict, trained: dict | None, crops: str | None,
                    profiles: str):
    """What the report shows beside the metrics (``phenovec.report.context``): dataset name, training curve,
    QC tables and example cells of the held-out wells."""
    import pandas as pd

    from phenovec.report.context import ReportContext, gallery_from_crops, read_training

    rep = cfg["report"]
    if rep["dataset"]:
        dataset = rep["dataset"]
    elif cfg["synth"] is not None:
        s = cfg["synth"]
        dataset = f"synthetic plates (phenovec synth: {s['plates']} plates x {s['wells']} wells, seed {s['seed']})"
    else:
        dataset = " + ".join(Path(p).name for p in _as_list(images["index"]))
    ctx = ReportContext(dataset=dataset, run_dir=out, min_cells=rep["min_cells"])
    if trained is not None:
        ctx.training = read_training(Path(trained["checkpoint"]).parent)
    cells_paths = [Path(p).parent / "cells.parquet" for p in _as_list(profiled["embeddings"])]
    if all(p.is_file() for p in cells_paths):
        ctx.cells = pd.concat([pd.read_parquet(p, columns=["Metadata_Plate", "Metadata_Well"]) for p in cells_paths],
                              ignore_index=True)
    layout = pd.concat([_index_sites(p, images["channels"]) for p in _as_list(images["index"])], ignore_index=True)
    ctx.layout = layout if {"Metadata_Plate", "Metadata_Well"} <= set(layout.columns) else None
    if crops is not None:
        cells = pd.read_parquet(Path(crops) / "cells.parquet")
        if "edge" in cells.columns:
            ctx.edge = {str(k): int(v) for k, v in cells["edge"].value_counts().items() if v}
        if rep["gallery"]:
            import pyarrow.parquet as pq

            names = pq.read_schema(profiles).names  # only the well keys and the split, not every feature
            held = None
            if "Metadata_Split" in names:
                prof = pd.read_parquet(profiles, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Split"])
                held = prof[prof["Metadata_Split"] != "train"]
            ctx.gallery, ctx.channels = gallery_from_crops(crops, rep["moa_column"], rep["treatment_column"],
                                                           per_moa=rep["gallery"], seed=rep["seed"], wells=held)
    return ctx


# the demo's plate design: graded strengths (1 = the MOA's full phenotype, 0 = inactive), an MOA with a single
# compound, and an inactive compound annotated with a real MOA, so the metrics spread out instead of saturating
DEMO_TREATMENTS = [
    ["DMSO", "control"],
    ["AKI-1", "Aurora kinase inhibitor", 1.0], ["AKI-2", "Aurora kinase inhibitor", 0.55],
    ["AKI-3", "Aurora kinase inhibitor", 0.25],
    ["MST-1", "Mitochondrial stressor", 1.0], ["MST-2", "Mitochondrial stressor", 0.4],
    ["ACT-1", "Actin disruptor", 0.8], ["ACT-2", "Actin disruptor", 0.3], ["ACT-0", "Actin disruptor", 0.0],
    ["TUB-1", "Tubulin destabilizer", 0.7],
    ["KIN-1", "Kinase inhibitor", 0.15],
]
DEMO_HELD_OUT_PLATE = "SYNTH-P03"


def demo_config(out: str | os.PathLike = "demo-out", null_size: int = 2000) -> dict:
    """The demo: 3 synthetic plates (``DEMO_TREATMENTS``: 10 compounds of 6 MOAs at graded strengths, 8 DMSO wells
    per plate, 2 bad wells per plate) through every stage. The model trains on plates 1-2 (validation wells drawn
    there) and never sees plate 3, on which the report evaluates; 48-pixel crops and a tiny ResNet
    (``DEMO_TRAIN``) on 256-pixel fields, a few minutes on 2 cores."""
    cfg = default_config()
    cfg.update(out=str(out), synth={"plates": 3, "wells": 40, "sites": 2, "size": 256, "cells": [20, 30], "seed": 0,
                                    "treatments": copy.deepcopy(DEMO_TREATMENTS), "bad_wells": 2,
                                    "control_wells": 8},
               train=copy.deepcopy(DEMO_TRAIN))
    cfg["train"]["data"]["holdout_plates"] = [DEMO_HELD_OUT_PLATE]
    cfg["crop"]["box_size"] = 48
    cfg["report"]["null_size"] = int(null_size)
    cfg["images"].pop("index"), cfg["images"].pop("locations")
    return cfg


# the assay demo's plate: 30 compounds of 5 MOAs (GapNet's split holds out whole compounds: 70 / 10 / 20 %)
DEMO_ASSAY_MOAS = ("Aurora kinase inhibitor", "Mitochondrial stressor", "Actin disruptor", "Tubulin binder",
                   "HDAC inhibitor")


def demo_assays_config(out: str | os.PathLike = "demo-assays", null_size: int = 2000) -> dict:
    """``phenovec demo --assays``: ``preset: gapnet`` on 2 synthetic plates of 30 compounds (5 MOAs x 6) with 12
    synthetic MOA-driven assays (label noise, missing entries): GapNet learns the assays
    from 48-pixel crops for 6 epochs, the assays stage scores the held-out compounds, the report shows them."""
    cfg = default_config()
    treatments = [["DMSO", "control"]] + [[f"{m[:3].upper()}-{i}", m] for m in DEMO_ASSAY_MOAS for i in range(1, 7)]
    cfg.update(out=str(out), preset="gapnet",
               synth={"plates": 2, "wells": 36, "sites": 1, "size": 256, "cells": [18, 24], "seed": 0,
                      "treatments": treatments, "bad_wells": 0, "control_wells": 6, "assays": 12},
               train={"data": {"batch_size": 32, "workers": 0}, "train": {"epochs": 6, "threads": 2},
                      "augment": {"enabled": True}})
    cfg["crop"]["box_size"] = 48
    cfg["report"]["null_size"] = int(null_size)
    cfg["images"].pop("index"), cfg["images"].pop("locations")
    return cfg


# the MOAProfiler demo's plate: 3 MOAs x 3 compounds (the compound hold-out keeps one compound of each MOA away
# from training) and DMSO, on small whole fields
DEMO_MOAPROFILER_TREATMENTS = [["DMSO", "control"]] + [
    [f"{code}-{i}", moa, strength] for code, moa in (("AKI", "Aurora kinase inhibitor"), ("MST", "Mitochondrial stressor"),
                                                      ("ACT", "Actin disruptor"))
    for i, strength in ((1, 1.0), (2, 1.0), (3, 0.9))]


def demo_moaprofiler_config(out: str | os.PathLike = "demo-moaprofiler", null_size: int = 2000) -> dict:
    """``phenovec demo --moaprofiler``: ``preset: moaprofiler`` on 2 synthetic plates of 9 compounds (3 MOAs x 3) and
    DMSO: whole 128-pixel fields downsampled to 64, MOAProfiler's recipe with a tiny ResNet for 10 epochs (lr x0.1
    at 8), the compound hold-out split, then profile fields -> well medians -> the report with the paper's
    protocol (the held-out compounds' MOAs identified from the training wells); about 2 minutes on 2 cores."""
    cfg = default_config()
    cfg.update(out=str(out), preset=MOAPROFILER,
               synth={"plates": 2, "wells": 30, "sites": 2, "size": 128, "cells": [15, 20], "seed": 3,
                      "treatments": copy.deepcopy(DEMO_MOAPROFILER_TREATMENTS), "bad_wells": 0,
                      "control_wells": None},
               train={"model": {"arch": "resnet_tiny"}, "optim": {"lr": 0.05, "milestones": [8, 10]},
                      "train": {"epochs": 10, "threads": 2}, "data": {"batch_size": 16, "workers": 0}})
    cfg["tiles"]["factor"] = 2
    cfg["report"].update(null_size=int(null_size), umap=False)
    cfg["images"].pop("index"), cfg["images"].pop("locations")
    return cfg


def _run_cli(a) -> dict:
    from phenovec.cli_options import show_progress

    if a.print_config:
        print(print_config())
        return {}
    if a.stage == "demo" and a.bbbc021:
        from phenovec.demo import run_demo

        return run_demo(a.data, a.out or "demo-bbbc021", a.null_size, progress=show_progress(a))
    if a.stage == "demo" and a.assays:
        config = demo_assays_config(a.out or "demo-assays", a.null_size)
    elif a.stage == "demo" and a.moaprofiler:
        config = demo_moaprofiler_config(a.out or "demo-moaprofiler", a.null_size)
    elif a.stage == "demo":
        config = demo_config(a.out or "demo-out", a.null_size)
    elif a.config is None:
        raise ValueError("phenovec run needs a configuration file (see --print-config)")
    elif a.out is not None:  # -o overrides the configuration's out
        config = load_run_config(a.config)
        config["out"] = str(Path(a.out).resolve())
    else:
        config = a.config
    res = run(config, progress=show_progress(a))
    summary = {"report": str(res.report_html), "numbers": str(res.report_json), "out": str(res.out),
               "stages": {k: {"cached": v["cached"], "seconds": v.get("seconds")} for k, v in res.stages.items()}}
    print(json.dumps(summary, indent=2))
    print(f"report: {res.report_html}")
    return summary


def add_run_parsers(stages) -> None:
    """``phenovec run CONFIG`` and ``phenovec demo``."""
    from phenovec.cli_options import add_out, add_quiet

    p = stages.add_parser("run", help="images -> crops -> train -> export -> profile -> process -> report, cached")
    p.add_argument("config", nargs="?", help="run configuration (YAML; see --print-config)")
    add_out(p, "output folder (default: the configuration's out)", required=False)
    p.add_argument("--print-config", action="store_true",
                   help="print every configuration key with its default and a comment, and exit")
    add_quiet(p)
    p.set_defaults(run=_run_cli)
    d = stages.add_parser("demo", help="the whole pipeline on a synthetic plate (a few minutes); prints the report")
    add_out(p=d, help="output folder (rerun to resume; stages are cached; default: demo-out, or demo-bbbc021 with "
                      "--bbbc021)", required=False, default=None)
    d.add_argument("--null-size", type=int, default=2000, help="null distribution size for mAP p-values")
    d.add_argument("--bbbc021", action="store_true", help="instead: evaluate the real BBBC021 CellProfiler profiles")
    d.add_argument("--assays", action="store_true", help="instead: GapNet assay prediction (preset: gapnet) on "
                                                        "synthetic plates with synthetic assay labels")
    d.add_argument("--moaprofiler", action="store_true", help="instead: MOAProfiler's field-level model and evaluation "
                                                             "(preset: moaprofiler) on synthetic plates")
    d.add_argument("--data", default=None, help="with --bbbc021: folder of the BBBC021 files (default: "
                                                "../shared/data/bbbc021-cytominergallery)")
    add_quiet(d)
    d.set_defaults(run=_run_cli, print_config=False, config=None)
