"""The self-contained HTML report: inline PNG figures (base64 data URIs), HTML tables, no external resource.

The page carries a tiny inline script: on ``load`` it counts the ``<img class="figure">`` elements that
decoded (``complete && naturalWidth > 0``) and writes the count to ``<body data-figures-rendered>``;
``data-figures-expected`` holds the number of figures written. A headless browser's dumped DOM thus
tells whether every figure rendered (tests/test_report.py).
"""
from __future__ import annotations

import base64
import html
import json

import pandas as pd

from phenovec.report.figures import Figure
from phenovec.report.metrics import ReportMetrics

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: .1em; } .subtitle { color: #555; margin-top: 0; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: right; vertical-align: top;
         overflow-wrap: anywhere; word-break: normal; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
table.kv th { text-align: left; font-weight: normal; color: #444; } table.kv td { text-align: left; }
.figs { display: flex; flex-wrap: wrap; gap: 1.2em; }
figure { margin: 0; max-width: 100%; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: .85em; color: #555; max-width: 900px; }
pre { background: #f7f7f7; padding: .8em; white-space: pre-wrap; overflow-wrap: anywhere; font-size: .8em; }
.note { color: #8a4b00; } .scope { background: #eef5ff; border-left: 4px solid #4a7fd0; padding: .5em .8em; }
.explain { color: #444; font-size: .9em; max-width: 900px; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var n = 0;
  document.querySelectorAll("img.figure").forEach(function (im) {
    if (im.complete && im.naturalWidth > 0) { n += 1; }
  });
  document.body.setAttribute("data-figures-rendered", String(n));
});
"""


ROWS_SHOWN = 25  # longer tables show their first rows; the rest sit in a <details> below (and in the JSON)
# column headers as a reader says them; cytominer-eval's misspelt "ods_ratio" stays in the JSON only
HEADERS = {"mean_average_precision": "mAP", "p_value": "p", "corrected_p_value": "corrected p",
           "below_p": "p < threshold", "below_corrected_p": "significant (corrected)", "n_wells": "wells",
           "n_treatments": "treatments", "n_treatments_with_replicates": "treatments with replicates",
           "mean_replicate_map": "mean replicate mAP", "fraction_treatments_significant": "fraction significant",
           "moa_map": "MOA mAP", "moa_p_value": "MOA p", "moa_corrected_p_value": "MOA corrected p",
           "moa_significant": "MOA significant", "mean_precision_at_r": "mean precision@R",
           "enrichment_percentile": "percentile", "odds_ratio": "odds ratio", "mean_precision": "mean precision",
           "mean_recall": "mean recall", "precision_at_r": "precision@R", "normalised_score": "normalised score"}
DROP = ("ods_ratio",)


def format_p(v) -> str:
    """A p-value for reading: 3 significant digits, ``< 1e-300`` for an underflow to 0."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    v = float(v)
    if v == 0.0:
        return "< 1e-300"
    return f"{v:.3g}" if v >= 1e-3 else f"{v:.2e}"


def _header(col: str) -> str:
    if col in HEADERS:
        return HEADERS[col]
    if col.startswith("mean_precision_at_"):
        return f"mean precision@{col.rsplit('_', 1)[1]}"
    return col.removeprefix("Metadata_") if col.startswith("Metadata_") else col


def _cell(col: str, v) -> str:
    if isinstance(v, (bool,)) or type(v).__name__ == "bool_":
        return "yes" if v else "no"
    if isinstance(v, float) or type(v).__name__.startswith("float"):
        if v != v:
            return ""
        if "p_value" in col or col in ("p", "p-value"):
            return format_p(v)
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}"
    return str(v)


def _table(df: pd.DataFrame | None, max_rows: int | None = ROWS_SHOWN) -> str:
    """An HTML table that wraps (never clipped behind a scroll bar); long tables are split at ``max_rows``."""
    if df is None or df.empty:
        return "<p>not computed</p>"
    df = df.drop(columns=[c for c in DROP if c in df.columns])

    def render(part: pd.DataFrame) -> str:
        head = "".join(f"<th>{html.escape(_header(str(c)))}</th>" for c in part.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(str(c), v))}</td>" for c, v in zip(part.columns, row))
                       + "</tr>" for row in part.itertuples(index=False, name=None))
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    if max_rows is None or len(df) <= max_rows:
        return render(df)
    return (render(df.head(max_rows)) + f"<details><summary>the other {len(df) - max_rows} of {len(df)} rows"
            "</summary>" + render(df.iloc[max_rows:]) + "</details>")


table_html = _table  # public: other stages' report sections (phenovec.activity.report_section) render tables alike


def _figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure id="fig-{html.escape(f.key)}"><img class="figure" alt="{html.escape(f.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{html.escape(f.title)}.</b> '
            f"{html.escape(f.caption)}</figcaption></figure>")


