"""The report's overview pages: the title page (config, grid, stages, software, device, wall
time per stage), the minima table, and the fast geometric ensembles of the optional ensemble stage."""
from __future__ import annotations

import textwrap

import pandas as pd

from topoland.report.common import fmt
from topoland.report.document import MIN_FONT_PT, TABLE_ROWS, Writer, versions_table, wrap_header
from topoland.report.facts import RunFacts
from topoland.runs import layout
from topoland.runs.stages import RUN_STAGES
from topoland.runs.store import RunStore

__all__ = ["title_page", "minima_pages", "ensemble_pages", "device_line"]

_STATUS_MARK = {"done": "✓", "failed": "✗", "interrupted": "!", "running": "…"}


def device_line(cfg: dict, store: RunStore | None = None) -> str:
    """The device the run used (recorded in its index), else what the report's machine has."""
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


# ---------------------------------------------------------------------------------- page 1
def title_page(w: Writer, run: RunFacts) -> None:
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
            left.append(f"[{section}] " + ", ".join(f"{k}={fmt(v)}" for k, v in vals.items()
                                                    if v not in ("", None)))
    left.append(f"seed: {cfg.get('run', {}).get('seed', '?')}")
    left.append("")
    grid = cfg.get("grid", {})
    left.append("grid (the product of):" if grid else "grid: none (single cell)")
    for k, v in grid.items():
        left.append(f"  {k} = [{fmt(v)}]")
    extra = cfg.get("cells", [])
    if extra:
        left.append(f"extra cells: {len(extra)}")
        for c in extra:
            left.append("  " + ", ".join(f"{k}={fmt(v)}" for k, v in c.items()))
    left.append("")
    left.append("stages: " + " → ".join(run.wanted()))
    n_cells = len(run.cells)
    n_trained = sum(run.done(c, "train") for c in run.cells.cell_id)
    n_div = sum(bool(run.summary(c, "train").get("diverged")) for c in run.cells.cell_id)
    left.append(f"minima: {n_cells} cells, {n_trained} trained" + (f", {n_div} diverged" if n_div else ""))
    left.append("device: " + device_line(cfg, w.store))
    wrapped = []
    for line in left:
        wrapped += textwrap.wrap(line, 95, subsequent_indent="      ") or [""]
    fig.text(0.03, 0.9, "\n".join(wrapped), ha="left", va="top", fontsize=9, linespacing=1.4)

    # right: versions and wall time tables
    ver = versions_table()
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


def _stage_time_rows(run: RunFacts) -> list[list[str]]:
    st = run.stages
    rows = []
    for stage in run.cell_stages() + RUN_STAGES:
        s = st[st.stage == stage]
        if s.empty and stage not in run.wanted():
            continue
        done = int((s.status == "done").sum())
        failed = int((s.status == "failed").sum())
        secs = pd.to_numeric(s.seconds, errors="coerce").sum() if not s.empty else 0.0
        rows.append([stage, str(done), str(failed), f"{secs:.1f}"])
    return rows


# ---------------------------------------------------------------------------------- page 2
def _loss_units(run: RunFacts) -> str:
    """The units of the run's losses: nats for cross-entropy/nll, else the losses' names."""
    losses = {run.store.cell_config(c)["train"].get("loss", "cross_entropy") for c in run.cells.cell_id}
    named = sorted(losses - {"cross_entropy", "nll"})
    return "nats" if not named else "units of " + ", ".join(named) + (" / nats" if len(named) < len(losses) else "")


def minima_pages(w: Writer, run: RunFacts, table: pd.DataFrame) -> None:
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
    shown = df.map(fmt) if hasattr(df, "map") else df.applymap(fmt)
    foot = ("stages: " + ", ".join(run.cell_stages()) + " (✓ done, ✗ failed, ! interrupted, · not run). "
            + ("Shared by all minima: " + "; ".join(f"{k}={fmt(v)}" for k, v in shared.items())
               if shared else "") + ". gap = test loss − train loss (" + _loss_units(run)
            + ("); acc_gap = train acc − test acc." if "acc_gap" in df else ")."))
    w.table_pages("The minima: settings and metrics", shown, footer=textwrap.fill(foot, 190))


def ensemble_pages(w: Writer, run: RunFacts) -> pd.DataFrame | None:
    """Fast geometric ensembles: accuracy vs members per minimum and a table; returns the
    curves of every minimum (with a ``minimum`` column) or None when no cell ran the stage."""
    cells = [c for c in run.cells.cell_id if run.done(c, "ensemble") and "skipped" not in run.summary(c, "ensemble")]
    if not cells:
        return None
    curves, rows = {}, []
    for c in cells:
        curve = layout.read_ensemble_curve(run.store.stage_dir(c, "ensemble"))
        if curve is None:
            w.note("Panels not drawn", f"{run.names[c]} ensemble: no {layout.ENSEMBLE_CURVE} stored")
            continue
        curves[c] = curve
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
    show = df.drop(columns=["setting"]).map(fmt) if hasattr(df, "map") else df.drop(columns=["setting"]).applymap(fmt)
    tab = tab_ax.table(cellText=show.to_numpy().tolist()[:TABLE_ROWS],
                       colLabels=[wrap_header(c, 10) for c in show.columns], loc="upper center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(MIN_FONT_PT)
    tab.auto_set_column_width(list(range(len(show.columns))))
    for (r, _c), cell in tab.get_celld().items():
        cell.set_height(0.06 if r == 0 else 0.035)
        if r == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("0.9")
    if len(show) > TABLE_ROWS:
        w.note("Panels not drawn", f"ensemble table: {len(show) - TABLE_ROWS} minima beyond the first "
                                   f"{TABLE_ROWS} are in ensembles.csv only")
    fig.text(0.52, 0.03, textwrap.fill("Snapshots at the lowest rate of each cycle of a cyclic learning rate "
                                       "started at the minimum; the ensemble averages the members' softmax "
                                       "outputs. Accuracy on the test split; gain = ensemble acc − minimum "
                                       "test_acc. Not a feature of the analysis (it is a test metric).", 95),
             fontsize=MIN_FONT_PT, va="bottom")
    w.save(fig, t)
    return pd.concat([cv.assign(minimum=run.names[c], cell_id=c) for c, cv in curves.items()], ignore_index=True)
