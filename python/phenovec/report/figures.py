"""The report's figures: matplotlib (Agg backend, no display needed), each rendered to PNG bytes.

One function per figure; each returns a :class:`Figure` (title, caption, PNG) or ``None`` when its
metric was not computed. Plain look: default style, grid, labelled axes, 100 dpi.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from phenovec.report.metrics import ReportMetrics

DPI = 100


@dataclass
class Figure:
    key: str
    title: str
    caption: str
    png: bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def enrichment_figure(r: ReportMetrics) -> Figure | None:
    if r.enrichment is None:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    e = r.enrichment
    odds = e["odds_ratio"].replace([np.inf], np.nan)
    ax.plot(e["enrichment_percentile"] * 100, odds, "o-", color="C0")
    ax.set_xlabel("similarity percentile (%)")
    ax.set_ylabel("odds ratio")
    ax.grid(alpha=0.3)
    return Figure("enrichment", "Enrichment odds ratio",
                  "Fisher odds ratio of same-MOA pairs among the pairs above each similarity percentile "
                  "(cytominer-eval enrichment; infinite ratios not drawn).", _png(fig))


def precision_recall_figure(r: ReportMetrics) -> Figure | None:
    if r.precision_recall_summary is None:
        return None
    plt = _pyplot()
    s = r.precision_recall_summary
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(s["k"], s["mean_precision"], "o-", label="precision@k")
    ax.plot(s["k"], s["mean_recall"], "s-", label="recall@k")
    ax.set_xscale("log")
    ax.set_xticks(list(s["k"]), [str(k) for k in s["k"]])
    ax.set_xlabel("k")
    ax.set_ylabel("mean over treatments")
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.grid(alpha=0.3)
    return Figure("precision_recall", "Precision and recall at k",
                  "Same-MOA retrieval per treatment (cytominer-eval precision_recall), averaged over treatments.",
                  _png(fig))


def hit_at_k_figure(r: ReportMetrics) -> Figure | None:
    if r.hit_at_k_accumulated is None:
        return None
    plt = _pyplot()
    a = r.hit_at_k_accumulated
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(a["percent"], a["normalised_score"], color="C2")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("top % of the ranked list")
    ax.set_ylabel("normalised accumulated score")
    ax.grid(alpha=0.3)
    return Figure("hit_at_k", "hit@k normalised accumulated score",
                  "Hits above the random expectation, accumulated over the ranked lists (Bornholdt 2021); "
                  "0 is a random ranking.", _png(fig))


def replicate_map_figure(r: ReportMetrics) -> Figure | None:
    if r.replicate_map is None:
        return None
    plt = _pyplot()
    d = r.replicate_map
    y = -np.log10(d["corrected_p_value"].to_numpy(float))
    sig = d["below_corrected_p"].to_numpy(bool)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(d["mean_average_precision"][~sig], y[~sig], s=14, color="grey", label="not significant")
    ax.scatter(d["mean_average_precision"][sig], y[sig], s=14, color="C3", label="significant")
    ax.axhline(-np.log10(r.settings["threshold"]), color="grey", ls="--", lw=0.8)
    ax.set_xlabel("replicate mAP (vs controls)")
    ax.set_ylabel("-log10 corrected p")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return Figure("replicate_map", "Replicate mAP per treatment",
                  "Phenotypic activity: each treatment's replicate wells retrieved against control wells "
                  "(copairs mAP, permutation p-value, Benjamini-Hochberg).", _png(fig))


def moa_map_figure(r: ReportMetrics) -> Figure | None:
    if r.moa_map is None:
        return None
    plt = _pyplot()
    m = r.settings["moa_column"]
    d = r.moa_map.sort_values("mean_average_precision")
    fig, ax = plt.subplots(figsize=(5, 0.8 + 0.25 * len(d)))
    colors = np.where(d["below_corrected_p"].to_numpy(bool), "C3", "grey")
    ax.barh(d[m].astype(str), d["mean_average_precision"], color=colors)
    ax.set_xlabel("MOA mAP (same MOA, other treatment)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3, axis="x")
    return Figure("moa_map", "MOA mAP",
                  "Phenotypic consistency per MOA (copairs mAP); red: corrected p below the threshold.", _png(fig))


def _pca_axes(r: ReportMetrics, ax, labels, title):
    d = r.pca
    ev = r.pca_explained_variance_ratio
    x = d["PC1"].to_numpy()
    y = d["PC2"].to_numpy() if "PC2" in d else np.zeros(len(d))
    cats = list(dict.fromkeys(labels))
    cmap = _pyplot().get_cmap("tab20" if len(cats) > 10 else "tab10")
    for i, c in enumerate(cats):
        sel = labels == c
        ax.scatter(x[sel], y[sel], s=10, alpha=0.7, color=cmap(i % cmap.N), label=str(c))
    ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}%)")
    ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}%)" if len(ev) > 1 else "")
    ax.set_title(title)
    if len(cats) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.grid(alpha=0.3)


def pca_plate_figure(r: ReportMetrics) -> Figure:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    _pca_axes(r, ax, r.pca[r.settings["plate_column"]].astype(str).to_numpy(), "by plate")
    return Figure("pca_plate", "PCA of well profiles by plate",
                  "Wells clustering by plate point to a technical (batch) artifact.", _png(fig))


def pca_control_figure(r: ReportMetrics) -> Figure:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    _pca_axes(r, ax, np.where(r.pca["control"].to_numpy(bool), "control", "treatment"), "by control")
    return Figure("pca_control", "PCA of well profiles by control",
                  "Control wells should form one group; spread across plates is a technical artifact.", _png(fig))


def all_figures(r: ReportMetrics) -> list[Figure]:
    """Every figure that has its metric, in report order."""
    makers = (replicate_map_figure, moa_map_figure, enrichment_figure, precision_recall_figure, hit_at_k_figure,
              pca_plate_figure, pca_control_figure)
    return [f for f in (mk(r) for mk in makers) if f is not None]
