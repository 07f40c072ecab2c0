"""The report: evaluated well profiles as one self-contained HTML file plus a JSON file of every number.

    from phenovec.report import build_report
    paths = build_report("wells.parquet", "report-out", moa_column="Metadata_moa",
                         treatment_column="Metadata_compound", control_query="DMSO")
"""
from phenovec.lazy_exports import lazy_exports

# public name -> submodule, imported on first use (the CLI's parser imports report.command only)
_EXPORTS = {
    **dict.fromkeys(["ReportPaths", "build_report"], "build"),
    **dict.fromkeys(["ReportInput", "load_input"], "inputs"),
    **dict.fromkeys(["ReportMetrics", "compute_metrics"], "metrics"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["ReportPaths", "build_report", "ReportInput", "load_input", "ReportMetrics", "compute_metrics"]
