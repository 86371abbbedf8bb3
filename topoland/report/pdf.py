"""The PDF report of a run directory: one document composed from the stored stage results.

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
   flatness ordering by batch size; "finding" only at adjusted p < 0.05;
5. paths: barrier profiles per pair and the disconnectivity graph (>= 3 connected minima);
6. notes: diverged trajectories, failed or skipped stages, analysis notes, panels not drawn.

Only reads the run directory; the figures come from :mod:`topoland.plots`.
"""
from __future__ import annotations

import contextlib
import json
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from topoland.errors import StoreError, TopolandError
from topoland.io import atomic_path, atomic_write_bytes
from topoland.runs.store import RUN_LEVEL, RunStore
from topoland.report.common import blank as _blank
from topoland.report.common import fmt as _fmt
from topoland.report.minimum import intervals_page as _intervals_page
from topoland.report.minimum import minimum_page as _minimum_page

__all__ = ["build_report", "pdf_pages", "ReportError", "PAGE_SIZE", "MIN_FONT_PT", "CELL_STAGE_ORDER"]

PAGE_SIZE = (11.69, 8.27)  # A4 landscape, inches
MIN_FONT_PT = 8.0
CELL_STAGE_ORDER = ("train", "sample", "topology", "surface", "curvature")
_OPTIONAL_CELL_STAGES = ("ensemble",)   # listed only when a run asks for them
_RUN_STAGE_ORDER = ("paths", "analysis", "report")
_TABLE_ROWS = 22            # rows of a table page
_NOTE_LINES = 36            # text lines of a notes page
_PAIRS_PER_PAGE = 3
_SETTINGS_PER_PAGE = 3
_VERSIONS = (("torch", "torch"), ("phate", "phate"), ("gudhi", "gudhi"), ("sklearn", "scikit-learn"),
             ("numpy", "numpy"), ("pandas", "pandas"), ("matplotlib", "matplotlib"),
             ("seaborn", "seaborn"))
_STATUS_MARK = {"done": "✓", "failed": "✗", "interrupted": "!", "running": "…"}


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


def _wrap_header(name: str, width: int = 14) -> str:
    if len(name) <= width:
        return name
    parts = name.replace(".", ".\n", 1).split("\n")
    return "\n".join(textwrap.fill(p, width, break_long_words=False) for p in parts)


def _first_line(text) -> str:
    if not text:
        return "(no message)"
    return str(text).strip().splitlines()[0][:200]


def _versions() -> list[tuple[str, str]]:
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


def _device_line(cfg: dict, store: RunStore | None = None) -> str:
    import torch
    asked = cfg.get("run", {}).get("device", "auto")
    used = store.get_meta("device") if store is not None else None
    if used:
        return f"{used} (run.device = {asked!r})"
    if torch.cuda.is_available():
        here = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        here = "cpu"
    return f"run.device = {asked!r}; available where the report was written: {here}"


def _enforce_min_font(fig) -> None:
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
    _enforce_min_font(fig)
    pdf.savefig(fig)
    fig.clear()


def versions_table() -> list[tuple[str, str]]:
    """(package, version) of topoland, its main dependencies and Python."""
    return _versions()


# ---------------------------------------------------------------------------------- writer
class _Writer:
    """Collects pages (titles, notes) while writing them into an open PdfPages."""

    def __init__(self, store: RunStore, pdf, run_name: str):
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
            _blank(ax, f"{what}: not drawn ({e})")
            self.note("Panels not drawn", f"{what}: {e}")
            return False

    def table_pages(self, title: str, df: pd.DataFrame, *, footer: str = "", col_width: int = 14,
                    rows: int = _TABLE_ROWS) -> None:
        """``df`` (already formatted as strings) as one or more table pages."""
        chunks = [df.iloc[i:i + rows] for i in range(0, max(len(df), 1), rows)]
        for k, chunk in enumerate(chunks):
            t = title if len(chunks) == 1 else f"{title} ({k + 1}/{len(chunks)})"
            fig = self.figure(t)
            ax = fig.add_axes((0.02, 0.08, 0.96, 0.82))
            ax.set_axis_off()
            if len(chunk):
                tab = ax.table(cellText=chunk.to_numpy().tolist(),
                               colLabels=[_wrap_header(str(c), col_width) for c in chunk.columns],
                               loc="upper center", cellLoc="center")
                tab.auto_set_font_size(False)
                tab.set_fontsize(MIN_FONT_PT)
                tab.auto_set_column_width(list(range(len(chunk.columns))))
                header_lines = max(str(c).count("\n") + 1 for c in
                                   [_wrap_header(str(c), col_width) for c in chunk.columns])
                for (r, _c), cell in tab.get_celld().items():
                    cell.set_height(0.034 * (header_lines if r == 0 else 1))
                    if r == 0:
                        cell.set_text_props(fontweight="bold")
                        cell.set_facecolor("0.9")
            else:
                _blank(ax, "empty table")
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


