"""``integration_table``: every integration metric for several embeddings of the same rows, side by side.

The scib benchmark as Arevalo et al. 2024 (figure 2) ran it on Cell Painting profiles: raw / normalised /
sphered / Harmony / ... profiles of the same wells scored by

- batch correction: ``silhouette_batch``, ``ilisi_knn``, ``kbet_per_label``, ``graph_connectivity``,
  ``pcr_comparison`` (against the ``baseline`` embedding, default the first), optionally ``sbee`` (``sbee=True``; off
  by default, as in scib-metrics 0.6.1's Benchmarker);
- bio conservation: ``isolated_labels``, ``nmi_ari_cluster_labels_kmeans`` (nmi, ari), ``silhouette_label``,
  ``clisi_knn``, optionally ``nmi_ari_cluster_labels_leiden`` (``leiden=True``, needs igraph), and phenovec's
  ``mean_average_precision`` (label retrieval, :func:`~phenovec.evaluate.integration.retrieval.label_map`;
  ``mean_average_precision=False`` to skip it: it is O(n^2 log n), minutes beyond ~50k rows);

with scib-metrics' Benchmarker choices: one exact kNN graph of 90 neighbours per embedding, cut to 15 (graph
connectivity, Leiden), 50 (kBET) and 90 (LISI); the label silhouettes computed once serve both
``silhouette_label`` and ``isolated_labels``, and come from the same pass over the pairwise distances as the kNN
graph (:func:`~phenovec.evaluate.integration.distance_pass.knn_graph_and_silhouettes`). Then each metric is min-max scaled across the embeddings and
``total = 0.4 x batch correction + 0.6 x bio conservation`` ranks them (:mod:`.score`).

Returns an :class:`IntegrationResult`: ``table`` (tidy: method, metric, metric_type, value, scaled),
``scores`` (per method: batch correction, bio conservation, total, rank) and ``seconds`` (per method and
step); :func:`integration_heatmap` draws the scaled table as a PNG (needs matplotlib).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from phenovec.evaluate.integration import score as S
from phenovec.evaluate.integration.annotations import annotation_codes, embedding_matrix
from phenovec.evaluate.integration.clustering import nmi_ari_cluster_labels_kmeans, nmi_ari_cluster_labels_leiden
from phenovec.evaluate.integration.graph_connectivity import graph_connectivity
from phenovec.evaluate.integration.isolated_labels import isolated_labels_from_samples
from phenovec.evaluate.integration.kbet import kbet_per_label
from phenovec.evaluate.integration.distance_pass import knn_graph_and_silhouettes
from phenovec.evaluate.integration.lisi import clisi_knn, ilisi_knn
from phenovec.evaluate.integration.pcr import pcr_comparison
from phenovec.evaluate.integration.retrieval import label_map
from phenovec.evaluate.integration.sbee import sbee as sbee_score
from phenovec.evaluate.integration.silhouette import _label_asw, silhouette_batch
from phenovec.evaluate.integration.undefined import UndefinedMetricError

METRIC_TYPES = {
    "isolated_labels": S.BIO,
    "nmi_ari_cluster_labels_leiden_nmi": S.BIO,
    "nmi_ari_cluster_labels_leiden_ari": S.BIO,
    "nmi_ari_cluster_labels_kmeans_nmi": S.BIO,
    "nmi_ari_cluster_labels_kmeans_ari": S.BIO,
    "silhouette_label": S.BIO,
    "clisi_knn": S.BIO,
    "mean_average_precision": S.BIO,
    "silhouette_batch": S.BATCH,
    "ilisi_knn": S.BATCH,
    "kbet_per_label": S.BATCH,
    "graph_connectivity": S.BATCH,
    "pcr_comparison": S.BATCH,
    "sbee": S.BATCH,
}
NEIGHBOURS = (15, 50, 90)


@dataclass
class IntegrationResult:
    table: pd.DataFrame
    scores: pd.DataFrame
    seconds: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: metric -> why it is NaN (``skip_undefined=True``: its definition does not apply to these rows)
    undefined: dict = field(default_factory=dict)

    def wide(self, scaled: bool = False) -> pd.DataFrame:
        """Methods x metrics (raw values, or min-max scaled)."""
        w = self.table.pivot(index="method", columns="metric", values="scaled" if scaled else "value")
        return w.loc[list(dict.fromkeys(self.table["method"])), list(dict.fromkeys(self.table["metric"]))]


def _label(rows, i) -> str:
    """A row's label as errors show it (``57``, ``'well_A01'``; numpy scalars as plain values)."""
    v = rows[int(i)]
    return repr(v.item() if isinstance(v, np.generic) else v)


