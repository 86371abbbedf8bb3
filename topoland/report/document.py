"""The report's document mechanics: the PDF (A4 landscape pages, seaborn styling, fonts of at
least :data:`MIN_FONT_PT`), the page writer that collects headings and notes, table and text pages.

:func:`pdf_pages`, :func:`report_figure` and :func:`save_page` also serve documents outside a run
(``experiments/loss_patterns.py``) that should look like the run reports.
"""
from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import pandas as pd

from topoland.errors import TopolandError
from topoland.io import atomic_path
from topoland.report.common import blank

__all__ = ["ReportError", "PAGE_SIZE", "MIN_FONT_PT", "pdf_pages", "report_figure", "save_page",
           "versions_table", "enforce_min_font", "Writer"]

PAGE_SIZE = (11.69, 8.27)  # A4 landscape, inches
MIN_FONT_PT = 8.0
TABLE_ROWS = 22             # rows of a table page
_NOTE_LINES = 36            # text lines of a notes page
_VERSIONS = (("torch", "torch"), ("phate", "phate"), ("gudhi", "gudhi"), ("sklearn", "scikit-learn"),
             ("numpy", "numpy"), ("pandas", "pandas"), ("matplotlib", "matplotlib"),
             ("seaborn", "seaborn"))


class ReportError(TopolandError):
    """The report cannot be written (unreadable run directory or config, bad output path)."""


# ---------------------------------------------------------------------------------- helpers
def _rc() -> dict:
    import seaborn as sns
    rc = dict(sns.axes_style("whitegrid"))
    rc |= dict(sns.plotting_context("paper"))
    rc |= {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8,
           "ytick.labelsize": 8, "legend.fontsize": 8, "legend.title_fontsize": 8,
           "figure.titlesize": 14, "pdf.fonttype": 42, "axes.titlelocation": "center"}
    return rc


def wrap_header(name: str, width: int = 14) -> str:
    if len(name) <= width:
        return name
    parts = name.replace(".", ".\n", 1).split("\n")
    return "\n".join(textwrap.fill(p, width, break_long_words=False) for p in parts)


def enforce_min_font(fig) -> None:
    """Raise every text below MIN_FONT_PT (legends in "x-small", contour labels) to it.

    Tick labels follow the rc sizes (>= 8 pt) and are not visited: walking every artist of
    a page costs a quarter of a second."""
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += ax.texts + [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        leg = ax.get_legend()
        if leg is not None:
            texts += leg.get_texts() + [leg.get_title()]
        for child in ax.get_children():
            if hasattr(child, "get_celld"):  # tables
                texts += [c.get_text() for c in child.get_celld().values()]
            elif hasattr(child, "labelTexts"):  # contour labels
                texts += list(child.labelTexts)
    for t in texts:
        if t.get_text() and t.get_fontsize() < MIN_FONT_PT:
            t.set_fontsize(MIN_FONT_PT)


@contextlib.contextmanager
def pdf_pages(pdf_path, *, title: str):
    """Open a report PDF in the report's styling; written atomically on a clean exit.

    Yields a ``matplotlib.backends.backend_pdf.PdfPages``; pages go to a temporary file that
    replaces ``pdf_path`` only when the block ends without an exception. Use with
    :func:`report_figure` and :func:`save_page` for pages that look like the run reports.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_pdf import PdfPages

    pdf_path = Path(pdf_path)
    if pdf_path.suffix.lower() != ".pdf":
        raise ReportError(f"report path '{pdf_path}' must end in .pdf")
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(pdf_path) as tmp:
        with rc_context(_rc()), PdfPages(tmp, metadata={"Title": title, "Creator": "topoland"}) as pdf:
            yield pdf


def report_figure(title: str):
    """An empty A4-landscape page with ``title`` as its heading (a matplotlib Figure)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=PAGE_SIZE)
    fig.suptitle(title, fontweight="bold", y=0.985)
    return fig


def save_page(pdf, fig, footer: str = "") -> None:
    """Write ``fig`` as the next page of ``pdf`` (footer bottom right, fonts raised to MIN_FONT_PT)."""
    if footer:
        fig.text(0.995, 0.005, footer, ha="right", va="bottom", fontsize=MIN_FONT_PT, color="0.45")
    enforce_min_font(fig)
    pdf.savefig(fig)
    fig.clear()


