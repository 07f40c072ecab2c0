"""The few-shot benchmark as a section of ``phenovec report``: mean AUROC against the support size M per learner (a
figure and a table), and the one-sided paired Wilcoxon p-value matrix per M (a figure and tables).

    sec = read_activity_section("bench-out")          # a `phenovec activity benchmark` output folder
    figures = activity_figures(sec)                   # phenovec.figure.Figure: activity_auroc_vs_m, activity_wilcoxon
    html = activity_section_html(sec, figures_html)   # "<h2>Few-shot activity prediction</h2>..."
    numbers = activity_numbers(sec)                   # plain JSON-able dict for report.json

The HTML uses the report's own table and p-value formatting (:mod:`phenovec.report.html`), so the section looks
like the others; ``figures_html`` is the report's rendering of :func:`activity_figures` (its ``figs_of``).
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

FILES = ("summary.csv", "wilcoxon.csv")


@dataclass
class ActivitySection:
    """A benchmark's tables: ``summary`` (learner, M, tasks, metrics), ``wilcoxon`` (M, learner, versus, tasks, p),
    ``throughput`` (or None) and the folder they came from."""

    summary: pd.DataFrame
    wilcoxon: pd.DataFrame
    throughput: pd.DataFrame | None
    source: str

    @property
    def learners(self) -> list[str]:
        return list(dict.fromkeys(self.summary["learner"].astype(str)))


def read_activity_section(folder: str | os.PathLike) -> ActivitySection:
    """The tables of a ``phenovec activity benchmark`` output folder; ``FileNotFoundError`` / ``ValueError`` naming
    the file for a missing file or column."""
    d = Path(folder)
    tables = {}
    for name, cols in (("summary.csv", ("learner", "M", "tasks", "auroc")),
                       ("wilcoxon.csv", ("M", "learner", "versus", "tasks", "p"))):
        path = d / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (not a `phenovec activity benchmark` output folder?)")
        df = pd.read_csv(path)
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r}")
        tables[name] = df
    tp = d / "throughput.csv"
    return ActivitySection(tables["summary.csv"], tables["wilcoxon.csv"], pd.read_csv(tp) if tp.exists() else None,
                           str(d))


def draw_auroc_vs_m(summary: pd.DataFrame):
    """A matplotlib figure: mean AUROC against M (log2 axis), one line per learner, chance dotted."""
    from phenovec.figure import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, g in summary.groupby("learner", sort=False):
        ax.plot(g["M"], g["auroc"], marker="o", label=str(name))
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("support set size M")
    ax.set_ylabel("mean AUROC (episodes, then tasks)")
    ax.set_xscale("log", base=2)
    ms = sorted(summary["M"].unique())
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def p_matrix(wilcoxon: pd.DataFrame, m: int, order: list[str]) -> pd.DataFrame:
    """The p-values at support size ``m``: rows = learner, columns = versus (p that the row beats the column)."""
    g = wilcoxon[wilcoxon["M"] == m]
    mat = g.pivot(index="learner", columns="versus", values="p")
    names = [n for n in order if n in mat.index or n in mat.columns]
    return mat.reindex(index=names, columns=names)


def activity_figures(sec: ActivitySection | None) -> list:
    """``activity_auroc_vs_m`` and ``activity_wilcoxon`` (one panel per M: -log10 p, each cell annotated)."""
    from phenovec.figure import Figure, png_bytes, pyplot
    from phenovec.report.html import format_p

    if sec is None:
        return []
    out = [Figure("activity_auroc_vs_m", "Few-shot activity: mean AUROC vs support size",
                  "Mean AUROC over each test task's episodes, then over the test tasks, per learner and support "
                  "set size M; dotted: chance.", png_bytes(draw_auroc_vs_m(sec.summary)))]
    ms = sorted(sec.wilcoxon["M"].unique())
    if ms:
        plt = pyplot()
        order = sec.learners
        n = len(order)
        fig, axes = plt.subplots(1, len(ms), figsize=(max(3.2, 0.55 * n + 1.2) * len(ms), max(3.0, 0.45 * n + 1.2)),
                                 squeeze=False)
        for ax, m in zip(axes[0], ms):
            mat = p_matrix(sec.wilcoxon, m, order)
            vals = -np.log10(mat.to_numpy(dtype=float))
            top = max(2.0, float(np.nanmax(np.where(np.isfinite(vals), vals, 0.0))))
            ax.imshow(np.where(np.isfinite(vals), vals, np.nan), cmap="viridis", vmin=0, vmax=top)
            for i in range(len(mat.index)):
                for j in range(len(mat.columns)):
                    p = mat.iat[i, j]
                    if p == p:  # dark text on the light (small-p) end of viridis
                        ax.text(j, i, format_p(p), ha="center", va="center", fontsize=6,
                                color="black" if vals[i, j] > top / 2 else "white")
            ax.set_xticks(range(len(mat.columns)), mat.columns, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(mat.index)), mat.index, fontsize=7)
            ax.set_title(f"M = {m}", fontsize=9)
        fig.tight_layout()
        out.append(Figure("activity_wilcoxon", "Few-shot activity: paired Wilcoxon p-values",
                          "One-sided paired Wilcoxon signed-rank p-value that the row learner beats the column "
                          "learner on per-task mean AUROC (exact for small task counts; colour: -log10 p).",
                          png_bytes(fig)))
    return out


def activity_section_html(sec: ActivitySection | None, figures_html: str = "") -> str:
    """The section's HTML (empty without a section): explanation, mean AUROC per learner x M, the figures, the
    p-value matrix per M and the throughput."""
    from phenovec.report.html import table_html as _table

    if sec is None:
        return ""
    auroc = sec.summary.pivot(index="learner", columns="M", values="auroc").reindex(sec.learners)
    auroc.columns = [f"M = {m}" for m in auroc.columns]
    tasks = int(sec.summary["tasks"].max()) if len(sec.summary) else 0
    explain = (f"The FSL-CP benchmark ({html.escape(Path(sec.source).name)}): each learner is fitted on a support "
               f"set of M labelled compounds of a test task and scored on a query set, over many episodes per task "
               f"({tasks} test tasks). Mean AUROC over episodes, then tasks; 0.5 is chance.")
    parts = ["<h2>Few-shot activity prediction</h2>", f'<p class="explain">{explain}</p>',
             _table(auroc.reset_index()), figures_html]
    for m in sorted(sec.wilcoxon["M"].unique()):
        mat = p_matrix(sec.wilcoxon, m, sec.learners)
        n = int(sec.wilcoxon.loc[sec.wilcoxon["M"] == m, "tasks"].max())
        parts += [f"<details><summary>Wilcoxon p-values at M = {m} ({n} tasks; row beats column)</summary>",
                  _table(mat.reset_index().rename(columns={"learner": "p"}), max_rows=None), "</details>"]
    if sec.throughput is not None:
        cols = [c for c in ("learner", "pretrain_seconds", "episodes", "episodes_per_second")
                if c in sec.throughput.columns]
        parts += ["<details><summary>Throughput</summary>", _table(sec.throughput[cols]), "</details>"]
    return "".join(parts)


def activity_numbers(sec: ActivitySection | None) -> dict | None:
    """The section's numbers for ``report.json``: ``{source, auroc: [{learner, M, tasks, auroc}], wilcoxon: [...]}``
    (NaN p-values as null)."""
    if sec is None:
        return None
    auroc = sec.summary[["learner", "M", "tasks", "auroc"]]
    wil = sec.wilcoxon[["M", "learner", "versus", "tasks", "p"]].astype(object)
    wil = wil.where(pd.notna(wil), None)
    return {"source": sec.source,
            "auroc": [{"learner": str(r.learner), "M": int(r.M), "tasks": int(r.tasks), "auroc": float(r.auroc)}
                      for r in auroc.itertuples()],
            "wilcoxon": [{"M": int(r[0]), "learner": str(r[1]), "versus": str(r[2]), "tasks": int(r[3]),
                          "p": None if r[4] is None else float(r[4])} for r in wil.itertuples(index=False)]}
