"""The FSL-CP benchmark (thesis ch. 2) on any label table and profiles: every learner on every episode of every test
task, from one YAML configuration.

Configuration (paths relative to the configuration file; every key checked, errors name ``section.key``)::

    labels:                      # a label file (phenovec.io.activity_labels) ...
      path: labels.csv
      layout: auto               # auto | long | wide | matrix_market
      coding: auto               # auto | binary (1/0) | signed (+1/-1, 0 = unmeasured)
      compound_column: null      # long: 'compound'; wide: compound, else INCHIKEY
      assay_column: assay
      label_column: label
      # ... or one task per class of a profile column: one_vs_rest: injury_type, exclude_classes: [Control]
      # (class_separator: '|' splits multi-label classes such as LINCS' "NFkB pathway inhibitor|proteasome inhibitor")
    profiles:
      path: wells.parquet        # anything phenovec.io.profiles.read_table reads
      compound_column: Metadata_compound   # or a list (compound and dose): ids joined by '|'
      features: infer            # or a list of columns
      consensus: median          # median | mean | modz over a compound's replicate wells
      samples: all               # or a row filter (phenovec.io.row_filter): "`Compound Name`.notna()"
      joins: []                  # metadata tables left-joined first (phenovec.activity.wells)
      nan_features: error        # error | drop: features with a missing value in a kept well
      normalize: null            # or {method: standardize, by: Metadata_Plate, samples: "Metadata_moa == 'DMSO'"}
      aux_columns: []            # auxiliary inputs (an image embedding, ...): learners with inputs: cp+ get them
    crops:                       # instead of profiles.path: a crop store for protonet_img / maml_img
      path: null                 # a `phenovec crop` folder; one unit = its unit_columns' values
      unit_columns: [Metadata_Plate, Metadata_Well]
      per_unit: 8                # crops per unit (phenovec.activity.crop_units)
      scaling: auto              # the trainer's input scaling
    tasks:
      min_actives: 10
      min_inactives: 10
      missing_profiles: error    # error | drop
      test: 0.2                  # fraction of the kept tasks, or a count
      validation: 0.1
      test_tasks: null           # or the test tasks by name
      names: null                # or only these tasks (each must pass the thresholds)
      separate_compounds: null   # or a fraction: pre-training tasks on that share of the compounds, test tasks on
                                 # the rest (tasks.separate_compounds); a task keeps its side with at least
                                 # min(min_actives, 2) actives and min(min_inactives, 2) inactives there
      compound_groups: compound  # compound: ids 'name|dose' group by name; id: every id its own group
    episodes:
      support_sizes: [8, 16, 32, 64, 96]
      query_size: 32
      episodes: 100
      small_tasks: error         # error | skip: a (task, M) the task is too small for
    learners:                    # name -> options (null = defaults); `learner:` picks the class of another name
      logreg: {}
      fnn: {n_configs: 10}
      logreg_quick: {learner: logreg, n_configs: 3}
      logreg_cp+: {learner: logreg, inputs: cp+}   # profiles + profiles.aux_columns (default inputs: cp)
    seed: 0
    threads: 1                   # PyTorch CPU threads while the learners run (null: torch's default)
    workers: 1                   # processes running a learner's test episodes (the same rows as 1; see episode_runner)

Each learner is built once, pre-trained on the train and validation tasks (the thesis' auxiliary tasks; a learner
that chooses settings on the validation tasks, ``uses_validation``, trains on the train tasks alone), then fitted
on each episode's support set and scored on its query set. Outputs (written atomically into the output folder):
``results.csv`` (tidy: learner, task, M, episode, sizes, every metric, seconds), ``per_task.csv`` (means over
episodes), ``summary.csv`` (means over episodes then tasks, per learner and M), ``wilcoxon.csv`` (one-sided paired
p-values of "learner beats versus" on per-task mean AUROC, per M), ``throughput.csv`` (pre-training seconds and
episodes/s per learner), ``tasks.csv`` (the split), ``auroc_vs_m.png`` and ``report.md``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from phenovec.activity.episode_runner import fit_seed  # noqa: F401  (the benchmark's per-episode fit seed)
from phenovec.io.config_schema import NONE_TYPE, ConfigError, merge_sections, suggest

SCHEMA = {
    "labels": {
        "path": (None, (str, NONE_TYPE), "path"),
        "layout": ("auto", (str,), ("auto", "long", "wide", "matrix_market")),
        "coding": ("auto", (str,), ("auto", "binary", "signed")),
        "compound_column": (None, (str, NONE_TYPE), None),
        "assay_column": ("assay", (str,), None),
        "label_column": ("label", (str,), None),
        "assays": (None, (list, NONE_TYPE), None),
        "row_index": (None, (str, NONE_TYPE), "path"),
        "column_index": (None, (str, NONE_TYPE), "path"),
        "one_vs_rest": (None, (str, NONE_TYPE), None),
        "exclude_classes": ([], (list,), None),
        "class_separator": (None, (str, NONE_TYPE), None),
    },
    "profiles": {
        "path": (None, (str, NONE_TYPE), "path"),
        "compound_column": ("Metadata_compound", (str, list), None),
        "features": ("infer", (str, list), None),
        "consensus": ("median", (str,), ("median", "mean", "modz")),
        "samples": ("all", (str,), None),
        "joins": ([], (list,), None),
        "nan_features": ("error", (str,), ("error", "drop")),
        "normalize": (None, (dict, NONE_TYPE), None),
        "aux_columns": ([], (list,), None),
    },
    "tasks": {
        "min_actives": (10, (int,), (1, 10 ** 9)),
        "min_inactives": (10, (int,), (1, 10 ** 9)),
        "missing_profiles": ("error", (str,), ("error", "drop")),
        "test": (0.2, (int, float), (0, 10 ** 9)),
        "validation": (0.1, (int, float), (0, 10 ** 9)),
        "test_tasks": (None, (list, NONE_TYPE), None),
        "names": (None, (list, NONE_TYPE), None),
        "separate_compounds": (None, (float, NONE_TYPE), (0.01, 0.99)),
        "compound_groups": ("compound", (str,), ("compound", "id")),
    },
    "crops": {
        "path": (None, (str, NONE_TYPE), "path"),
        "unit_columns": (["Metadata_Plate", "Metadata_Well"], (str, list), None),
        "per_unit": (8, (int,), (1, 10 ** 4)),
        "scaling": ("auto", (str,), ("auto", "none", "scale", "minmax")),
    },
    "episodes": {
        "support_sizes": ([8, 16, 32, 64, 96], (list,), None),
        "query_size": (32, (int,), (2, 10 ** 6)),
        "episodes": (100, (int,), (1, 10 ** 7)),
        "small_tasks": ("error", (str,), ("error", "skip")),
    },
}
TOP_LEVEL = (*SCHEMA, "learners", "seed", "threads", "workers")


@dataclass
class BenchmarkConfig:
    """A checked benchmark configuration (see the module docstring); ``base`` resolves relative paths."""

    labels: dict
    profiles: dict
    tasks: dict
    episodes: dict
    learners: dict[str, dict]
    seed: int = 0
    threads: int | None = 1
    workers: int = 1
    source: str = "config"
    base: Path = field(default_factory=Path.cwd)
    crops: dict = field(default_factory=lambda: {"path": None})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "BenchmarkConfig":
        import yaml

        from phenovec.io.yaml_load import load_yaml

        p = Path(path)
        try:
            raw = load_yaml(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: no such benchmark configuration") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        return cls.from_dict(raw if raw is not None else {}, source=str(p), base=p.resolve().parent)

    @classmethod
    def from_dict(cls, raw, *, source: str = "config", base: str | os.PathLike | None = None) -> "BenchmarkConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the configuration must be a mapping, got {type(raw).__name__}")
        for key in raw:
            if key not in TOP_LEVEL:
                raise ConfigError(f"{source}: unknown key {key!r}{suggest(str(key), TOP_LEVEL)}")
        cfg = merge_sections(raw, SCHEMA, source, sections=tuple(SCHEMA))
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{source}: seed must be an integer >= 0, got {seed!r}")
        threads = raw.get("threads", 1)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"{source}: threads must be an integer >= 1 or null, got {threads!r}")
        workers = raw.get("workers", 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"{source}: workers must be an integer >= 1, got {workers!r}")
        lab, prof = cfg["labels"], cfg["profiles"]
        if (prof["path"] is None) == (cfg["crops"]["path"] is None):
            raise ConfigError(f"{source}: give exactly one of profiles.path (profiles) and crops.path (a crop store, "
                              "for the image learners)")
        if (lab["path"] is None) == (lab["one_vs_rest"] is None):
            raise ConfigError(f"{source}: give exactly one of labels.path (a label file) and labels.one_vs_rest "
                              "(a class column of the profiles)")
        for key in ("exclude_classes", "class_separator"):
            if lab[key] and lab["one_vs_rest"] is None:
                raise ConfigError(f"{source}: labels.{key} needs labels.one_vs_rest")
        if isinstance(prof["compound_column"], list) and not all(isinstance(c, str) for c in prof["compound_column"]):
            raise ConfigError(f"{source}: profiles.compound_column must be a column name or a list of names")
        if isinstance(prof["features"], str) and prof["features"] != "infer":
            raise ConfigError(f"{source}: profiles.features must be 'infer' or a list of columns, "
                              f"got {prof['features']!r}")
        if prof["samples"] != "all":
            from phenovec.io.row_filter import parse_filter

            parse_filter(prof["samples"], key=f"{source}: profiles.samples")
        from phenovec.activity.wells import check_joins, check_normalize

        prof["joins"] = check_joins(prof["joins"], source)
        check_normalize(prof["normalize"], source)
        if not all(isinstance(c, str) for c in prof["aux_columns"]):
            raise ConfigError(f"{source}: profiles.aux_columns must be a list of column names")
        learners = _learners(raw.get("learners"), source)
        for name, spec in learners.items():
            if spec["inputs"] == "cp+" and not prof["aux_columns"]:
                raise ConfigError(f"{source}: learners.{name}: inputs cp+ needs profiles.aux_columns")
        sizes = cfg["episodes"]["support_sizes"]
        if not sizes or any(isinstance(m, bool) or not isinstance(m, int) or m < 2 for m in sizes):
            raise ConfigError(f"{source}: episodes.support_sizes must be a non-empty list of integers >= 2, "
                              f"got {sizes!r}")
        for key in ("test", "validation"):
            v = cfg["tasks"][key]
            if isinstance(v, float) and not (0 <= v < 1):
                raise ConfigError(f"{source}: tasks.{key} must be a fraction in [0, 1) or a task count, got {v!r}")
        return cls(labels=lab, profiles=prof, tasks=cfg["tasks"], episodes=cfg["episodes"],
                   learners=learners, crops=cfg["crops"], seed=seed, threads=threads, workers=workers,
                   source=source,
                   base=Path(base) if base is not None else Path.cwd())

    def path(self, section: str, key: str) -> Path | None:
        value = getattr(self, section)[key]
        if value is None:
            return None
        p = Path(value)
        return p if p.is_absolute() else self.base / p


def _learners(raw, source: str) -> dict[str, dict]:
    """``name -> options`` with ``learner`` (the registry name) filled in; names checked against the registry."""
    from phenovec.activity.learners import LEARNERS
    from phenovec.activity.tasks import INPUTS

    if raw is None:
        raise ConfigError(f"{source}: learners is required (known: {', '.join(sorted(LEARNERS))})")
    if isinstance(raw, list):
        raw = {name: None for name in raw}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: learners must be a list of names or a mapping name -> options")
    out = {}
    for name, opts in raw.items():
        opts = {} if opts is None else opts
        if not isinstance(opts, dict):
            raise ConfigError(f"{source}: learners.{name} must be a mapping of options, got {type(opts).__name__}")
        opts = copy.deepcopy(opts)
        kind = opts.pop("learner", name)
        if kind not in LEARNERS:
            raise ConfigError(f"{source}: learners.{name}: unknown learner {kind!r}{suggest(str(kind), LEARNERS)}")
        inputs = opts.pop("inputs", "cp")
        if inputs not in INPUTS:
            raise ConfigError(f"{source}: learners.{name}.inputs = {inputs!r} is not one of {', '.join(INPUTS)}")
        out[str(name)] = {"learner": kind, "options": opts, "inputs": inputs}
    return out


def load_tasks(config: BenchmarkConfig):
    """The :class:`~phenovec.activity.tasks.TaskSet` of a configuration."""
    from phenovec.activity.tasks import build_tasks, compound_profiles
    from phenovec.activity.wells import read_wells, resolver

    if config.crops.get("path") is not None:
        return _crop_tasks(config)
    wells, features, prof_path = read_wells(config.profiles, resolver(config.base), config.source)
    labels = _labels(config, wells, config.profiles["compound_column"], str(prof_path))
    aux = [str(c) for c in config.profiles["aux_columns"]]
    for c in aux:
        if c not in wells.columns:
            raise ValueError(f"{prof_path}: no column {c!r} (profiles.aux_columns)")
        if c in features:
            raise ValueError(f"{prof_path}: column {c!r} is a profile feature already (profiles.aux_columns)")
    profiles = compound_profiles(wells, config.profiles["compound_column"], features=features + aux,
                                 operation=config.profiles["consensus"], source=str(prof_path))
    t = config.tasks
    ts = build_tasks(labels, profiles, min_actives=t["min_actives"], min_inactives=t["min_inactives"],
                     test=t["test"], validation=t["validation"], test_tasks=t["test_tasks"], tasks=t["names"],
                     missing_profiles=t["missing_profiles"], seed=config.seed, aux_columns=aux)
    if t["separate_compounds"] is not None:
        from phenovec.activity.tasks import separate_compounds

        ts = separate_compounds(ts, pretrain_fraction=t["separate_compounds"], seed=config.seed,
                                min_actives=min(t["min_actives"], 2), min_inactives=min(t["min_inactives"], 2),
                                group_by=t["compound_groups"])
    return ts


def _labels(config: BenchmarkConfig, table: pd.DataFrame, compound_column, source: str) -> pd.DataFrame:
    """The long label table of ``config``: one task per class of ``labels.one_vs_rest`` (a column of ``table``,
    whose compound ids come from ``compound_column``), or the label file."""
    from phenovec.activity.tasks import compound_ids
    from phenovec.io.activity_labels import one_vs_rest_labels, read_activity_labels

    lab = config.labels
    if lab["one_vs_rest"] is None:
        return read_activity_labels(
            config.path("labels", "path"), layout=lab["layout"], coding=lab["coding"],
            compound_column=lab["compound_column"], assay_column=lab["assay_column"],
            label_column=lab["label_column"], assays=lab["assays"], row_index=config.path("labels", "row_index"),
            column_index=config.path("labels", "column_index"))
    ids = compound_ids(table, compound_column, source=source)
    if lab["one_vs_rest"] not in table.columns:
        raise ValueError(f"{source}: no column {lab['one_vs_rest']!r} (labels.one_vs_rest)")
    frame = pd.DataFrame({"compound": ids, "cls": table[lab["one_vs_rest"]].to_numpy()})
    return one_vs_rest_labels(frame, compound_column="compound", class_column="cls", source=source,
                              exclude=[str(c) for c in lab["exclude_classes"]], separator=lab["class_separator"])


def _crop_tasks(config: BenchmarkConfig):
    """Tasks whose inputs are each unit's flattened crops (``crops`` section, :mod:`~phenovec.activity.crop_units`)."""
    from phenovec.activity.crop_units import unit_crops
    from phenovec.activity.tasks import TaskSet, build_tasks

    c, t = config.crops, config.tasks
    path = config.path("crops", "path")
    x, cells, shape = unit_crops(path, c["unit_columns"], crops_per_unit=c["per_unit"], seed=config.seed,
                                 scaling=c["scaling"])
    labels = _labels(config, cells, c["unit_columns"], str(path / "cells.parquet"))
    ts = build_tasks(labels, x, min_actives=t["min_actives"], min_inactives=t["min_inactives"], test=t["test"],
                     validation=t["validation"], test_tasks=t["test_tasks"], tasks=t["names"],
                     missing_profiles=t["missing_profiles"], seed=config.seed)
    return TaskSet(ts.train, ts.validation, ts.test, ts.features, ts.dropped, crop_shape=shape)


