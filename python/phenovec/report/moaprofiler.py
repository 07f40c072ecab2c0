"""The report's MOAProfiler section: Wong et al. 2023's evaluation protocol on the report's well profiles.

The analyses are :mod:`phenovec.evaluate`'s (each tested against a brute-force reference); this module chooses
the wells the paper evaluates and draws its figures:

* **wells**: the report's evaluated wells (held-out test wells when the profiles carry a split, else every
  well), without controls, restricted to MOAs with at least two compounds
  (:func:`phenovec.evaluate.moa_test_wells`); Pearson correlation throughout, as the paper;
* **numbers**: intra- vs inter-MOA similarity and their delta (``moa_similarity_delta``); the three groups (same
  compound, same MOA, different MOA) with two-sided z-tests (``three_group_pcc``); class-latent assignment F1 /
  precision / recall (``class_latent_assignment``); k-NN accuracy and weighted F1 for k = 1..``max_k``, leaving
  the query's compound out (``knn_accuracy``); enrichment odds ratios at the 98-99.8th percentiles
  (``enrichment(percentile="moaprofiler")``, headline 99th); and, when the profiles have training and test wells,
  the hold-out identification of the test compounds' MOAs from the training wells' MOA medians, individual and
  aggregated vote against the 1/#MOAs baseline (``holdout_moa_identification``);
* **figures**: the enrichment curve, intra/inter bars per MOA, k-NN score vs k, the three-group bars with their
  p-values, and a t-SNE of the three largest MOAs' wells.

An analysis that cannot run on the wells given (one MOA, a MOA with one well, no training wells) is left out with
its reason in the report's notes, never silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from phenovec.figure import Figure, png_bytes, pyplot
from phenovec.report.inputs import ReportInput

MAX_K = 30
TSNE_MOAS = 3


@dataclass
class MoaProfilerSection:
    """The protocol's numbers (one dict) and tables, for the HTML, the JSON and the figures."""

    summary: dict = field(default_factory=dict)
    delta_per_moa: pd.DataFrame | None = None
    groups: pd.DataFrame | None = None
    knn: pd.DataFrame | None = None
    enrichment: pd.DataFrame | None = None
    holdout: pd.DataFrame | None = None
    tsne: pd.DataFrame | None = None
    wells: int = 0
    moas: int = 0
    compounds: int = 0