def _split(name: str, emb, batch_key: str, label_key: str, metadata):
    """``(features, batches, labels, row labels)`` of one embedding; a table's errors name its row labels (its
    index: a file's data rows, 0-based, as ``read_table`` numbers them) and feature names."""
    if isinstance(emb, pd.DataFrame):
        from phenovec.io.profiles import declared_features, is_metadata_column, split_profiles

        rows = emb.index
        df = emb.reset_index(drop=True)
        keys = [k for k in dict.fromkeys((batch_key, label_key)) if k in df.columns]
        feats = declared_features(df)
        feats = [c for c in df.columns if not is_metadata_column(c)] if feats is None else feats
        # the batch and label columns are annotations whatever their names (a plain ``plate`` column too)
        prof = split_profiles(df, features=[c for c in feats if c not in set(keys)])
        meta = prof.meta
        for key, what in ((batch_key, "batch_key"), (label_key, "label_key")):
            if key not in meta.columns:
                raise KeyError(f"{name}: {what} {key!r} is not a metadata column (have {list(meta.columns)[:8]})")
            missing = np.flatnonzero(pd.isna(meta[key]).to_numpy())
            if missing.size:
                raise ValueError(f"{name}: {what} {key!r} is missing (NaN / None) in row {_label(rows, missing[0])} "
                                 f"({missing.size} such rows); drop or fill them first")
        try:
            x = embedding_matrix(prof.feats, f"{name} features")
        except ValueError as e:
            try:
                values = np.asarray(prof.feats, dtype=np.float64)
            except (TypeError, ValueError):
                raise e from None
            if np.isfinite(values).all():
                raise
            r, c = np.argwhere(~np.isfinite(values))[0]
            raise ValueError(f"{name}: feature {prof.features[c]!r} is {values[r, c]} in row {_label(rows, r)} "
                             f"({int((~np.isfinite(values)).any(axis=1).sum())} rows with NaN / inf); drop or impute "
                             "them first") from None
        return x, meta[batch_key].to_numpy(), meta[label_key].to_numpy(), rows
    if metadata is None:
        raise ValueError(f"{name}: a matrix embedding needs metadata= (a table with {batch_key!r} and {label_key!r})")
    for key in (batch_key, label_key):
        if key not in metadata.columns:
            raise KeyError(f"metadata: no column {key!r}")
    x = embedding_matrix(emb, name)
    if len(metadata) != x.shape[0]:
        raise ValueError(f"{name}: {x.shape[0]} rows but metadata has {len(metadata)}")
    return x, metadata[batch_key].to_numpy(), metadata[label_key].to_numpy(), pd.RangeIndex(x.shape[0])