def _plan(tasks, sizes, query_size: int, small: str) -> tuple[list[tuple], list[dict]]:
    """``(task, M)`` pairs to run, and those skipped (``small_tasks: skip``) with why; an error naming the task for
    the first pair that cannot run under ``small_tasks: error``."""
    from phenovec.activity.episodes import check_sizes

    plan, skipped = [], []
    for task in tasks:
        for m in sizes:
            try:
                check_sizes(task, m, query_size)
            except ValueError as e:
                if small == "error":
                    raise ValueError(f"{e} (episodes.small_tasks: skip leaves such tasks out at this M)") from None
                skipped.append({"task": task.name, "M": m, "reason": str(e)})
                continue
            plan.append((task, m))
    if not plan:
        raise ValueError("no test task is large enough for any support size")
    return plan, skipped


def run_benchmark(config: BenchmarkConfig, out: str | os.PathLike, *, progress: bool = False) -> dict:
    """Run the benchmark of ``config`` into the folder ``out`` (see the module docstring); returns a summary."""
    from phenovec.activity.learners import learner_class
    from phenovec.activity.metrics import METRICS
    from phenovec.io.atomic import output_folder, write_text_atomic
    from phenovec.io.profiles import write_table

    ts = load_tasks(config)
    ep = config.episodes
    plan, skipped = _plan(ts.test, ep["support_sizes"], ep["query_size"], ep["small_tasks"])
    learners = {}
    for name, spec in config.learners.items():
        cls, options = learner_class(spec["learner"]), dict(spec["options"])
        if getattr(cls, "takes_crop_shape", False):
            if ts.crop_shape is None:
                raise ConfigError(f"{config.source}: learners.{name}: {spec['learner']} needs crop inputs (crops.path)")
            options.setdefault("crop_shape", ts.crop_shape)
        try:
            learners[name] = cls(**options)
        except TypeError as e:
            raise ConfigError(f"{config.source}: learners.{name}: {e}") from None
    rows, throughput = [], []
    total = len(learners) * len(plan) * ep["episodes"]
    bar = _bar(total, progress)
    with torch_threads(config.threads):
        _run_learners(learners, ts, plan, config, rows, throughput, bar)
    bar(None)
    results = pd.DataFrame(rows)
    per_task = results.groupby(["learner", "task", "M"], sort=False)[list(METRICS)].mean().reset_index()
    summary = per_task.groupby(["learner", "M"], sort=False)[list(METRICS)].mean().reset_index()
    summary.insert(2, "tasks", per_task.groupby(["learner", "M"], sort=False).size().to_numpy())
    wilcox = wilcoxon_table(per_task)
    tp = pd.DataFrame(throughput)
    with output_folder(out) as run:
        folder = run.path
        write_table(results, folder / "results.csv")
        write_table(per_task, folder / "per_task.csv")
        write_table(summary, folder / "summary.csv")
        write_table(wilcox, folder / "wilcoxon.csv")
        write_table(tp, folder / "throughput.csv")
        write_table(ts.summary(), folder / "tasks.csv")
        plot = plot_auroc_vs_m(summary, folder / "auroc_vs_m.png")
        write_text_atomic(folder / "report.md", report_markdown(config, ts, summary, wilcox, tp, skipped, plot))
        write_text_atomic(folder / "run.json", json.dumps(
            {"source": config.source, "seed": config.seed, "labels": config.labels, "profiles": config.profiles,
             "tasks": config.tasks, "episodes": config.episodes, "learners": config.learners, "workers": config.workers,
             "dropped_tasks": ts.dropped, "skipped": skipped}, indent=1, default=str))
    return {"output": str(out), "test_tasks": len(ts.test), "train_tasks": len(ts.train),
            "validation_tasks": len(ts.validation), "dropped_tasks": len(ts.dropped), "episodes": len(results),
            "skipped": len(skipped),
            "mean_auroc": {f"{r.learner} M={r.M}": round(float(r.auroc), 4) for r in summary.itertuples()},
            "episodes_per_second": {r.learner: round(float(r.episodes_per_second), 3) for r in tp.itertuples()}}


