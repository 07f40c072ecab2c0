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
    profile: {batch_size: 256, scheduler: null, workers: null, dtype: float32, precision: fp32}
                           # precision: fp32, fp16 (TensorRT) or bf16 (OpenVINO on AMX / AVX512-BF16 CPUs)
    process: {steps: null}  # recipe steps (null = the default above)
    report: {moa_column: Metadata_MOA, treatment_column: Metadata_Treatment, control: DMSO, null_size: 10000, seed: 0}

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

STAGES = ("synth", "crop", "train", "export", "profile", "process", "report")
TOP_KEYS = ("out", "synth", "model", "images", "crop", "train", "export", "profile", "process", "report")
SCHEMA = {
    "images": {"index": (None, (str, NONE_TYPE), "path"), "locations": (None, (str, NONE_TYPE), "path"),
               "channels": (["DNA", "ER", "RNA", "AGP", "Mito"], (list,), None)},
    "synth": {"plates": (2, (int,), (1, 1000)), "wells": (28, (int,), (2, 384)), "sites": (2, (int,), (1, 100)),
              "size": (256, (int,), (64, 4096)), "cells": ([25, 35], (list,), None), "seed": (0, (int,), None)},
    "crop": {"box_size": (128, (int,), (8, 1024)), "edge": ("shift", (str,), ("drop", "shift", "pad")),
             "chunk_cells": (256, (int,), (1, 1 << 20))},
    "export": {"opset": (18, (int,), (17, 30))},
    "profile": {"batch_size": (256, (int,), (1, 1 << 20)), "scheduler": (None, (str, NONE_TYPE), None),
                "workers": (None, (int, NONE_TYPE), (1, 4096)),
                "dtype": ("float32", (str,), ("float16", "float32")),
                "precision": ("fp32", (str,), ("fp32", "fp16", "bf16"))},
    "process": {"steps": (None, (list, NONE_TYPE), None)},
    "report": {"moa_column": ("Metadata_MOA", (str,), None), "treatment_column": ("Metadata_Treatment", (str,), None),
               "control": ("DMSO", (str,), None), "null_size": (10000, (int,), (10, 10_000_000)),
               "seed": (0, (int,), None)},
}
# the keys of the train section the pipeline sets itself
PIPELINE_SET = (("data", "crops"), ("train", "out"))
# the demo's training: a tiny ResNet for a few minutes on 2 cores
DEMO_TRAIN = {"model": {"arch": "resnet_tiny"}, "optim": {"lr": 0.05, "warmup_epochs": 1},
              "train": {"epochs": 6, "threads": 2}, "data": {"batch_size": 64, "workers": 0}}