def integration_table(embeddings: Mapping[str, object], batch_key: str, label_key: str, *,
                      metadata: pd.DataFrame | None = None, baseline: str | None = None, leiden: bool = False,
                      mean_average_precision: bool = True, map_distance: str = "cosine", seed: int = 0,
                      min_max: bool = True, sbee: bool = False, pcr: bool = True,
                      skip_undefined: bool = False, sources: Mapping[str, str] | None = None) -> IntegrationResult:
    """Score every embedding (name -> profile table or n x d matrix of the same rows) with the integration set.

    ``pcr=False`` leaves ``pcr_comparison`` out (it compares each embedding with the ``baseline``, so it is 0 by
    construction when there is no other table to compare with). ``skip_undefined=True``: a metric whose definition
    does not apply to these rows (``silhouette_batch`` when no label spans two batches, ...) is NaN, left out of the
    scores' means, with the reason in ``result.undefined``, instead of an error. ``sources``: what errors about a
    table's rows call it (name -> its file; default the name); a table's errors name its index labels as rows."""
    if not embeddings:
        raise ValueError("embeddings: give at least one (name -> profile table or matrix)")
    names = list(embeddings)
    baseline = names[0] if baseline is None else baseline
    if baseline not in embeddings:
        raise KeyError(f"baseline {baseline!r} is not one of the embeddings {names}")
    where = {nm: str((sources or {}).get(nm, nm)) for nm in names}  # what errors call each (its file)
    data = {nm: _split(where[nm], embeddings[nm], batch_key, label_key, metadata) for nm in names}
    ref = data[names[0]]
    n = ref[0].shape[0]
    batch = annotation_codes(ref[1], batch_key, n, min_levels=2)[0]
    labels = annotation_codes(ref[2], label_key, n)[0]
    for nm in names[1:]:
        x, b, l, _ = data[nm]
        if x.shape[0] != n or not (np.array_equal(pd.Series(b).astype(str), pd.Series(ref[1]).astype(str))
                                   and np.array_equal(pd.Series(l).astype(str), pd.Series(ref[2]).astype(str))):
            raise ValueError(f"{nm}: rows differ from {names[0]}'s (the {batch_key} / {label_key} columns must be "
                             f"the same, row for row)")
    kmax = min(max(NEIGHBOURS), n)
    rows, secs, undefined = [], [], {}
    x_pre = data[baseline][0]
    if mean_average_precision and map_distance == "cosine":
        for nm in names:
            zero = np.flatnonzero(~(np.einsum("ij,ij->i", data[nm][0], data[nm][0]) > 0))
            if zero.size:
                raise ValueError(f"{where[nm]}: row {_label(data[nm][3], zero[0])} has zero norm ({zero.size} such rows): its cosine "
                                 "similarity (the mAP's) is undefined; drop it, or give map_distance='euclidean'")
    for nm in names:
        x = data[nm][0]
        t = {}

        def timed(step, fn):
            t0 = time.perf_counter()
            try:
                out = fn()
            except UndefinedMetricError as e:
                if not skip_undefined or step not in METRIC_TYPES:
                    raise
                undefined.setdefault(step, str(e))
                out = np.nan
            t[step] = time.perf_counter() - t0
            return out

        g, sil = timed("knn_graph_and_silhouettes", lambda: knn_graph_and_silhouettes(x, labels, kmax))
        sub = {k: g.subset_neighbors(min(k, kmax)) for k in NEIGHBOURS}
        vals = {}
        vals["silhouette_label"] = _label_asw(sil, True)
        vals["isolated_labels"] = isolated_labels_from_samples(sil, labels, batch)
        km = timed("kmeans", lambda: nmi_ari_cluster_labels_kmeans(x, labels, seed=seed))
        vals["nmi_ari_cluster_labels_kmeans_nmi"], vals["nmi_ari_cluster_labels_kmeans_ari"] = km["nmi"], km["ari"]
        if leiden:
            ld = timed("leiden", lambda: nmi_ari_cluster_labels_leiden(sub[15], labels, seed=42))
            vals["nmi_ari_cluster_labels_leiden_nmi"], vals["nmi_ari_cluster_labels_leiden_ari"] = ld["nmi"], ld["ari"]
        vals["clisi_knn"] = timed("clisi_knn", lambda: clisi_knn(sub[90], labels)) if labels.max() > 0 else np.nan
        if labels.max() == 0 and skip_undefined:
            undefined.setdefault("clisi_knn", "a single label: clisi_knn's scaling (L - m) / (L - 1) needs two")
        if mean_average_precision:
            vals["mean_average_precision"] = timed("mean_average_precision",
                                                   lambda: label_map(x, labels, distance=map_distance))
        vals["silhouette_batch"] = timed("silhouette_batch", lambda: silhouette_batch(x, labels, batch))
        vals["ilisi_knn"] = timed("ilisi_knn", lambda: ilisi_knn(sub[90], batch))
        vals["kbet_per_label"] = timed("kbet_per_label", lambda: kbet_per_label(sub[50], batch, labels))
        vals["graph_connectivity"] = timed("graph_connectivity", lambda: graph_connectivity(sub[15], labels))
        if pcr:
            vals["pcr_comparison"] = timed("pcr_comparison",
                                           lambda: pcr_comparison(x_pre, x, batch, categorical=True))
        if sbee:
            vals["sbee"] = timed("sbee", lambda: sbee_score(sub[90], x, batch, labels))
        if np.isnan(vals["kbet_per_label"]) and skip_undefined:  # every label skipped: under 10 rows or one batch
            undefined.setdefault("kbet_per_label", "no label has at least 10 rows from two or more batches")
        for m, v in vals.items():
            if skip_undefined and np.isnan(v) and m not in undefined:  # a NaN no check above explained
                undefined[m] = f"came out NaN for {nm!r}"
            rows.append({"method": nm, "metric": m, "metric_type": METRIC_TYPES[m], "value": float(v)})
        secs.append({"method": nm, **t})
    table = pd.DataFrame(rows)
    wide = table.pivot(index="method", columns="metric", values="value").loc[names]
    scaled = S.min_max_scale(wide)
    table["scaled"] = [scaled.loc[r.method, r.metric] for r in table.itertuples()]
    scores = S.overall_scores(wide, METRIC_TYPES, min_max=min_max)
    scores.index.name = "method"
    return IntegrationResult(table=table, scores=scores.reset_index(), seconds=pd.DataFrame(secs),
                             undefined=undefined)


