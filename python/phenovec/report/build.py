"""``build_report``: well profiles -> one self-contained HTML file and one JSON file of every number.

Steps: read and check the input (:mod:`.inputs`), compute the metrics with :mod:`phenovec.evaluate`
(:mod:`.metrics`), draw the figures (:mod:`.figures`), write the JSON (:mod:`.numbers`) and the HTML
(:mod:`.html`). Both files are written atomically (temporary file + ``os.replace``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from phenovec.io.atomic import write_text_atomic
from phenovec.report.figures import all_figures
from phenovec.report.html import render_html
from phenovec.report.inputs import load_input
from phenovec.report.metrics import DEFAULT_KS, DEFAULT_PERCENT_LIST, DEFAULT_PERCENTILES, compute_metrics
from phenovec.report.numbers import report_numbers
from phenovec.report.provenance import collect_provenance


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    json: Path


def build_report(
    profiles,
    out_dir,
    *,
    moa_column: str = "Metadata_MOA",
    treatment_column: str = "Metadata_Treatment",
    control_query: str = "Metadata_Control == True",
    control_key: str = "control_query",
    plate_column: str = "Metadata_Plate",
    features="infer",
    provenance: dict | None = None,
    similarity: str = "cosine",
    null_size: int = 10000,
    seed: int = 0,
    threshold: float = 0.05,
    percentiles=DEFAULT_PERCENTILES,
    ks=DEFAULT_KS,
    percent_list=DEFAULT_PERCENT_LIST,
    name: str = "report",
    title: str = "phenovec report",
) -> ReportPaths:
    """Evaluate well-level profiles and write ``OUT_DIR/NAME.html`` and ``OUT_DIR/NAME.json``.

    ``profiles``: a DataFrame or a CSV / Parquet path (pycytominer layout). ``control_query``: a row filter
    (:mod:`phenovec.io.row_filter`, never evaluated as code: ``"Metadata_Control == True"``) or a treatment value
    (``"DMSO"``); ``control_key`` is the name errors give it (a CLI option, a configuration key). ``features``:
    ``"infer"`` (every non-``Metadata_`` column) or a list of column names. ``provenance``: the caller's dict (config,
    hashes, timings), stored under ``provenance.run``. Metric definitions: :mod:`phenovec.report.metrics`; JSON
    layout: :mod:`phenovec.report.numbers`.
    """
    timings = {}
    t0 = time.perf_counter()
    inp = load_input(profiles, moa_column=moa_column, treatment_column=treatment_column,
                     control_query=control_query, plate_column=plate_column, features=features,
                     control_key=control_key)
    timings["load"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    res = compute_metrics(inp, similarity=similarity, null_size=null_size, seed=seed, threshold=threshold,
                          percentiles=percentiles, ks=ks, percent_list=percent_list)
    timings["metrics"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    figures = all_figures(res)
    timings["figures"] = round(time.perf_counter() - t0, 4)
    prov = collect_provenance(profiles if isinstance(profiles, (str, Path)) else inp.source, provenance, timings)
    numbers = report_numbers(res, prov)
    numbers["figures"] = [f.key for f in figures]
    out = Path(out_dir)
    jpath = write_text_atomic(out / f"{name}.json", json.dumps(numbers, indent=1, allow_nan=False))
    hpath = write_text_atomic(out / f"{name}.html", render_html(res, figures, numbers, title=title))
    return ReportPaths(html=hpath, json=jpath)
