"""The report's paths pages: the barrier profile of every connected pair of minima and, with
three or more connected minima, the disconnectivity graph."""
from __future__ import annotations

import pandas as pd

from topoland.errors import StoreError
from topoland.report.document import Writer
from topoland.report.facts import RunFacts
from topoland.runs import layout
from topoland.runs.store import RUN_LEVEL

__all__ = ["paths_pages"]

_PAIRS_PER_PAGE = 3


def paths_pages(w: Writer, run: RunFacts) -> pd.DataFrame | None:
    """Barrier profiles per pair (a few pairs a page) and the disconnectivity graph; returns the
    pairs table, or None when the stage was skipped."""
    from topoland.landscape import PathError, barrier_matrix, disconnectivity_tree
    from topoland.plots.paths import plot_disconnectivity, plot_profiles

    summ = run.summary(RUN_LEVEL, "paths")
    if "skipped" in summ:
        w.note("Stages not run", f"paths: skipped ({summ['skipped']})")
        return None
    d = run.store.stage_dir(RUN_LEVEL, "paths")
    pairs = layout.read_pairs(d)
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
            profiles = layout.read_profiles(d, r.a, r.b, r.method)
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
