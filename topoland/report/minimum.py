"""The report page of one minimum: its samples' pictures, filtration graph, diagrams,
Betti curves, feature intervals, surfaces and curvature."""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from topoland.errors import StoreError
from topoland.report.common import blank, fmt
from topoland.runs import layout

__all__ = ["minimum_page", "intervals_page"]

#: the headline topology features, in the order the page lists them
_HEADLINE = (("n_basins", "basins"), ("n_loops", "loops"), ("activity_h0", "activity H0"),
             ("activity_h1", "activity H1"), ("loss_range", "loss range"))
_INTERVAL_FEATURES = ("n_basins", "n_loops", "activity_h0", "activity_h1", "activity_h0_norm",
                      "max_depth_h0", "max_depth_h1", "loss_range")


def _geometry_line(topo: dict, settings: dict) -> str:
    """Which geometry each panel comes from, and how connected each graph is."""
    comp = [f"{label} {int(topo[k])}" for k, label in (("kernel_components", "PHATE kernel"),
                                                         ("knn_components", f"{settings.get('k', '?')}-NN"),
                                                         ("graph_components", "filtration graph"))
            if k in topo and topo[k] is not None and np.isfinite(topo[k])]
    plane = topo.get("plane_variance")
    return (f"picture: PHATE on cosine distances · filtration: {settings.get('graph', '?')} graph on "
            f"{settings.get('graph_on', '?')} distances, complex {settings.get('complex', '?')}"
            + (f" (H1 filled on the principal plane, {plane:.0%} of the variance)"
               if settings.get("complex") == "planar" and plane is not None else "")
            + " · components: " + ", ".join(comp))


def _draw_lines(ax, lines, quantity: str):
    from matplotlib.lines import Line2D

    from topoland.plots.landscape import plot_line
    for i, srf in enumerate(lines):
        plot_line(srf, ax=ax, quantity=quantity, color=f"C{i}", lw=1.2)
    for ln in ax.get_lines():
        if ln.get_label().startswith("test"):
            ln.set_linestyle("--")
    handles = [Line2D([], [], color=f"C{i}", label=f"direction {i + 1}") for i in range(len(lines))]
    handles += [Line2D([], [], color="0.3", ls="-", label="train"),
                Line2D([], [], color="0.3", ls="--", label="test")]
    ax.legend(handles=handles, ncol=2)
    ax.set_title(f"1-D curves ({quantity})")