# ---------------------------------------------------------------------------------- run facts
class _Run:
    """What the report reads from a run directory, loaded once."""

    def __init__(self, store: RunStore):
        self.store = store
        try:
            self.cfg = tomllib.loads(store.config_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ReportError(f"config file '{store.path / 'config.toml'}' is unreadable ({e})") from None
        self.cells = store.cells()
        self.stages = store.stages()
        self.names = {r.cell_id: f"M{int(r.position) + 1}" for r in self.cells.itertuples()}
        self.labels = {r.cell_id: r.label for r in self.cells.itertuples()}
        self.name = self.cfg.get("run", {}).get("name") or store.path.name

    def status(self, cell_id: str, stage: str) -> str | None:
        s = self.stages[(self.stages.cell_id == cell_id) & (self.stages.stage == stage)]
        return None if s.empty else str(s.status.iloc[0])

    def done(self, cell_id: str, stage: str) -> bool:
        return self.status(cell_id, stage) == "done"

    def summary(self, cell_id: str, stage: str) -> dict:
        return self.store.summary(cell_id, stage) if self.done(cell_id, stage) else {}

    def wanted(self) -> list[str]:
        return list(self.cfg.get("run", {}).get("stages", CELL_STAGE_ORDER + _RUN_STAGE_ORDER))

    def label(self, cell_id: str) -> str:
        return f"{self.names.get(cell_id, cell_id)}" if cell_id != RUN_LEVEL else "run"

    def cell_stages(self) -> tuple[str, ...]:
        """The per-cell stages of this run: the default ones, plus optional ones asked for or stored."""
        wanted = self.wanted()
        extra = tuple(s for s in _OPTIONAL_CELL_STAGES if s in wanted or (self.stages.stage == s).any())
        return CELL_STAGE_ORDER + extra


# ---------------------------------------------------------------------------------- page 1
def _title_page(w: _Writer, run: _Run) -> None:
    cfg = run.cfg
    title = f"topoland report: {run.name}"
    fig = w.figure(title)
    created = w.store.get_meta("created")
    if created is not None:
        import datetime
        created = datetime.datetime.fromtimestamp(float(created)).strftime("%Y-%m-%d %H:%M")
    left = [f"run directory: {w.store.path}", f"created: {created or 'unknown'}", ""]
    for section in ("data", "model", "train"):
        vals = cfg.get(section, {})
        if vals:
            left.append(f"[{section}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in vals.items()
                                                    if v not in ("", None)))
    left.append(f"seed: {cfg.get('run', {}).get('seed', '?')}")
    left.append("")
    grid = cfg.get("grid", {})
    left.append("grid (the product of):" if grid else "grid: none (single cell)")
    for k, v in grid.items():
        left.append(f"  {k} = [{_fmt(v)}]")
    extra = cfg.get("cells", [])
    if extra:
        left.append(f"extra cells: {len(extra)}")
        for c in extra:
            left.append("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in c.items()))
    left.append("")
    left.append("stages: " + " → ".join(run.wanted()))
    n_cells = len(run.cells)
    n_trained = sum(run.done(c, "train") for c in run.cells.cell_id)
    n_div = sum(bool(run.summary(c, "train").get("diverged")) for c in run.cells.cell_id)
    left.append(f"minima: {n_cells} cells, {n_trained} trained" + (f", {n_div} diverged" if n_div else ""))
    left.append("device: " + _device_line(cfg, w.store))
    wrapped = []
    for line in left:
        wrapped += textwrap.wrap(line, 95, subsequent_indent="      ") or [""]
    fig.text(0.03, 0.9, "\n".join(wrapped), ha="left", va="top", fontsize=9, linespacing=1.4)

    # right: versions and wall time tables
    ver = _versions()
    ax = fig.add_axes((0.66, 0.58, 0.31, 0.3))
    ax.set_axis_off()
    ax.set_title("software", fontsize=10, fontweight="bold")
    tab = ax.table(cellText=[[a, b] for a, b in ver], colLabels=["package", "version"], loc="upper center",
                   cellLoc="left")
    tab.auto_set_font_size(False)
    tab.set_fontsize(MIN_FONT_PT)
    tab.auto_set_column_width([0, 1])

    ax = fig.add_axes((0.66, 0.06, 0.31, 0.42))
    ax.set_axis_off()
    ax.set_title("wall time per stage", fontsize=10, fontweight="bold")
    rows = _stage_time_rows(run)
    tab = ax.table(cellText=rows, colLabels=["stage", "done", "failed", "seconds"],
                   loc="upper center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(MIN_FONT_PT)
    tab.auto_set_column_width([0, 1, 2, 3])
    meta = w.store.get_meta("seconds") or {}
    foot = ("seconds: summed over cells from the stages table"
            + (("; runner wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in meta.items())) if meta else ""))
    fig.text(0.66, 0.03, textwrap.fill(foot, 60), fontsize=MIN_FONT_PT, va="bottom")
    w.save(fig, title)


def _stage_time_rows(run: _Run) -> list[list[str]]:
    st = run.stages
    rows = []
    for stage in run.cell_stages() + _RUN_STAGE_ORDER:
        s = st[st.stage == stage]
        if s.empty and stage not in run.wanted():
            continue
        done = int((s.status == "done").sum())
        failed = int((s.status == "failed").sum())
        secs = pd.to_numeric(s.seconds, errors="coerce").sum() if not s.empty else 0.0
        rows.append([stage, str(done), str(failed), f"{secs:.1f}"])
    return rows


# ---------------------------------------------------------------------------------- page 2
def _minima_pages(w: _Writer, run: _Run, table: pd.DataFrame) -> None:
    if table.empty:
        w.note("Minima", "the run has no cells")
        return
    df = table.copy()
    df.insert(0, "minimum", [run.names[c] for c in df.cell_id])
    settings = [c for c in df.columns if "." in c]
    shared = {c: df[c].iloc[0] for c in settings
              if df[c].astype(str).nunique(dropna=False) == 1}
    df = df.drop(columns=list(shared))
    marks = []
    for cid in df.cell_id:
        marks.append("".join(_STATUS_MARK.get(run.status(cid, s) or "", "·") for s in run.cell_stages()))
    df["stages"] = marks
    shown = df.map(_fmt) if hasattr(df, "map") else df.applymap(_fmt)
    foot = ("stages: " + ", ".join(run.cell_stages()) + " (✓ done, ✗ failed, ! interrupted, · not run). "
            + ("Shared by all minima: " + "; ".join(f"{k}={_fmt(v)}" for k, v in shared.items())
               if shared else "") + ". gap = test loss − train loss (nats); acc_gap = train acc − test acc.")
    w.table_pages("The minima: settings and metrics", shown, footer=textwrap.fill(foot, 190))


def _ensemble_pages(w: _Writer, run: _Run) -> pd.DataFrame | None:
    """Fast geometric ensembles: accuracy vs members per minimum and a table; returns the
    curves of every minimum (with a ``minimum`` column) or None when no cell ran the stage."""
    cells = [c for c in run.cells.cell_id if run.done(c, "ensemble") and "skipped" not in run.summary(c, "ensemble")]
    if not cells:
        return None
    curves, rows = {}, []
    for c in cells:
        p = run.store.stage_dir(c, "ensemble") / "ensemble.csv"
        if not p.is_file():
            w.note("Panels not drawn", f"{run.names[c]} ensemble: no ensemble.csv stored")
            continue
        curves[c] = pd.read_csv(p)
        s = run.summary(c, "ensemble")
        rows.append({"minimum": run.names[c], "setting": run.labels[c], "members": s.get("n_members"),
                     "minimum test_acc": s.get("minimum_test_acc"), "mean member acc": s.get("mean_member_acc"), "ensemble acc": s.get("ensemble_acc"),
                     "gain": s.get("gain"), "ensemble nll": s.get("ensemble_nll")})
    if not curves:
        return None
    t = "Fast geometric ensembles"
    fig = w.figure(t)
    ax = fig.add_axes((0.06, 0.1, 0.42, 0.78))

    def draw(ax):
        for i, (c, cv) in enumerate(curves.items()):
            col = f"C{i % 10}"
            ax.plot(cv["members"], cv["ensemble_acc"], marker="o", color=col, label=run.names[c])
            ax.plot(cv["members"], cv["mean_member_acc"], ls=":", color=col, lw=1)
            base = run.summary(c, "ensemble").get("minimum_test_acc")
            if base is not None:
                ax.scatter([0], [base], color=col, marker="*", s=40, zorder=3)
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("members (snapshots, one per cycle; ★ at 0 = the minimum itself)")
        ax.set_ylabel("test accuracy")
        ax.set_title("ensemble accuracy vs members (solid), mean member accuracy (dotted)")
        ax.legend(ncol=2 if len(curves) > 8 else 1, title="minimum")
    w.panel(ax, "ensemble accuracy vs members", draw)
    tab_ax = fig.add_axes((0.52, 0.1, 0.46, 0.78))
    tab_ax.set_axis_off()
    df = pd.DataFrame(rows)
    show = df.drop(columns=["setting"]).map(_fmt) if hasattr(df, "map") else df.drop(columns=["setting"]).applymap(_fmt)
    tab = tab_ax.table(cellText=show.to_numpy().tolist()[:_TABLE_ROWS],
                       colLabels=[_wrap_header(c, 10) for c in show.columns], loc="upper center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(MIN_FONT_PT)
    tab.auto_set_column_width(list(range(len(show.columns))))
    for (r, _c), cell in tab.get_celld().items():
        cell.set_height(0.06 if r == 0 else 0.035)
        if r == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("0.9")
    if len(show) > _TABLE_ROWS:
        w.note("Panels not drawn", f"ensemble table: {len(show) - _TABLE_ROWS} minima beyond the first "
                                   f"{_TABLE_ROWS} are in ensembles.csv only")
    fig.text(0.52, 0.03, textwrap.fill("Snapshots at the lowest rate of each cycle of a cyclic learning rate "
                                       "started at the minimum; the ensemble averages the members' softmax "
                                       "outputs. Accuracy on the test split; gain = ensemble acc − minimum "
                                       "test_acc. Not a feature of the analysis (it is a test metric).", 95),
             fontsize=MIN_FONT_PT, va="bottom")
    w.save(fig, t)
    return pd.concat([cv.assign(minimum=run.names[c], cell_id=c) for c, cv in curves.items()], ignore_index=True)


# ---------------------------------------------------------------------------------- page 4
def _classifier_heatmap(clf: pd.DataFrame, ax) -> None:
    from topoland.analysis import pivot_classifier_table
    from topoland.plots.analysis import plot_classifier_table
    plot_classifier_table(clf, ax=ax)
    ax.grid(False)
    ax.tick_params(axis="y", labelrotation=0)
    mean = pivot_classifier_table(clf, "mean")
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            if pd.isna(mean.iat[i, j]):
                ax.text(j + 0.5, i + 0.5, "n/a (see notes)", ha="center", va="center", color="0.4")


def _adjust_name(table: pd.DataFrame) -> str:
    method = str(table["p_adjust"].iloc[0]) if "p_adjust" in table and len(table) else "holm"
    return {"holm": "Holm", "bh": "Benjamini–Hochberg"}.get(method, method)


def _classifier_footer(clf: pd.DataFrame) -> str:
    """Chance rates, the permutations and the smallest attainable p of the classifier table."""
    parts = []
    if "chance_majority" in clf:
        chance = clf.groupby("target")["chance_majority"].max()
        parts.append("majority-class chance: " + ", ".join(f"{k} {_fmt(v)}" for k, v in chance.items()))
    if "p_min" in clf and clf["p_min"].notna().any():
        m = int(clf["p_value"].notna().sum())
        p_min = float(clf["p_min"].min())
        n_perm = int(clf["n_permutations"].max())
        verdict = ("no cell can be a finding" if p_min * m >= 0.05 else "a cell can be a finding")
        parts.append(f"{n_perm} permutations per cell: smallest attainable p = 1/({n_perm}+1) = {p_min:.3g}; "
                     f"{m} cells in the family, so {verdict} after {_adjust_name(clf)} "
                     f"(p_min × {m} = {p_min * m:.3g})")
    return "; ".join(parts)


_CELLS_PER_PAGE = 6


def _classifier_se_pages(w: _Writer, clf: pd.DataFrame) -> None:
    """Per cell: the mean with both standard errors and the p-values; then, per classifier, its
    accuracy ± cross-validation SE (rows = classifiers, columns = cells, a few cells a page)."""
    need = {"se_across_classifiers", "cv_se", "p_min", "p_adjusted", "finding"}
    if not need <= set(clf.columns):
        w.note("Analysis", f"classifier table written by an older analysis (no {', '.join(sorted(need - set(clf.columns)))}): "
                           "rerun it with --force analysis for both standard errors and adjusted p")
        return
    ok = clf[clf["mean"].notna()]
    if ok.empty:
        return
    summary = pd.DataFrame({
        "group": ok["group"], "target": ok["target"], "mean": ok["mean"].map(_fmt),
        "SE across classifiers": ok["se_across_classifiers"].map(_fmt), "CV SE of the mean": ok["cv_se"].map(_fmt),
        "p": ok["p_value"].map(_fmt), "p_min": ok["p_min"].map(_fmt), "p_adjusted": ok["p_adjusted"].map(_fmt),
        "finding": ok["finding"].map(_fmt)})
    w.table_pages("Classifier table: both standard errors and adjusted p", summary, col_width=16,
                  footer="SE across classifiers: std of the classifiers' accuracies / √(number of classifiers), "
                         "the source study's statistic (agreement between classifiers). CV SE: standard error of "
                         "the repeated-CV estimate (Nadeau–Bengio corrected for overlapping folds). "
                         + _classifier_footer(clf))
    names = [c[len("acc_"):] for c in ok.columns if c.startswith("acc_")]
    cols = {f"{r.group} → {r.target}": [f"{_fmt(getattr(r, f'acc_{n}'))} ± {_fmt(getattr(r, f'cv_se_{n}', np.nan))}"
                                         for n in names] + [f"{_fmt(r.mean)} ± {_fmt(r.cv_se)}"]
            for r in ok.itertuples(index=False)}
    keys = list(cols)
    chunks = [keys[i:i + _CELLS_PER_PAGE] for i in range(0, len(keys), _CELLS_PER_PAGE)]
    for k, chunk in enumerate(chunks):
        t = "Accuracy ± cross-validation SE per classifier" + (f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else "")
        df = pd.DataFrame({"classifier": names + ["mean of classifiers"]} | {c: cols[c] for c in chunk})
        w.table_pages(t, df, col_width=18, footer="Each cell: accuracy ± cross-validation standard error of "
                      "that classifier (repeated stratified k-fold, Nadeau–Bengio corrected); last row: the mean "
                      "over the classifiers ± its cross-validation SE.")


def _flatness_page(w: _Writer, flat: pd.DataFrame | None) -> None:
    """The small- vs large-batch ordering of the curvature measures, with sign and adjusted p."""
    title = "Flatness by batch size"
    if flat is None or flat.empty:
        w.note("Analysis", f"{title}: no batch-size grid axis with curvature measures compared")
        return
    show = flat.map(_fmt) if hasattr(flat, "map") else flat.applymap(_fmt)
    w.table_pages(title, show, col_width=16,
                  footer="mean_diff = small-batch minus large-batch mean, over strata of the other grid axes; "
                         "sharpness, top eigenvalue and trace: larger = sharper; log-volume: larger = flatter. "
                         "A reading is a finding only at adjusted p < 0.05; otherwise it is the direction of "
                         "the sample means, not a result.")


def _analysis_pages(w: _Writer, run: _Run) -> dict[str, pd.DataFrame]:
    """Across-minima pages; returns the analysis tables to copy beside the PDF."""
    from topoland.analysis import load_feature_table
    from topoland.plots.analysis import plot_feature_vs_target, plot_grouped

    d = run.store.stage_dir(RUN_LEVEL, "analysis")
    tables = {name: pd.read_csv(d / f"{name}.csv")
              for name in ("classifiers", "correlations", "comparisons", "flatness")
              if (d / f"{name}.csv").is_file()}
    ft = load_feature_table(d)
    names = {c: run.names.get(c, c) for c in ft.frame.index}
    frame = ft.frame
    # the headline topology features, each its own column (the loss range beside the activity,
    # so a reader sees whether a relation is the range's)
    tp = [c for c in ("topology.activity_h0", "topology.n_basins", "topology.activity_h0_norm",
                      "topology.loss_range") if c in frame.columns and frame[c].notna().any()]
    targets = [t for t in ("gap", "test_acc") if t in frame.columns]

    # topology vs generalization
    title = "Topology vs generalization"
    if tp and targets:
        fig = w.figure(title)
        axes = fig.subplots(len(tp), len(targets), squeeze=False,
                            gridspec_kw=dict(left=0.07, right=0.98, top=0.88, bottom=0.09, wspace=0.2,
                                             hspace=0.45))
        for i, f in enumerate(tp):
            for j, t in enumerate(targets):
                def draw(ax, f=f, t=t):
                    plot_feature_vs_target(ft, f, t, ax=ax)
                    ax.set_title(textwrap.fill(ax.get_title(), 70))
                    for cid, x, y in zip(frame.index, frame[f], frame[t]):
                        if np.isfinite(x) and np.isfinite(y):
                            ax.annotate(names[cid], (x, y), fontsize=MIN_FONT_PT, xytext=(3, 2),
                                        textcoords="offset points", color="0.3")
                w.panel(axes[i, j], f"{f} vs {t}", draw)
        w.save(fig, title)
    else:
        w.note("Stages not run", f"{title}: no topology feature column or no gap/test_acc target in the "
                                 "feature table (topology stage missing?)")
    corr = tables.get("correlations")
    if corr is not None and not corr.empty:
        c = corr.assign(_order=-corr["spearman_rho"].abs().fillna(-1)).sort_values("_order")
        cols = [x for x in ("feature", "target", "n", "spearman_rho", "spearman_p", "spearman_p_adj",
                            "kendall_tau", "kendall_p", "kendall_p_adj", "finding", "note") if x in c.columns]
        show = c[cols].map(_fmt) if hasattr(c, "map") else c[cols].applymap(_fmt)
        w.table_pages("Rank correlations with generalization", show, col_width=18,
                      footer="Spearman ρ and Kendall τ-b of every feature with each target, sorted by |ρ|; "
                             f"p_adj: {_adjust_name(c)} over every feature and target, per method; "
                             "finding: Spearman p_adj < 0.05 (no feature is computed on the test split).")

    # grouped by each grid setting
    settings = [s for s in ft.settings if s != "run.seed" and frame[s].astype(str).nunique() > 1]
    metrics = ([m for m in ("test_acc", "gap") if m in frame.columns] + tp[:1]
               + [m for m in ("curvature.sharpness", "curvature.top_eigenvalue")
                  if m in frame.columns and frame[m].notna().any()])
    if settings and metrics:
        chunks = [settings[i:i + _SETTINGS_PER_PAGE] for i in range(0, len(settings), _SETTINGS_PER_PAGE)]
        for k, chunk in enumerate(chunks):
            t = "Metrics by grid setting" + (f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else "")
            fig = w.figure(t)
            axes = fig.subplots(len(chunk), len(metrics), squeeze=False,
                                gridspec_kw=dict(left=0.07, right=0.98, top=0.92, bottom=0.1, wspace=0.3,
                                                 hspace=0.55))
            for i, by in enumerate(chunk):
                for j, m in enumerate(metrics):
                    w.panel(axes[i, j], f"{m} by {by}", lambda ax, by=by, m=m: plot_grouped(ft, by, m, ax=ax))
            w.save(fig, t)
    else:
        w.note("Analysis", "no grid setting varies across the analysed minima: no grouped plots")

    # classifier table
    clf = tables.get("classifiers")
    if clf is not None and not clf.empty:
        n_clf = sum(c.startswith("acc_") for c in clf.columns)
        t = "Classifier table"
        fig = w.figure(t)
        ax = fig.add_axes((0.16, 0.1, 0.8, 0.78))
        w.panel(ax, "classifier table", lambda ax: _classifier_heatmap(clf, ax))
        ax.set_title(textwrap.fill(
            f"cross-validated accuracy, mean over {n_clf} classifiers per feature group and target; "
            "± clf: standard error across the classifiers (their agreement, not sampling error); "
            "± cv: cross-validation standard error of the mean (repeated CV, Nadeau–Bengio corrected); "
            f"* finding: permutation p adjusted ({_adjust_name(clf)}) < 0.05", 150))
        fig.text(0.01, 0.005, textwrap.fill(_classifier_footer(clf), 190), fontsize=MIN_FONT_PT,
                 ha="left", va="bottom")
        w.save(fig, t)
        _classifier_se_pages(w, clf)
        for r in clf.itertuples():
            notes = getattr(r, "notes", "")
            if isinstance(notes, str) and notes.startswith("not computed"):
                w.note("Analysis", f"classifier {r.group} → {r.target}: {notes}")
    else:
        w.note("Analysis", "no classifier table (no feature groups or no varying target)")

    comp = tables.get("comparisons")
    if comp is not None and not comp.empty:
        cols = [c for c in ("family", "by", "metric", "group_a", "group_b", "n_a", "n_b", "n_strata", "p_value",
                            "p_min", "p_adjusted", "finding", "wilcoxon_p", "mean_diff", "ci_low", "ci_high",
                            "cliffs_delta") if c in comp.columns]
        show = comp[cols].map(_fmt) if hasattr(comp, "map") else comp[cols].applymap(_fmt)
        w.table_pages("Statistical comparisons by grid setting", show,
                      footer="Grid axes: grid cells only, labels permuted within strata of the other grid axes "
                             "(mean_diff: mean over strata of mean(a) − mean(b); Wilcoxon signed-rank for matched "
                             "pairs). Extra cells vs grid: matched on the grid axes they share. p_min: the smallest "
                             f"p the test can give. p_adjusted: {_adjust_name(comp)} over all rows; finding: "
                             "p_adjusted < 0.05.")
        if "notes" in comp:
            for (by, note) in comp[["by", "notes"]].dropna().drop_duplicates().itertuples(index=False):
                if note:
                    w.note("Analysis", f"comparisons by {by}: {note}")
        _flatness_page(w, tables.get("flatness"))
    else:
        w.note("Analysis", "no statistical comparisons (no grid setting with two or more groups of enough minima)")

    for g, cells in ft.missing.items():
        if cells:
            w.note("Analysis", f"feature group '{g}' incomplete for " + ", ".join(names.get(c, str(c)) for c in cells))
    nj = d / "notes.json"
    if nj.is_file():
        for n in json.loads(nj.read_text()):
            w.note("Analysis", str(n))
    tables["features"] = ft.frame.reset_index()
    return tables


# ---------------------------------------------------------------------------------- page 5
def _paths_pages(w: _Writer, run: _Run) -> pd.DataFrame | None:
    from topoland.landscape import PathError, barrier_matrix, disconnectivity_tree
    from topoland.plots.paths import plot_disconnectivity, plot_profiles

    summ = run.summary(RUN_LEVEL, "paths")
    if "skipped" in summ:
        w.note("Stages not run", f"paths: skipped ({summ['skipped']})")
        return None
    d = run.store.stage_dir(RUN_LEVEL, "paths")
    pairs = pd.read_csv(d / "pairs.csv")
    if pairs.empty:
        w.note("Stages not run", "paths: no pair of minima was connected")
        return pairs
    pairs_named = pairs.assign(a_name=[run.names.get(a, a) for a in pairs.a],
                               b_name=[run.names.get(b, b) for b in pairs.b])
    chunks = [pairs_named.iloc[i:i + _PAIRS_PER_PAGE] for i in range(0, len(pairs_named), _PAIRS_PER_PAGE)]
    cols = ("train_loss", "test_loss", "test_error")
    for k, chunk in enumerate(chunks):
        t = "Paths: barrier profiles" + (f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else "")
        fig = w.figure(t)
        axes = fig.subplots(_PAIRS_PER_PAGE, len(cols), squeeze=False,
                            gridspec_kw=dict(left=0.06, right=0.98, top=0.88, bottom=0.07, wspace=0.25,
                                             hspace=0.75))
        for i in range(_PAIRS_PER_PAGE):
            if i >= len(chunk):
                for ax in axes[i]:
                    ax.set_axis_off()
                continue
            r = chunk.iloc[i]
            pdir = d / f"{r.a}__{r.b}"
            profiles = {"linear": pd.read_csv(pdir / "profile_linear.csv")}
            mp = pdir / f"profile_{r.method}.csv"
            if mp.is_file():
                profiles[str(r.method)] = pd.read_csv(mp)
            for j, col in enumerate(cols):
                def draw(ax, col=col, r=r):
                    present = {k: v for k, v in profiles.items() if col in v.columns}
                    if not present:
                        raise StoreError(f"no column '{col}' in the profiles of {r.a_name}–{r.b_name}")
                    plot_profiles(present, ax=ax, column=col)
                    ax.set_xlabel("position along path")
                    bars = []
                    for p in present:
                        key = f"{p}.{col}.max_minus_linear"
                        if key in r.index and pd.notna(r[key]):
                            bars.append(f"{p} {r[key]:.3g}")
                    ax.set_title(f"{r.a_name} → {r.b_name}: {col.replace('_', ' ')}"
                                 + (f"\nbarrier above the chord: {', '.join(bars)}" if bars else ""))
                w.panel(axes[i, j], f"path {r.a_name}–{r.b_name} {col}", draw)
        w.save(fig, t)

    method = str(pairs.method.iloc[0])
    col = f"{method}.train_loss.max"
    ids = list(dict.fromkeys(list(pairs.a) + list(pairs.b)))
    if len(ids) >= 3 and col in pairs.columns:
        m = barrier_matrix(pairs.rename(columns={col: "barrier"}), ids, column="barrier")
        energies = [run.summary(c, "train").get("train_loss") for c in ids]
        energies = None if any(e is None for e in energies) else energies
        try:
            tree = disconnectivity_tree([run.names.get(c, c) for c in ids], m, energies=energies)
        except PathError as e:
            w.note("Paths", f"no disconnectivity graph: {e}")
        else:
            t = "Paths: disconnectivity graph"
            fig = w.figure(t)
            ax = fig.add_axes((0.08, 0.15, 0.88, 0.72))
            plot_disconnectivity(tree, ax=ax)
            ax.set_ylabel(f"train loss (highest point on the {method} path)")
            ax.tick_params(axis="x", labelrotation=0)
            ax.grid(axis="x", visible=False)
            ax.set_title(f"{len(ids)} minima joined by {len(pairs)} {method} paths; merges at the lowest "
                         "barrier connecting them")
            w.save(fig, t)
    else:
        w.note("Paths", f"disconnectivity graph needs >= 3 connected minima; {len(ids)} connected")
    return pairs


# ---------------------------------------------------------------------------------- page 6
def _stage_notes(w: _Writer, run: _Run) -> None:
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
    for stage in ("paths", "analysis"):
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


def _notes_page(w: _Writer) -> None:
    lines = []
    for section in sorted(w.notes, key=lambda s: (_NOTE_ORDER.index(s) if s in _NOTE_ORDER else 99, s)):
        lines.append(f"{section}:")
        lines += [f"  • {n}" for n in dict.fromkeys(w.notes[section])]
        lines.append("")
    if not lines:
        lines = ["Nothing to report: every stage asked for finished for every minimum, "
                 "no trajectory diverged."]
    w.text_pages("Notes", lines)


# ---------------------------------------------------------------------------------- entry
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
    run = _Run(store)
    minima = minima_table(store.path)
    tables: dict[str, pd.DataFrame] = {"minima": minima}
    with pdf_pages(pdf_path, title=f"topoland report: {run.name}") as pdf:
        w = _Writer(store, pdf, run.name)
        _title_page(w, run)
        _minima_pages(w, run, minima)
        for cid in run.cells.cell_id:
            if run.done(cid, "topology") and "skipped" not in run.summary(cid, "topology"):
                _minimum_page(w, run, cid)  # a skipped topology (diverged training) is on the notes page
        _intervals_page(w, run, [c for c in run.cells.cell_id if run.done(c, "topology")
                                 and "skipped" not in run.summary(c, "topology")])
        ens = _ensemble_pages(w, run)
        if ens is not None:
            tables["ensembles"] = ens
        if run.done(RUN_LEVEL, "analysis"):
            tables |= _analysis_pages(w, run)
        if run.done(RUN_LEVEL, "paths"):
            pairs = _paths_pages(w, run)
            if pairs is not None:
                tables["pairs"] = pairs
        _stage_notes(w, run)
        _notes_page(w)
    written = []
    for name, df in tables.items():
        p = pdf_path.parent / f"{name}.csv"
        atomic_write_bytes(p, df.to_csv(index=False).encode())
        written.append(p)
    return {"pages": len(w.headings), "headings": list(w.headings), "path": pdf_path, "tables": written}
