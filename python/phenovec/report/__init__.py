"""The report: evaluated well profiles as one self-contained HTML file plus a JSON file of every number.

    from phenovec.report import build_report
    paths = build_report("wells.parquet", "report-out", moa_column="Metadata_moa",
                         treatment_column="Metadata_compound", control_query="DMSO")
"""
from phenovec.report.build import ReportPaths, build_report
from phenovec.report.inputs import ReportInput, load_input
from phenovec.report.metrics import ReportMetrics, compute_metrics

__all__ = ["ReportPaths", "build_report", "ReportInput", "load_input", "ReportMetrics", "compute_metrics"]
