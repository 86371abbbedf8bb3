"""The PDF report of a run directory (:func:`build_report`), and the document mechanics other
PDFs share to look like it (:func:`pdf_pages`, :func:`report_figure`, :func:`save_page`)."""
from topoland.report.build import build_report
from topoland.report.document import (MIN_FONT_PT, PAGE_SIZE, ReportError, pdf_pages, report_figure,
                                      save_page, versions_table)

__all__ = ["build_report", "ReportError", "PAGE_SIZE", "MIN_FONT_PT", "pdf_pages", "report_figure",
           "save_page", "versions_table"]
