"""``phenovec evaluate suite CONFIG.yaml``: several copairs rule sets from one similarity pass (``evaluate_many``).

The configuration (YAML, read with :func:`phenovec.io.yaml_load.load_yaml`; nothing in it is executed: row filters are parsed by
:mod:`phenovec.io.row_filter`)::

    profiles: profiles.parquet            # relative paths are relative to the configuration file
    similarity: cosine                    # cosine | pearson | correlation | spearman | euclidean
    ties: copairs                         # copairs | exact
    precision: fp32                       # fp32 (exact) | bf16 | fp16 | tf32 (see phenovec.evaluate.precision)
    device: cpu                           # cpu | cuda | auto (cuda when PyTorch sees a GPU at run time)
    roc_auc: false                        # true: roc_auc, mann_whitney_u, roc_auc_p_value per query
    query: "Metadata_plate != 'P9'"       # optional: rows evaluated at all
    reference: "Metadata_pert_type == 'control'"   # optional: adds Metadata_Reference_Index (copairs'
                                                   # assign_reference_index) for replicate-vs-control rule sets
    map: {null_size: 10000, threshold: 0.05, seed: 0, null_method: copairs}   # optional, these defaults
                                          # null_method: copairs | fast | exact (enumerated for small (M, L))
    rule_sets:
      replicate_vs_dmso:
        pos_sameby: [Metadata_broad_sample, Metadata_Reference_Index]
        pos_diffby: []
        neg_sameby: []
        neg_diffby: [Metadata_broad_sample, Metadata_Reference_Index]
        map_sameby: [Metadata_broad_sample]        # optional: mAP + p-values per group
      moa:
        pos_sameby: [Metadata_moa]
        pos_diffby: [Metadata_broad_sample]
        neg_sameby: []
        neg_diffby: [Metadata_moa]
        rows: "Metadata_moa.notna()"               # optional row filter of this rule set
        map_sameby: [Metadata_moa, Metadata_dose]
        hierarchical_by: [Metadata_moa]            # optional: copairs' hierarchical FDR

Writes ``OUT/<name>_ap.<format>`` per rule set, ``OUT/<name>_map.<format>`` where ``map_sameby`` is given, and
``OUT/suite.json`` (printed too). ``add_suite_parser(metrics)`` adds the subcommand; building it imports nothing heavy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from phenovec.cli_options import add_quiet, show_progress

TOP_KEYS = ("profiles", "similarity", "ties", "query", "reference", "map", "rule_sets", "format", "precision", "device",
            "roc_auc")
RULE_KEYS = ("pos_sameby", "pos_diffby", "neg_sameby", "neg_diffby", "rows", "map_sameby", "hierarchical_by")
MAP_KEYS = {"null_size": int, "threshold": float, "seed": int, "null_method": str}
MAP_DEFAULTS = {"null_size": 10000, "threshold": 0.05, "seed": 0, "null_method": "copairs"}
REFERENCE_COLUMN = "Metadata_Reference_Index"
FORMATS = ("parquet", "csv", "csv.gz")


class SuiteConfigError(ValueError):
    """A suite configuration that cannot be run; the message names the file and the key."""


def _columns(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SuiteConfigError(f"{where}: expected a list of column names, got {value!r:.80}")
    return list(value)


def read_suite(path) -> dict:
    """Parse and check a suite configuration; returns a plain dict (paths resolved against the file's folder)."""
    import yaml

    from phenovec.io.yaml_load import load_yaml

    path = Path(path)
    if not path.is_file():
        raise SuiteConfigError(f"suite configuration {path} does not exist")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SuiteConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SuiteConfigError(f"{path}: the configuration must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SuiteConfigError(f"{path}: unknown key(s) {unknown}; allowed: {list(TOP_KEYS)}")
    for key in ("profiles", "rule_sets"):
        if key not in raw:
            raise SuiteConfigError(f"{path}: missing key {key!r}")
    cfg = {"path": str(path), "profiles": str(path.parent / str(raw["profiles"])),
           "similarity": raw.get("similarity", "cosine"), "ties": raw.get("ties", "copairs"),
           "query": raw.get("query"), "reference": raw.get("reference"), "format": raw.get("format", "parquet"),
           "precision": raw.get("precision", "fp32"), "device": raw.get("device", "cpu"),
           "roc_auc": raw.get("roc_auc", False)}
    if not isinstance(cfg["roc_auc"], bool):
        raise SuiteConfigError(f"{path}: roc_auc must be true or false, got {cfg['roc_auc']!r:.80}")
    for key in ("similarity", "ties", "format", "precision", "device"):
        if not isinstance(cfg[key], str):
            raise SuiteConfigError(f"{path}: {key} must be a string, got {cfg[key]!r:.80}")
    if cfg["format"] not in FORMATS:
        raise SuiteConfigError(f"{path}: format must be one of {list(FORMATS)}, got {cfg['format']!r}")
    for key in ("query", "reference"):
        if cfg[key] is not None and not isinstance(cfg[key], str):
            raise SuiteConfigError(f"{path}: {key} must be a filter string, got {cfg[key]!r:.80}")
    m = raw.get("map") or {}
    if not isinstance(m, dict):
        raise SuiteConfigError(f"{path}: map must be a mapping, got {type(m).__name__}")
    bad = sorted(set(m) - set(MAP_KEYS))
    if bad:
        raise SuiteConfigError(f"{path}: map: unknown key(s) {bad}; allowed: {list(MAP_KEYS)}")
    cfg["map"] = dict(MAP_DEFAULTS)
    for k, v in m.items():
        typ = MAP_KEYS[k]
        accepted = (int, float) if typ is float else typ
        if isinstance(v, bool) or not isinstance(v, accepted):
            raise SuiteConfigError(f"{path}: map.{k} must be {typ.__name__}, got {v!r:.80}")
        cfg["map"][k] = v
    rules = raw["rule_sets"]
    if not isinstance(rules, dict) or not rules:
        raise SuiteConfigError(f"{path}: rule_sets must be a non-empty mapping of name -> rules")
    cfg["rule_sets"] = {}
    for name, spec in rules.items():
        where = f"{path}: rule_sets.{name}"
        if not isinstance(name, str) or not name or any(c in name for c in "/\\") or name.startswith("."):
            raise SuiteConfigError(f"{path}: rule set name {name!r} must be a plain string (it names output files)")
        if not isinstance(spec, dict):
            raise SuiteConfigError(f"{where}: expected a mapping, got {type(spec).__name__}")
        bad = sorted(set(spec) - set(RULE_KEYS))
        if bad:
            raise SuiteConfigError(f"{where}: unknown key(s) {bad}; allowed: {list(RULE_KEYS)}")
        for k in RULE_KEYS[:4]:
            if k not in spec:
                raise SuiteConfigError(f"{where}: missing key {k!r}")
        if spec.get("rows") is not None and not isinstance(spec["rows"], str):
            raise SuiteConfigError(f"{where}.rows: expected a filter string, got {spec['rows']!r:.80}")
        out = {k: _columns(spec.get(k), f"{where}.{k}") for k in RULE_KEYS if k != "rows"}
        out["rows"] = spec.get("rows")
        if out["hierarchical_by"] and not out["map_sameby"]:
            raise SuiteConfigError(f"{where}: hierarchical_by needs map_sameby")
        cfg["rule_sets"][name] = out
    return cfg


def run_suite(cfg: dict, out_dir, progress: bool = False) -> dict:
    """Run a checked configuration (:func:`read_suite`); write the tables; return the summary."""
    import numpy as np

    import phenovec.evaluate as pe
    from phenovec.evaluate.evaluate_many import evaluate_many
    from phenovec.io.profiles import read_table, split_profiles, write_table
    from phenovec.io.row_filter import filter_mask

    src = cfg["path"]
    df = read_table(cfg["profiles"])
    if cfg["query"]:
        df = df[filter_mask(df, cfg["query"], key=f"{src}: query")]
        if df.empty:
            raise SuiteConfigError(f"{src}: query {cfg['query']!r} selects no row of {cfg['profiles']}")
    prof = split_profiles(df.reset_index(drop=True))
    meta = prof.meta.copy()
    if cfg["reference"]:
        ctrl = filter_mask(meta, cfg["reference"], key=f"{src}: reference")
        if not ctrl.any():
            raise SuiteConfigError(f"{src}: reference {cfg['reference']!r} matches no row")
        meta[REFERENCE_COLUMN] = np.where(ctrl, np.arange(len(meta)), -1)
    rule_sets = {}
    for name, r in cfg["rule_sets"].items():
        rule_sets[name] = {k: r[k] for k in ("pos_sameby", "pos_diffby", "neg_sameby", "neg_diffby")}
        if r["rows"]:
            rule_sets[name]["rows"] = filter_mask(meta, r["rows"], key=f"{src}: rule_sets.{name}.rows")
    stats = {}
    try:
        aps = evaluate_many(meta, prof.feats, rule_sets, distance=cfg["similarity"], ties=cfg["ties"], stats=stats,
                            precision=cfg["precision"], device=cfg["device"], roc_auc=cfg["roc_auc"])
    except ValueError as e:
        if str(e).startswith(("precision", "device")):
            raise SuiteConfigError(f"{src}: {e}") from None
        raise
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = cfg["format"]
    summary = {"config": src, "profiles": cfg["profiles"], "n_profiles": len(meta), "blocks": stats, "rule_sets": {}}
    for name, ap in aps.items():
        r = cfg["rule_sets"][name]
        entry = {"ap_table": str(write_table(ap, out_dir / f"{name}_ap.{ext}")),
                 "n_queries_with_positives": int((ap["n_pos_pairs"] > 0).sum()),
                 "mean_ap": float(ap["average_precision"].mean())}
        if r["map_sameby"]:
            mp = cfg["map"]
            kw = dict(null_size=mp["null_size"], threshold=mp["threshold"], seed=mp["seed"],
                      null_method=mp["null_method"], progress_bar=progress)
            if r["hierarchical_by"]:
                m = pe.mean_average_precision_hierarchical(ap, r["map_sameby"], hierarchical_by=r["hierarchical_by"], **kw)
            else:
                m = pe.mean_average_precision(ap, r["map_sameby"], **kw)
            entry.update(map_table=str(write_table(m.drop(columns=["indices"]), out_dir / f"{name}_map.{ext}")),
                         n_groups=len(m), mean_average_precision=float(m["mean_average_precision"].mean()),
                         fraction_below_corrected_p=float(m["below_corrected_p"].mean()))
        summary["rule_sets"][name] = entry
    spath = out_dir / "suite.json"
    tmp = spath.with_name("." + spath.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(spath)
    return summary


def _run_suite(args) -> dict:
    summary = run_suite(read_suite(args.config), args.out, progress=show_progress(args))
    summary = {"command": " ".join(sys.argv[1:]), **summary}
    print(json.dumps(summary, indent=2))
    return summary


def add_suite_parser(metrics) -> argparse.ArgumentParser:
    """Add ``suite`` to ``phenovec evaluate``'s subparsers."""
    p = metrics.add_parser("suite", help="several copairs rule sets (replicate vs control, replicate vs all, MOA ...) "
                                         "ranked from one similarity pass, with mAP / hierarchical FDR")
    p.add_argument("config", help="suite configuration (YAML): profiles, rule_sets, map")
    p.add_argument("-o", "--out", required=True, help="output folder (per rule set tables + suite.json)")
    add_quiet(p)
    p.set_defaults(run=_run_suite)
    return p
