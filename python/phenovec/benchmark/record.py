"""The ``phenovec bench`` record (JSON) and the side-by-side comparison of two records.

A record::

    {"kind": "phenovec-bench", "schema": 1, "name": "...", "phenovec_version": "...", "started": "...",
     "finished": "...", "machine": {cores, cpu, mem_total_gb, ...}, "config": {...},
     "stages": {"decode": {"rate", "unit", "work", "median_s", "times_s", "repeats", "peak_rss_mb", ...}, ...},
     "skipped": {"model[tensorrt fp16]": "why", ...}}

Every stage's ``rate`` is its ``work`` divided by ``median_s``, the median of ``times_s`` (``repeats`` runs).
:func:`read_record` checks a record read from a file and names the file and the key that is wrong.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

KIND = "phenovec-bench"
SCHEMA = 1
STAGE_KEYS = ("rate", "unit", "median_s", "times_s", "repeats")


def label(record: dict) -> str:
    """How a record is named in tables and plots: its ``name``, else host and CPU."""
    m = record.get("machine", {})
    return str(record.get("name") or f"{m.get('node', '?')} ({m.get('cpu', '?')}, {m.get('cores', '?')} cores)")


def check_record(record, where: str) -> dict:
    """``record`` if it is a phenovec bench record, else a ValueError naming ``where`` and the wrong key."""
    if not isinstance(record, dict) or record.get("kind") != KIND:
        got = record.get("kind") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where}: not a phenovec bench record (expected \"kind\": \"{KIND}\", got {got!r}); "
                         "write one with 'phenovec bench --out FILE.json'")
    if record.get("schema") != SCHEMA:
        raise ValueError(f"{where}: record schema {record.get('schema')!r}; this phenovec reads schema {SCHEMA}")
    stages = record.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ValueError(f"{where}: key 'stages' must map stage names to their measurements")
    for name, st in stages.items():
        if not isinstance(st, dict):
            raise ValueError(f"{where}: stage {name!r} is not an object")
        for k in STAGE_KEYS:
            if k not in st:
                raise ValueError(f"{where}: stage {name!r} has no {k!r}")
        if not isinstance(st["rate"], (int, float)) or not isinstance(st["median_s"], (int, float)) \
                or not math.isfinite(st["median_s"]) or st["median_s"] < 0:
            raise ValueError(f"{where}: stage {name!r}: rate {st['rate']!r} / median_s {st['median_s']!r} are not "
                             "numbers >= 0")
        if not isinstance(st["times_s"], list) or len(st["times_s"]) != st["repeats"]:
            raise ValueError(f"{where}: stage {name!r}: {st['repeats']!r} repeats but times_s holds "
                             f"{st['times_s']!r}")
    return record


def read_record(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such bench record")
    try:
        record = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not a JSON bench record ({e})") from None
    return check_record(record, str(p))


def compare(a: dict, b: dict) -> dict:
    """Two records side by side: per stage (union, ``a``'s order first) both rates and ``b_over_a`` (> 1: ``b``
    is faster); a stage measured in other units on the two sides gets no ratio."""
    rows = []
    for name in list(dict.fromkeys([*a["stages"], *b["stages"]])):
        sa, sb = a["stages"].get(name), b["stages"].get(name)
        row = {"stage": name, "unit": (sa or sb)["unit"], "rate_a": sa and sa["rate"], "rate_b": sb and sb["rate"],
               "repeats_a": sa and sa["repeats"], "repeats_b": sb and sb["repeats"], "b_over_a": None}
        if sa and sb and sa["unit"] == sb["unit"] and sa["rate"]:
            row["b_over_a"] = sb["rate"] / sa["rate"]
        elif sa and sb:
            row["note"] = f"units differ: {sa['unit']} vs {sb['unit']}"
        rows.append(row)
    return {"kind": KIND + "-compare", "a": {"name": label(a), "machine": a.get("machine", {}), "config": a.get("config")},
            "b": {"name": label(b), "machine": b.get("machine", {}), "config": b.get("config")}, "stages": rows}


def compare_table(cmp: dict) -> str:
    """The comparison as a fixed-width text table."""
    lines = [f"A: {cmp['a']['name']}", f"B: {cmp['b']['name']}",
             f"{'stage':<28} {'unit':<11} {'A':>12} {'B':>12} {'B/A':>7}"]
    for r in cmp["stages"]:
        fa = "-" if r["rate_a"] is None else f"{r['rate_a']:.4g}"
        fb = "-" if r["rate_b"] is None else f"{r['rate_b']:.4g}"
        ratio = "-" if r["b_over_a"] is None else f"{r['b_over_a']:.2f}"
        lines.append(f"{r['stage']:<28} {r['unit']:<11} {fa:>12} {fb:>12} {ratio:>7}")
    return "\n".join(lines)