def _kv(d: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in d.items())
    return f'<table class="kv">{rows}</table>'


def summary_lines(r: ReportMetrics) -> dict:
    """The results summary, every fraction with its denominator (also what tests read)."""
    c, out = r.counts, {}
    rm, mm = r.replicate_map, r.moa_map
    if rm is not None:
        n, sig = len(rm), int(rm["below_corrected_p"].sum())
        out["Replicate mAP (phenotypic activity)"] = (
            f"{rm['mean_average_precision'].mean():.3f}, mean over {n} of {c['treatments']} treatments "
            f"(those with >= 2 wells); {sig} of {n} significant (corrected p < {r.settings['threshold']:g})")
    if mm is not None:
        n, sig = len(mm), int(mm["below_corrected_p"].sum())
        out["MOA mAP (phenotypic consistency)"] = (
            f"{mm['mean_average_precision'].mean():.3f}, mean over {n} of {c['moas']} MOAs (those with >= 2 "
            f"treatments); {sig} of {n} significant")
    else:
        out["MOA mAP (phenotypic consistency)"] = (f"not computed: {c.get('moas_with_two_treatments', 0)} of "
                                                   f"{c['moas']} MOAs have two or more treatments")
    if r.precision_at_r_mean is not None:
        out["precision@R (same MOA)"] = (f"{r.precision_at_r_mean:.3f}, mean over the treatments of "
                                         f"{c.get('retrieval_wells', 0)} treatment wells whose MOA has >= 2 wells")
    out["wells evaluated"] = (f"{c['wells']} ({c['treatment_wells']} treatment, {c['control_wells']} control) on "
                              f"{c['plates']} plate(s); {c['features']} features")
    return out


def _scope_block(r: ReportMetrics) -> str:
    sc = r.scope or {}
    if not sc:
        return ""
    by = sc.get("by_split")
    split_txt = (" Wells per training split: " + ", ".join(f"{k} {v}" for k, v in by.items()) + ".") if by else ""
    if sc.get("held_out"):
        text = f"Every metric below is computed on the {sc['wells']} {sc['evaluated']}.{split_txt}"
    else:
        text = f"Every metric below is computed on all {sc['wells']} wells: {sc.get('reason', '')}.{split_txt}"
    return f'<p class="scope">{html.escape(text)}</p>'


def _secondary_block(r: ReportMetrics) -> str:
    s = r.secondary
    if not s:
        return ""
    parts = []
    if "replicate_map" in s:
        parts.append(f"replicate mAP {s['replicate_map']:.3f} over {s['replicate_scored']} treatments "
                     f"({s['replicate_significant']} significant)")
    if "moa_map" in s:
        parts.append(f"MOA mAP {s['moa_map']:.3f} over {s['moa_scored']} MOAs ({s['moa_significant']} significant)")
    if not parts:
        return ""
    return ("<details><summary>Secondary view: the training wells (the model saw these cells; optimistic)</summary>"
            f"<p>{html.escape('; '.join(parts))}, on {s['wells']} training wells.</p></details>")


HIT_AT_K = ("hit@k (cytominer-eval): for each treatment's ranked list of other wells, the hits (same MOA) in the top k% "
            "are counted against the number a random ranking would give. The percent score is hits minus expected "
            "over expected, in percent, so it is negative whenever the top k% holds fewer same-MOA wells than "
            "chance would, which happens at small k even for good profiles when each MOA has few wells (a single "
            "list cannot place more hits than the MOA has). The curve shows the normalised accumulated score "
            "(Bornholdt 2021): 0 is a random ranking, positive is better than chance.")


def _assay_section(r: ReportMetrics, figure: str) -> str:
    ctx = r.context
    if ctx is None or ctx.assay_per_task is None:
        return ""
    s = ctx.assay_summary or {}
    lines = {}
    if s.get("auc_mean") is not None:
        lines["mean ROC AUC"] = (f"{s['auc_mean']:.3f} +- {s.get('auc_sd', float('nan')):.3f} over {s.get('n_scored')} "
                                 f"of {s.get('n_tasks')} assays (the others have one class among the scored compounds)")
    for level in (0.9, 0.8, 0.7):
        key = f"auc_gt_{level:g}"
        if key in s:
            lines[f"assays with AUC > {level}"] = f"{s[key]} of {s.get('n_scored')}"
    if "n_compounds_scored" in s:
        lines["compounds scored"] = (f"{s['n_compounds_scored']} {s.get('split', 'held-out')} compounds (never "
                                     "trained on; predictions averaged over each compound's crops)")
    return ("<h2>Assay prediction</h2>" + _kv(lines) + figure + "<h3>Per assay</h3>" + _table(ctx.assay_per_task))