HEATMAP_FORMATS = ("png", "pdf", "svg")


def integration_heatmap(result: IntegrationResult, path, title: str | None = None):
    """Heat map of the min-max scaled metrics (rows: methods by decreasing total; columns: metrics grouped by
    type, then the three aggregate scores), each cell annotated with the raw value; written atomically as PNG, PDF or SVG by the name's suffix."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in HEATMAP_FORMATS:
        raise ValueError(f"{path}: the heat map is written as {', '.join(HEATMAP_FORMATS)} (by the name's suffix)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phenovec.io.atomic import atomic_path

    order = result.scores.sort_values(S.TOTAL, ascending=False)["method"].tolist()
    metrics = [m for t in (S.BATCH, S.BIO) for m in dict.fromkeys(result.table["metric"]) if METRIC_TYPES[m] == t]
    raw = result.wide().loc[order, metrics]
    scaled = result.wide(scaled=True).loc[order, metrics]
    agg = result.scores.set_index("method").loc[order, [S.BATCH, S.BIO, S.TOTAL]]
    mat = np.hstack([scaled.to_numpy(float), agg.to_numpy(float)])
    ann = np.hstack([raw.to_numpy(float), agg.to_numpy(float)])
    cols = metrics + [S.BATCH, S.BIO, S.TOTAL]
    fig, ax = plt.subplots(figsize=(1.0 + 0.85 * len(cols), 1.6 + 0.45 * len(order)))
    im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if np.isfinite(ann[i, j]):
                ax.text(j, i, f"{ann[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if np.nan_to_num(mat[i, j]) > 0.6 else "white")
    ax.set_xticks(range(len(cols)), [c.replace("nmi_ari_cluster_labels_", "") for c in cols], rotation=60,
                  ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.axvline(sum(METRIC_TYPES[m] == S.BATCH for m in metrics) - 0.5, color="white", lw=2)
    ax.axvline(len(metrics) - 0.5, color="white", lw=2)
    fig.colorbar(im, ax=ax, fraction=0.03, label="min-max scaled across methods")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format=fmt, bbox_inches="tight")  # the colour bar's label stays in
    plt.close(fig)
    return path
