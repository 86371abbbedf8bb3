"""Former home of the whole report, kept for the names other code imports from it
(``experiments/loss_patterns.py``): the report is composed in :mod:`topoland.report.build`, its
PDF mechanics live in :mod:`topoland.report.document`. Import from there (or from
:mod:`topoland.report`); this module goes once nothing imports it."""
from topoland.report.build import build_report
from topoland.report.document import (MIN_FONT_PT, PAGE_SIZE, ReportError, pdf_pages, report_figure,
                                      save_page, versions_table)

__all__ = ["build_report", "ReportError", "PAGE_SIZE", "MIN_FONT_PT", "pdf_pages", "report_figure",
           "save_page", "versions_table"]