def _batch_section(r: ReportMetrics, figure: str) -> str:
    b = r.batch_effects
    if b is None:
        return ""
    scores = b.scores.copy()
    explain = (f"scib integration metrics of the {b.wells} treated wells with an MOA (controls left out), on every "
               f"plate, whatever the wells' training split: batch = plate ({b.plates} plates), label = MOA "
               f"({b.labels} MOAs). Batch-correction metrics are near 1 when plates mix; bio-conservation metrics "
               "when wells group by MOA. " + ("Scores are min-max scaled across the methods compared, then total = "
                                              "0.4 x batch correction + 0.6 x bio conservation (Arevalo et al. 2024)."
                                              if b.scaled else "One method: the scores are unscaled means of each "
                                              "group's metrics (total = 0.4 x batch correction + 0.6 x bio "
                                              "conservation).")
               + (f" pcr_comparison is measured against {b.baseline!r} (the baseline)." if b.baseline else
                  " pcr_comparison is left out: no baseline table to compare with.")
               + "".join(f" {m} is blank: {why}." for m, why in b.undefined.items()))
    wide = b.table.pivot(index="metric", columns="method", values="value").reindex(
        list(dict.fromkeys(b.table["metric"])))[b.methods].reset_index()
    wide.insert(1, "type", [b.table.loc[b.table["metric"] == m, "metric_type"].iloc[0] for m in wide["metric"]])
    return ("<h2>Batch effects (integration metrics)</h2>" + f'<p class="explain">{html.escape(explain)}</p>'
            + _table(scores) + figure + "<h3>Each metric</h3>" + _table(wide))


MOAPROFILER_LINES = (
    ("intra", "mean Pearson r, same MOA"), ("inter", "mean Pearson r, different MOA"), ("delta", "delta"),
    ("pcc_same_compound", "same compound"), ("pcc_same_moa", "same MOA, other compound"),
    ("pcc_different_moa", "different MOA"), ("class_latent_f1", "class-latent assignment F1"),
    ("knn_f1_k1", "k-NN weighted F1 at k = 1"), ("knn_best_f1", "k-NN best weighted F1"),
    ("enrichment_99", "enrichment odds ratio at the 99th percentile"),
    ("holdout_individual_vote", "hold-out compounds identified, individual vote"),
    ("holdout_aggregated_vote", "hold-out compounds identified, aggregated vote"),
    ("holdout_baseline", "hold-out chance (1 / MOAs)"))


def _moaprofiler_section(r: ReportMetrics, figure: str) -> str:
    sec = r.moaprofiler
    if sec is None:
        return ""
    s = sec.summary
    lines = {label: (f"{s[k]:.3g}" if isinstance(s[k], float) else str(s[k])) for k, label in MOAPROFILER_LINES
             if s.get(k) is not None}
    if "holdout_n_compounds" in s:
        lines["hold-out compounds"] = f"{s['holdout_n_compounds']} of {s.get('holdout_n_test_moas')} MOAs"
    explain = (f"Wong et al. 2023's protocol on {sec.wells} evaluated wells ({sec.compounds} compounds, {sec.moas} "
               "MOAs with two or more compounds; controls left out), Pearson correlation. The hold-out "
               "identification predicts each held-out compound's MOA from the training wells' MOA medians.")
    return ("<h2>MOAProfiler evaluation</h2>" + f'<p class="explain">{html.escape(explain)}</p>' + _kv(lines)
            + figure + ("<h3>Hold-out compounds</h3>" + _table(sec.holdout) if sec.holdout is not None else "")
            + "<details><summary>Per MOA: intra / inter similarity</summary>" + _table(sec.delta_per_moa)
            + "</details>")