def default_steps(control_query: str) -> list:
    return [{"feature_select": {"operation": ["variance_threshold"]}},
            {"spherize": {"method": "ZCA", "samples": control_query, "epsilon": 1e-6}},
            {"aggregate": {"strata": ["Metadata_Plate", "Metadata_Well"], "operation": "mean"}}]


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
    return {"out": "run-out", "synth": None, "model": None, "images": cfg["images"], "crop": cfg["crop"],
            "train": default_train(), "export": cfg["export"], "profile": cfg["profile"],
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
    "images.index": "image index (.csv / .parquet): Metadata_Plate / Well / Site + FileName_<channel>; required "
                    "without synth",
    "images.locations": "nuclei table (.csv / .parquet / .sqlite) with Metadata_Plate / Well / Site and centres; "
                        "required without synth",
    "images.channels": "channel names, in model input order",
    "crop": "single-cell crops for training (phenovec crop)",
    "crop.box_size": "crop side in pixels, centred on the nucleus",
    "crop.edge": "drop | shift | pad: a box crossing the image edge (also used when profiling)",
    "crop.chunk_cells": "cells per Zarr chunk (the resume unit)",
    "train": "the sections of `phenovec train` (data.crops and train.out are set by the pipeline); unused with "
             "model",
    "export": "ONNX export (phenovec export)",
    "export.opset": "ONNX opset (>= 17; 17 uses the TorchScript exporter)",
    "profile": "single-cell embeddings and well profiles (phenovec profile)",
    "profile.batch_size": "crops per inference call",
    "profile.scheduler": "null (threads), processes, or a Dask scheduler address tcp://host:port",
    "profile.workers": "null (the CPU count) or threads / processes of the local cluster",
    "profile.dtype": "float16 | float32: embeddings on disk",
    "profile.precision": "fp32 | fp16 (TensorRT) | bf16 (OpenVINO on AMX / AVX512-BF16 CPUs)",
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
            raw = yaml.safe_load(path.read_text()) or {}
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
    img = cfg["images"]
    if cfg["synth"] is None:
        for key in ("index", "locations"):
            if img[key] is None:
                raise ConfigError(f"{source}: images.{key} is required (or give a synth section to generate a plate)")
            img[key] = _resolve(base, img[key])
            if not Path(img[key]).is_file():
                raise ConfigError(f"{source}: images.{key}: {img[key]} does not exist")
    model = raw.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise ConfigError(f"{source}: model must be the path of an ONNX file, got {type(model).__name__}")
        model = _resolve(base, model)
        if not Path(model).is_file():
            raise ConfigError(f"{source}: model: {model} does not exist")
    cfg["model"] = model
    tr = raw.get("train", default_train() if model is None else None)
    if tr is not None:
        if not isinstance(tr, dict):
            raise ConfigError(f"{source}: train must be a mapping of `phenovec train` sections")
        from phenovec.train.config import SCHEMA as TRAIN_SCHEMA

        for sec, body in tr.items():
            for key in (body or {}):
                if (sec, key) in PIPELINE_SET:
                    raise ConfigError(f"{source}: train.{sec}.{key} is set by the pipeline; remove it")
        merge_sections(tr, TRAIN_SCHEMA, f"{source} (train)")  # key and type errors now, not after cropping
    cfg["train"] = tr
    if cfg["process"]["steps"] is not None:
        from phenovec.process.recipe import Recipe

        try:
            Recipe.from_obj(cfg["process"]["steps"])
        except ValueError as e:
            raise ConfigError(f"{source}: process.steps: {e}") from None
    return cfg


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

            p = synth_plate(d, plates=s["plates"], wells=s["wells"], sites_per_well=s["sites"], size=s["size"],
                            cells_per_site=tuple(s["cells"]), channels=tuple(images["channels"]), seed=s["seed"],
                            progress=progress)
            return {"index": str(p["index"]), "locations": str(p["nuclei"])}

        k_in = _key("synth", s, images["channels"])
        images.update(stage("synth", k_in, s, do_synth))
    else:
        k_in = _key("images", file_sha256(images["index"]), file_sha256(images["locations"]), images["channels"])

    def index():
        from phenovec.ingest.index import read_image_index

        return read_image_index(images["index"], images["channels"])

    if cfg["model"] is None:
        crop_conf = cfg["crop"]

        def do_crop(d: Path) -> dict:
            from phenovec.ingest.crop import crop_index

            crop_index(index(), images["locations"], d / "crops", box_size=crop_conf["box_size"],
                       edge=crop_conf["edge"], chunk_cells=crop_conf["chunk_cells"], progress=progress)
            return {"crops": str(d / "crops")}

        k_crop = _key("crop", crop_conf, k_in)
        crops = stage("crop", k_crop, crop_conf, do_crop)["crops"]

        def do_train(d: Path) -> dict:
            from phenovec.train import train

            tr = copy.deepcopy(cfg["train"])
            tr.setdefault("data", {})["crops"] = crops
            tr.setdefault("train", {})["out"] = str(d)
            res = train(tr, progress=progress)
            best = res.best if res.best is not None else res.last
            return {"checkpoint": str(best), "best_val_accuracy": res.best_val_accuracy, "epochs": res.epochs}

        k_train = _key("train", cfg["train"], k_crop)
        trained = stage("train", k_train, cfg["train"], do_train)

        def do_export(d: Path) -> dict:
            from phenovec.export import export_onnx

            # parity on the first crops of the crop stage's store (the checkpoint's data_config["crops"])
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

        res = profile_sites(model, index=index(), locations=images["locations"], out=d, batch_size=prof_conf["batch_size"],
                            scheduler=prof_conf["scheduler"], workers=prof_conf["workers"], dtype=prof_conf["dtype"],
                            precision=prof_conf["precision"], edge=cfg["crop"]["edge"], progress=progress)
        return {k: str(v) for k, v in res.paths.items()} | {"cells": res.cells, "embedded": res.embedded}

    k_prof = _key("profile", prof_conf, cfg["crop"]["edge"], k_model, k_in)
    profiled = stage("profile", k_prof, prof_conf, do_profile)

    rep = cfg["report"]
    control_query = f"`{rep['treatment_column']}` == {rep['control']!r}"  # a row filter (phenovec.io.row_filter)
    steps = cfg["process"]["steps"] or default_steps(control_query)

    def do_process(d: Path) -> dict:
        import numpy as np
        import pandas as pd

        from phenovec.io.embeddings import EmbeddingStore
        from phenovec.process.recipe import apply_recipe

        store = EmbeddingStore(profiled["embeddings"])
        meta = store.meta.reset_index(drop=True)
        feats = np.asarray(store.array[:], dtype=np.float64)
        cells = pd.concat([meta[[c for c in meta.columns if str(c).startswith("Metadata_")]],
                          pd.DataFrame(feats, columns=list(store.features))], axis=1)
        keep = [c for c in cells.columns if c.startswith("Metadata_")]
        steps_run = [{**s} for s in steps]
        for s in steps_run:  # the per-well metadata rides along as strata
            if "aggregate" in s and "strata" in s["aggregate"]:
                strata = list(s["aggregate"]["strata"])
                s["aggregate"] = {**s["aggregate"], "strata": strata + [c for c in keep if c not in strata and
                                  cells.groupby(strata)[c].nunique(dropna=False).max() == 1]}
        apply_recipe({"name": "pipeline", "steps": steps_run}, cells, output_file=d / "profiles.parquet",
                     progress=progress, features_default="non-metadata")
        return {"profiles": str(d / "profiles.parquet")}

    k_proc = _key("process", steps, k_prof)
    processed = stage("process", k_proc, {"steps": steps}, do_process)

    def do_report(d: Path) -> dict:
        from phenovec.report import build_report

        provenance = {"config": cfg, "stages": stages, "timings_s": timings,
                      "training": trained if trained is not None else {"model": cfg["model"]}}
        paths = build_report(processed["profiles"], d, moa_column=rep["moa_column"],
                             treatment_column=rep["treatment_column"], control_query=rep["control"],
                             control_key="report.control", provenance=provenance, null_size=rep["null_size"],
                             seed=rep["seed"])
        return {"html": str(paths.html), "json": str(paths.json)}

    k_rep = _key("report", rep, k_proc)
    reported = stage("report", k_rep, rep, do_report)
    return RunResult(out, Path(reported["html"]), Path(reported["json"]), stages)


def demo_config(out: str | os.PathLike = "demo-out", null_size: int = 2000) -> dict:
    """The demo: a 2-plate synthetic set (7 treatments, 3 MOAs, DMSO) through every stage, a few minutes on 2 cores:
    48-pixel crops and a tiny ResNet (``DEMO_TRAIN``) on 256-pixel fields."""
    cfg = default_config()
    cfg.update(out=str(out), synth={"plates": 2, "wells": 28, "sites": 2, "size": 256, "cells": [25, 35], "seed": 0},
               train=copy.deepcopy(DEMO_TRAIN))
    cfg["crop"]["box_size"] = 48
    cfg["report"]["null_size"] = int(null_size)
    cfg["images"].pop("index"), cfg["images"].pop("locations")
    return cfg


def _run_cli(a) -> dict:
    from phenovec.cli_options import show_progress

    if a.print_config:
        print(print_config())
        return {}
    if a.stage == "demo" and a.bbbc021:
        from phenovec.demo import run_demo

        return run_demo(a.data, a.out, a.null_size, progress=show_progress(a))
    if a.stage == "demo":
        config = demo_config(a.out, a.null_size)
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
    add_out(p=d, help="output folder (rerun to resume; stages are cached)", required=False, default="demo-out")
    d.add_argument("--null-size", type=int, default=2000, help="null distribution size for mAP p-values")
    d.add_argument("--bbbc021", action="store_true", help="instead: evaluate the real BBBC021 CellProfiler profiles")
    d.add_argument("--data", default=None, help="with --bbbc021: folder of the BBBC021 files (default: "
                                                "../shared/data/bbbc021-cytominergallery)")
    add_quiet(d)
    d.set_defaults(run=_run_cli, print_config=False, config=None)
