"""The report's notes: what did not run, failed, was skipped or diverged, and the notes every
page collected (panels not drawn, analysis notes), on the final notes page."""
from __future__ import annotations

from topoland.report.document import Writer
from topoland.report.facts import RunFacts
from topoland.runs.stages import RUN_STAGES
from topoland.runs.store import RUN_LEVEL

__all__ = ["stage_notes", "notes_page"]


def _first_line(text) -> str:
    if not text:
        return "(no message)"
    return str(text).strip().splitlines()[0][:200]


def stage_notes(w: Writer, run: RunFacts) -> None:
    """Note the stages not run, failed, unfinished or skipped, diverged trainings and trajectories,
    and what the analysis covered."""
    wanted = run.wanted()
    cells = list(run.cells.cell_id)
    for stage in run.cell_stages():
        if stage not in wanted:
            w.note("Stages not run", f"{stage}: not in run.stages")
            continue
        missing = [run.names[c] for c in cells if run.status(c, stage) is None]
        if missing:
            w.note("Stages not run", f"{stage}: not run for {len(missing)} of {len(cells)} minima "
                                     f"({', '.join(missing)})")
    for stage in (s for s in RUN_STAGES if s != "report"):
        if stage not in wanted:
            w.note("Stages not run", f"{stage}: not in run.stages")
        elif run.status(RUN_LEVEL, stage) is None:
            w.note("Stages not run", f"{stage}: did not run; its pages are left out")
    st = run.stages
    for r in st[st.status.isin(["failed", "interrupted", "running"])].itertuples():
        if r.cell_id == RUN_LEVEL and r.stage == "report":
            continue
        if r.status == "failed":
            w.note("Failed or unfinished stages", f"{run.label(r.cell_id)} {r.stage}: failed: {_first_line(r.error)}")
        else:
            w.note("Failed or unfinished stages", f"{run.label(r.cell_id)} {r.stage}: {r.status} (unfinished)")
    for c in cells:
        for stage in run.cell_stages():
            s = run.summary(c, stage)
            if "skipped" in s:
                w.note("Skipped stages", f"{run.names[c]} {stage}: skipped ({s['skipped']})")
        tr = run.summary(c, "train")
        if tr.get("diverged"):
            w.note("Diverged", f"{run.names[c]}: training diverged; the minimum is left out of the analysis, "
                               "the paths and the per-minimum pages")
        sm = run.summary(c, "sample")
        n_div = sm.get("n_trajectories_diverged") or 0
        if n_div > 0:
            opts = sm.get("options") or {}
            n_traj = (opts.get("directions", 0) * len(opts.get("steps", []))) or None
            of = f" of {n_traj}" if n_traj else ""
            w.note("Diverged", f"{run.names[c]}: {n_div}{of} jump-and-retrain trajectories diverged; "
                               "their samples are left out of the topology")
    an = run.summary(RUN_LEVEL, "analysis")
    if an and an.get("n_minima") is not None:
        w.note("Analysis", f"analysed minima: {an['n_minima']}; feature groups: "
                           f"{', '.join(an.get('groups', [])) or 'none'}; targets: "
                           f"{', '.join(an.get('targets', [])) or 'none'}")


_NOTE_ORDER = ("Failed or unfinished stages", "Stages not run", "Skipped stages", "Diverged", "Analysis", "Paths",
               "Panels not drawn", "Minima")


def notes_page(w: Writer) -> None:
    """The last page(s): every note the pages collected, by section."""
    lines = []
    for section in sorted(w.notes, key=lambda s: (_NOTE_ORDER.index(s) if s in _NOTE_ORDER else 99, s)):
        lines.append(f"{section}:")
        lines += [f"  • {n}" for n in dict.fromkeys(w.notes[section])]
        lines.append("")
    if not lines:
        lines = ["Nothing to report: every stage asked for finished for every minimum, "
                 "no trajectory diverged."]
    w.text_pages("Notes", lines)
