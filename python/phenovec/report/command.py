"""``phenovec report``: well profiles to an HTML report plus a JSON file of every number; prints the HTML path.

    phenovec report wells.parquet --out report-out --moa-column Metadata_moa \
        --treatment-column Metadata_compound --control DMSO
"""
from __future__ import annotations

import argparse
import json

from phenovec.cli_options import add_out, add_quiet, add_similarity


def add_report_parser(stages) -> argparse.ArgumentParser:
    """Add ``report`` (well profiles -> report.html + report.json) to the CLI."""
    p = stages.add_parser("report", help="HTML report (inline figures) + JSON of every number from well profiles")
    p.add_argument("profiles", help="well-level profiles (.csv, .csv.gz, .parquet): Metadata_* columns + features")
    add_out(p, "output folder (report.html and report.json)")
    p.add_argument("--moa-column", default="Metadata_MOA", help="column of the mechanism-of-action labels")
    p.add_argument("--treatment-column", default="Metadata_Treatment", help="column naming each treatment")
    p.add_argument("--plate-column", default="Metadata_Plate", help="column naming each plate")
    p.add_argument("--control", default="Metadata_Control == True",
                   help="filter selecting the control wells (columns, literals, comparisons, and / or / not; see "
                        "phenovec.io.row_filter), or a treatment value such as DMSO")
    p.add_argument("--features", nargs="+", help="feature columns (default: every non-Metadata_ column)")
    add_similarity(p, "cosine")
    p.add_argument("--null-size", type=int, default=10000, help="null distribution size for the mAP p-values")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the null distributions and of the batch-effect section's k-means")
    p.add_argument("--threshold", type=float, default=0.05, help="significance level of the corrected p-values")
    p.add_argument("--compare", nargs="+", metavar="NAME=PATH",
                   help="other profile tables of the same wells (matched by plate and well) to compare in the "
                        "batch-effect section, e.g. raw=wells_raw.parquet harmony=wells_harmony.parquet; the first "
                        "is the baseline pcr_comparison is measured against (list the unprocessed table first)")
    p.add_argument("--no-batch-effects", action="store_true",
                   help="leave out the batch-effect section (integration metrics, batch = plate, label = MOA)")
    p.add_argument("--moaprofiler", action="store_true",
                   help="add MOAProfiler's evaluation protocol (Wong et al. 2023; the treatment column is the compound)")
    p.add_argument("--activity", default=None,
                   help="a phenovec activity benchmark output folder: add the few-shot activity section")
    p.add_argument("--provenance", help="JSON file of run provenance (config, hashes, timings) to embed")
    add_quiet(p)
    p.set_defaults(run=run_report)
    return p


def run_report(a) -> dict:
    from pathlib import Path

    from phenovec.report.build import build_report

    prov = None
    if a.provenance:
        pp = Path(a.provenance)
        if not pp.is_file():
            raise FileNotFoundError(f"--provenance: {pp} not found")
        try:
            prov = json.loads(pp.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--provenance {pp}: not valid JSON ({e})") from None
        if not isinstance(prov, dict):
            raise ValueError(f"--provenance {pp}: must hold a JSON object")
    compare = {}
    for item in a.compare or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--compare {item!r}: give NAME=PATH")
        if name in compare:
            raise ValueError(f"--compare: the name {name!r} is given twice")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--compare {name}: {path} not found")
        compare[name] = path
    paths = build_report(a.profiles, a.out, moa_column=a.moa_column, treatment_column=a.treatment_column,
                         control_query=a.control, control_key="--control", plate_column=a.plate_column,
                         features=a.features if a.features else "infer", provenance=prov, similarity=a.similarity,
                         null_size=a.null_size, seed=a.seed, threshold=a.threshold,
                         compare=compare or None, batch_effects=not a.no_batch_effects, moaprofiler=a.moaprofiler,
                         activity=a.activity)
    print(paths.html)
    return {"html": str(paths.html), "json": str(paths.json)}