def versions_table() -> list[tuple[str, str]]:
    """(package, version) of topoland, its main dependencies and Python."""
    from importlib.metadata import PackageNotFoundError, version

    import topoland
    out = [("topoland", topoland.__version__)]
    for label, dist in _VERSIONS:
        try:
            out.append((label, version(dist)))
        except PackageNotFoundError:
            out.append((label, "not installed"))
    import platform
    out.append(("python", platform.python_version()))
    return out


# ---------------------------------------------------------------------------------- writer
class Writer:
    """Collects pages (titles, notes) while writing them into an open PdfPages: ``store`` is the
    run's :class:`~topoland.runs.store.RunStore`, ``run_name`` goes into every page's footer."""

    def __init__(self, store, pdf, run_name: str):
        self.store = store
        self.pdf = pdf
        self.run_name = run_name
        self.headings: list[str] = []
        self.notes: dict[str, list[str]] = {}

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)

    def figure(self, title: str):
        # fixed margins rather than constrained layout: several times faster per page
        return report_figure(title)

    def save(self, fig, title: str) -> None:
        n = len(self.headings) + 1
        save_page(self.pdf, fig, f"topoland report · {self.run_name} · page {n}")
        self.headings.append(title)

    def panel(self, ax, what: str, draw) -> bool:
        """Draw one panel; a TopolandError (too few samples, missing metric) becomes a
        placeholder on the page and a line in the notes."""
        try:
            draw(ax)
            return True
        except TopolandError as e:
            ax.cla()
            blank(ax, f"{what}: not drawn ({e})")
            self.note("Panels not drawn", f"{what}: {e}")
            return False

    def table_pages(self, title: str, df: pd.DataFrame, *, footer: str = "", col_width: int = 14,
                    rows: int = TABLE_ROWS) -> None:
        """``df`` (already formatted as strings) as one or more table pages."""
        chunks = [df.iloc[i:i + rows] for i in range(0, max(len(df), 1), rows)]
        for k, chunk in enumerate(chunks):
            t = title if len(chunks) == 1 else f"{title} ({k + 1}/{len(chunks)})"
            fig = self.figure(t)
            ax = fig.add_axes((0.02, 0.08, 0.96, 0.82))
            ax.set_axis_off()
            if len(chunk):
                tab = ax.table(cellText=chunk.to_numpy().tolist(),
                               colLabels=[wrap_header(str(c), col_width) for c in chunk.columns],
                               loc="upper center", cellLoc="center")
                tab.auto_set_font_size(False)
                tab.set_fontsize(MIN_FONT_PT)
                tab.auto_set_column_width(list(range(len(chunk.columns))))
                header_lines = max(str(c).count("\n") + 1 for c in
                                   [wrap_header(str(c), col_width) for c in chunk.columns])
                for (r, _c), cell in tab.get_celld().items():
                    cell.set_height(0.034 * (header_lines if r == 0 else 1))
                    if r == 0:
                        cell.set_text_props(fontweight="bold")
                        cell.set_facecolor("0.9")
            else:
                blank(ax, "empty table")
            if footer:
                fig.text(0.02, 0.025, footer, fontsize=MIN_FONT_PT, ha="left", va="bottom", wrap=True)
            self.save(fig, t)

    def text_pages(self, title: str, lines: list[str]) -> None:
        wrapped: list[str] = []
        for line in lines:
            indent = "    " if line.startswith("  ") else ""
            wrapped += textwrap.wrap(line.strip(), 150, subsequent_indent=indent + "  ",
                                     initial_indent=indent) or [""]
        chunks = [wrapped[i:i + _NOTE_LINES] for i in range(0, max(len(wrapped), 1), _NOTE_LINES)]
        for k, chunk in enumerate(chunks):
            t = title if len(chunks) == 1 else f"{title} ({k + 1}/{len(chunks)})"
            fig = self.figure(t)
            fig.text(0.03, 0.9, "\n".join(chunk), ha="left", va="top", fontsize=9, linespacing=1.45)
            self.save(fig, t)
