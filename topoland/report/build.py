"""The PDF report of a run directory (:func:`build_report`): one document composed from the
stored stage results.

Pages (A4 landscape, seaborn styling, fonts >= 8 pt), in order:

1. title page: config summary, grid, stage list, software versions, device, wall time per stage;
2. the minima: settings and metrics of every cell (paginated);
3. one page per minimum with a finished, not skipped topology stage (:mod:`topoland.report.minimum`): the PHATE
   picture coloured by loss and by step size (trajectories drawn as paths), the filtration graph
   on the principal plane, persistence diagrams, Betti curves, the features' resampling
   intervals, plane surface, 1-D curves, eigenvalue density; the graphs' component counts;
   then the topology features of every minimum with their resampling intervals;
   then, when any cell ran the optional ensemble stage, fast geometric ensembles: ensemble test
   accuracy against the number of members, one line per minimum, and a table;
4. across minima: topology (activity, basins, normalized activity, loss range) vs
   generalization, rank correlations, metrics grouped by
   each grid setting, the classifier table (both standard errors, adjusted p, smallest
   attainable p), the comparisons (grid axes stratified, extra cells apart, adjusted p), the
   flatness ordering by batch size; "finding" only at adjusted p < 0.05; measures vs
   generalization (every measure's tau, Ψ, PGDL score, robust sign error; the top ones against
   the gap);
5. paths: barrier profiles per pair and the disconnectivity graph (>= 3 connected minima);
6. notes: diverged trajectories, failed or skipped stages, analysis notes, panels not drawn.

Only reads the run directory, through :mod:`topoland.runs` (``store``, ``tables``, ``layout``); the
figures come from :mod:`topoland.plots`. The pages live in :mod:`~topoland.report.run_pages` (1, 2, the
ensembles), :mod:`~topoland.report.minimum` (3), :mod:`~topoland.report.analysis_pages` (4),
:mod:`~topoland.report.paths_pages` (5) and :mod:`~topoland.report.notes` (6); the PDF mechanics in
:mod:`~topoland.report.document`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from topoland.io import atomic_write_bytes
from topoland.report.analysis_pages import analysis_pages
from topoland.report.document import ReportError, Writer, pdf_pages
from topoland.report.facts import RunFacts
from topoland.report.minimum import intervals_page, minimum_page
from topoland.report.notes import notes_page, stage_notes
from topoland.report.paths_pages import paths_pages
from topoland.report.run_pages import ensemble_pages, minima_pages, title_page
from topoland.runs import layout
from topoland.runs.store import RUN_LEVEL, RunStore

__all__ = ["build_report"]


def build_report(run_dir, pdf_path) -> dict:
    """Write the multi-page PDF report of a run directory, and its tables as CSV beside it.

    ``pdf_path``: the PDF to write (atomically: temporary name, then rename). Beside it go
    ``minima.csv`` and, when present, ``features.csv``, ``classifiers.csv``, ``comparisons.csv``,
    ``correlations.csv``, ``ensembles.csv`` and ``pairs.csv``. A stage that did not run (or failed) leaves its pages
    out and is listed on the final notes page.

    Returns ``{"pages": int, "headings": [page titles], "path": Path, "tables": [csv paths]}``.
    """
    from topoland.runs.tables import minima_table

    store = RunStore.open(run_dir)
    pdf_path = Path(pdf_path)
    if pdf_path.suffix.lower() != ".pdf":
        raise ReportError(f"report path '{pdf_path}' must end in .pdf")
    run = RunFacts(store)
    minima = minima_table(store.path)
    tables: dict[str, pd.DataFrame] = {"minima": minima}
    with pdf_pages(pdf_path, title=f"topoland report: {run.name}") as pdf:
        w = Writer(store, pdf, run.name)
        title_page(w, run)
        minima_pages(w, run, minima)
        for cid in run.cells.cell_id:
            if run.done(cid, "topology") and "skipped" not in run.summary(cid, "topology"):
                minimum_page(w, run, cid)  # a skipped topology (diverged training) is on the notes page
        intervals_page(w, run, [c for c in run.cells.cell_id if run.done(c, "topology")
                                 and "skipped" not in run.summary(c, "topology")])
        ens = ensemble_pages(w, run)
        if ens is not None:
            tables["ensembles"] = ens
        if run.done(RUN_LEVEL, "analysis"):
            tables |= analysis_pages(w, run)
        if run.done(RUN_LEVEL, "paths"):
            pairs = paths_pages(w, run)
            if pairs is not None:
                tables["pairs"] = pairs
        stage_notes(w, run)
        notes_page(w)
    written = []
    for name, df in tables.items():
        p = pdf_path.parent / layout.table_csv(name)
        atomic_write_bytes(p, df.to_csv(index=False).encode())
        written.append(p)
    return {"pages": len(w.headings), "headings": list(w.headings), "path": pdf_path, "tables": written}
