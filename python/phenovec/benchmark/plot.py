"""The ``phenovec bench`` PNGs: one record's rates, or two records side by side (log-scale bars, one per stage)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from phenovec.benchmark.record import label
from phenovec.figure import png_bytes, pyplot
from phenovec.io.atomic import write_bytes_atomic


def _bars(ax, names, series, labels, units):
    plt_h = 0.8 / len(series)
    y = np.arange(len(names))
    for k, (vals, lab) in enumerate(zip(series, labels)):
        v = np.array([np.nan if x is None else x for x in vals], dtype=float)
        bars = ax.barh(y + k * plt_h, np.where(np.isfinite(v), v, 0), height=plt_h, label=lab)
        for b, x in zip(bars, v):
            if np.isfinite(x):
                ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {x:,.0f}" if x >= 100 else f" {x:.3g}", va="center", fontsize=7)
    ax.set_yticks(y + plt_h * (len(series) - 1) / 2, [f"{n} ({u})" for n, u in zip(names, units)], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("rate (work / median seconds; log scale)")


def plot_record(record: dict, path: str | Path) -> Path:
    plt = pyplot()
    names = list(record["stages"])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
    _bars(ax, names, [[record["stages"][n]["rate"] for n in names]], [label(record)],
          [record["stages"][n]["unit"] for n in names])
    ax.set_title(f"phenovec bench: {label(record)}", fontsize=9)
    return write_bytes_atomic(path, png_bytes(fig))


def plot_compare(cmp: dict, path: str | Path) -> Path:
    plt = pyplot()
    rows = cmp["stages"]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    _bars(ax, [r["stage"] for r in rows], [[r["rate_a"] for r in rows], [r["rate_b"] for r in rows]],
          [f"A: {cmp['a']['name']}", f"B: {cmp['b']['name']}"], [r["unit"] for r in rows])
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("phenovec bench: two machines", fontsize=9)
    return write_bytes_atomic(path, png_bytes(fig))
