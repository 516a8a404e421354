"""The robustness report: reads a run directory's stores and caches, writes a PDF."""

from robust.report.data import ReportDataError, load_report_data
from robust.report.pdf import ReportError, ReportSummary, build_report

__all__ = ["ReportDataError", "ReportError", "ReportSummary", "build_report", "load_report_data"]