def _frame(inp: ReportInput, mask: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    return inp.meta[mask].reset_index(drop=True), inp.x[mask]


def _step(notes: list, what: str, fn):
    try:
        return fn()
    except (ValueError, KeyError) as e:
        notes.append(f"MOAProfiler {what} left out: {e}")
        return None


def moaprofiler_section(inp: ReportInput, evaluated: ReportInput, *, split_column: str = "Metadata_Split",
                        max_k: int = MAX_K, seed: int = 0, notes: list | None = None) -> MoaProfilerSection | None:
    """The protocol on ``evaluated`` (the report's scope) and, for the hold-out identification, on ``inp``'s
    training vs test wells; None (with a note) when no analysis can run."""
    import phenovec.evaluate as pe

    notes = notes if notes is not None else []
    moa, cpd = inp.moa_column, inp.treatment_column
    # the paper's filter is a property of the data set: MOAs with two or more compounds over every treated well
    tw = _step(notes, "protocol", lambda: pe.moa_test_wells(*_frame(inp, ~inp.control), moa_col=moa,
                                                            compound_col=cpd, control=None, missing="drop"))
    if tw is None:
        return None
    eligible = set(tw[0][moa])
    m, f = _frame(evaluated, ~evaluated.control & evaluated.meta[moa].isin(eligible).to_numpy())
    if m[moa].nunique() < 2:
        notes.append(f"MOAProfiler protocol left out: {m[moa].nunique()} MOA with two or more compounds among the "
                     "evaluated wells (at least 2 are needed)")
        return None
    one_each = bool((m.groupby(moa)[cpd].nunique() < 2).all())
    sec = MoaProfilerSection(wells=len(m), moas=int(m[moa].nunique()), compounds=int(m[cpd].nunique()))
    s = sec.summary
    got = _step(notes, "similarity delta", lambda: pe.moa_similarity_delta(m, f, moa_col=moa, compound_col=cpd))
    if got is not None:
        row = got[0].iloc[0]
        s.update({k: row[k] for k in ("intra", "inter", "delta", "p_value") if k in row.index})
        sec.delta_per_moa = got[1]
    got = None if one_each else _step(notes, "three-group similarity",
                                      lambda: pe.three_group_pcc(m, f, moa_col=moa, compound_col=cpd))
    if got is not None:
        row = got[0].iloc[0]
        s.update({f"pcc_{k}": row[k] for k in ("same_compound", "same_moa", "different_moa")})
        s.update({k: row[k] for k in row.index if k.startswith("p_")})
        sec.groups = got[1]
    got = _step(notes, "class-latent assignment", lambda: pe.class_latent_assignment(m, f, moa_col=moa,
                                                                                     compound_col=cpd))
    if got is not None:
        row = got[0].iloc[0]
        s.update({f"class_latent_{k}": row[k] for k in ("f1", "precision", "recall")})

    def knn():
        probe = pe.knn_accuracy(m, f, moa_col=moa, compound_col=cpd, k=1)[1]
        top = int(min(max_k, probe["n_candidates"].min()))
        return pe.knn_accuracy(m, f, moa_col=moa, compound_col=cpd, k=list(range(1, top + 1)))

    got = None if one_each else _step(notes, "k-NN", knn)
    if one_each:
        notes.append("MOAProfiler three-group similarity and k-NN left out: every evaluated MOA has one compound "
                     "among the evaluated wells (a compound hold-out); the hold-out identification scores them")
    if got is not None:
        sec.knn = got[0][["k", "accuracy", "f1_weighted", "precision_weighted", "recall_weighted"]]
        best = sec.knn.loc[sec.knn["f1_weighted"].idxmax()]
        s.update({"knn_f1_k1": float(sec.knn["f1_weighted"].iloc[0]), "knn_best_f1": float(best["f1_weighted"]),
                  "knn_best_k": int(best["k"])})
    got = _step(notes, "enrichment", lambda: pe.enrichment(m, f, replicate_groups=moa, percentile="moaprofiler"))
    if got is not None:
        sec.enrichment = got
        at99 = got.loc[np.isclose(got["enrichment_percentile"], 0.99), "odds_ratio"]
        s["enrichment_99"] = float(at99.iloc[0]) if len(at99) else None
    _holdout(inp, sec, split_column, notes)
    sec.tsne = _tsne(m, f, moa, seed)
    return sec


def _holdout(inp: ReportInput, sec: MoaProfilerSection, split_column: str, notes: list) -> None:
    import phenovec.evaluate as pe

    if split_column not in inp.meta.columns:
        notes.append(f"MOAProfiler hold-out identification left out: no training split ({split_column} absent)")
        return
    split = inp.meta[split_column].astype(str).to_numpy()
    test = "test" if (split == "test").any() else "val"
    rows = ~inp.control & np.isin(split, ["train", test])
    meta, x = _frame(inp, rows)
    meta[split_column] = meta[split_column].astype(str)
    got = _step(notes, "hold-out identification", lambda: pe.holdout_moa_identification(
        meta, x, moa_col=inp.moa_column, compound_col=inp.treatment_column, split_col=split_column,
        train_value="train", test_value=test))
    if got is None:
        return
    row = got[0].iloc[0]
    sec.summary.update({f"holdout_{k}": row[k] for k in row.index if k != "similarity_metric"})
    sec.holdout = got[1]


def _tsne(m: pd.DataFrame, f: np.ndarray, moa: str, seed: int) -> pd.DataFrame | None:
    """t-SNE (scikit-learn) of the wells of the ``TSNE_MOAS`` largest MOAs (ties: name order)."""
    from sklearn.manifold import TSNE

    counts = m[moa].value_counts()
    top = sorted(counts.index, key=lambda k: (-counts[k], str(k)))[:TSNE_MOAS]
    sel = m[moa].isin(top).to_numpy()
    if sel.sum() < 5:
        return None
    xs = np.asarray(f[sel], dtype=np.float64)
    xs = (xs - xs.mean(1, keepdims=True)) / (xs.std(1, keepdims=True) + 1e-12)  # Pearson geometry
    emb = TSNE(n_components=2, perplexity=float(min(30, max(2, (sel.sum() - 1) // 3))), init="pca",
               random_state=seed).fit_transform(xs)
    return pd.DataFrame({"moa": m.loc[sel, moa].astype(str).to_numpy(), "tSNE1": emb[:, 0], "tSNE2": emb[:, 1]})


def moaprofiler_figures(sec: MoaProfilerSection | None) -> list[Figure]:
    """The paper's figures for what was computed (report order)."""
    if sec is None:
        return []
    plt = pyplot()
    out = []
    if sec.enrichment is not None:
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        e = sec.enrichment
        ax.plot(e["enrichment_percentile"] * 100, e["odds_ratio"].replace([np.inf], np.nan), "o-")
        ax.set_xlabel("similarity percentile (%)")
        ax.set_ylabel("odds ratio (same MOA)")
        ax.grid(alpha=0.3)
        out.append(Figure("moaprofiler_enrichment", "MOA enrichment (98-99.8th percentile)",
                          "Odds that a well pair above each Pearson-similarity percentile shares its MOA.",
                          png_bytes(fig)))
    if sec.delta_per_moa is not None:
        d = sec.delta_per_moa.sort_values("delta", ascending=False)
        fig, ax = plt.subplots(figsize=(max(4.6, 0.45 * len(d) + 1.5), 3.6))
        pos = np.arange(len(d))
        ax.bar(pos - 0.2, d["intra"], 0.4, label="same MOA")
        ax.bar(pos + 0.2, d["inter"], 0.4, label="different MOA")
        ax.set_xticks(pos, [str(v) for v in d.iloc[:, 0]], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("mean Pearson r")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        out.append(Figure("moaprofiler_delta", "Intra- vs inter-MOA similarity",
                          f"Per MOA, mean Pearson r of same-MOA and different-MOA well pairs; delta over all wells "
                          f"{sec.summary.get('delta', float('nan')):.3f}.", png_bytes(fig)))
    if sec.knn is not None:
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        ax.plot(sec.knn["k"], sec.knn["f1_weighted"], "o-", ms=3, label="weighted F1")
        ax.plot(sec.knn["k"], sec.knn["accuracy"], "s-", ms=3, label="accuracy")
        ax.set_xlabel("k (neighbours, query's compound left out)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        out.append(Figure("moaprofiler_knn", "k-NN MOA prediction vs k",
                          "Majority MOA of the k most correlated wells of other compounds.", png_bytes(fig)))
    if sec.groups is not None:
        g = sec.groups
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        ax.bar(range(len(g)), g["mean"], yerr=g["sd"], capsize=3, color=["C0", "C1", "C7"][: len(g)])
        ax.set_xticks(range(len(g)), [str(v).replace("_", " ") for v in g["group"]])
        ax.set_ylabel("mean Pearson r (SD)")
        s = sec.summary
        ps = [("same compound vs same MOA", s.get("p_same_compound_vs_same_moa")),
              ("same MOA vs different MOA", s.get("p_same_moa_vs_different_moa"))]
        ax.set_title("; ".join(f"{a}: p = {_p(v)}" for a, v in ps if v is not None), fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        out.append(Figure("moaprofiler_groups", "Same compound / same MOA / different MOA",
                          "Mean Pearson r of unique well pairs in each group; two-sided z-tests of the differences.",
                          png_bytes(fig)))
    if sec.tsne is not None:
        fig, ax = plt.subplots(figsize=(4.6, 3.8))
        for i, (name, part) in enumerate(sec.tsne.groupby("moa", sort=True)):
            ax.scatter(part["tSNE1"], part["tSNE2"], s=14, color=f"C{i}", label=name)
        ax.legend(fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        out.append(Figure("moaprofiler_tsne", f"t-SNE of the {TSNE_MOAS} largest MOAs",
                          "Wells of the three MOAs with the most evaluated wells (scikit-learn t-SNE, seeded).",
                          png_bytes(fig)))
    return out


def _p(v) -> str:
    v = float(v)
    return "< 1e-300" if v == 0 else f"{v:.2g}"
