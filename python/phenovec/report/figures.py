"""The report's figures: matplotlib (Agg backend, no display needed), each rendered to PNG bytes.

One function per figure; each returns a :class:`Figure` (title, caption, PNG) or ``None`` when its
metric was not computed. Plain look: default style, grid, labelled axes, 100 dpi.
"""
from __future__ import annotations

import numpy as np

from phenovec.figure import DPI, Figure, png_bytes as _png, pyplot as _pyplot  # noqa: F401  (re-exported)
from phenovec.report.metrics import ReportMetrics

LABELLED = 8  # treatments named on the volcano plot


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
    top = np.argsort(-(d["mean_average_precision"].to_numpy(float) + 1e-3 * y), kind="stable")[:LABELLED]
    t = r.settings["treatment_column"]
    spots: dict[tuple, list] = {}  # treatments at the same point share one label
    for i in top:
        key = (round(float(d["mean_average_precision"].iloc[i]), 4), round(float(y[i]), 4))
        spots.setdefault(key, []).append(str(d[t].iloc[i]))
    for k, ((mx, my), names) in enumerate(spots.items()):  # alternate above / below so neighbours stay legible
        ax.annotate(", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])} +{len(names) - 3}",
                    (mx, my), fontsize=7, xytext=(-4, 5 if k % 2 == 0 else -10), textcoords="offset points",
                    ha="right")
    ax.set_xlabel("replicate mAP (vs controls)")
    ax.set_ylabel("-log10 corrected p")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return Figure("replicate_map", "Replicate mAP per treatment",
                  "Phenotypic activity: each treatment's replicate wells retrieved against control wells "
                  f"(copairs mAP, permutation p-value, Benjamini-Hochberg); the top {LABELLED} treatments by mAP are "
                  "named. The smallest p a null of n draws can give is 1/(n+1).", _png(fig))


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