def minimum_page(w, run, cid: str) -> None:
    """One page for a minimum with a finished topology stage (``w``: the report writer,
    ``run``: the run being reported)."""
    from topoland.plots.curvature import plot_eigenvalue_density
    from topoland.plots.landscape import plot_contour
    from topoland.plots.topology import (plot_betti_curves, plot_diagram, plot_embedding,
                                  plot_filtration_graph, plot_intervals)
    from topoland.topology import betti_curve

    name = run.names[cid]
    title = f"Minimum {name}: {run.labels[cid]}"
    store = run.store
    tdir = store.stage_dir(cid, "topology")
    arrays, meta = layout.read_topology(tdir)
    settings = meta.get("settings", {})
    value_name = settings.get("value", "vertex value")
    ids = arrays["sample_ids"].astype(np.int64)
    coords, values = arrays["coords"], arrays["values"]
    diagrams = {int(k[len("diagram_h"):]): arrays[k] for k in sorted(arrays) if k.startswith("diagram_h")}

    fig = w.figure(title)
    train = run.summary(cid, "train")
    topo = run.summary(cid, "topology")
    user = list(run.store.cell_config(cid)["train"].get("metrics", {}))
    facts = [f"{k.replace('_', ' ')} {fmt(train[k])}" for k in ("train_loss", "test_loss", "test_acc", "gap",
                                                               *(f"{s}_{m}" for m in user for s in ("train", "test")))
             if k in train]
    facts += [f"{label} {fmt(topo[k])}" for k, label in _HEADLINE if k in topo]
    facts.append(f"{len(ids)} samples, PHATE t = {meta.get('t_used', '?')}")
    fig.text(0.5, 0.95, " · ".join(facts), ha="center", fontsize=9)
    fig.text(0.5, 0.935, textwrap.fill(_geometry_line(topo, settings), 190), ha="center", va="top",
             fontsize=8, color="0.3")
    for note in meta.get("notes", []):
        w.note("Topology", f"{name}: {note}")
    axes = fig.subplots(2, 5, gridspec_kw=dict(left=0.04, right=0.99, top=0.85, bottom=0.09,
                                               wspace=0.65, hspace=0.45))

    traj = order = steps = None
    if run.done(cid, "sample"):
        s = layout.read_samples(store.stage_dir(cid, "sample"))
        t = s.table.set_index("sample_id").loc[ids]
        traj, order, steps = t["trajectory"].to_numpy(), t["epoch"].to_numpy(), t["step"].to_numpy()
    else:
        w.note("Stages not run", f"{name}: topology finished but its samples are gone; "
                                 "embedding drawn without trajectories")

    def emb_loss(ax):
        plot_embedding(coords, color=values, trajectories=traj, order=order, ax=ax,
                       color_label=value_name, categorical=False)
        ax.set_title(f"PHATE, colour: {value_name}")

    def emb_step(ax):
        if steps is None:
            raise StoreError("no sample table for the step sizes")
        plot_embedding(coords, color=np.round(steps, 6), trajectories=traj, order=order, ax=ax,
                       color_label="step size", categorical=True)
        ax.set_title("PHATE, colour: step size")

    w.panel(axes[0, 0], "embedding by loss", emb_loss)
    w.panel(axes[0, 1], f"{name} embedding by step size", emb_step)
    if "plane" in arrays:
        def graph(ax):
            plot_filtration_graph(arrays["plane"], arrays["edges"], values, ax=ax, color_label=value_name)
            ax.set_title("filtration graph, PCA plane")
            ax.set_xlabel("PC 1 of the unit snapshots")
            ax.set_ylabel("PC 2")
        w.panel(axes[0, 2], f"{name} filtration graph", graph)
    else:
        blank(axes[0, 2], "no principal plane stored (topology stage of an older version)")
    for j, dim in enumerate((0, 1)):
        ax = axes[0, 3 + j]
        if dim in diagrams and len(diagrams[dim]):
            def draw(ax, dim=dim):
                plot_diagram({dim: diagrams[dim]}, ax=ax)
                n = len(diagrams[dim])
                ax.set_title(f"diagram H{dim} ({n} points)")
            w.panel(ax, f"{name} diagram H{dim}", draw)
        else:
            blank(ax, f"H{dim}: no points" if dim in diagrams else f"no H{dim} diagram stored")

    def betti(ax):
        fin = values[np.isfinite(values)]
        thr = np.linspace(fin.min(), fin.max(), 200)
        plot_betti_curves(betti_curve(diagrams, thr), thr, ax=ax)
        ax.set_xlabel(f"threshold on {value_name}")
        ax.set_title("Betti curves")
    w.panel(axes[1, 0], f"{name} Betti curves", betti)
    iv = layout.read_intervals(tdir)
    if iv is not None and not iv.empty:
        def intervals(ax):
            plot_intervals(iv, ax=ax, features=_INTERVAL_FEATURES)
            level = settings.get("ci_level", 0.9)
            ax.set_title(f"{level:.0%} intervals ({int(iv['n_resamples'].min())} resamples)")
        w.panel(axes[1, 1], f"{name} intervals", intervals)
    else:
        blank(axes[1, 1], "no resampling intervals (topology.n_resamples = 0)")

    sdir = store.stage_dir(cid, "surface")
    surf_summary = run.summary(cid, "surface")
    srf = layout.read_plane(sdir) if run.done(cid, "surface") else None
    if srf is not None:
        def contour(ax):
            plot_contour(srf, ax=ax, metric="train_loss", filled=True, log=True, levels=20, cmap="viridis")
            ax.plot([0], [0], marker="*", color="w", ms=10, mec="k")
            ax.set_title("train loss, random plane")
        w.panel(axes[1, 2], f"{name} surface", contour)
    else:
        why = surf_summary.get("skipped") or ("no plane stored" if run.done(cid, "surface")
                                             else "surface stage did not run")
        blank(axes[1, 2], f"surface: {why}")

    lines = layout.read_lines(sdir) if run.done(cid, "surface") else []
    if lines:
        w.panel(axes[1, 3], f"{name} 1-D curves", lambda ax: _draw_lines(ax, lines, "loss"))
    else:
        blank(axes[1, 3], "no 1-D curves stored")

    d = layout.read_density(store.stage_dir(cid, "curvature")) if run.done(cid, "curvature") else None
    if d is not None:
        def density(ax):
            plot_eigenvalue_density((d["eigenvalue"].to_numpy(), d["density"].to_numpy()), ax=ax)
            ax.set_title("Hessian eigenvalue density")
        w.panel(axes[1, 4], f"{name} eigenvalue density", density)
    elif lines and "train_acc" in lines[0].values:
        w.panel(axes[1, 4], f"{name} 1-D accuracy", lambda ax: _draw_lines(ax, lines, "acc"))
    elif lines and user and f"train_{user[0]}" in lines[0].values:
        w.panel(axes[1, 4], f"{name} 1-D {user[0]}", lambda ax: _draw_lines(ax, lines, user[0]))
    else:
        blank(axes[1, 4], "no curvature density stored" + ("" if lines else " and no 1-D curves"))
    w.save(fig, title)


def intervals_page(w, run, cids) -> None:
    """One page across minima: each headline topology feature with its resampling interval
    (``intervals.csv`` of each topology stage), one error bar per minimum."""
    rows = []
    for cid in cids:
        iv = layout.read_intervals(run.store.stage_dir(cid, "topology"))
        if iv is not None:
            rows.append(iv.assign(minimum=run.names[cid]))
    if not rows:
        w.note("Stages not run", "Topology intervals: no minimum has resampling intervals "
                                 "(topology.n_resamples = 0)")
        return
    df = pd.concat(rows, ignore_index=True)
    features = [f for f in ("n_basins", "n_loops", "activity_h0", "activity_h1", "max_depth_h0",
                            "loss_range") if f in set(df["feature"])]
    title = "Topology features with resampling intervals"
    fig = w.figure(title)
    axes = fig.subplots(2, 3, squeeze=False, gridspec_kw=dict(left=0.06, right=0.98, top=0.87,
                                                             bottom=0.1, wspace=0.3, hspace=0.5))
    for ax, f in zip(axes.ravel(), features):
        def draw(ax, f=f):
            d = df[df["feature"] == f]
            x = np.arange(len(d))
            ax.vlines(x, d["low"], d["high"], color="C1", lw=2, label="interval")
            ax.scatter(x, d["estimate"], color="C0", s=16, zorder=3, label="all samples")
            ax.set_xticks(x, d["minimum"])
            ax.set_title(f)
        w.panel(ax, f"intervals of {f}", draw)
    for ax in axes.ravel()[len(features):]:
        ax.set_axis_off()
    fig.text(0.01, 0.015, textwrap.fill(
        "Dots: the feature on all samples; bars: the percentile interval over resampled "
        "trajectory sets. A resample holds the distinct trajectories of a bootstrap draw (about 63 % "
        "of them), so counts and activities sit lower there than on the full set; an estimate above "
        "its interval says the feature grows with the sampling.", 190), fontsize=8)
    w.save(fig, title)