def _bar(total: int, progress: bool):
    if not progress:
        return lambda n: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="episode", desc="benchmark")

    def step(n):
        if n is None:
            bar.close()
        else:
            bar.update(n)
    return step


def wilcoxon_table(per_task: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Per M, the one-sided paired p-value of "``learner`` beats ``versus``" over the tasks both have, on per-task
    mean ``metric``: columns ``M``, ``learner``, ``versus``, ``tasks``, ``p``."""
    from phenovec.activity.wilcoxon import wilcoxon_matrix

    rows = []
    for m, g in per_task.groupby("M", sort=True):
        names = list(dict.fromkeys(g["learner"]))
        wide = g.pivot(index="task", columns="learner", values=metric)[names]
        have = wide.notna().astype(int)
        pairs = have.T @ have  # tasks both learners have
        p = wilcoxon_matrix(wide)
        rows += [{"M": m, "learner": a, "versus": b, "tasks": int(pairs.loc[a, b]), "p": p.loc[a, b]}
                 for a in names for b in names if a != b]
    return pd.DataFrame(rows, columns=["M", "learner", "versus", "tasks", "p"])


def plot_auroc_vs_m(summary: pd.DataFrame, path: Path) -> Path | None:
    """Mean AUROC against M, one line per learner (:func:`~phenovec.activity.report_section.draw_auroc_vs_m`),
    written atomically as PNG; ``None`` when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return None
    from phenovec.activity.report_section import draw_auroc_vs_m
    from phenovec.figure import png_bytes
    from phenovec.io.atomic import atomic_path

    png = png_bytes(draw_auroc_vs_m(summary))
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(png)
    return path


def _markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, (float, np.floating)):
                cells.append("" if np.isnan(v) else (f"{v:.2e}" if floatfmt == "p" else format(v, floatfmt)))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(config: BenchmarkConfig, ts, summary: pd.DataFrame, wilcox: pd.DataFrame, tp: pd.DataFrame,
                    skipped: list[dict], plot: Path | None) -> str:
    """The benchmark report: tasks, mean AUROC per learner per M, the p-value matrices, throughput."""
    from phenovec.activity.metrics import METRICS

    auroc = summary.pivot(index="learner", columns="M", values="auroc").reindex(list(config.learners))
    auroc.columns = [f"M={m}" for m in auroc.columns]
    parts = [
        "# Few-shot activity benchmark", "",
        f"Configuration `{config.source}`, seed {config.seed}; {config.episodes['episodes']} episodes per test task "
        f"and M, query sets of up to {config.episodes['query_size']}.", "",
        f"Tasks: {len(ts.train)} train, {len(ts.validation)} validation (pre-training), {len(ts.test)} test; "
        f"{len(ts.dropped)} dropped (fewer than {config.tasks['min_actives']} actives / "
        f"{config.tasks['min_inactives']} inactives or one class).", "",
        "## Mean AUROC (over episodes, then test tasks)", "", _markdown(auroc.reset_index()), "",
    ]
    if plot is not None:
        parts += [f"![mean AUROC vs M]({plot.name})", ""]
    parts += ["## All metrics", "", _markdown(summary[["learner", "M", "tasks", *METRICS]]), "",
              "## One-sided paired Wilcoxon on per-task mean AUROC", "",
              "p-value that the row learner beats the column learner, over the test tasks (exact for up to 100 "
              "tasks).", ""]
    for m, g in wilcox.groupby("M", sort=True):
        mat = g.pivot(index="learner", columns="versus", values="p")
        order = [n for n in config.learners if n in mat.index]
        mat = mat.reindex(index=order, columns=order)
        parts += [f"### M = {m} ({int(g['tasks'].max()) if len(g) else 0} tasks)", "",
                  _markdown(mat.reset_index(), "p"), ""]
    parts += ["## Throughput", "", _markdown(tp[["learner", "class", "pretrain_seconds", "episodes",
                                                 "episodes_per_second"]], ".2f"), ""]
    if skipped:
        parts += ["## Skipped (task, M)", "", _markdown(pd.DataFrame(skipped)), ""]
    return "\n".join(parts)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """A context setting PyTorch's CPU intra-op threads to ``threads`` while the learners run, restored after; a no-op
    when ``threads`` is None or no learner imported torch. The learners' networks are tiny: on 2 cores 1 thread ran
    them 10-30x faster than torch's default of 2 (episodes/s, FSL-CP learners' tests)."""
    torch = sys.modules.get("torch")
    if threads is None or torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_learners(learners: dict, full, plan, config: BenchmarkConfig, rows: list, throughput: list, bar) -> None:
    """Pre-train each learner, then fit and score it on every episode of ``plan`` (rows and throughput appended;
    ``config.workers`` processes run the episodes, :mod:`~phenovec.activity.episode_runner`). Each learner sees the
    tasks with its ``inputs`` (``cp`` or ``cp+``); the episodes are the same for both."""
    from phenovec.activity.episode_runner import EpisodeRunner

    ep = config.episodes
    index = {id(task): i for i, task in enumerate(full.test)}
    pairs = [(index[id(task)], m) for task, m in plan]
    views = {}
    with EpisodeRunner(config.workers, config.threads) as runner:
        for name, learner in learners.items():
            kind = config.learners[name].get("inputs", "cp")
            ts = views.setdefault(kind, full.inputs(kind))
            t0 = time.perf_counter()
            if getattr(learner, "uses_validation", False) and ts.train and ts.validation:
                learner.pretrain(ts.train, seed=config.seed, validation=ts.validation)
            else:
                learner.pretrain(ts.train + ts.validation, seed=config.seed)
            pretrain_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            done = runner.run(learner, name, ts.test, pairs, n_episodes=ep["episodes"], seed=config.seed,
                              query_size=ep["query_size"], bar=bar)
            rows += done
            run_s = time.perf_counter() - t1
            throughput.append({"learner": name, "class": type(learner).__name__, "inputs": kind,
                               "pretrain_seconds": pretrain_s,
                               "episodes": len(done), "workers": config.workers, "episode_seconds": run_s,
                               "episodes_per_second": len(done) / run_s if run_s > 0 else float("inf"),
                               "settings": _chosen_settings(learner)})


def _chosen_settings(learner) -> str:
    """What a learner chose on its validation tasks, as JSON (MAML: the inner learning rate and each candidate's
    mean AUROC); empty when it chose nothing."""
    selection = getattr(learner, "selection", None)
    if not selection:
        return ""
    return json.dumps({"inner_lr": learner.fit_lr,
                       "validation_auroc": {str(k): round(float(v), 4) for k, v in selection.items()}})