def render_html(r: ReportMetrics, figures: list[Figure], numbers: dict, title: str = "phenovec report") -> str:
    """The whole page as a string (see the module docstring)."""
    from phenovec.activity.report_section import activity_section_html
    from phenovec.report.mapping import mapping_section_html

    figs = {f.key: _figure(f) for f in figures}

    def figs_of(*keys):
        got = [figs[k] for k in keys if k in figs]
        return f'<div class="figs">{"".join(got)}</div>' if got else ""

    prov = numbers.get("provenance", {})
    versions = prov.get("versions", {})
    dataset = numbers.get("dataset") or prov.get("input", {}).get("source", "")
    created = prov.get("created_utc", "")
    subtitle = f"{dataset} · {created} · phenovec {versions.get('phenovec', '')}"
    notes = "".join(f'<li class="note">{html.escape(n)}</li>' for n in r.notes)
    settings = {"similarity": r.settings["similarity"], "controls": f"{r.settings['control_query']} "
                f"(read as a {r.settings['control_rule']})", "treatment column": r.settings["treatment_column"],
                "MOA column": r.settings["moa_column"], "plate column": r.settings["plate_column"],
                "null size (permutations per p-value)": r.settings["null_size"], "seed": r.settings["seed"],
                "significance threshold (BH-corrected)": r.settings["threshold"],
                "enrichment percentiles": ", ".join(f"{q:g}" for q in r.settings["percentiles"]),
                "precision/recall k": ", ".join(map(str, r.settings["ks"])),
                "hit@k percents": ", ".join(map(str, r.settings["percent_list"]))}
    ctx = r.context
    qc_parts = []
    if r.qc_wells is not None:
        per_plate = r.qc_wells.groupby("Metadata_Plate")["cells"].agg(["sum", "median", "min", "max"]).reset_index()
        per_plate.columns = ["plate", "cells", "median per well", "min per well", "max per well"]
        qc_parts += ["<h3>Cells per plate</h3>", _table(per_plate), figs_of("qc_cells")]
        qc_parts += ["<h3>Wells flagged or excluded, and why</h3>",
                     _table(r.qc_flagged) if r.qc_flagged is not None and len(r.qc_flagged) else
                     "<p>none: every well has enough cells</p>"]
    if ctx is not None and ctx.edge:
        total = sum(ctx.edge.values())
        qc_parts += ["<h3>Crops at the image edge</h3>", _kv({k: f"{v} of {total}" for k, v in ctx.edge.items()}),
                     '<p class="explain">inside: whole crop; shifted: moved inside the image; padded: filled at the '
                     "border; dropped / invalid: no crop, the cell is not profiled.</p>"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head>",
        f'<body data-figures-expected="{len(figures)}" data-figures-rendered="0">',
        f"<h1>{html.escape(title)}</h1>", f'<p class="subtitle">{html.escape(subtitle)}</p>',
        "<h2>Results</h2>", _scope_block(r), _kv(summary_lines(r)), _secondary_block(r),
        f"<ul>{notes}</ul>" if notes else "",
        "<h2>Phenotypic activity and consistency (mAP)</h2>", figs_of("replicate_map", "moa_map"),
        "<h3>Per MOA</h3>", _table(r.per_moa),
        "<h3>MOA mAP</h3>", _table(r.moa_map),
        "<details><summary>Replicate mAP per treatment</summary>", _table(r.replicate_map), "</details>",
        "<h2>Retrieval: enrichment, precision / recall at k, hit@k</h2>",
        figs_of("enrichment", "precision_recall", "hit_at_k"),
        "<h3>Enrichment</h3>", _table(r.enrichment),
        "<h3>Precision and recall at k (mean over treatments)</h3>", _table(r.precision_recall_summary),
        "<h3>hit@k</h3>", f'<p class="explain">{html.escape(HIT_AT_K)}</p>', _table(r.hit_at_k_scores),
        "<details><summary>precision@R per treatment</summary>", _table(r.precision_at_r), "</details>",
        "<h2>Profiles at a glance: PCA and UMAP</h2>", figs_of("pca_views", "umap_views"),
        ("<h2>Example cells</h2>" + figs_of("gallery")) if "gallery" in figs else "",
        ("<h2>Where the model looks (Grad-CAM)</h2>" + figs_of(*[k for k in figs if k.startswith("gradcam_")]))
        if any(k.startswith("gradcam_") for k in figs) else "",
        ("<h2>Training</h2>" + figs_of("training_curve")) if "training_curve" in figs else "",
        _assay_section(r, figs_of("assays")),
        _batch_section(r, figs_of("batch_effects")),
        mapping_section_html(r.mapping, figs_of("mapping_distance")),
        _moaprofiler_section(r, figs_of(*[k for k in figs if k.startswith("moaprofiler_")])),
        activity_section_html(r.activity, figs_of(*[k for k in figs if k.startswith("activity_")])),
        ("<h2>Quality control</h2>" + "".join(qc_parts)) if qc_parts else "",
        "<h2>Settings</h2>", _kv(settings),
        "<details><summary>Provenance (versions, inputs, timings, configuration)</summary>",
        f"<pre>{html.escape(json.dumps(prov, indent=1))}</pre></details>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)