def _scatter_groups(ax, x, y, labels, controls, title, xlabel, ylabel):
    """Categories coloured (legend up to 20), control wells drawn last, black-edged, on top."""
    cats = [c for c in dict.fromkeys(labels[~controls])] if (~controls).any() else []
    cmap = _pyplot().get_cmap("tab20" if len(cats) > 10 else "tab10")
    for i, c in enumerate(cats):
        sel = (labels == c) & ~controls
        ax.scatter(x[sel], y[sel], s=14, alpha=0.8, color=cmap(i % cmap.N), label=str(c))
    if controls.any():
        ax.scatter(x[controls], y[controls], s=22, color="white", edgecolors="black", linewidths=0.9,
                   label="control", zorder=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(cats) <= 20:
        ax.legend(fontsize=7, markerscale=1.2, loc="best")
    ax.grid(alpha=0.3)


def _views_figure(r: ReportMetrics, kind: str) -> Figure | None:
    v = r.views
    if v is None or f"{kind}1" not in v or f"{kind}2" not in v:
        return None
    plt = _pyplot()
    m, p = r.settings["moa_column"], r.settings["plate_column"]
    ctrl = v["control"].to_numpy(bool)
    x, y = v[f"{kind}1"].to_numpy(float), v[f"{kind}2"].to_numpy(float)
    ev = r.views_explained_variance
    xl, yl = ((f"PC1 ({100 * ev[0]:.1f}%)", f"PC2 ({100 * ev[1]:.1f}%)") if kind == "PC" and len(ev) > 1
              else (f"{kind}1", f"{kind}2"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _scatter_groups(axes[0], x, y, v[m].astype(str).to_numpy(), ctrl, "by MOA", xl, yl)
    _scatter_groups(axes[1], x, y, v[p].astype(str).to_numpy(), ctrl, "by plate", xl, yl)
    name = "PCA" if kind == "PC" else "UMAP"
    scope = "every well (training and held-out)" if "split" in v else "every well"
    return Figure(f"{name.lower()}_views", f"{name} of well profiles",
                  f"{name} of {scope}, coloured by MOA (left) and by plate (right); control wells are the open "
                  "black circles, drawn on top. Wells grouping by plate rather than by MOA point to a technical "
                  "(batch) artifact.", _png(fig))


def pca_views_figure(r: ReportMetrics) -> Figure | None:
    return _views_figure(r, "PC")


def umap_views_figure(r: ReportMetrics) -> Figure | None:
    return _views_figure(r, "UMAP")


def training_curve_figure(r: ReportMetrics) -> Figure | None:
    tr = r.context.training if r.context is not None else None
    if tr is None or tr.empty:
        return None
    plt = _pyplot()
    metrics = [c.removeprefix("train_") for c in tr.columns if c.startswith("train_") and c not in
               ("train_cells", "train_seconds")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.3), squeeze=False)
    for ax, name in zip(axes[0], metrics):
        for split, style in (("train", "o-"), ("val", "s--")):
            col = f"{split}_{name}"
            if col in tr and tr[col].notna().any():
                ax.plot(tr["epoch"], tr[col], style, label=split, ms=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return Figure("training_curve", "Training curve",
                  "Per epoch, on the training cells and the validation cells (never trained on): " +
                  ", ".join(m.replace("_", " ") for m in metrics) + ".", _png(fig))


def _composite(crop: np.ndarray, channels: list[str]) -> np.ndarray:
    """An RGB composite of a C x H x W crop in [0, 1]: DNA blue, ER / RNA green, AGP / Mito red where named so,
    otherwise the first three channels."""
    idx = {c.lower(): i for i, c in enumerate(channels)}
    groups = [("agp", "mito", "actin"), ("er", "rna"), ("dna", "hoechst", "dapi")]
    rgb = []
    for k, names in enumerate(groups):
        hit = [idx[n] for n in names if n in idx]
        if not hit:
            hit = [k] if k < crop.shape[0] else []
        rgb.append(crop[hit].max(axis=0) if hit else np.zeros(crop.shape[1:], np.float32))
    return np.clip(np.stack(rgb, axis=-1), 0, 1)


def gallery_figure(r: ReportMetrics) -> Figure | None:
    ctx = r.context
    if ctx is None or not ctx.gallery:
        return None
    plt = _pyplot()
    by_moa: dict[str, list] = {}
    for c in ctx.gallery:
        by_moa.setdefault(c.moa, []).append(c)
    n_ch = ctx.gallery[0].crop.shape[0]
    per = max(len(v) for v in by_moa.values())
    cols = n_ch + per
    fig, axes = plt.subplots(len(by_moa), cols, figsize=(1.15 * cols, 1.25 * len(by_moa) + 0.3), squeeze=False)
    for row, (moa, cells) in enumerate(by_moa.items()):
        first = cells[0]
        for j in range(n_ch):
            axes[row, j].imshow(first.crop[j], cmap="gray", vmin=0, vmax=1)
            if row == 0:
                axes[row, j].set_title(ctx.channels[j] if j < len(ctx.channels) else f"ch{j}", fontsize=8)
        for j in range(per):
            ax = axes[row, n_ch + j]
            if j < len(cells):
                ax.imshow(_composite(cells[j].crop, ctx.channels))
                ax.set_xlabel(cells[j].treatment, fontsize=6, labelpad=1)
            if row == 0 and j == 0:
                ax.set_title("composites", fontsize=8, loc="left")
        axes[row, 0].set_ylabel(moa[:22], fontsize=7, rotation=0, ha="right", va="center")
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
    return Figure("gallery", "Example cells per MOA",
                  "Single-cell crops chosen at random (seeded) among whole crops of each MOA: the first cell per "
                  "channel, then composites (DNA blue, ER / RNA green, AGP / Mito red). Intensities are scaled per "
                  "channel over the gallery (0.5-99.5 percentiles).", _png(fig))


def _plate_grid(wells: list[str]):
    rows = sorted({w[0] for w in wells})
    cols = sorted({int(w[1:]) for w in wells if w[1:].isdigit()})
    return rows, cols


def qc_figure(r: ReportMetrics) -> Figure | None:
    q = r.qc_wells
    if q is None or q.empty:
        return None
    plt = _pyplot()
    plates = sorted(q["Metadata_Plate"].astype(str).unique())
    rows, cols = _plate_grid(list(q["Metadata_Well"].astype(str)))
    if not rows or not cols:
        return None
    vmax = max(int(q["cells"].max()), 1)
    fig, axes = plt.subplots(1, len(plates), figsize=(0.32 * len(cols) * len(plates) + 1.5, 0.32 * len(rows) + 1.2),
                             squeeze=False)
    im = None
    for ax, plate in zip(axes[0], plates):
        grid = np.full((len(rows), len(cols)), np.nan)
        g = q[q["Metadata_Plate"].astype(str) == plate]
        for w, n in zip(g["Metadata_Well"].astype(str), g["cells"]):
            if w[1:].isdigit():
                grid[rows.index(w[0]), cols.index(int(w[1:]))] = n
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax)
        zero = np.argwhere(grid == 0)
        for i, j in zero:
            ax.text(j, i, "x", ha="center", va="center", color="red", fontsize=8)
        ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=6)
        ax.set_yticks(range(len(rows)), rows, fontsize=6)
        ax.set_title(plate, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="cells")
    return Figure("qc_cells", "Cells per well",
                  "Profiled cells in each well of each plate (plate layout); red x: no cell located, so no profile.",
                  _png(fig))


def assay_figure(r: ReportMetrics) -> Figure | None:
    ctx = r.context
    if ctx is None or ctx.assay_per_task is None or ctx.assay_per_task.empty:
        return None
    from phenovec.evaluate.assay_prediction import measured_vs_auc_figure

    f = measured_vs_auc_figure(ctx.assay_per_task)
    return Figure("assays", "Assay prediction: ROC AUC per assay", f.caption, f.png)


def gradcam_figures(r: ReportMetrics) -> list[Figure]:
    ctx = r.context
    if ctx is None or not ctx.gradcam:
        return []
    return [Figure(f"gradcam_{i}", f"Grad-CAM: {moa} ({treatment})",
                   "Where the trained model looks in one example cell: each stain, the Grad-CAM of the backbone's last "
                   "convolutional block over it, and a heat map per channel (CAM x positive gradient x input of that "
                   "stain, one scale; the title gives each stain's share).", png)
            for i, (moa, treatment, png) in enumerate(ctx.gradcam)]


def all_figures(r: ReportMetrics) -> list[Figure]:
    """Every figure that has its metric, in report order."""
    makers = (replicate_map_figure, moa_map_figure, enrichment_figure, precision_recall_figure, hit_at_k_figure,
              pca_views_figure, umap_views_figure, training_curve_figure, gallery_figure, qc_figure, assay_figure)
    from phenovec.report.batch_effects import batch_effects_figure
    from phenovec.report.mapping import mapping_figures
    from phenovec.activity.report_section import activity_figures
    from phenovec.report.moaprofiler import moaprofiler_figures

    return [f for f in (mk(r) for mk in makers) if f is not None] + gradcam_figures(r) + \
        [f for f in (batch_effects_figure(r.batch_effects),) if f is not None] + mapping_figures(r.mapping) \
        + moaprofiler_figures(r.moaprofiler) \
        + activity_figures(r.activity)
