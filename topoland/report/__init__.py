"""The PDF report of a run directory (:func:`build_report`)."""
from topoland.report.pdf import ReportError, build_report

__all__ = ["build_report", "ReportError"]
