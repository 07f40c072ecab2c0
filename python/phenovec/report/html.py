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
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.figs { display: flex; flex-wrap: wrap; gap: 1.2em; }
figure { margin: 0; max-width: 520px; } figcaption { font-size: .85em; color: #555; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .8em; }
.note { color: #8a4b00; }
.wide { overflow-x: auto; }
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


def _table(df: pd.DataFrame | None, max_rows: int | None = None) -> str:
    if df is None or df.empty:
        return "<p>not computed</p>"
    shown = df if max_rows is None else df.head(max_rows)
    out = shown.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}", escape=True)
    out = f'<div class="wide">{out}</div>'
    if max_rows is not None and len(df) > max_rows:
        out += f"<p>first {max_rows} of {len(df)} rows; all rows are in the JSON file.</p>"
    return out


def _figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure id="fig-{html.escape(f.key)}"><img class="figure" alt="{html.escape(f.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{html.escape(f.title)}.</b> '
            f"{html.escape(f.caption)}</figcaption></figure>")


def _kv(d: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


def render_html(r: ReportMetrics, figures: list[Figure], numbers: dict, title: str = "phenovec report") -> str:
    """The whole page as a string (see the module docstring)."""
    figs = {f.key: _figure(f) for f in figures}

    def figs_of(*keys):
        got = [figs[k] for k in keys if k in figs]
        return f'<div class="figs">{"".join(got)}</div>' if got else ""

    summary = {}
    if numbers.get("replicate_map"):
        summary["replicate mAP (mean over treatments)"] = f"{numbers['replicate_map']['mean_map']:.4f}"
        summary["treatments significant (corrected p)"] = f"{numbers['replicate_map']['fraction_significant']:.3f}"
    if numbers.get("moa_map"):
        summary["MOA mAP (mean over MOAs)"] = f"{numbers['moa_map']['mean_map']:.4f}"
        summary["MOAs significant (corrected p)"] = f"{numbers['moa_map']['fraction_significant']:.3f}"
    if r.precision_at_r_mean is not None:
        summary["precision@R (mean over treatments)"] = f"{r.precision_at_r_mean:.4f}"
    ev = r.pca_explained_variance_ratio
    summary["PCA explained variance (PC1, PC2)"] = ", ".join(f"{v:.3f}" for v in ev)
    notes = "".join(f'<li class="note">{html.escape(n)}</li>' for n in r.notes)
    prov = html.escape(json.dumps(numbers.get("provenance", {}), indent=2))
    settings = {**r.counts, **{k: v for k, v in r.settings.items()}}
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head>",
        f'<body data-figures-expected="{len(figures)}" data-figures-rendered="0">',
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>", _kv(summary), _kv(settings),
        f"<ul>{notes}</ul>" if notes else "",
        "<h2>Phenotypic activity and consistency (mAP)</h2>", figs_of("replicate_map", "moa_map"),
        "<h3>Per MOA</h3>", _table(r.per_moa),
        "<h3>MOA mAP</h3>", _table(r.moa_map),
        "<details><summary>Replicate mAP per treatment</summary>", _table(r.replicate_map), "</details>",
        "<h2>Retrieval: enrichment, precision / recall at k, hit@k</h2>",
        figs_of("enrichment", "precision_recall", "hit_at_k"),
        "<h3>Enrichment</h3>", _table(r.enrichment),
        "<h3>Precision and recall at k (mean over treatments)</h3>", _table(r.precision_recall_summary),
        f"<p>precision@R, mean over treatments: "
        f"{'not computed' if r.precision_at_r_mean is None else f'{r.precision_at_r_mean:.4f}'}</p>",
        "<h3>hit@k percent scores</h3>", _table(r.hit_at_k_scores),
        "<details><summary>precision@R per treatment</summary>", _table(r.precision_at_r), "</details>",
        "<h2>Technical-artifact check: PCA of well profiles</h2>", figs_of("pca_plate", "pca_control"),
        "<h2>Provenance</h2>", f"<pre>{prov}</pre>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)
